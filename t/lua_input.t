#!/usr/bin/perl

# Server addresses a Lua balancer declares: host:port or [IPv6]:port with a
# port in 1..65535. Anything else (port 0 or above 65535, no port, a '#'
# that could collide with the key of a server listed twice in an nginx
# upstream, an unbracketed ':', spaces) is refused by the Lua library with a
# message, by the C ABI for callers that bypass it (LCP_ERR_ARG), and by the
# APISIX picker; nothing is declared.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module lua/);

my $port = 'port must be a number in 1..65535';
my $noport = 'addr must be host:port or [IPv6]:port';
my $host = "host must be a name or an IPv4 address, or an IPv6 address in brackets "
	. "(no '#', spaces or control characters)";
my @bad = (
	['127.0.0.1:0', $port],
	['127.0.0.1:65536', $port],
	['127.0.0.1:99999', $port],
	['127.0.0.1:080', $port],
	['[::1]:0', $port],
	['127.0.0.1', $noport],
	['127.0.0.1:', $noport],
	['[::1]', $noport],
	['127.0.0.1#2:80', $host],
	['::1:80', $host],
	['a b:80', $host],
	[':80', $host],
);
my @good = ('127.0.0.1:65535', '[::1]:1', 'localhost:80');

$t->plan(2 * @bad + 5);

my $cases = join ', ', map { "\"$_->[0]\"" } @bad;
my $good = join ', ', map { "\"$_\"" } @good;

$t->write_file_expand('nginx.conf', <<"EOF");

%%LUA_MODULES%%
%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    lua_package_path "%%LUA_LIB%%/?.lua;;";
    least_conn_persistent_zone lcp 1m;

    server {
        listen       127.0.0.1:8080;
        location /status { least_conn_persistent_status; }

        # Each address declared alone, through the library (ids bad<i>) and
        # through the C ABI (ids cbad<i>); the valid ones as upstream good.
        location /declare {
            content_by_lua_block {
                local ffi = require "ffi"
                local lcp = require "resty.least_conn_persistent"
                local C = ffi.C
                for i, addr in ipairs({ $cases }) do
                    local up, err = lcp.declare("bad" .. i, { { addr = addr } })
                    ngx.say("lua ", i, ": ", tostring(up), " ", tostring(err))
                    local s = ffi.new("lcp_server_t[1]")
                    s[0].addr = addr
                    s[0].addr_len = #addr
                    s[0].weight = 1
                    local id = "cbad" .. i
                    ngx.say("C ", i, ": ", C.lcp_declare(id, #id, s, 1))
                end
                local up, err = lcp.declare("badmap", { ["127.0.0.1:70000"] = 1 })
                ngx.say("map: ", tostring(up), " ", tostring(err))
                local list = {}
                for _, addr in ipairs({ $good }) do
                    list[#list + 1] = { addr = addr }
                end
                up, err = lcp.declare("good", list)
                ngx.say("good: ", up and "declared" or err)
                local picker = require "apisix.balancer.least_conn_persistent"
                local p
                p, err = picker.new({ ["127.0.0.1:0"] = 1 }, { key = "/apisix/upstreams/bad" })
                ngx.say("apisix: ", tostring(p), " ", tostring(err))
            }
        }
    }
}

EOF
$t->run();

###############################################################################

my ($body) = http_get('/declare') =~ /\r\n\r\n(.*)\z/s;
for my $i (1 .. @bad) {
	my ($addr, $msg) = @{$bad[$i - 1]};
	like($body, qr/^lua $i: nil server \Q$addr: $msg\E$/m, "Lua: \"$addr\": nil, $msg");
	like($body, qr/^C $i: -1$/m, "C ABI: \"$addr\": LCP_ERR_ARG");
}
like($body, qr/^map: nil server 127\.0\.0\.1:70000: \Q$port\E$/m, 'Lua: a map of address to weight is checked too');
like($body, qr/^apisix: nil least_conn_persistent: server 127\.0\.0\.1:0: \Q$port\E$/m,
	'APISIX picker: new() returns nil and the reason');
like($body, qr/^good: declared$/m, 'valid addresses are declared');

my @entries = entries();
my %good = map { ($_->{server} => 1) } grep { $_->{upstream} eq 'good' } @entries;
is(join(' ', sort keys %good), join(' ', sort @good), 'the valid ones are on the status page');
is(join(' ', map { "$_->{upstream}:$_->{server}" } grep { $_->{upstream} ne 'good' } @entries), '',
	'nothing else was declared');

###############################################################################
