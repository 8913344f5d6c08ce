#!/usr/bin/perl

# Lua balancers on the persistent counters: a `balancer_by_lua_block`
# upstream using lib/resty/least_conn_persistent.lua (Debian's
# libnginx-mod-http-lua and lua-resty-core), two workers, held WebSockets.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';
my $t = Test::Nginx->new()->has(qw/nginx module lua/)->plan(31);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

# The Lua list of servers the `ws` upstream declares; a reload picks up a
# new one (new workers load the file afresh).
sub servers {
	my (@ports) = @_;
	$t->write_file('servers.lua', 'return { '
		. join(', ', map { "{ addr = \"127.0.0.1:" . port($_) . '" }' } @ports) . " }\n");
}

$t->write_file_expand('nginx.conf', <<'EOF');

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

    # The recipe of docs/lua.md: pick in balancer_by_lua, release before a
    # retry and in log_by_lua, state in ngx.ctx.
%%LUA_RECIPE%%

    upstream ws {
        server 0.0.0.1;
        balancer_by_lua_block { balance("ws", require("servers")) }
    }

    upstream retry {
        server 0.0.0.1;
        balancer_by_lua_block {
            balance("retry", {
                { addr = "127.0.0.1:%%PORT_8089%%", weight = 10 },
                { addr = "127.0.0.1:%%PORT_8081%%" },
            })
        }
    }

    upstream cfg {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        add_header X-Worker $pid always;
        log_by_lua_block { release() }

        location /ws { proxy_pass http://ws; }
        location /retry { proxy_pass http://retry; }
        location /status { least_conn_persistent_status; }

        # Declares `ws` again in this worker with the servers of ?ports=.
        location /redeclare {
            content_by_lua_block {
                local list = {}
                for p in ngx.var.arg_ports:gmatch("%d+") do
                    list[#list + 1] = { addr = "127.0.0.1:" .. p }
                end
                local up, err = lcp.declare("ws", list)
                ngx.say(up and "declared" or err)
            }
        }

        # Bad input, each answer on a line.
        location /bad {
            content_by_lua_block {
                local ffi = require "ffi"
                local C = ffi.C
                local function show(name, ...)
                    local r = { ... }
                    for i = 1, select("#", ...) do r[i] = tostring(r[i]) end
                    ngx.say(name, ": ", table.concat(r, " "))
                end
                show("nil id", lcp.declare(nil, { { addr = "127.0.0.1:1" } }))
                show("empty list", lcp.declare("x", {}))
                show("not a table", lcp.declare("x", 42))
                show("huge weight", lcp.declare("x", { { addr = "127.0.0.1:1", weight = 1e12 } }))
                show("no port", lcp.declare("x", { { addr = "nowhere" } }))
                show("colon in id", lcp.declare("a:b", { { addr = "127.0.0.1:1" } }))
                show("twice the same", lcp.declare("x", { { addr = "127.0.0.1:1" }, { addr = "127.0.0.1:1" } }))
                show("an nginx upstream's key", lcp.declare("cfg", { { addr = "127.0.0.1:%%PORT_8081%%" } }))
                local s = ffi.new("lcp_server_t[1]")
                s[0].addr = "127.0.0.1:1"; s[0].addr_len = 11; s[0].weight = 4000000000
                show("C: huge weight", C.lcp_declare("x", 1, s, 1))
                show("C: NULL id", C.lcp_declare(nil, 5, s, 1))
                show("C: NULL servers", C.lcp_declare("x", 1, nil, 1))
                show("C: id too long", C.lcp_declare(string.rep("i", 200), 200, s, 1))
                local out = ffi.new("uint64_t[1]")
                show("C: unknown handle", C.lcp_pick(999, nil, 0, out))
                show("C: negative handle", C.lcp_pick(-1, nil, 0, out))
                show("C: NULL skip with words", C.lcp_pick(0, nil, 5, out))
                show("C: NULL token", C.lcp_pick(0, nil, 0, nil))
                show("forged token", lcp.release(12345))
                show("nil token", lcp.release(nil))
                show("forged cdata token", lcp.release(ffi.new("uint64_t", 2^40 + 1)))
                show("token past 2^52", lcp.release(2^53))
                show("fractional token", lcp.release(1.5))
                local up = assert(lcp.declare("one", { { addr = "127.0.0.1:%%PORT_8081%%" } }))
                local server, token = up:pick({ [0] = true })
                show("all tried", server, token)
                server, token = up:pick()
                show("pick", server.addr == "127.0.0.1:%%PORT_8081%%", up:count(0), type(token))
                show("release", lcp.release(token))
                show("release again", lcp.release(token))
                show("count after", up:count("127.0.0.1:%%PORT_8081%%"))
                show("count of no server", up:count(7))
            }
        }

        # 1024 servers declared, then declared again with half of them
        # replaced, in one worker.
        location /big {
            content_by_lua_block {
                local function list(from)
                    local l = {}
                    for port = from, from + 1023 do
                        l[#l + 1] = { addr = "127.0.0.1:" .. port }
                    end
                    return l
                end
                assert(lcp.declare("big", list(20000)))
                local up, err = lcp.declare("big", list(20512))
                ngx.say(up and "declared again" or err)
            }
        }

        # Picks never released, until the worker has no token left to give;
        # then all released.
        location /exhaust {
            content_by_lua_block {
                local up = assert(lcp.declare("many", { { addr = "127.0.0.1:%%PORT_8081%%" } }))
                local tokens, n, err, top = {}, 0, "none", 0
                while n < 1100000 do
                    local server, token = up:pick()
                    if not server then
                        err = token
                        break
                    end
                    n = n + 1
                    tokens[n] = token
                    if token > top then top = token end
                end
                ngx.say("picks: ", n, " then: ", err, " counted: ", up:count(0),
                        " below 2^52: ", top < 2^52)
                for i = 1, n do
                    assert(lcp.release(tokens[i]))
                end
                ngx.say("released: ", up:count(0))
                local server, token = up:pick()
                ngx.say("picked again: ", server ~= nil, " ", tostring(lcp.release(token)))
            }
        }

        # A Lua balancer that forgets to release: picks and never gives back.
        location /leak {
            content_by_lua_block {
                local up = assert(lcp.declare("leak", { { addr = "127.0.0.1:%%PORT_8081%%" } }))
                local server, token = up:pick()
                ngx.say(server and "picked" or token)
            }
        }
    }
}

EOF

my %backend = (8081 => 'a', 8082 => 'b', 8083 => 'c');
sub live { live_counts(keys %backend) }
sub lua_counts { server_counts('ws') }
sub same { same_counts(@_) }
sub spread {
	my @v = sort { $a <=> $b } values %{$_[0]};
	return $v[-1] - $v[0];
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $backend{$_}) for keys %backend;
$t->waitforsocket(addr($_)) for keys %backend;
servers(8081, 8082);
$t->run();

###############################################################################

# The header and the library declare the same ABI.
open my $h, '<', '../include/least_conn_persistent.h' or die $!;
my ($hdecl) = do { local $/; <$h> } =~ m{/\* LCP_CDEF_BEGIN \*/\n(.*?)/\* LCP_CDEF_END \*/}s;
open my $l, '<', '../lib/resty/least_conn_persistent.lua' or die $!;
my ($ldecl) = do { local $/; <$l> } =~ m{ffi\.cdef\[\[\n(.*?)\]\]}s;
is($ldecl, $hdecl, 'the Lua library feeds ffi.cdef exactly the header\'s declarations');

my @ws = ws_open_many(100, '/ws');
is_deeply(tally(@ws), { a => 50, b => 50 }, '100 WebSockets through balancer_by_lua: 50/50');
is_deeply(lua_counts(), { addr(8081) => 50, addr(8082) => 50 }, 'the status page counts them');
my ($e) = grep { $_->{upstream} eq 'ws' } entries();
is($e->{source}, 'lua', 'as a Lua upstream');

# A reload adds a server: new workers declare three, old ones hold the 100.
servers(8081, 8082, 8083);
$t->reload();
my @next = ws_open_many(60, '/ws');
my $c = lua_counts();
is(spread($c), 1, 'after 60 more, all within one: ' . join('/', map { $c->{addr($_)} // 0 } 8081 .. 8083));
ok(same(live(), $c), 'counts equal the backends\' live connections');

# Old workers close their connections: counts follow.
my @old = grep { my $w = $_->{worker}; grep { $_ == $w } $t->old_worker_pids() } @ws;
ws_close(@old);
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'old workers gone');
ok(wait_until(sub { same(live(), lua_counts()) }, 3), 'counts equal live connections after they close');

# SIGKILL of a worker holding Lua-counted connections.
my @held = grep { my $x = $_; !grep { $_ == $x } @old } @ws, @next;
my ($victim) = sort map { $_->{worker} } @held;
kill 'KILL', $victim;
ok(wait_until(sub { my @w = $t->worker_pids(); @w >= 2 && !grep { $_ == $victim } @w }, 5), 'worker replaced');
ok(wait_until(sub { same(live(), lua_counts()) }, 2), 'a dead worker\'s Lua counts are given back');
ws_close(@held);
ok(at_rest(), 'at rest: every counter 0');

# A retry past a refusing server: released once, before the retry.
like(http_get('/retry'), qr/200 OK.*id=a/s, 'the retry reaches the live server');
like($t->read_file('error.log'), qr/connect\(\) failed .*upstream: "http:\/\/127\.0\.0\.1:${\port(8089)}/,
	'after the refusing server was tried first');
my %r = map { ($_->{server} => $_->{count}) } grep { $_->{upstream} eq 'retry' } entries();
is_deeply(\%r, { addr(8089) => 0, addr(8081) => 0 }, 'both released, neither below zero');
unlike($t->read_file('error.log'), qr/already 0/, 'no release of an uncounted connection');

# Declaring `ws` again without c drains c.
my @two = ws_open_many(3, '/ws');
my ($on_c) = grep { $_->{backend} eq 'c' } @two;
ok($on_c, 'one of them on c');
my $w = $on_c->{worker};
my $said = '';
for (1 .. 20) {    # reach c's worker (reuseport spreads the requests)
	my $r = http_get('/redeclare?ports=' . port(8081) . ',' . port(8082));
	if ($r =~ /X-Worker: $w/) { $said = $r; last }
}
like($said, qr/declared/, 'declared again in that worker without c');
my ($ce) = grep { $_->{upstream} eq 'ws' && $_->{server} eq addr(8083) } entries();
is($ce && $ce->{state}, 'draining', 'c drains while it holds a connection');
ws_close(@two);
ok(wait_until(sub { !grep { $_->{upstream} eq 'ws' && $_->{server} eq addr(8083) } entries() }),
	'and goes once it is idle');

# Bad input: errors, never a crash.
my $bad = http_get('/bad');
like($bad, qr/\r\n\r\nnil id: nil id must be a non-empty string\nempty list: nil no servers\n/s, 'bad declarations: nil, err');
like($bad, qr/huge weight: nil server 127\.0\.0\.1:1: weight must be a whole number.*\nno port: nil server nowhere: addr must be host:port or \[IPv6\]:port\ncolon in id: nil bad argument\ntwice the same: nil bad argument\nan nginx upstream's key: nil bad argument\n/s,
	'checked in Lua and in the module');
like($bad, qr/C: huge weight: -1\nC: NULL id: -1\nC: NULL servers: -1\nC: id too long: -1\nC: unknown handle: -3\nC: negative handle: -3\nC: NULL skip with words: -1\nC: NULL token: -1\n/,
	'the C ABI answers error codes');
like($bad, qr/forged token: nil invalid token\nnil token: nil invalid token\nforged cdata token: nil invalid token\ntoken past 2\^52: nil invalid token\nfractional token: nil invalid token\nall tried: nil no server can take the connection\npick: true 1 number\nrelease: true\nrelease again: nil already released\ncount after: 0\ncount of no server: nil no such server\n/,
	'tokens: forged ones refused, a second release a no-op');

# A redeclaration of 1024 servers: the 512 gone (idle) are removed, the 512
# kept and the 512 new are there.
like(http_get('/big'), qr/declared again/, '1024 servers declared again, half replaced');
my @big = sort { $a <=> $b } map { $_->{server} =~ /:(\d+)$/ } entries('big');
is_deeply([scalar @big, $big[0], $big[-1]], [1024, 20512, 21535], 'the zone holds exactly the new 1024');

# A worker's tokens run out: refused with an error, nothing counted, and
# picks work again once tokens are released.
like(http_get('/exhaust'), qr/picks: 1048575 then: too many unreleased picks in this worker counted: 1048575 below 2\^52: true\nreleased: 0\npicked again: true true\n/,
	'1,048,575 picks unreleased in a worker, then refused, not wrapped');

# Lua code that never releases: the worker gives the count back when it
# exits, and the [error] says whose fault it was.
my @leaks = grep { /picked/ } map { http_get('/leak') } 1 .. 3;
is(scalar @leaks, 3, 'three picks never released');
is_deeply(server_counts('leak'), { addr(8081) => 3 }, 'counted until their workers exit');
$t->reload();
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'the old workers exit');
ok(wait_until(sub { same(server_counts('leak'), { addr(8081) => 0 }) }, 3), 'and give the 3 back');
my $leaked = 0;
$leaked += $_ for $t->read_file('error.log') =~ /\[error\].*exits holding (\d+) connection\(s\) \(its Lua code never released \1 pick\(s\): release every token/g;
is($leaked, 3, 'an [error] per worker names the Lua picks never released, 3 in all');

###############################################################################
