#!/usr/bin/perl
# Throughput: wrk through nginx (2 workers, upstream keepalive) to a backend
# nginx answering "ok" on N loopback ports, for stock `least_conn; zone` and
# `least_conn_persistent`, alternating, five rounds each; medians.
#
#   throughput.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use Test::Nginx;

my $quick = grep { $_ eq '--quick' } @ARGV;
my @sizes = $quick ? (2, 1000) : (2, 100, 1000);
my $rounds = $quick ? 1 : 5;
# --sizes=2,100 --rounds=N: a narrower run, to look closer at one case
for (@ARGV) {
	@sizes = split /,/, $1 if /^--sizes=([\d,]+)$/;
	$rounds = $1 if /^--rounds=(\d+)$/;
}
my $duration = $quick ? 1 : 5;
my $base_port = 30000;

# The backend: one nginx worker listening on every port.
my $backend = ok_backend($base_port, 1000);

my $proxy = Test::Nginx->new();

sub conf {
	my ($method, $n) = @_;
	my $ups = servers($base_port, $n);
	my ($zone, $line) = method_conf($method, stock => '4m');
	$proxy->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 2;
# Fixed places on the 2 cores (wrk and the backend share them too): free
# scheduling made rounds bimodal.
worker_cpu_affinity 01 10;
worker_rlimit_nofile 16384;
events {
    worker_connections 8192;
}
http {
    %%TEST_GLOBALS_HTTP%%
    $zone
    upstream u {
        $line
$ups
        keepalive 1024;
    }
    server {
        # reuseport spreads wrk's connections over both workers; without
        # it one worker may take them all, and rounds came out bimodal.
        listen 127.0.0.1:8080 reuseport;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}



print "| servers | `least_conn; zone` req/s (median) | `least_conn_persistent` req/s (median) | ratio "
	. "| ratio of each back-to-back pair: median (min-max) | rounds (stock; persistent) |\n";
print "|---|---|---|---|---|---|\n";
my @ratios;
for my $n (@sizes) {
	my %rps;
	for (1 .. $rounds) {
		for my $m (qw/stock persistent/) {
			conf($m, $n);
			$proxy->run();
			push @{$rps{$m}}, wrk($duration, $quick);
			$proxy->stop();
		}
	}
	my ($s, $p) = (median(@{$rps{stock}}), median(@{$rps{persistent}}));
	push @ratios, [$n, $p / $s];
	my @pairs = map { $rps{persistent}[$_] / $rps{stock}[$_] } 0 .. $#{$rps{stock}};
	printf "| %d | %.0f | %.0f | %.3f | %.3f (%.3f-%.3f) | %s; %s |\n", $n, $s, $p, $p / $s,
		median(@pairs), (sort { $a <=> $b } @pairs)[0, -1],
		join(' ', map { sprintf '%.0f', $_ } @{$rps{stock}}),
		join(' ', map { sprintf '%.0f', $_ } @{$rps{persistent}});
}

# The goals: at least this ratio (ours / stock) at each size.
my %goal = (2 => 1.0, 100 => 1.2, 1000 => 2.0);
my @goals = grep { $goal{$_->[0]} } @ratios;
my @missed = grep { $_->[1] < $goal{$_->[0]} } @goals;
printf "\nGoals, at least %s: **%s**%s.\n",
	join(', ', map { sprintf '%.1fx stock at %d servers', $goal{$_->[0]}, $_->[0] } @goals),
	@missed ? 'missed' : 'met',
	@missed ? ' (' . join(', ', map { sprintf '%.3f at %d servers', $_->[1], $_->[0] } @missed) . ')' : '';
