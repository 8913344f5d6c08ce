#!/usr/bin/perl

# scripts/bench.sh still runs: its quick mode, for sections 3, 4, 5 and 7
# (the others are covered elsewhere, see below), writes
# build/bench-quick/BENCHMARKS.md with those sections' figures.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use Test::Nginx;

my $t = Test::Nginx->new()->has(qw/nginx module debian_nginx/)->plan(10);

# Left out for CI's time, each run elsewhere or in full runs only: section
# 1 (the headline scenario: scripts/demo.sh --check and t/balance.t), 2
# (throughput: wrk against both methods, no scenario of its own to check),
# 6 (Lua balancers: t/lua*.t), 8 (slow start: t/slow_start.t), 9 and 10
# (full runs only), and the runs against nginx 1.28 (the same scripts).
my $out = `../scripts/bench.sh --quick --sections=3,4,5,7 2>&1`;
is($?, 0, 'bench.sh --quick --sections=3,4,5,7 exits 0') or diag($out);

open my $fh, '<', '../build/bench-quick/BENCHMARKS.md' or die "no BENCHMARKS.md: $!\n";
my $md = do { local $/; <$fh> };

like($md, qr/^\| nginx \| nginx\/1\.\d+\.\d+/m, 'machine facts');
like($md, qr/^\| 2 \| \d+ \| \d+ \| \d\.\d\d \| \d+ \| \d+ \| \d\.\d{3} \| -?\d+, -?\d+ \|$/m, "instructions per pick and per request at 2 servers");
like($md, qr/^\| keys stored in a 1 MiB zone \(keys alone[^|]*\| \d+ \|/m, 'zone capacity');
like($md, qr/^\| 4,001 keys in a 1 MiB zone with 16 worker records.*\| 4001, 0, \d+ bytes \|/m, 'capacity with worker records');
my $verdicts = () = $md =~ /\*\*(met|missed)\*\*/g;
is($verdicts, 5, 'a verdict for every goal (stream balance and idle CPU included)');
like($md, qr/^\| 20 over 2, reload adding a 3rd, 12 more \| `least_conn_persistent` \| \d+ \| \d+ \| \d+ \| \d+ \|$/m,
	'stream balance');
like($md, qr/^\| CPU ticks \(utime \+ stime, 1\/\d+ s\) over \d+ idle s \| \d+ \| \d+ \|$/m,
	'idle CPU of both methods, two generations');
like($md, qr/^\| 8 \| 1000 \| \d+ \| \d+ \| \d+ \| \d+ \|$/m, 'zone memory at 8 workers and 1,000 keys');
like($md, qr/^Whole run: \d+ s\.$/m, 'run time');
