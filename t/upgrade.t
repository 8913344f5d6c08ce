#!/usr/bin/perl

# Binary upgrade (USR2, then WINCH and QUIT to the old master), two workers,
# held WebSockets. The new master creates its own zone (nginx's shared
# memory does not outlive an exec), so the two masters count separately
# while both run, as docs/internals.md says: each zone counts exactly its own
# workers' connections, neither loses or doubles one, and once the old
# master is gone the new zone is exact for everything that is left.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(13);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        add_header X-Worker $pid always;

        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

my %backend = (8081 => 'a', 8082 => 'b');
sub live { live_counts(keys %backend) }

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $backend{$_}) for keys %backend;
$t->waitforsocket(addr($_)) for keys %backend;
$t->run();

# Pids of a master's worker processes (the new master is a child of the
# old one too, and not one of its workers).
my $new_master;
sub children_of {
	my ($master) = @_;
	return grep { $_ != ($new_master // 0) } $t->children($master);
}

###############################################################################

my @old = ws_open_many(20, '/u');
is_deeply(counts('u'), { addr(8081) => 10, addr(8082) => 10 }, '20 WebSockets 10/10');

my $old_master = $t->master_pid();
kill 'USR2', $old_master;
$new_master = wait_until(sub {
	my $m = $t->master_pid();
	$m && $m != $old_master && children_of($m) >= 2 ? $m : undef;
}, 10);
ok($new_master, 'USR2: a new master with its two workers');
ok($t->has_file('nginx.pid.oldbin'), 'the old master\'s pid file renamed to nginx.pid.oldbin');

# WINCH: the old workers stop accepting and stay only for their WebSockets.
kill 'WINCH', $old_master;
ok(wait_until(sub {
	my @w = children_of($old_master);
	@w == 2 && !grep { !/is shutting down/ } map { `cat /proc/$_/cmdline 2>/dev/null` } @w;
}, 10), 'WINCH: the old workers shut down gracefully, holding their WebSockets');

my @new = ws_open_many(12, '/u');
ok(!grep({ my $w = $_->{worker}; grep { $_ == $w } children_of($old_master) } @new),
	'new connections are served by the new workers');
is_deeply(counts('u'), { addr(8081) => 6, addr(8082) => 6 },
	'the new master\'s zone counts its own 12 (6/6), not the old master\'s 20');
is_deeply(live(), { addr(8081) => 16, addr(8082) => 16 }, 'the backends hold all 32 (16/16)');

ws_close(@old);
ok(wait_until(sub { !children_of($old_master) }, 10), 'the old workers exit once their WebSockets close');
kill 'QUIT', $old_master;
ok(wait_until(sub { !kill 0, $old_master }, 10), 'QUIT: the old master exits');
ok(same_counts(counts('u'), live()), 'the new zone is exact for what is left: '
	. join('/', map { counts('u')->{addr($_)} } 8081, 8082));

my @more = ws_open_many(4, '/u');
is_deeply(tally(@more), { a => 2, b => 2 }, 'and keeps balancing (2/2 of 4 more)');
ws_close(@new, @more);
ok(at_rest(), 'every counter back to 0');
unlike($t->read_file('error.log'), qr/already 0|exits holding/,
	'no release of an uncounted connection, no worker exits holding one');

###############################################################################
