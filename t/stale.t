#!/usr/bin/perl

# A worker of an earlier configuration picks a server whose key a reload
# has removed: its handle is stale (the slot's generation moved on), so it
# puts the key back as draining, counts the connection there, and the key
# goes once that connection closes. Nothing is counted into a wrong key.
# The pick lets go of round-robin's lock before it locks the zone for that,
# and logs only once the zone is unlocked.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use IO::Socket::INET;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::LockOrder;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(9);


sub conf {
	my ($servers) = @_;
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
$servers
    }

    server {
        listen       127.0.0.1:8080;

        location / {
            proxy_pass http://u;
            proxy_next_upstream error timeout;
        }

        location /status {
            least_conn_persistent_status;
        }
    }
}

EOF
}

# 8081 swallows a request and closes after a second, so that nginx retries.
sub black_hole {
	my ($port) = @_;
	my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
		Listen => 16, ReuseAddr => 1) or die "black hole: $!\n";
	while (my $c = $s->accept()) {
		sysread($c, my $buf, 65536);
		sleep 1;
		close $c;
	}
}

$t->run_daemon(\&black_hole, port(8081));
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'x');
$t->waitforsocket(addr($_)) for 8081, 8082;

# With both idle, weight 2 makes the first pick the black hole.
conf("        server 127.0.0.1:8081 weight=2;\n        server 127.0.0.1:8082;");
$t->run();

my $x = addr(8082);
my $r = http_get('/', start => 1);
ok(wait_until(sub { (counts('u')->{addr(8081)} // 0) == 1 }), 'request waits on 8081');

# x leaves the configuration while idle: its key is removed at once.
conf("        server 127.0.0.1:8081 weight=2;");
$t->reload();
ok(!exists counts('u')->{$x}, 'idle removed server: key gone');

# The old worker's retry goes to x, through a stale handle.
my $reply = http_read($r);
like($reply, qr/200 OK.*id=x/s, 'old worker\'s retry served by the removed server');
like($t->read_file('error.log'),
	qr/\[notice\].*"conn_count:u:\Q$x\E" re-added as draining for a worker of an earlier configuration/,
	'stale handle looked the key up again');
SKIP: {
	skip 'nginx built without --with-debug', 2
		unless `$Test::Nginx::NGINX -V 2>&1` =~ /--with-debug/;
	my ($seen, @bad) = zone_work_after($t->read_file('error.log'),
		qr/is stale, round-robin lock released/);
	is($seen, 1, 'the pick let go of round-robin\'s lock to look the key up again');
	is_deeply(\@bad, [], 'then locked the zone, and logged nothing until it unlocked it');
}
unlike($t->read_file('error.log'), qr/already 0/, 'no release of an uncounted connection');
ok(wait_until(sub { !exists counts('u')->{$x} }), 'draining key removed after the retry finished');
ok(at_rest(), 'every counter back to 0');
