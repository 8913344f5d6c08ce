#!/usr/bin/perl

# `resolve` with a full zone: an address DNS adds when the zone has no room
# left for its key is counted per worker (state "fallback"), and the error
# log says so; nothing is lost silently.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module resolve/)->plan(5);

my $dns = $t->testdir . '/dns';
my $p = port(8081);
# Servers never connected to, only there to fill the smallest zone.
my $filler = join "\n", map { "        server 127.0.0.1:" . (10000 + $_) . ";" } 1 .. 400;

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 1;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 32k;

    resolver 127.0.0.1:%%PORT_8053%% valid=1s ipv6=off;

    upstream filler {
        least_conn_persistent;
$filler
    }

    upstream u {
        zone u 64k;
        least_conn_persistent;
        server b.test:%%PORT_8081%% resolve;
    }

    server {
        listen       127.0.0.1:8080;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

Test::Nginx::DNS::set_answers($dns, 'b.test' => ['127.0.0.2']);
Test::Nginx::DNS::start($t, port(8053), $dns, 'b.test')
	or BAIL_OUT('the DNS responder does not answer');
$t->run_daemon(\&Test::Nginx::Backend::serve, $p, 'a', '127.0.0.2');
$t->waitforsocket("127.0.0.2:$p");
$t->run();

###############################################################################

my $addr = "127.0.0.2:$p";
my $e;
ok(wait_until(sub { ($e) = grep { $_->{server} eq $addr } entries('u'); $e }, 10),
	'the address DNS gave is listed');
is($e && $e->{state}, 'fallback', 'with no room in the zone, it is counted per worker');
like($t->read_file('error.log'),
	qr/\[error\].*least_conn_persistent_zone "lcp" is full: 1 address\(es\) that DNS added to upstream "u" fall back to per-worker counting/,
	'and the error log says so');

my @ws = ws_open_many(2, '/u');
my ($c) = grep { $_->{server} eq $addr } entries('u');
is($c && $c->{count}, 2, 'its connections are counted (by the worker)');
ws_close(@ws);
ok(wait_until(sub { my ($x) = grep { $_->{server} eq $addr } entries('u'); $x && !$x->{count} }),
	'and released');

###############################################################################
