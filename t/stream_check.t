#!/usr/bin/perl

# Active health checks in stream {} (`least_conn_persistent_check`), two
# workers, state in the stream zone:
# - upstream t, tcp checks: a server nothing listens on is found down
#   (connection refused) and never picked, which `proxy_next_upstream off`
#   would turn into failed sessions; its live neighbour takes them all;
# - upstream u, http checks against HTTP backends proxied as plain TCP:
#   one answering 503 goes down after `fall` checks, sessions go to the
#   other; back to 200, it is up after `rise` and takes sessions again.
# The stream status page shows both, and the log says each change once.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::Health;
use Test::Nginx::Hold;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(14);
health_dir($t);

my $slow = $Test::Nginx::SLOW;
my ($interval, $timeout) = map { int($_ * $slow) } 300, 250;
my $check = "interval=${interval}ms timeout=${timeout}ms rise=2 fall=2";

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 2;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

    upstream t {
        least_conn_persistent;
        least_conn_persistent_check $check;
        server 127.0.0.1:%%PORT_8093%%;
        server 127.0.0.1:%%PORT_8099%%;
    }

    upstream u {
        least_conn_persistent;
        least_conn_persistent_check uri=/health $check;
        server 127.0.0.1:%%PORT_8091%%;
        server 127.0.0.1:%%PORT_8092%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8082%% reuseport;
        proxy_pass t;
        proxy_next_upstream off;
        proxy_timeout 1h;
    }

    server {
        listen 127.0.0.1:%%PORT_8081%% reuseport;
        proxy_pass u;
    }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /status { least_conn_persistent_status; }
    }
}

EOF

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8091), 'b1');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8092), 'b2');
$t->run_daemon(\&Test::Nginx::Hold::serve, port(8093), 'a');
$t->waitforsocket(addr($_)) for 8091, 8092, 8093;
$t->run();

sub health_of {
	my ($upstream, $port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } stream_entries($upstream);
	return $e && $e->{health};
}

# One request through the stream proxy to u: the backend's id.
sub via_u {
	my $r = http("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", port => port(8081)) // '';
	my ($id) = $r =~ /^X-Backend: (\S+)/mi;
	return $id // 'none';
}

my $wait = 20 * $slow;

# t: the dead server.
ok(wait_until(sub { (health_of('t', 8099) // '') eq 'down' }, $wait),
	'tcp check: the server nothing listens on is down');
my $dead = addr(8099);
is(scalar($t->log_lines(0,
	qr/upstream "t": server \Q$dead\E is down \(2 failed checks, last: connection refused\)/)), 1,
	'logged once, with the reason');
is(health_of('t', 8093), 'up', 'its neighbour is up');
my @held = map { hold_open(port(8082)) } 1 .. 10;
is(scalar(grep { $_ && $_->{backend} eq 'a' } @held), 10,
	'10 sessions, each on the live server (a pick of the dead one would fail: no next upstream)');
hold_close($_) for grep { $_ } @held;

# u: http checks over stream.
ok(wait_until(sub { (health_of('u', 8092) // '') eq 'up' && (health_of('u', 8091) // '') eq 'up' }, $wait),
	'http check over stream: both up');
my %before;
$before{via_u()}++ for 1 .. 10;
ok($before{b1} && $before{b2}, 'sessions reach both: ' . join(',', map { "$_=$before{$_}" } sort keys %before));

set_health('b2', '503');
ok(wait_until(sub { (health_of('u', 8092) // '') eq 'down' }, $wait), 'b2 answering 503 is down');
my ($e) = grep { $_->{server} eq addr(8092) } stream_entries('u');
is($e->{check}{result}, 'bad status', 'the stream status page: result "bad status"');
my %during;
$during{via_u()}++ for 1 .. 10;
is_deeply(\%during, { b1 => 10 }, 'all sessions on b1 while b2 is down');

set_health('b2', '200');
ok(wait_until(sub { (health_of('u', 8092) // '') eq 'up' }, $wait), 'b2 back up');
my $b2 = addr(8092);
is(scalar($t->log_lines(0, qr/upstream "u": server \Q$b2\E is up \(2 passed checks\)/)), 1, 'after 2 passed checks, logged once');
my %after;
$after{via_u()}++ for 1 .. 10;
ok($after{b2}, 'b2 takes sessions again: ' . join(',', map { "$_=$after{$_}" } sort keys %after));

# One checker for the stream zone, and it is one of the workers.
my $checker = status('/status?subsystem=stream')->{zone}{checker};
ok($checker && kill(0, $checker), "the stream zone has a live checker ($checker)");
ok(!grep({ /\[(alert|crit|emerg)\]/ } split /\n/, $t->read_file('error.log')), 'no alert');
