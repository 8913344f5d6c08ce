#!/usr/bin/perl

# TLS to the upstream servers of a stream {} upstream (`proxy_ssl on`):
# stream round-robin's SSL session hooks, chained with the balancer's own
# per-connection data as in http, keep working (a session saved after one
# connection is offered on the next, and the backend resumes it), and the
# counts stay right.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port http wait_until/;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(6);

my $d = $t->testdir;
system("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 2 "
	. "-keyout $d/backend.key -out $d/backend.crt >/dev/null 2>&1") == 0
	or BAIL_OUT('openssl could not make a certificate');

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 1;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

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
        return "reused=$ssl_session_reused port=$server_port\n";
    }

    server {
        listen 127.0.0.1:8090;
        proxy_pass u;
        proxy_ssl on;
        proxy_ssl_session_reuse on;
    }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF

$t->run();

###############################################################################

# One connection through the stream proxy: what the backend said.
sub through { return http('', port => port(8090)) }

my @r = map { through() } 1 .. 6;
is(scalar(grep { /^reused=/ } @r), 6, 'six connections over TLS to the upstream');
my %ports;
$ports{$_}++ for map { /port=(\d+)/ ? $1 : () } @r;
is(scalar keys %ports, 2, 'both servers used');
like($r[0], qr/reused=\./, 'the first TLS session is new');
ok(scalar(grep { /reused=r/ } @r[2 .. 5]) >= 3, 'later connections resume a saved session: '
	. join(' ', map { /reused=(\S)/ ? $1 : '?' } @r));
ok(wait_until(sub { my @e = stream_entries(); @e == 2 && !grep { $_->{count} } @e }),
	'both stream counters back to 0');
unlike($t->read_file('error.log'), qr/\[(alert|crit)\]/, 'no alert');

###############################################################################
