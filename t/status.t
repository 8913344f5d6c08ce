#!/usr/bin/perl

# The status page (JSON and Prometheus, bad requests) and key edge cases:
# the same address in two upstreams, a name with several addresses, states;
# keepalive placed after the method keeps working and is counted.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Socket qw/getaddrinfo getnameinfo NI_NUMERICHOST NI_NUMERICSERV SOCK_STREAM/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(27);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 64k;

    upstream first {
        least_conn_persistent;
        server 127.0.0.1:8081 weight=2 max_conns=7;
        server 127.0.0.1:8082 down;
        server 127.0.0.1:8083 backup;
    }

    upstream second {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    upstream named {
        least_conn_persistent;
        server localhost:%%PORT_8081%%;
    }

    upstream ka {
        least_conn_persistent;
        server 127.0.0.1:8081;
        keepalive 2;
    }

    server {
        listen       127.0.0.1:8080;

        location /ka {
            proxy_pass http://ka;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /slow {
            proxy_pass http://ka;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /status {
            least_conn_persistent_status;
        }
    }
}

EOF

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket(addr(8081));
$t->run();

###############################################################################

my $a = addr(8081);
my $st = status();
is_deeply($st->{zone} && [@{$st->{zone}}{qw/name size/}], ['lcp', 65536], 'zone name and size');
ok($st->{zone}{used} > 0 && $st->{zone}{used} <= 65536, 'bytes used');

my ($worker) = $t->worker_pids();
is_deeply($st->{zone}{workers}, [{ pid => $worker, connections => 0 }],
	'the one worker is recorded, holding nothing');
is($st->{zone}{reclaimed}, 0, 'nothing reclaimed');

my %by_key = map { ($_->{key} => $_) } @{$st->{counters}};
is($st->{zone}{keys}, scalar(keys %by_key), 'keys count matches the list');

my $e = $by_key{"conn_count:first:$a"};
is_deeply($e && [@$e{qw/upstream server count weight max_conns state/}],
	['first', $a, 0, 2, 7, 'up'], 'entry fields');
is($by_key{'conn_count:first:127.0.0.1:' . port(8082)}{state}, 'down', 'down state');
is($by_key{'conn_count:first:127.0.0.1:' . port(8083)}{state}, 'backup', 'backup state');
ok($by_key{"conn_count:second:$a"}, 'same address in another upstream: its own key');

my (undef, @ai) = getaddrinfo('localhost', port(8081), { socktype => SOCK_STREAM });
my %addrs = map {
	my (undef, $h, $p) = getnameinfo($_->{addr}, NI_NUMERICHOST | NI_NUMERICSERV);
	($h =~ /:/ ? "[$h]:$p" : "$h:$p") => 1
} @ai;
is_deeply([sort map { $_->{server} } entries('named')], [sort keys %addrs],
	'a name with ' . keys(%addrs) . ' address(es): one key each');

# keepalive wraps our get/free: connections are reused, counts still exact.
my @r = map { http_get('/ka') } 1 .. 3;
my @conn = map { /conn=(\d+)/ ? $1 : 0 } @r;
ok($conn[0] && $conn[0] == $conn[1] && $conn[1] == $conn[2], "keepalive reuses one connection (@conn)");
my $slow = http_get('/slow?ms=1500', start => 1);
ok(wait_until(sub { (counts('ka')->{$a} // 0) == 1 }), 'a request in flight counts 1');
like(http_get('/status?format=prometheus'), qr/^least_conn_persistent_zone_workers_holding_connections\{zone="lcp"\}\ 1\n
	(?:\#.*\n)+least_conn_persistent_zone_worker_connections\{zone="lcp"\}\ 1$/mx,
	'prometheus: the worker holding it, and its connection');
close $slow;
ok(at_rest(), 'idle keepalive connections do not count');

# Prometheus
my $p = http_get('/status?format=prometheus');
like($p, qr/^Content-Type: text\/plain; version=0\.0\.4/mi, 'prometheus content type');
like($p, qr/^least_conn_persistent_connections\{upstream="first",server="\Q$a\E",state="up"\} 0$/m,
	'prometheus sample');
like($p, qr/^least_conn_persistent_zone_keys\{zone="lcp"\} \d+$/m, 'prometheus zone keys');
like($p, qr/^# TYPE least_conn_persistent_zone_reclaimed_connections_total counter\n
	least_conn_persistent_zone_reclaimed_connections_total\{zone="lcp"\}\ 0$/mx, 'prometheus reclaimed counter');
like($p, qr/^least_conn_persistent_zone_workers\{zone="lcp"\}\ 1\n
	(?:\#.*\n)+least_conn_persistent_zone_workers_holding_connections\{zone="lcp"\}\ 0\n
	(?:\#.*\n)+least_conn_persistent_zone_worker_connections\{zone="lcp"\}\ 0$/mx,
	'prometheus: workers recorded, holding connections, their connections');
unlike($p, qr/pid/, 'prometheus: no series per process (a pid label would churn at every reload)');

# bad requests
like(http("POST /status HTTP/1.0\r\nContent-Length: 0\r\n\r\n"), qr/^HTTP\/1\.1 405/, 'POST: 405');
like(http_get('/status?format=xml'), qr/^HTTP\/1\.1 400/, 'unknown format: 400');
my $head = http("HEAD /status HTTP/1.0\r\n\r\n");
like($head, qr/^HTTP\/1\.1 200.*Content-Length: [1-9]\d*\r\n.*\r\n\r\n\z/s, 'HEAD: headers only');

# HEAD over HTTP/1.1 on a kept-alive connection: a body there would be read
# as the start of the next response. Then a pipelined pair of GETs: the
# second (nginx marks it `pipeline`) must get its body too; both with the
# same Content-Length as a lone GET.
my ($len) = http_get('/status') =~ /^Content-Length: (\d+)\r$/mi;
my $head11 = http("HEAD /status HTTP/1.1\r\nHost: localhost\r\n\r\n"
	. "GET /status?format=prometheus HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
my @heads = split /(?=^HTTP\/1\.1 )/m, $head11;
is(scalar @heads, 2, 'HEAD then GET on one HTTP/1.1 connection: two responses');
like($heads[0] // '', qr/\AHTTP\/1\.1 200.*Content-Length: $len\r\n.*\r\n\r\n\z/s,
	'HTTP/1.1 HEAD: headers only, with the length of the page');
my $pipelined = http("GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n"
	. "GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
my @bodies = map { /\r\n\r\n(.*)\z/s ? $1 : '' } split /(?=^HTTP\/1\.1 )/m, $pipelined;
is(scalar(grep { length } @bodies), 2, 'pipelined GETs: both get the page');
ok(!grep({ length != $len } @bodies), "pipelined GETs: each body is Content-Length ($len) long");
