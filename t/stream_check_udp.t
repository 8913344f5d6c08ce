#!/usr/bin/perl

# Health checks of stream upstreams that `listen ... udp` servers proxy to.
# The checks connect over TCP, so UDP-only backends (Test::Nginx::Udp) are
# found down ("connection refused"), and nginx then has no live upstream.
# That is allowed (a DNS server answers TCP too) but not silent: each worker
# logs one [warn] per upstream at its first UDP session through it, however
# many sessions and datagrams follow. A check with `port=` (here a TCP
# backend beside the UDP ones, as a health port) says nothing and keeps the
# servers up; TCP sessions through a checked upstream say nothing either.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Status;
use Test::Nginx::Udp;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(10);

my $slow = $Test::Nginx::SLOW;
my ($interval, $timeout) = map { int($_ * $slow) } 300, 250;
my $check = "interval=${interval}ms timeout=${timeout}ms rise=2 fall=2";

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 2;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

    # UDP-only servers, checked on their own ports (over TCP).
    upstream dns {
        least_conn_persistent;
        least_conn_persistent_check $check;
        server 127.0.0.1:%%PORT_8091%%;
        server 127.0.0.1:%%PORT_8092%%;
    }

    # A UDP-only server checked on a TCP health port of its own.
    upstream hc {
        least_conn_persistent;
        least_conn_persistent_check port=%%PORT_8095%% $check;
        server 127.0.0.1:%%PORT_8093%%;
    }

    # TCP, checked.
    upstream t {
        least_conn_persistent;
        least_conn_persistent_check $check;
        server 127.0.0.1:%%PORT_8096%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8081%% udp reuseport;
        proxy_pass dns;
        proxy_responses 1;
        proxy_timeout 10s;
    }

    server {
        listen 127.0.0.1:%%PORT_8083%% udp reuseport;
        proxy_pass hc;
        proxy_responses 1;
        proxy_timeout 10s;
    }

    server {
        listen 127.0.0.1:%%PORT_8086%% reuseport;
        proxy_pass t;
        proxy_timeout 1h;
    }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /status { least_conn_persistent_status; }
    }
}

EOF

$t->run_daemon(\&Test::Nginx::Udp::serve, port(8091), 'a');
$t->run_daemon(\&Test::Nginx::Udp::serve, port(8092), 'b');
$t->run_daemon(\&Test::Nginx::Udp::serve, port(8093), 'c');
$t->run_daemon(\&Test::Nginx::Hold::serve, port(8095), 'health');
$t->run_daemon(\&Test::Nginx::Hold::serve, port(8096), 'd');
udp_wait(port($_)) or die "no UDP backend on $_\n" for 8091, 8092, 8093;
$t->waitforsocket(addr($_)) for 8095, 8096;
$t->run();

sub health_of {
	my ($upstream, $port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } stream_entries($upstream);
	return $e && $e->{health};
}

# The warning's lines for an upstream (not debug ones): { pid => lines }.
sub warned {
	my ($upstream) = @_;
	my %pids;
	for (split /\n/, $t->read_file('error.log')) {
		next unless /^\S+ \S+ \[warn\] (\d+)#\d+: \*\d+ least_conn_persistent: upstream "\Q$upstream\E" is checked over TCP \(least_conn_persistent_check\) but proxies UDP: a server that answers only UDP is marked down; give the check a port= of a TCP service, or remove it, udp client: 127\.0\.0\.1, server: /;
		$pids{$1}++;
	}
	return \%pids;
}

sub no_live {
	my ($upstream) = @_;
	return scalar grep { /\[error\] .*no live upstreams.*upstream: "\Q$upstream\E"/ } split /\n/,
		$t->read_file('error.log');
}

my $wait = 20 * $slow;

# dns: its UDP-only servers refuse the TCP checks.
ok(wait_until(sub { (health_of('dns', 8091) // '') eq 'down' && (health_of('dns', 8092) // '') eq 'down' }, $wait),
	'UDP-only servers checked over TCP are down');

# 20 sessions (each its own client port), then 10 more datagrams on one
# socket: nginx has no live server for any of them.
my @s = map { udp_open(port(8081), quiet => 1) or die "udp: $!\n" } 1 .. 20;
send($s[0]{sock}, 'quiet again', 0) for 1 .. 10;
ok(wait_until(sub { no_live('dns') >= 20 }, $wait), 'sessions through dns: "no live upstreams"');
my $warned = warned('dns');
my %workers = map { ($_ => 1) } $t->worker_pids();
ok(keys %$warned >= 1, 'UDP through a checked upstream: warned (' . join(', ', sort keys %$warned) . ')');
is(join(' ', grep { $warned->{$_} != 1 } sort keys %$warned), '',
	'once per worker, not per session or datagram');
is(join(' ', grep { !$workers{$_} } sort keys %$warned), '', 'by the workers');

# hc: checked on a TCP health port, up, answers, nothing said.
ok(wait_until(sub { (health_of('hc', 8093) // '') eq 'up' }, $wait), 'a check with port= of a TCP service: up');
my @c = map { udp_open(port(8083)) } 1 .. 5;
is(scalar(grep { $_ && $_->{backend} eq 'c' } @c), 5, 'its UDP sessions are answered');

# t: TCP sessions through a checked upstream.
ok(wait_until(sub { (health_of('t', 8096) // '') eq 'up' }, $wait), 'the TCP upstream is up');
my @h = map { hold_open(port(8086)) } 1 .. 5;
is(scalar(grep { $_ && $_->{backend} eq 'd' } @h), 5, 'its TCP sessions are served');
hold_close($_) for grep { $_ } @h;

is_deeply([map { scalar keys %{warned($_)} } qw/hc t/], [0, 0],
	'no warning for a check with port=, nor for TCP sessions');
