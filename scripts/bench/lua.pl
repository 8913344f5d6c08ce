#!/usr/bin/perl
# Lua balancers: requests/s through `balancer_by_lua` (2 workers, upstream
# keepalive) with three pickers, alternating, in the same run:
#   - ours: lib/resty/least_conn_persistent.lua (shared counts, FFI);
#   - Lua least-connections per worker (APISIX's approach: counts in a Lua
#     table of each worker, decremented in the log phase);
#   - Lua round-robin per worker.
#
#   lua.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use Test::Nginx;

my $quick = grep { $_ eq '--quick' } @ARGV;
my @sizes = $quick ? (2) : (2, 10);
my $rounds = $quick ? 1 : 5;
my $duration = $quick ? 1 : 5;
my $base_port = 32000;
my @methods = qw/persistent lua_least_conn lua_round_robin/;

my $backend = ok_backend($base_port, 10);
my $proxy = Test::Nginx->new();

sub conf {
	my ($method, $n) = @_;
	my $list = join ', ', map { "{ addr = \"127.0.0.1:" . ($base_port + $_) . '" }' } 0 .. $n - 1;
	$proxy->write_file_expand('nginx.conf', <<"EOF");
%%LUA_MODULES%%
%%TEST_GLOBALS%%
worker_processes 2;
worker_cpu_affinity 01 10;
worker_rlimit_nofile 16384;
events {
    worker_connections 8192;
}
http {
    %%TEST_GLOBALS_HTTP%%
    lua_package_path "%%LUA_LIB%%/?.lua;;";
    least_conn_persistent_zone lcp 1m;
    init_by_lua_block {
        METHOD = "$method"
        SERVERS = { $list }
        balancer = require "ngx.balancer"
        lcp = require "resty.least_conn_persistent"
        -- Per-worker state of the pure-Lua pickers.
        local counts, next_rr = {}, 0
        for i = 1, #SERVERS do counts[i] = 0 end

        function pick()
            local ctx = ngx.ctx
            local s
            if METHOD == "persistent" then
                local up = assert(lcp.declare("bench", SERVERS))
                local server, token = up:pick()
                ctx.token = token
                s = server
            elseif METHOD == "lua_least_conn" then
                local best
                for i = 1, #SERVERS do
                    if not best or counts[i] < counts[best] then best = i end
                end
                counts[best] = counts[best] + 1
                ctx.index = best
                s = SERVERS[best]
            else
                next_rr = next_rr % #SERVERS + 1
                s = SERVERS[next_rr]
            end
            if not s.port then
                s.host, s.port = s.addr:match("^(.+):(%d+)\$")
                s.port = tonumber(s.port)
            end
            assert(balancer.set_current_peer(s.host, s.port))
        end

        function done()
            local ctx = ngx.ctx
            if ctx.token then
                lcp.release(ctx.token)
            elseif ctx.index then
                counts[ctx.index] = counts[ctx.index] - 1
            end
        end
    }
    upstream u {
        server 0.0.0.1;
        balancer_by_lua_block { pick() }
        keepalive 1024;
    }
    server {
        listen 127.0.0.1:8080 reuseport;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            log_by_lua_block { done() }
        }
    }
}
EOF
}


print "| servers | `least_conn_persistent` (Lua, FFI) req/s | Lua least-connections per worker req/s "
	. "| Lua round-robin req/s | ours / Lua least-connections | pairs: median (min-max) |\n";
print "|---|---|---|---|---|---|\n";
my @ratios;
for my $n (@sizes) {
	my %rps;
	for (1 .. $rounds) {
		for my $m (@methods) {
			conf($m, $n);
			$proxy->run();
			push @{$rps{$m}}, wrk($duration, $quick);
			$proxy->stop();
		}
	}
	my %med = map { ($_ => median(@{$rps{$_}})) } @methods;
	my $ratio = $med{persistent} / $med{lua_least_conn};
	push @ratios, [$n, $ratio];
	my @pairs = map { $rps{persistent}[$_] / $rps{lua_least_conn}[$_] } 0 .. $rounds - 1;
	printf "| %d | %.0f | %.0f | %.0f | %.3f | %.3f (%.3f-%.3f) |\n", $n,
		@med{@methods}, $ratio, median(@pairs), (sort { $a <=> $b } @pairs)[0, -1];
}
$backend->stop();

my @missed = grep { $_->[1] < 0.95 } @ratios;
printf "\nGoal, ours >= 0.95 of Lua least-connections per worker at every size: **%s**%s.\n",
	@missed ? 'missed' : 'met',
	@missed ? ' (' . join(', ', map { sprintf '%.3f at %d servers', $_->[1], $_->[0] } @missed) . ')' : '';
