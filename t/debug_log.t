#!/usr/bin/perl

# Debug lines: with `error_log ... debug` (nginx built --with-debug, as
# Debian's is) every pick and every release says what was counted, in http
# and in stream; at the usual levels nothing of ours is logged per request.
# The harness writes every test's main error log at debug level; this one
# also runs the periodic check at that level for a while (its timer's debug
# lines once crashed every worker).

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;

my $t = Test::Nginx->new()->has(qw/nginx module stream debug/);
$t->plan(18);

# 8083 and 8084: nothing listens (connection refused), so a request there
# logs an [error] to the log it really uses.
$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 64k;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    upstream refused {
        least_conn_persistent;
        server 127.0.0.1:8083;
    }

    server {
        listen       127.0.0.1:8080;
        location / { proxy_pass http://u; }
        location /debug {
            error_log %%TESTDIR%%/debug.log debug;
            proxy_pass http://u;
        }
        location /notice {
            error_log %%TESTDIR%%/notice.log notice;
            proxy_pass http://u;
        }
        location /notice/refused {
            error_log %%TESTDIR%%/notice.log notice;
            proxy_pass http://refused;
        }
    }
}

stream {
    least_conn_persistent_zone s 64k;

    upstream su {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    upstream srefused {
        least_conn_persistent;
        server 127.0.0.1:8084;
    }

    server { listen 127.0.0.1:8085; proxy_pass su; }
    server {
        listen 127.0.0.1:8086;
        error_log %%TESTDIR%%/stream_notice.log notice;
        proxy_pass su;
    }
    server {
        listen 127.0.0.1:8088;
        error_log %%TESTDIR%%/stream_masked.log debug_stream;
        proxy_pass su;
    }
    server {
        listen 127.0.0.1:8087;
        error_log %%TESTDIR%%/stream_notice.log notice;
        proxy_pass srefused;
    }
}

EOF
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket(addr(8081));
$t->run();

my $pick = qr/\[debug\].*least_conn_persistent: get peer 0 of Primary list, holding Shared/;
my $free = qr/\[debug\].*least_conn_persistent: free Shared\(.*\), state 0/;

# What the main error log gained while `$code` ran (and until `$until`
# matches it).
sub logged_by {
	my ($code, $until) = @_;
	my $from = $t->log_mark();
	$code->();
	my $new = '';
	wait_until(sub { $new = $t->log_since($from); $new =~ $until }, 3);
	return $new;
}

my $reply;
my $http = logged_by(sub { $reply = http_get('/') }, $free);
like($reply, qr/200 OK.*id=a/s, 'http request');
like($http, $pick, 'http: the pick is logged with what it counted');
like($http, $free, 'http: the release is logged');

# A location's own debug log gets the request's lines.
like(http_get('/debug'), qr/200 OK.*id=a/s, 'request logged at debug level in its location');
my $debug = '';
wait_until(sub { ($debug = $t->read_file('debug.log')) =~ $free }, 3);
like($debug, $pick, 'http: the pick is in the location\'s debug log');
like($debug, $free, 'http: the release is in the location\'s debug log');

# The stream server proxies TCP to the same HTTP backend.
my $stream = logged_by(sub { $reply = http_get('/', port => port(8085)) }, $free);
like($reply, qr/200 OK.*id=a/s, 'stream session');
like($stream, $pick, 'stream: the pick is logged with what it counted');
like($stream, $free, 'stream: the release is logged');

# A log that shows only the stream subsystem's debug lines shows ours.
http_get('/', port => port(8088));
my $masked = '';
wait_until(sub { ($masked = $t->read_file('stream_masked.log')) =~ $free }, 3);
like($masked, $pick, 'stream: the pick carries the stream debug mask (debug_stream)');
like($masked, $free, 'stream: so does the release');

# At notice level: the request's own log gets its [error], not our lines.
like(http_get('/notice'), qr/200 OK/, 'request logged at notice level');
like(http_get('/notice/refused'), qr/502/, 'refused request logged at notice level');
my $notice = $t->read_file('notice.log');
like($notice, qr/\[error\].*connect\(\) failed.*:${\port(8083)}/,
	'http: the notice-level log is the request\'s');
unlike($notice, qr/least_conn_persistent: (get peer|free)/,
	'http: nothing of ours per request at the notice level');

http_get('/', port => port(8086));
# The session fails: nginx closes (or resets) the connection.
eval { http_get('/', port => port(8087)) };
my $stream_notice = '';
wait_until(sub {
	$stream_notice = $t->read_file('stream_notice.log');
	$stream_notice =~ /connect\(\) failed/;
}, 3);
like($stream_notice, qr/\[error\].*connect\(\) failed.*:${\port(8084)}/,
	'stream: the notice-level log is the session\'s');
unlike($stream_notice, qr/least_conn_persistent: (get peer|free)/,
	'stream: nothing of ours per session at the notice level');

# The periodic check (every 500 ms) runs a few times with debug lines on:
# its timer's event once had no data, and nginx's debug line for an expired
# timer crashed the worker ("exited on signal 11": an [alert], which the
# harness' last test catches, and a new worker pid).
my @workers = $t->worker_pids();
sleep 1.5 * $Test::Nginx::SLOW;
is(join(' ', $t->worker_pids()), join(' ', @workers), 'the worker survives its timers');

###############################################################################
