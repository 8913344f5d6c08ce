#!/usr/bin/perl

# Selection on the shared counters, two workers: held connections steer new
# ones, weights, down, backup, max_conns across workers, max_fails.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(17);

# proxy_next_upstream errors against a backend that is not listening yet
$t->alerts_allowed(qr/connect\(\) failed/);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream steer {
        least_conn_persistent;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    upstream failing {
        least_conn_persistent;
        server 127.0.0.1:8081;
        server 127.0.0.1:8085 max_fails=1 fail_timeout=60s;
    }

    upstream weighted {
        least_conn_persistent;
        server 127.0.0.1:8081 weight=3;
        server 127.0.0.1:8083;
    }

    upstream downed {
        least_conn_persistent;
        server 127.0.0.1:8081;
        server 127.0.0.1:8083;
        server 127.0.0.1:8084 down;
    }

    upstream capped {
        least_conn_persistent;
        server 127.0.0.1:8081 max_conns=10;
        server 127.0.0.1:8083 max_conns=10;
    }

    # Past 32 bits, as stock nginx accepts them: compared as 2^32 - 1 (not
    # cut to their low bits: max_conns would be 1, the weight 705032704).
    upstream huge {
        least_conn_persistent;
        server 127.0.0.1:8081 weight=5000000000 max_conns=4294967297;
        server 127.0.0.1:8083 weight=705032705;
    }

    upstream backed {
        least_conn_persistent;
        server 127.0.0.1:8081 max_conns=2;
        server 127.0.0.1:8084 backup;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        add_header X-Worker $pid always;

        location /steer { proxy_pass http://steer; }
        location /failing { proxy_pass http://failing; }
        location /weighted { proxy_pass http://weighted; }
        location /downed { proxy_pass http://downed; }
        location /capped { proxy_pass http://capped; }
        location /backed { proxy_pass http://backed; }
        location /huge { proxy_pass http://huge; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

# 8085 never listens.
$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'], [8083, 'c'], [8084, 'd'];
$t->waitforsocket(addr($_)) for 8081 .. 8084;
$t->run();

###############################################################################

# Held connections steer new ones: 8 open 4/4, the 4 on b close, so a holds
# 4 and b none; the next 4 must all go to b.
my @first = ws_open_many(8, '/steer');
is_deeply(tally(@first), { a => 4, b => 4 }, 'even start');
my @held = grep { $_->{backend} eq 'a' } @first;
ws_close(grep { $_->{backend} eq 'b' } @first);
wait_counts('steer', { 8081 => 4, 8082 => 0 });
my @more = ws_open_many(4, '/steer');
is_deeply(tally(@more), { b => 4 }, 'held connections on a steer new ones to b');
my @two = ws_open_many(2, '/steer');
is_deeply(tally(@two), { a => 1, b => 1 }, 'then they alternate');
ws_close(@held, @more, @two);

# max_fails: the refusing server is tried once per worker, then skipped for
# fail_timeout; every failed attempt gives its count back.
my @f = ws_open_many(8, '/failing');
is_deeply(tally(@f), { a => 8 }, 'retries land on the live server');
my $refused = () = $t->read_file('error.log') =~ /connect\(\) failed.*:${\port(8085)}/g;
ok($refused >= 1 && $refused <= 2, "failed server skipped after max_fails ($refused tries)");
is_deeply(counts('failing'), { addr(8081) => 8, addr(8085) => 0 },
	'failed attempts released their count');
ws_close(@f);

# weights
my @w = ws_open_many(40, '/weighted');
is_deeply(tally(@w), { a => 30, c => 10 }, 'weights 3:1 give counts 3:1');
ws_close(@w);

# down
my @d = ws_open_many(10, '/downed');
is_deeply(tally(@d), { a => 5, c => 5 }, 'down server never picked');
my ($down) = grep { $_->{server} =~ /:${\port(8084)}$/ } entries('downed');
is($down->{state}, 'down', 'status shows it down');
ws_close(@d);

# max_conns across both workers
my @c = ws_open_many(20, '/capped');
is_deeply(tally(@c), { a => 10, c => 10 }, 'max_conns fills both servers');
like(http_get('/capped'), qr/^HTTP\/1\.1 502/, 'then 502, as stock nginx');
my %workers = map { $_->{worker} => 1 } grep { $_->{worker} } @c;
ok(keys %workers >= 2, 'connections came through both workers');
is_deeply(counts('capped'), { map { (addr($_) => 10) } 8081, 8083 },
	'shared counts hold the cap');
ws_close(@c);

# weight and max_conns past 32 bits
my @h = ws_open_many(4, '/huge');
is_deeply(tally(@h), { a => 3, c => 1 }, 'weight and max_conns past 2^32 compare as 2^32 - 1');
ws_close(@h);

# backup only when the primary is at max_conns
my @b = ws_open_many(2, '/backed');
is_deeply(tally(@b), { a => 2 }, 'primary first');
my $third = ws_open('/backed');
is($third->{backend}, 'd', 'backup once the primary is full');
ws_close(@b, $third);

ok(at_rest(), 'all counters back to 0');
