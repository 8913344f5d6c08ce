#!/usr/bin/perl

# A Lua balancer following an nginx upstream's health checks
# (`up:follow_checks(name)`, `up:health(i)`, ABI 3): two workers, an
# upstream `hc` with least_conn_persistent_check over two backends whose
# /health answers the test changes (Test::Nginx::Health), and a Lua
# balancer `lb` over the same two addresses. The Lua side sees the state
# the status page shows, its picks skip a server down or draining and take
# it again once up; a declaration again links its servers again by address;
# bad names and handles get their error codes.

use warnings;
use strict;

use Test::More;
use List::Util qw/max/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Health;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module lua/)->plan(6);

my $slow = $Test::Nginx::SLOW;
my ($rise, $fall) = (2, 3);
my $interval_ms = int(300 * $slow + 0.5);
my $timeout_ms = int(250 * $slow + 0.5);
# `fall` (or `rise`) checks, each up to interval + timeout apart with
# jitter, plus a margin (wait_until scales it once more).
my $verdict_wait = 2 + max($rise, $fall) * ($interval_ms + $timeout_ms) / 1000 / $slow;

$t->write_file_expand('nginx.conf', <<"EOF");

%%LUA_MODULES%%
%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    lua_package_path "%%LUA_LIB%%/?.lua;;";
    least_conn_persistent_zone lcp 1m;

    init_by_lua_block {
        lcp = require "resty.least_conn_persistent"
        balancer = require "ngx.balancer"
        local servers = {
            { addr = "127.0.0.1:%%PORT_8081%%" },
            { addr = "127.0.0.1:%%PORT_8082%%" },
        }
        -- This worker's `lb`, following hc's checks from its first use.
        function lb()
            local up = assert(lcp.declare("lb", servers))
            if not up.follows then
                assert(up:follow_checks("hc"))
                up.follows = true
            end
            return up
        end
        function show(...)
            local r = { ... }
            for i = 1, select("#", ...) do r[i] = tostring(r[i]) end
            return table.concat(r, " ")
        end
    }

    upstream hc {
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=$rise fall=$fall;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    upstream plain {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    upstream lb {
        server 0.0.0.1;
        balancer_by_lua_block {
            local server, token = lb():pick()
            if not server then
                ngx.log(ngx.ERR, "lcp pick: ", token)
                return ngx.exit(502)
            end
            ngx.ctx.lcp_token = token
            assert(balancer.set_current_peer(server.host, server.port))
        }
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        log_by_lua_block {
            if ngx.ctx.lcp_token then
                lcp.release(ngx.ctx.lcp_token)
            end
        }

        location / { proxy_pass http://lb; }
        # hc is used by requests too: a real upstream, not only checks.
        location /hc { proxy_pass http://hc/; }
        location /status { least_conn_persistent_status; }

        # What lb's servers follow, as Lua sees it.
        location /lua_health {
            content_by_lua_block {
                local up = lb()
                ngx.say(show(up:health(0), up:health("127.0.0.1:%%PORT_8082%%")))
            }
        }

        # An id declared, linked, then declared again with its servers the
        # other way round: the links follow the addresses.
        location /redeclare {
            content_by_lua_block {
                local up = assert(lcp.declare("rd", {
                    { addr = "127.0.0.1:%%PORT_8081%%" },
                    { addr = "127.0.0.1:%%PORT_8082%%" },
                }))
                assert(up:follow_checks("hc"))
                up = assert(lcp.declare("rd", {
                    { addr = "127.0.0.1:%%PORT_8082%%" },
                    { addr = "127.0.0.1:%%PORT_8081%%" },
                }))
                ngx.say(show(up:health(0), up:health(1)))
            }
        }

        # Names, handles and indexes that are wrong, each answer on a line.
        location /bad {
            content_by_lua_block {
                local C = require("ffi").C
                local up = lb()
                ngx.say("unknown: ", show(up:follow_checks("nope")))
                ngx.say("no checks: ", show(up:follow_checks("plain")))
                ngx.say("a Lua id: ", show(up:follow_checks("lb")))
                ngx.say("empty: ", show(up:follow_checks("")))
                ngx.say("C unknown: ", C.lcp_follow_checks(up.handle, "nope", 4))
                ngx.say("C no checks: ", C.lcp_follow_checks(up.handle, "plain", 5))
                ngx.say("C NULL: ", C.lcp_follow_checks(up.handle, nil, 2))
                ngx.say("C bad handle: ", C.lcp_follow_checks(999, "hc", 2))
                ngx.say("C health bad handle: ", C.lcp_health(999, 0))
                ngx.say("C health bad index: ", C.lcp_health(up.handle, 2))
                ngx.say("no such server: ", show(up:health(5)))
                ngx.say("still follows: ", show(up:health(0), up:health(1)))
                local other = assert(lcp.declare("other", {
                    { addr = "127.0.0.1:%%PORT_8081%%" },
                    { addr = "127.0.0.1:1" },
                }))
                ngx.say("not following: ", show(other:health(0)))
                assert(other:follow_checks("hc"))
                ngx.say("no such address in hc: ", show(other:health(0), other:health(1)))
            }
        }
    }
}

EOF

###############################################################################

# hc's health of the server on $port: the status JSON's "health" when it
# has one, else what the checker's log lines say ('none' before any).
sub health {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('hc');
	return $e->{health} if defined(($e // {})->{health});
	my ($state, $drain) = ('none', 0);
	my $s = qr/upstream "hc": server \Q${\addr($port)}\E/;
	for (split /\n/, $t->read_file('error.log')) {
		next if /\[debug\]/;
		$state = 'up' if /$s is up \(/;
		$state = 'down' if /$s is down \(/;
		$drain = 1 if /$s drains \(capacity answer\)/;
		$drain = 0 if /$s takes new connections again \(capacity answer\)/;
	}
	return $state eq 'up' && $drain ? 'drain' : $state;
}

sub wait_health {
	my ($port, $state) = @_;
	my $ok = wait_until(sub { health($port) eq $state }, $verdict_wait);
	diag("hc " . addr($port) . ": " . health($port) . ", waited for $state") unless $ok;
	return $ok;
}

sub body { my ($r) = @_; $r =~ /\r\n\r\n(.*)\z/s ? $1 : '' }

# What Lua says of lb's servers, from both workers (a few requests each way:
# reuseport spreads them), all answers the same or the list of them.
sub lua_health {
	my %seen = map { (body(http_get('/lua_health')) => 1) } 1 .. 6;
	my @all = sort keys %seen;
	chomp @all;
	return join(' | ', @all);
}


health_dir($t);
set_health($_) for qw/b1 b2/;
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'b1');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b2');
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

subtest 'both up' => sub {
	ok(wait_health(8081, 'up') && wait_health(8082, 'up'), 'hc: both up');
	is(lua_health(), 'up up', 'Lua: both up');
	like(http_get('/hc'), qr/^X-Backend: b[12]/mi, 'hc proxies');
	my $by = request_tally(20);
	ok(($by->{b1} // 0) > 0 && ($by->{b2} // 0) > 0 && !grep({ /status/ } keys %$by),
		'lb reaches both: ' . tally_text($by));
};

subtest 'down' => sub {
	set_health('b2', '503');
	ok(wait_health(8082, 'down'), 'hc: b2 down');
	is(lua_health(), 'up down', 'Lua: b2 down');
	my $by = request_tally(20);
	is($by->{b1} // 0, 20, '20 requests through lb, all on b1: ' . tally_text($by));
	is(body(http_get('/redeclare')), "down up\n", 'declared again the other way round: linked by address');
};

subtest 'up again' => sub {
	set_health('b2');
	ok(wait_health(8082, 'up'), 'hc: b2 up again');
	is(lua_health(), 'up up', 'Lua: b2 up');
	my $by = request_tally(20);
	ok(($by->{b2} // 0) > 0 && ($by->{b1} // 0) > 0, 'lb reaches b2 again: ' . tally_text($by));
};

subtest 'drain' => sub {
	set_health('b2', '200', 'X-LCP-Capacity: drain');
	ok(wait_health(8082, 'drain'), 'hc: b2 drains');
	is(lua_health(), 'up drain', 'Lua: b2 drains');
	my $by = request_tally(20);
	is($by->{b1} // 0, 20, '20 requests through lb, all on b1: ' . tally_text($by));
	set_health('b2');
	ok(wait_health(8082, 'up'), 'hc: b2 up after its plain answer');
	is(lua_health(), 'up up', 'Lua: b2 up');
};

subtest 'all out' => sub {
	set_health('b1', '503');
	set_health('b2', '200', 'X-LCP-Capacity: drain');
	ok(wait_health(8081, 'down') && wait_health(8082, 'drain'), 'hc: b1 down, b2 drains');
	is(lua_health(), 'down drain', 'Lua: b1 down, b2 drains');
	my $mark = $t->log_mark();
	# lua-nginx-module answers a balancer's ngx.exit(502) with a 500.
	like(http_get('/'), qr{^HTTP/1\.1 50[02] }, 'every server out: no answer from a backend');
	like($t->log_since($mark), qr/lcp pick: no server can take the connection/,
		'the pick said no server can take it');
	set_health($_) for qw/b1 b2/;
	ok(wait_health(8081, 'up') && wait_health(8082, 'up'), 'hc: both up');
};

like(body(http_get('/bad')), qr/\A
unknown:\ nil\ no\ least_conn_persistent\ upstream\ "nope"\n
no\ checks:\ nil\ upstream\ "plain"\ has\ no\ least_conn_persistent_check\n
a\ Lua\ id:\ nil\ no\ least_conn_persistent\ upstream\ "lb"\n
empty:\ nil\ upstream\ name\ must\ be\ a\ non-empty\ string\n
C\ unknown:\ -3\n
C\ no\ checks:\ -1\n
C\ NULL:\ -1\n
C\ bad\ handle:\ -3\n
C\ health\ bad\ handle:\ -3\n
C\ health\ bad\ index:\ -1\n
no\ such\ server:\ nil\ no\ such\ server\n
still\ follows:\ up\ up\n
not\ following:\ unchecked\n
no\ such\ address\ in\ hc:\ up\ unchecked\n
\z/x, 'bad names, handles and indexes: error codes; failed follows keep the link');

###############################################################################
