#!/usr/bin/perl

# Debug lines: with `error_log ... debug` (nginx built --with-debug, as
# Debian's is) every pick and every release says what was counted; at the
# usual levels nothing of ours is logged per request.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;

my $t = Test::Nginx->new()->has(qw/nginx module/);
plan(skip_all => 'nginx built without --with-debug')
	unless `$Test::Nginx::NGINX -V 2>&1` =~ /--with-debug/;
$t->plan(4);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 64k;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server {
        listen       127.0.0.1:8080;
        location /debug {
            error_log %%TESTDIR%%/debug.log debug;
            proxy_pass http://u;
        }
        location / { proxy_pass http://u; }
    }
}

EOF
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket('127.0.0.1:' . port(8081));
$t->run();

like(http_get('/debug'), qr/200 OK.*id=a/s, 'request at debug level');
my $debug = $t->read_file('debug.log');
like($debug, qr/\[debug\].*least_conn_persistent: get peer 0 of Primary list, holding Shared/,
	'the pick is logged with what it counted');
like($debug, qr/\[debug\].*least_conn_persistent: free Shared\(.*\), state 0/,
	'the release is logged');

http_get('/');
unlike($t->read_file('error.log'), qr/least_conn_persistent: (get peer|free)/,
	'nothing per request at the notice level');

###############################################################################
