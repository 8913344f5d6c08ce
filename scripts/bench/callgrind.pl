#!/usr/bin/perl
# Cost per pick: instructions (callgrind's Ir, exact and repeatable) spent
# in the upstream's peer.get per request, stock `least_conn; zone`
# (ngx_http_upstream_get_least_conn_peer) against ours, at 2, 100, 1,000
# and 10,000 servers (past 1,000 the servers repeat the backend's 1,000
# ports: each line is a peer of its own, as stock counts them). Ours picks
# through its pick index from 16 servers up (`index=`), by a scan below.
#
# Debian's nginx is stripped, so the stock function has no name: both are
# found the same way, as the function ngx_event_connect_peer() calls first
# (`rc = pc->get(pc, pc->data)`, its first call), and their inclusive cost
# on that call edge is read.
#
# Each configuration runs twice, with a few requests and with many: the
# difference over the extra requests is the cost of one more pick in a
# running worker (and of one more whole request), free of what happens once
# per worker (ours allocates a worker's cells at its first pick of a list);
# that once-per-worker part is reported on its own.
#
#   callgrind.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use Test::Nginx;

my $quick = grep { $_ eq '--quick' } @ARGV;
my @sizes = $quick ? (2, 1000) : (2, 100, 1000, 10000);
# The goals: at most this many times stock's instructions per pick.
my %goal = (2 => 1.0, 100 => 0.25, 1000 => 0.05);
my $requests = $quick ? 50 : 300;
# The short run: enough for every one-time cost to be in both.
my $warm = 10;
# BENCH_BASE_PORT: another base, for two benchmarks at once (30000 is free).
my $base_port = $ENV{BENCH_BASE_PORT} // 31000;

my $backend = ok_backend($base_port, 1000);

my $proxy = Test::Nginx->new();

sub conf {
	my ($method, $n) = @_;
	my $ups = join "\n", map { "        server 127.0.0.1:" . ($base_port + $_ % 1000) . ";" } 0 .. $n - 1;
	my ($zone, $line) = method_conf($method, stock => '8m', zone => '8m');
	$proxy->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
events {
}
http {
    %%TEST_GLOBALS_HTTP%%
    $zone
    upstream u {
        $line
$ups
    }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://u; }
    }
}
EOF
}

# (name of peer.get, its calls, its inclusive Ir, the process's total Ir)
# for $count requests.
sub measure {
	my ($method, $n, $count) = @_;
	conf($method, $n);
	my $out = $proxy->testdir() . "/callgrind.$method.$n.$count";
	my $pid = callgrind_nginx($proxy, $out);
	for (1 .. $count) {
		http_get('/', timeout => 120) =~ /^HTTP\/1\.1 200/ or die "request failed under valgrind\n";
	}
	stop_callgrind_nginx($pid);
	my ($name, $calls, $ir) = pick_edge($out);
	die "peer.get called $calls times for $count requests ($name)\n"
		unless $calls == $count;
	return ($name, $ir, total_ir($out));
}

# Per pick and per whole request in a running worker (the extra requests'
# cost over the extra requests), and what the first picks cost beyond that.
sub per_pick {
	my ($method, $n) = @_;
	my ($name, $ir_warm, $total_warm) = measure($method, $n, $warm);
	my (undef, $ir, $total) = measure($method, $n, $requests);
	my $extra = $requests - $warm;
	my $pick = ($ir - $ir_warm) / $extra;
	return ($name, $pick, ($total - $total_warm) / $extra, $ir_warm - $warm * $pick);
}

my (@names, @ratios, @rows);
for my $n (@sizes) {
	my ($sname, $s, $sreq, $sonce) = per_pick('stock', $n);
	my ($pname, $p, $preq, $ponce) = per_pick('persistent', $n);
	die "persistent peer.get is $pname, not ours\n" unless $pname =~ /least_conn_persistent/;
	@names = ($sname, $pname);
	push @ratios, [$n, $p / $s, $p - $s];
	push @rows, [$n, $s, $p, $sreq, $preq, $sonce, $ponce];
}
print "| servers | `ngx_http_upstream_get_least_conn_peer` Ir/pick | `least_conn_persistent` get Ir/pick | ratio "
	. "| whole request, stock Ir | whole request, ours Ir | ratio | first picks of a worker, beyond that: stock, ours |\n";
print "|---|---|---|---|---|---|---|---|\n";
printf "| %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.3f | %.0f, %.0f |\n", @$_[0 .. 2], $_->[2] / $_->[1],
	@$_[3, 4], $_->[4] / $_->[3], @$_[5, 6] for @rows;
print "\nPer pick and per whole request: in a running worker, the extra cost of $requests requests over $warm "
	. "(the whole request: every instruction the nginx process ran in user space), over the "
	. ($requests - $warm) . " extra requests. First picks: what the first $warm picks cost beyond $warm such picks "
	. "(ours: the worker's cells for the list, allocated at its first pick of it).\n";
printf "\nFunctions measured (callgrind names): stock `%s`%s, ours `%s`.\n", $names[0],
	$names[0] =~ /^0x/ ? ' (unnamed: this nginx is stripped)' : '', $names[1];
my @goals = grep { $goal{$_->[0]} } @ratios;
my @missed = grep { $_->[1] > $goal{$_->[0]} } @goals;
printf "\nGoals, at most %s: **%s**%s.\n",
	join(', ', map { sprintf '%.2fx stock at %d servers', $goal{$_->[0]}, $_->[0] } @goals),
	@missed ? 'missed' : 'met',
	@missed ? ' (' . join(', ', map { sprintf '%.2fx at %d servers, %+.0f instructions per pick', $_->[1], $_->[0], $_->[2] } @missed) . ')' : '';
