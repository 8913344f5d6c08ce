#!/usr/bin/perl

# The APISIX-shaped picker (lib/apisix/balancer/least_conn_persistent.lua),
# driven the way APISIX's balancer.lua drives its pickers: get() in the
# balancer phase, after_balance(ctx, true) before a retry, after_balance(ctx,
# false) in the log phase; a picker per upstream version, per worker.

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

$t->write_file_expand('nginx.conf', <<'EOF');

%%LUA_MODULES%%
%%TEST_GLOBALS%%

worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    lua_package_path "%%LUA_LIB%%/?.lua;;";
    least_conn_persistent_zone lcp 1m;

    init_by_lua_block {
        picker_mod = require "apisix.balancer.least_conn_persistent"
        balancer = require "ngx.balancer"
        pickers = {}

        -- What apisix/balancer.lua does, reduced to the picker's calls.
        function apisix_balancer(key, nodes)
            local ctx = ngx.ctx
            local picker = pickers[key]
            if not picker then
                picker = assert(picker_mod.new(nodes, { key = key }))
                pickers[key] = picker
            end
            if ctx.server_picker then
                picker.after_balance(ctx, true)
            else
                ctx.server_picker = picker
                balancer.set_more_tries(2)
            end
            local server, err = picker.get(ctx)
            if not server then
                ngx.log(ngx.ERR, "picker: ", err)
                return ngx.exit(502)
            end
            ctx.balancer_server = server
            local host, port = server:match("^(.+):(%d+)$")
            assert(balancer.set_current_peer(host, tonumber(port)))
        end
    }

    upstream two {
        server 0.0.0.1;
        balancer_by_lua_block {
            apisix_balancer("/apisix/upstreams/1",
                { ["127.0.0.1:%%PORT_8081%%"] = 1, ["127.0.0.1:%%PORT_8082%%"] = 1 })
        }
    }

    upstream retry {
        server 0.0.0.1;
        balancer_by_lua_block {
            apisix_balancer("/apisix/upstreams/2",
                { ["127.0.0.1:%%PORT_8089%%"] = 5, ["127.0.0.1:%%PORT_8081%%"] = 1 })
        }
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        log_by_lua_block {
            local ctx = ngx.ctx
            if ctx.server_picker then
                ctx.server_picker.after_balance(ctx, false)
            end
        }

        location /two { proxy_pass http://two; }
        location /retry { proxy_pass http://retry; }
        location /status { least_conn_persistent_status; }
        location /api {
            content_by_lua_block {
                local p, err = picker_mod.new({ ["127.0.0.1:1"] = 1 }, {})
                ngx.say("no id: ", tostring(p), " ", err)
                p = assert(picker_mod.new({ ["127.0.0.1:1"] = 1 }, { key = "/apisix/upstreams/9" }))
                local ctx = { lcp_tried = { [0] = true } }
                p.before_retry_next_priority(ctx)
                ngx.say("reset: ", tostring(ctx.lcp_tried))
                ngx.say("get: ", p.get(ctx))
                ctx.balancer_server = "127.0.0.1:1"
                p.after_balance(ctx, true)
                ngx.say("after_balance before a retry: tried ", tostring(ctx.lcp_tried[0]),
                    ", token ", tostring(ctx.lcp_token))
                ngx.say("get again: ", tostring(p.get(ctx)))
                p.after_balance(ctx, false)
                ngx.say("after the last try: ", tostring(ctx.lcp_tried))
            }
        }
    }
}

EOF

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1]) for [8081, 'a'], [8082, 'b'];
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

my @ws = ws_open_many(40, '/two');
is_deeply(tally(@ws), { a => 20, b => 20 }, '40 WebSockets over two nodes: 20/20 across both workers');
my %k = map { ($_->{key} => $_) } entries();
my $key = 'conn_count:apisix/apisix/upstreams/1:' . addr(8081);
is($k{$key} && $k{$key}{count}, 20, 'counted under the upstream\'s key');
is($k{$key} && $k{$key}{source}, 'lua', 'as a Lua upstream');
ws_close(@ws);
ok(at_rest(), 'after_balance in the log phase released every one');

like(http_get('/retry'), qr/200 OK.*id=a/s, 'a retry past the refusing node reaches the live one');
like($t->read_file('error.log'), qr/connect\(\) failed .*upstream: "http:\/\/127\.0\.0\.1:${\port(8089)}/,
	'after the refusing node was tried first');
ok(at_rest(), 'after_balance before the retry and at the end: both released, once');
unlike($t->read_file('error.log'), qr/already 0/, 'no release below zero');

is(http_get('/api') =~ s/.*?\r\n\r\n//sr, <<'EOF', 'the interface, call by call');
no id: nil least_conn_persistent: the upstream has no id
reset: nil
get: 127.0.0.1:1
after_balance before a retry: tried true, token nil
get again: nil
after the last try: nil
EOF

###############################################################################
