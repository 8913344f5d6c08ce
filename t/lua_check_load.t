#!/usr/bin/perl

# A Lua balancer following the checks of an nginx upstream that reads the
# backends' own load (`least_conn_persistent_check ... load=X-Connections`),
# two workers, held WebSockets. The load a backend reports counts the Lua
# balancer's connections to it too, so a Lua pick adds what the backend
# reported beyond the Lua key's own count at the answer, not beyond the
# nginx upstream's:
#
# 1. b1 holds 10 of the Lua balancer's WebSockets and reports 10, b2 holds
#    none and reports 15: the next four go to b1 (compared as 10 to 13
#    against 15), not to b2 (as they would if b1 were compared as 10 + 10,
#    its load beyond the nginx upstream's count of 0).
# 2. b2 holds 20 of the nginx upstream's WebSockets and reports 20 (no
#    excess for the nginx upstream's picks), b1 holds 10 of the Lua
#    balancer's and reports 10: the next four Lua picks go to b1 too, as
#    b2's load is read for the Lua balancer though it is at the nginx
#    upstream's count.

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
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';
my $t = Test::Nginx->new()->has(qw/nginx module lua/)->plan(13);

my $slow = $Test::Nginx::SLOW;
my ($rise, $fall) = (1, 1);
my $interval_ms = int(300 * $slow + 0.5);
my $timeout_ms = int(250 * $slow + 0.5);
# A few checks, each up to interval + timeout apart with jitter, and a
# margin (wait_until scales it once more).
my $verdict_wait = 3 + 3 * ($interval_ms + $timeout_ms) / 1000 / $slow;

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
    }

    upstream hc {
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=$rise fall=$fall load=X-Connections;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
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

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        log_by_lua_block {
            if ngx.ctx.lcp_token then
                lcp.release(ngx.ctx.lcp_token)
            end
        }

        location / { proxy_pass http://lb; }
        location /hc { proxy_pass http://hc; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

###############################################################################

# hc's status entry of the server on $port.
sub entry {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('hc');
	return $e // {};
}

# Waits until $cond holds of both hc entries (b1's, b2's).
sub wait_entries {
	my ($cond) = @_;
	my @last;
	my $ok = wait_until(sub { @last = (entry(8081), entry(8082)); $cond->(@last) }, $verdict_wait);
	diag(explain(\@last)) unless $ok;
	return $ok;
}

sub reported { $_[0]{reported}{connections} // -1 }

sub counts_of { return { map { ($_->{server} => $_->{count}) } entries($_[0]) } }

sub show { my ($c) = @_; join(', ', map { "$_=$c->{$_}" } sort keys %$c) || 'none' }

health_dir($t);
set_health('b1');
set_health('b2', '200', 'X-LCP-Capacity: drain');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'b1');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b2');
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

# b2 drains: the Lua balancer's first ten WebSockets all go to b1.
ok(wait_entries(sub { ($_[0]{health} // '') eq 'up' && ($_[1]{health} // '') eq 'drain' }),
	'hc: b1 up, b2 draining');
my @held = ws_open_many(10, '/');
is_deeply(tally(@held), { b1 => 10 }, '10 WebSockets through the Lua balancer, all on b1');

# b1 reports the 10 it holds, b2 (back, holding none of them) 15.
set_health('b1', '200', 'X-Connections: 10');
set_health('b2', '200', 'X-Connections: 15');
ok(wait_entries(sub { reported($_[0]) == 10 && reported($_[1]) == 15 && ($_[1]{health} // '') eq 'up' }),
	'hc: b1 reports 10, b2 15 and takes connections again');
is_deeply({ map { ($_->{server} => $_->{count}) } entries('lb') },
	{ addr(8081) => 10, addr(8082) => 0 }, 'the Lua balancer holds 10 on b1, none on b2');

# b1 is compared as 10, 11, 12, 13 against b2's 15.
my @more = ws_open_many(4, '/');
is_deeply(tally(@more), { b1 => 4 }, 'the next 4 go to b1: ' . show(tally(@more)));

ws_close(@held, @more);
ok(at_rest(), 'every counter back to 0');

# 2. b1 drains: 20 WebSockets through the nginx upstream, all on b2; then
# b2 drains: 10 through the Lua balancer, all on b1.
set_health('b1', '200', 'X-LCP-Capacity: drain');
set_health('b2');
ok(wait_entries(sub { ($_[0]{health} // '') eq 'drain' && ($_[1]{health} // '') eq 'up' }),
	'hc: b1 draining, b2 up');
my @hc = ws_open_many(20, '/hc');
set_health('b1');
set_health('b2', '200', 'X-LCP-Capacity: drain');
ok(wait_entries(sub { ($_[0]{health} // '') eq 'up' && ($_[1]{health} // '') eq 'drain' }),
	'hc: b1 up, b2 draining');
@held = ws_open_many(10, '/');
is_deeply([tally(@hc), tally(@held)], [{ b2 => 20 }, { b1 => 10 }],
	'20 through the nginx upstream on b2, 10 through the Lua balancer on b1');

# Each reports what it holds.
set_health('b1', '200', 'X-Connections: 10');
set_health('b2', '200', 'X-Connections: 20');
ok(wait_entries(sub { reported($_[0]) == 10 && reported($_[1]) == 20 && ($_[1]{health} // '') eq 'up' }),
	'hc: b1 reports 10, b2 20 and takes connections again');
is(entry(8082)->{reported}{excess}, 0, 'no excess for the nginx upstream on b2');

# The Lua balancer holds none on b2, which reports 20: compared as 20.
@more = ws_open_many(4, '/');
is_deeply(tally(@more), { b1 => 4 }, 'the next 4 Lua picks go to b1: ' . show(tally(@more)));

ws_close(@hc, @held, @more);
ok(at_rest(), 'every counter back to 0 again');

###############################################################################
