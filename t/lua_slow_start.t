#!/usr/bin/perl

# Slow start for Lua balancers (`lcp.declare(id, servers, { slow_start =
# <seconds> })`, ABI 2), two workers, held WebSockets: a server that a
# later declaration adds (here by the new workers of a reload, while the old
# ones hold the first declaration's connections) ramps up instead of taking
# every new connection; the first declaration ramps nothing; bad options
# are refused.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';
my $t = Test::Nginx->new()->has(qw/nginx module lua/)->plan(9);

my $window = int(10 * $Test::Nginx::SLOW + 0.5);

sub servers {
	my (@ports) = @_;
	$t->write_file('servers.lua', 'return { '
		. join(', ', map { "{ addr = \"127.0.0.1:" . port($_) . '" }' } @ports) . " }\n");
}

$t->write_file_expand('nginx.conf', <<"EOF");

%%LUA_MODULES%%
%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    lua_package_path "%%LUA_LIB%%/?.lua;%%TESTDIR%%/?.lua;;";
    least_conn_persistent_zone lcp 1m;

%%LUA_RECIPE%%

    upstream ss {
        server 0.0.0.1;
        balancer_by_lua_block { balance("ss", require("servers"), { slow_start = $window }) }
    }

    upstream plain {
        server 0.0.0.1;
        balancer_by_lua_block { balance("plain", require("servers")) }
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        log_by_lua_block { release() }

        location /ss { proxy_pass http://ss; }
        location /plain { proxy_pass http://plain; }
        location /status { least_conn_persistent_status; }

        location /bad {
            content_by_lua_block {
                local s = { { addr = "127.0.0.1:1" } }
                ngx.say("negative: ", select(2, lcp.declare("b1", s, { slow_start = -1 })))
                ngx.say("fraction: ", select(2, lcp.declare("b2", s, { slow_start = 1.5 })))
                ngx.say("huge: ", select(2, lcp.declare("b3", s, { slow_start = 1e12 })))
                ngx.say("not a table: ", select(2, lcp.declare("b4", s, 30)))
                local ffi = require "ffi"
                local a = ffi.new("lcp_server_t[1]")
                a[0].addr = "127.0.0.1:1"; a[0].addr_len = 11; a[0].weight = 1
                ngx.say("C: ", ffi.C.lcp_declare_slow_start("b5", 2, a, 1, 4294967295))
            }
        }
    }
}

EOF

sub counts_of {
	my ($id) = @_;
	return { map { ($_->{server} => $_->{count}) } entries($id) };
}

sub ramping {
	my ($id, $port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } entries($id);
	return $e && $e->{ramping};
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'], [8083, 'c'];
$t->waitforsocket(addr($_)) for 8081 .. 8083;
servers(8081, 8082);
$t->run();

###############################################################################

my @held = (ws_open_many(20, '/ss'), ws_open_many(20, '/plain'));
is_deeply(counts_of('ss'), { addr(8081) => 10, addr(8082) => 10 }, 'ss: 10/10');
ok(!grep({ defined $_->{ramping} } entries()), 'a first declaration ramps nothing');

servers(8081, 8082, 8083);
$t->reload();
push @held, ws_open_many(20, '/ss'), ws_open_many(20, '/plain');
my ($cs, $cp) = (counts_of('ss'), counts_of('plain'));
my $p = ramping('ss', 8083);
ok(defined $p, 'the server the new workers declare ramps: ' . ($p // 'no'));
is(ramping('plain', 8083), undef, 'not without slow_start');
ok($cp->{addr(8083)} >= 12, "plain: the new server took $cp->{addr(8083)} of 20 at once");
my $bound = int((($p // 100) + 5) / 100 * 20) + 2;
ok($cs->{addr(8083)} <= $bound && $cs->{addr(8083)} < $cp->{addr(8083)},
	"ss: the ramping server took $cs->{addr(8083)} of 20 (at " . ($p // '?') . "%, bound $bound)");

like(http_get('/bad'), qr/negative: slow_start must be a whole number of seconds, 0\.\.429496729\nfraction: slow_start must be[^\n]*\nhuge: slow_start must be[^\n]*\nnot a table: options must be a table\nC: -1\n/,
	'bad options: nil, err; the C ABI: LCP_ERR_ARG');

ws_close(@held);
ok(at_rest(), 'every counter back to 0');
ok(!grep({ $_->{count} } entries()), 'nothing left counted');

###############################################################################
