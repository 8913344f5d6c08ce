#!/usr/bin/perl

# TLS to the upstream servers: round-robin's SSL session hooks, which the
# balancer chains with its own per-request data, keep working (a session
# saved after one request is offered again on the next, and the backend
# resumes it), and the counts stay right.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port http_get wait_until/;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(6);

my $d = $t->testdir;
system("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 2 "
	. "-keyout $d/backend.key -out $d/backend.crt >/dev/null 2>&1") == 0
	or BAIL_OUT('openssl could not make a certificate');

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 1;

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

    # The backends: this same nginx, over TLS; each says whether the TLS
    # session was resumed ("r") or new (".").
    server {
        listen 127.0.0.1:8081 ssl;
        listen 127.0.0.1:8082 ssl;
        ssl_certificate %%TESTDIR%%/backend.crt;
        ssl_certificate_key %%TESTDIR%%/backend.key;
        ssl_session_cache shared:backend:1m;
        # Closes each connection after its response, so that every request
        # makes a new TLS connection, which can resume a session: nginx
        # 1.29.7+ keeps upstream connections alive by default, and a request
        # on a kept connection makes no handshake at all.
        keepalive_timeout 0;
        location / { return 200 "reused=$ssl_session_reused port=$server_port\n"; }
    }

    server {
        listen 127.0.0.1:8080;
        location /u {
            proxy_pass https://u;
            proxy_ssl_session_reuse on;
        }
        location /status { least_conn_persistent_status; }
    }
}

EOF

$t->run();

###############################################################################

my @r = map { http_get('/u') } 1 .. 6;
is(scalar(grep { /^HTTP\/1\.1 200 / } @r), 6, 'six requests over TLS to the upstream');
my %ports;
$ports{$_}++ for map { /port=(\d+)/ ? $1 : () } @r;
is(scalar keys %ports, 2, 'both servers used');
like($r[0], qr/reused=\./, 'the first TLS session is new');
ok(scalar(grep { /reused=r/ } @r[2 .. 5]) >= 3, 'later requests resume a saved session: '
	. join(' ', map { /reused=(\S)/ ? $1 : '?' } @r));
ok(at_rest(), 'every counter back to 0');
unlike($t->read_file('error.log'), qr/\[(alert|crit)\]/, 'no alert');

###############################################################################
