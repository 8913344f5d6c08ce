#!/usr/bin/perl
# Active health checks (`least_conn_persistent_check`): what they cost.
#
#   (a) CPU: an upstream of 1,000 servers (one backend nginx answering on
#       1,000 ports), checked at the default interval (5 s) by the module's
#       nginx with 2 workers: no checks (the baseline), `type=tcp`,
#       `uri=/health` and `uri=/health load=X-Connections`. After every
#       server is up and one more interval, the workers' CPU (utime + stime
#       and schedstat) over 60 s, the checker's (the status page's
#       `"checker"` pid) on its own; the checks really made are the
#       backend's accepted connections over the same window (stub_status).
#   (b) Cost per pick: as scripts/bench/callgrind.pl (section 3), the
#       inclusive instructions of `pc->get` per pick in a running worker, at
#       2, 100 and 1,000 servers: ours unchecked, checked with every server
#       up, and checked with every server reporting its load (the pick's
#       tuned path). Under callgrind nginx is one process, which runs the
#       checker too: only the pick's own call edge is read.
#
# Before each part it waits for a quiet machine (1-minute load below 0.6
# for 30 s, at most 20 minutes, and says so when it gave up).
#
#   checks.pl [--quick] [--only=cpu,picks] [--no-wait] > section.md
#
# --quick: 30 s of CPU, picks at 2 and 1,000 servers with fewer requests.
# --no-wait: no waiting for a quiet machine (trials).

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use List::Util qw/max sum/;
use POSIX ();
use Time::HiRes qw/sleep/;
use Test::Nginx;

my $quick = grep { $_ eq '--quick' } @ARGV;
my $no_wait = grep { $_ eq '--no-wait' } @ARGV;
my %only = map { ($_ => 1) } map { /^--only=(.*)$/ ? split(/,/, $1) : () } @ARGV;
%only = (cpu => 1, picks => 1) unless %only;

my $servers = 1000;
my $interval = 5;    # the directive's default, in seconds
my $measure_secs = $quick ? 30 : 60;
my $goal_ms_per_s = 10;    # 1% of one core
my $goal_pick_ratio = 1.1;
my $goal_tuned_ratio = 1.2;    # every server reporting its load, against unchecked
my @sizes = $quick ? (2, 1000) : (2, 100, 1000);
my $requests = $quick ? 50 : 300;
my $warm = 10;    # as callgrind.pl: the short run holds every one-time cost
my $base_port = $ENV{BENCH_BASE_PORT} // 31000;    # the backend's ports, as callgrind.pl's (the harness uses 20000-29999, the kernel 32768 up)

my @cpu_variants = (
	[none => 'no checks (baseline)', ''],
	[tcp => '`type=tcp`', 'least_conn_persistent_check type=tcp;'],
	[http => '`uri=/health`', 'least_conn_persistent_check uri=/health;'],
	[load => '`uri=/health load=X-Connections`',
		'least_conn_persistent_check uri=/health load=X-Connections;'],
);
my @pick_variants = (
	[plain => 'unchecked', ''],
	[up => 'checked, all up', "least_conn_persistent_check uri=/health interval=${interval}s;"],
	[load => 'checked, every server reporting load',
		"least_conn_persistent_check uri=/health interval=${interval}s load=X-Connections;"],
);

sub quiet {
	my ($what) = @_;
	return '' if $no_wait;
	my $note = wait_quiet($what);
	print "$note\n\n" if $note;
	return $note;
}

# Writes $t's nginx.conf: upstream u of $n servers on the backend's ports,
# balanced by least_conn_persistent with $check; `/` proxies to it,
# `/status` is the module's status page.
sub proxy_conf {
	my ($t, $n, $check, $head) = @_;
	my $ups = servers($base_port, $n);
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
$head
http {
    %%TEST_GLOBALS_HTTP%%
    least_conn_persistent_zone lcp 4m;
    upstream u {
        least_conn_persistent;
        $check
$ups
    }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://u; }
        location = /status { least_conn_persistent_status; }
    }
}
EOF
}

sub status_json { http_get('/status?format=json', timeout => 60) }

