#!/usr/bin/perl

# The harness itself: WebSockets held open through nginx survive a reload
# (HUP) in the old workers while new workers serve new requests.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(8);

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
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080;

        location / {
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
    }
}

EOF

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b');
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

my @ws = ws_open_many(10, '/ws');
is(scalar(grep { ws_echo($_, 'x') =~ /^[ab]:x$/ } @ws), 10, 'ten WebSockets echo');

my $backend_held = sub {
	my $n = 0;
	for my $p (8081, 8082) {
		my $r = http("GET /count HTTP/1.0\r\n\r\n", port => port($p));
		$n += $1 if $r =~ /\r\n\r\n(\d+)/;
	}
	return $n;
};
is($backend_held->(), 10, 'backends report ten held connections');

my @before = sort $t->worker_pids();
$t->reload();
my @after = sort $t->worker_pids();
my %was = map { $_ => 1 } @before;
is(scalar(grep { !$was{$_} } @after), 2, 'two new workers after HUP');
# An old worker without connections exits at once; one with them stays.
my @old = $t->old_worker_pids();
ok(@old >= 1 && !grep({ !$was{$_} } @old), 'old workers holding connections still run')
	or diag("old: @old; before: @before");

like(http_get('/'), qr/200 OK.*id=[ab]/s, 'new workers serve requests');
is(scalar(grep { (ws_echo($_, 'y') // '') =~ /^[ab]:y$/ } @ws), 10,
	'all WebSockets still echo through the old workers');

ws_close(@ws);
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'old workers exit once their connections close');
ok(wait_until(sub { $backend_held->() == 0 }, 5), 'backends hold nothing');
