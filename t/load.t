#!/usr/bin/perl

# The module loads into the nginx under test, a configuration with its
# zone, method and status directives passes `nginx -t`, and a request goes
# through an upstream using the method.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(5);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server {
        listen       127.0.0.1:8080;

        location / {
            proxy_pass http://u;
        }

        location /status {
            least_conn_persistent_status;
        }
    }
}

EOF

my ($rc, $out) = $t->test_config();
is($rc, 0, 'nginx -t passes with the module and its basic directives');
unlike($out, qr/not binary compatible/, 'module is binary compatible');

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket(addr(8081));
$t->run();

like(http_get('/'), qr/^HTTP\/1\.1 200.*id=a conn=\d+/s, 'request through upstream');
like(http_get('/status'), qr/"key":"conn_count:u:127\.0\.0\.1:\d+"/, 'status lists the key');
like($t->read_file('error.log'), qr/least_conn_persistent_zone "lcp": 1 servers/,
	'zone init logged');