# Waits until the status page shows all $n servers up (and, with $reported,
# each reporting its load): dies after $secs.
sub wait_all_up {
	my ($n, $reported, $secs) = @_;
	my ($up, $rep) = (0, 0);
	wait_until(sub {
		my $s = status_json();
		$up = () = $s =~ /"health":"up"/g;
		$rep = () = $s =~ /"reported":\{/g;
		$up == $n && (!$reported || $rep == $n);
	}, $secs) or die "after $secs s, $up of $n servers up, $rep reporting load\n";
}

###############################################################################
# (a) CPU of the checks.

# The backend's accepted connections so far (stub_status).
sub backend_accepts {
	my $r = http_get('/backend_status', port => $base_port);
	my ($accepts) = $r =~ /server accepts handled requests\s+(\d+)/
		or die "no stub_status from the backend:\n$r\n";
	return $accepts;
}

# { pid => [ms on CPU (schedstat), ticks, of which in the kernel] } over
# the window.
sub cpu_delta {
	my ($before, $after) = @_;
	my %d;
	for my $pid (grep { $after->{$_} } keys %$before) {
		my ($b, $a) = ($before->{$pid}, $after->{$pid});
		$d{$pid} = [($a->[1] - $b->[1]) / 1e6, $a->[0] - $b->[0], $a->[2] - $b->[2]];
	}
	return \%d;
}

sub cpu_run {
	my ($backend_pids, $name, $check) = @_;
	my $t = Test::Nginx->new();
	proxy_conf($t, $servers, $check, <<"EOF");
worker_processes 2;
worker_rlimit_nofile 8192;
events {
    worker_connections 4096;
}
EOF
	$t->run();
	wait_all_up($servers, $name eq 'load', 6 * $interval) if $check;
	sleep $interval;    # the warm-up: one more interval
	my ($checker) = status_json() =~ /"checker":(\d+)/;
	my @workers = $t->worker_pids();
	my $accepts = backend_accepts();
	my $before = cpu_now(@workers, @$backend_pids);
	sleep $measure_secs;
	my $after = cpu_now(@workers, @$backend_pids);
	# The scrape's own connection is one of those accepted.
	my $checks = backend_accepts() - $accepts - 1;
	my ($checker_after) = status_json() =~ /"checker":(\d+)/;
	$t->stop();
	die "$name: the checker changed from $checker to $checker_after while measuring\n"
		if $checker != $checker_after;
	die "$name: no checker\n" if $check && !$checker;
	my $d = cpu_delta($before, $after);
	return {
		workers => sum(map { $d->{$_}[0] } @workers),
		ticks => sum(map { $d->{$_}[1] } @workers),
		sys_ticks => sum(map { $d->{$_}[2] } @workers),
		checker => $checker ? $d->{$checker}[0] : 0,
		others => sum(0, map { $d->{$_}[0] } grep { $_ != $checker } @workers),
		backend => sum(0, map { $d->{$_}[0] } @$backend_pids),
		checks => $checks,
	};
}

sub section_cpu {
	my $backend = ok_backend($base_port, $servers, 0, health => 1,
		health_header => 'X-Connections 0', stub_status => 1);
	my @backend_pids = $backend->worker_pids();
	quiet('the CPU measurement');
	my %r = map { ($_->[0] => cpu_run(\@backend_pids, $_->[0], $_->[2])) } @cpu_variants;
	$backend->stop();
	my $base = $r{none};
	my $expected = $servers * $measure_secs / $interval;

	print "### (a) CPU of the checks, $servers servers, every $interval s (the default)\n\n";
	printf "The module's nginx with 2 workers, an upstream of %d servers on one backend nginx (1 worker,"
		. " CPU 0; every `/health` answer is 200 with `X-Connections: 0`). After every server is up and"
		. " one more interval, %d s measured: CPU time on CPU (schedstat) of both workers and of the"
		. " checker (the status page's `\"checker\"`) alone; checks made: the backend's accepted"
		. " connections over the same %d s (stub_status), %d expected.\n\n",
		$servers, $measure_secs, $measure_secs, $expected;
	print "| checks | checks made | both workers | ticks (1/" . POSIX::sysconf(POSIX::_SC_CLK_TCK())
		. " s): all, in the kernel | the checker | the other worker | backend answering | workers less baseline | per second | per check |\n";
	print "|---|---|---|---|---|---|---|---|---|---|\n";
	my @over;
	for my $v (@cpu_variants) {
		my ($name, $label) = @$v;
		my $x = $r{$name};
		my $extra = $x->{workers} - $base->{workers};
		my ($per_s, $per_check) = ('', '');
		if ($name ne 'none') {
			$per_s = sprintf '%.2f ms/s', $extra / $measure_secs;
			$per_check = $x->{checks} ? sprintf('%.1f us', 1000 * $extra / $x->{checks}) : 'n/a';
			push @over, [$label, $extra / $measure_secs, $x->{checks}];
		}
		printf "| %s | %d | %.1f ms | %d, %d | %.1f ms | %.1f ms | %.1f ms | %s | %s | %s |\n", $label,
			$name eq 'none' ? 0 : $x->{checks}, $x->{workers}, $x->{ticks}, $x->{sys_ticks}, $x->{checker}, $x->{others},
			$x->{backend}, $name eq 'none' ? '' : sprintf('%.1f ms', $extra), $per_s, $per_check;
	}
	my $worst = max(map { $_->[1] } @over);
	my @short = grep { $_->[2] < 0.95 * $expected } @over;
	printf "\nPer second: the workers' CPU less the baseline's, over %d s, for %d servers; per check:"
		. " the same over the checks made.%s\n",
		$measure_secs, $servers,
		@short ? ' Fewer checks than expected: ' . join(', ', map { "$_->[0] $_->[2]" } @short) . '.' : '';
	printf "\nGoal, at most 1%% of one core (%d ms/s) for %d servers at %d s: **%s** (%s).\n\n",
		$goal_ms_per_s, $servers, $interval, $worst <= $goal_ms_per_s ? 'met' : 'missed',
		join(', ', map { sprintf '%s %.2f ms/s', $_->[0], $_->[1] } @over);
}

###############################################################################
# (b) Cost per pick.

# (name of our get, its inclusive Ir) for $count requests through upstream
# u of $n servers with $check, nginx under callgrind.
sub measure {
	my ($t, $variant, $check, $n, $count) = @_;
	proxy_conf($t, $n, $check, "events {\n}");
	my $out = $t->testdir() . "/callgrind.$variant.$n.$count";
	my $pid = callgrind_nginx($t, $out);
	# Every server up (and reporting) before the picks: under callgrind the
	# checks take longer, so the wait is longer.
	wait_all_up($n, $variant eq 'load', 30 * $interval) if $check;
	for (1 .. $count) {
		http_get('/', timeout => 120) =~ /^HTTP\/1\.1 200/ or die "request failed under valgrind\n";
	}
	stop_callgrind_nginx($pid);
	my ($name, $calls, $ir) = pick_edge($out, 'least_conn_persistent');
	die "$variant: peer.get is $name, not ours\n" unless $name =~ /least_conn_persistent/;
	die "$variant: peer.get called $calls times for $count requests ($name)\n" unless $calls == $count;
	return ($name, $ir);
}

# Ir per pick in a running worker: the extra requests' cost over the extra
# requests (as callgrind.pl).
sub per_pick {
	my ($t, $variant, $check, $n) = @_;
	my ($name, $ir_warm) = measure($t, $variant, $check, $n, $warm);
	my (undef, $ir) = measure($t, $variant, $check, $n, $requests);
	return ($name, ($ir - $ir_warm) / ($requests - $warm));
}

sub section_picks {
	my $backend = ok_backend($base_port, max(@sizes), 0, health => 1, health_header => 'X-Connections 1');
	my $t = Test::Nginx->new();
	quiet('the callgrind runs');
	my (%r, $name);
	for my $n (@sizes) {
		for my $v (@pick_variants) {
			($name, $r{$n}{$v->[0]}) = per_pick($t, $v->[0], $v->[2], $n);
		}
	}
	$backend->stop();

	print "### (b) Cost per pick, checked and not (callgrind)\n\n";
	printf "As section 3: the inclusive instructions (Ir) of `pc->get` per pick in a running worker (%d"
		. " requests less %d, over the difference), nginx as one process (`master_process off`), which"
		. " runs the checks too; our get is `%s`. Checked: `%s`, the picks made once the status page"
		. " shows every server up; every server reporting load: `load=X-Connections` too, the backend"
		. " answering `X-Connections: 1` (above our count, so every server's reported load counts).\n\n",
		$requests, $warm, $name, $pick_variants[1][2];
	print "| servers | unchecked Ir/pick | checked, all up | ratio | checked, every server reporting load | ratio |\n";
	print "|---|---|---|---|---|---|\n";
	my (@missed, @tuned, @tuned_missed);
	for my $n (@sizes) {
		my ($p, $u, $l) = @{$r{$n}}{qw/plain up load/};
		printf "| %d | %.0f | %.0f | %.3f | %.0f | %.2f |\n", $n, $p, $u, $u / $p, $l, $l / $p;
		push @missed, sprintf('%.3fx, %+.0f instructions per pick, at %d servers', $u / $p, $u - $p, $n)
			if $u > $goal_pick_ratio * $p;
		push @tuned, sprintf('%.2fx (%+.0f) at %d', $l / $p, $l - $p, $n);
		push @tuned_missed, $tuned[-1] if $l > $goal_tuned_ratio * $p;
	}
	printf "\nGoal, a checked upstream's pick at most %.1fx an unchecked one's, all up: **%s**%s.\n",
		$goal_pick_ratio, @missed ? 'missed' : 'met', @missed ? ' (' . join('; ', @missed) . ')' : '';
	printf "\nGoal, with every server reporting load (the tuned path), at most %.1fx an unchecked pick: **%s**"
		. " (%s servers).\n\n", $goal_tuned_ratio, @tuned_missed ? 'missed' : 'met', join(', ', @tuned);
}

print "Loopback; nginx logs at `notice`. Command for one part: `perl scripts/bench/checks.pl --only=cpu`"
	. " (or `picks`).\n\n";
section_cpu() if $only{cpu};
section_picks() if $only{picks};
