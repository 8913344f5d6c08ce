#!/usr/bin/perl
# At 64 workers:
#   (a) idle CPU with two generations (a reload while WebSockets keep every
#       old worker alive), stock `least_conn; zone` against ours, side by side;
#   (b) how long the zone mutex is held, with 10,000 keys, a status scrape
#       every 100 ms and picks at full speed (wrk), from the module built with
#       the `lock-stats` feature (scripts/build.sh --lock-stats);
#   (c) the zone's memory per key and per worker, from its `used` bytes with
#       1 and 64 workers, 100 and 10,000 keys, at rest and after picks.
#
#   scale.pl [--quick] [--only=idle,holds,memory] > section.md
#
# nginx and the module: TEST_NGINX_BINARY and TEST_NGINX_MODULE, as for the
# other scripts; the lock-stats module: TEST_NGINX_LOCK_STATS_MODULE, by
# default the lock-stats build beside TEST_NGINX_MODULE's
# (target/lock-stats/release/, target/nginx-1.28/lock-stats/release/).
# --quick: 8 workers, 1,000 keys, 2 idle seconds, 2 s of picks; and no
# hold times unless --only names them (the lock-stats build is a build of
# its own, too slow for the quick bench test that runs with the suite).

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use List::Util qw/max min sum/;
use POSIX ();
use Time::HiRes qw/sleep time/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::WebSocket;

my $quick = grep { $_ eq '--quick' } @ARGV;
my %only = map { ($_ => 1) } map { /^--only=(.*)$/ ? split(/,/, $1) : () } @ARGV;
%only = (idle => 1, holds => !$quick, memory => 1) unless %only;

my $workers = $quick ? 8 : 64;
my $idle_secs = $quick ? 2 : 10;
my $settle_secs = $quick ? 1 : 2;
my $upstreams = $quick ? 10 : 100;    # of 100 servers each: the keys
my $per_upstream = 100;
my $keys = $upstreams * $per_upstream;
my $picks_secs = $quick ? 2 : 10;
my $memory_picks_secs = $quick ? 1 : 3;
my $scrape_ms = 100;
my $zone_size = '32m';
my $base_port = 30000;    # the "ok" backend's ports (the harness uses 20000-29999)

my $lock_stats_module = $ENV{TEST_NGINX_LOCK_STATS_MODULE}
	// ($Test::Nginx::MODULE =~ s{/release/([^/]+)$}{/lock-stats/release/$1}r);

# Every run logs at `notice`, not at the harness' `debug`: debug lines would
# be most of the CPU an idle nginx spends, and most of a locked section.
sub globals {
	my ($t, $module) = @_;
	my $d = $t->testdir();
	return "load_module $module;\npid $d/nginx.pid;\nerror_log $d/error.log notice;\n";
}

sub label { $_[0] eq 'stock' ? '`least_conn; zone`' : '`least_conn_persistent`' }

###############################################################################
# (a) Idle CPU, two generations.

# What the processes used over $secs seconds: (ticks, ms, processes).
sub cpu_over {
	my ($secs, @pids) = @_;
	my $before = cpu_now(@pids);
	sleep $secs;
	my $after = cpu_now(@pids);
	my @both = grep { $after->{$_} } keys %$before;
	return (sum(0, map { $after->{$_}[0] - $before->{$_}[0] } @both),
		sum(0, map { $after->{$_}[1] - $before->{$_}[1] } @both) / 1e6, scalar @both);
}

sub idle_conf {
	my ($t, $method) = @_;
	my ($zone, $line) = method_conf($method);
	$t->write_file_expand('nginx.conf', globals($t, $Test::Nginx::MODULE) . <<"EOF");
worker_processes $workers;
worker_rlimit_nofile 4096;
events {
    worker_connections 1024;
}
http {
    %%TEST_GLOBALS_HTTP%%
    $zone
    upstream u {
        $line
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
        server 127.0.0.1:8083;
    }
    server {
        # reuseport: each worker has its own socket, so WebSockets reach
        # every worker, and every old worker stays after the reload.
        listen 127.0.0.1:8080 reuseport;
        location / {
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            add_header X-Worker \$pid always;
        }
    }
}
EOF
}

# WebSockets until every worker holds one: (sockets, workers reached).
sub hold_every_worker {
	my (@ws, %reached);
	for (1 .. $workers * 40) {
		my $ws = ws_open('/') or die "WebSocket " . (@ws + 1) . " failed\n";
		push @ws, $ws;
		$reached{$ws->{worker} // 0}++;
		last if keys %reached >= $workers;
	}
	die "WebSockets reached " . keys(%reached) . " of $workers workers\n"
		if keys %reached < $workers;
	return @ws;
}

sub idle_cpu {
	my ($method) = @_;
	my $t = held_backends(\&Test::Nginx::Backend::serve, 8081, 8082, 8083);
	idle_conf($t, $method);
	$t->run();
	my @ws = hold_every_worker();
	$t->reload();
	sleep $settle_secs;    # the new generation's start-up is not idle time
	my ($old, $new) = (scalar $t->old_worker_pids(), scalar $t->worker_pids());
	die "$method: $old old and $new new workers, expected $workers of each\n"
		unless $old == $workers && $new == $workers;
	my ($ticks, $ms, $procs) = cpu_over($idle_secs, $t->master_pid(), $t->children());
	ws_close(@ws);
	$t->stop();
	$t->stop_daemons();
	return { ticks => $ticks, ms => $ms, procs => $procs, ws => scalar @ws };
}

sub section_idle {
	my %r = map { ($_ => idle_cpu($_)) } qw/stock persistent/;
	my ($s, $p) = @r{qw/stock persistent/};
	my $ratio = $s->{ms} > 0 ? sprintf('%.2f', $p->{ms} / $s->{ms}) : 'n/a';
	print "### Idle CPU, $workers workers x 2 generations\n\n";
	printf "| figure | %s | %s |\n", label('stock'), label('persistent');
	print "|---|---|---|\n";
	printf "| processes measured (master and both generations) | %d | %d |\n", $s->{procs}, $p->{procs};
	printf "| WebSockets held to keep every old worker | %d | %d |\n", $s->{ws}, $p->{ws};
	printf "| CPU ticks (utime + stime, 1/%d s) over %d idle s | %d | %d |\n",
		POSIX::sysconf(POSIX::_SC_CLK_TCK()), $idle_secs, $s->{ticks}, $p->{ticks};
	printf "| CPU time on CPU (schedstat) over %d idle s | %.1f ms | %.1f ms |\n",
		$idle_secs, $s->{ms}, $p->{ms};
	printf "\nRatio (CPU time, ours / stock): %s.\n", $ratio;
	# One tick (10 ms) of slack: what one process woken once may be charged.
	my $met = $p->{ms} <= 1.1 * $s->{ms} + 10;
	printf "\nGoal, idle CPU within 1.1x stock's (+10 ms): **%s** (%.1f ms against %.1f ms).\n\n",
		$met ? 'met' : 'missed', $p->{ms}, $s->{ms};
}

###############################################################################
# (b) and (c): many keys, picks, status scrapes.

# The proxy: $ups upstreams u0.. of $per_upstream servers each, all on the
# "ok" backend's ports; GET /<n> goes to upstream u<n>.
sub keys_conf {
	my ($t, $module, $w, $ups, %opt) = @_;
	my $upstream_blocks = join "\n", map { <<"EOF" } 0 .. $ups - 1;
    upstream u$_ {
        least_conn_persistent;
@{[ servers($base_port, $per_upstream) ]}
    }
EOF
	my $log = $opt{access_log} ? 'access_log %%TESTDIR%%/access.log pairs buffer=256k;' : '';
	$t->write_file_expand('nginx.conf', globals($t, $module) . <<"EOF");
worker_processes $w;
worker_rlimit_nofile 8192;
events {
    worker_connections 4096;
}
http {
    %%TEST_GLOBALS_HTTP%%
    least_conn_persistent_zone lcp $zone_size;
    log_format pairs '\$pid \$uri \$upstream_addr';
$upstream_blocks
    server {
        listen 127.0.0.1:8080 reuseport;
        $log
        location ~ ^/(\\d+)\$ {
            proxy_pass http://u\$1;
        }
        location = /status {
            least_conn_persistent_status;
        }
    }
}
EOF
}

# The zone's figures from the JSON status page's head, read with regexes
# (decoding 10,000 entries takes seconds): used, keys, workers recorded, and
# servers not stored in the zone (fallback).
sub zone_now {
	my $r = http_get('/status?format=json', timeout => 30);
	my ($head) = $r =~ /"zone":(\{.*?\]\})/s or die "no zone in the status page\n";
	my %z = map { ($_ => ($head =~ /"$_":(\d+)/)[0]) } qw/used keys/;
	$z{workers} = () = $head =~ /"pid":/g;
	$z{fallback} = () = $r =~ /"state":"fallback"/g;
	return \%z;
}

# Starts nginx and waits until all its workers have a record in the zone.
sub run_registered {
	my ($t, $w) = @_;
	$t->run();
	my $z;
	wait_until(sub { $z = zone_now(); $z->{workers} >= $w }, 30)
		or die "only $z->{workers} of $w workers registered\n";
	die "$z->{fallback} servers not stored in the zone\n" if $z->{fallback};
	return $z;
}

# wrk through the proxy, cycling over the upstreams: (requests made, of
# which timed out (no answer within wrk's 2 s), average latency). Dies on
# other errors.
sub picks {
	my ($t, $secs, $conns, $ups) = @_;
	$t->write_file('paths.lua', <<"EOF");
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, "/" .. (n % $ups))
end
EOF
	my $url = 'http://127.0.0.1:' . port(8080) . '/';
	my $out = `wrk -t1 -c$conns -d${secs}s -s @{[ $t->testdir() ]}/paths.lua $url 2>&1`;
	die "wrk failed:\n$out" unless $out =~ /(\d+) requests in/;
	my $requests = $1;
	my ($connect, $read, $write, $timeout) =
		$out =~ /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/;
	die "errors during wrk:\n$out"
		if $out =~ /Non-2xx or 3xx responses/ || ($connect // 0) + ($read // 0) + ($write // 0);
	my ($latency) = $out =~ /Latency\s+(\S+)/;
	return ($requests, $timeout // 0, $latency);
}

# A child scraping the status page every $scrape_ms for $secs seconds; it
# writes how many scrapes it made to scrapes.txt.
sub start_scraper {
	my ($t, $secs) = @_;
	my $pid = fork() // die "fork: $!\n";
	return $pid if $pid;
	my ($n, $end) = (0, time() + $secs);
	while (time() < $end) {
		my $next = time() + $scrape_ms / 1000;
		http_get('/status?format=json', timeout => 30) =~ /"counters"/ and $n++;
		my $left = $next - time();
		sleep $left if $left > 0;
	}
	$t->write_file('scrapes.txt', $n);
	POSIX::_exit(0);
}

# Per bucket index, the largest duration it holds (core/histogram.rs).
sub upper_bound {
	my ($i) = @_;
	return $i if $i < 8;
	my $shift = int($i / 8) - 1;
	return ((8 + $i % 8) << $shift) + (1 << $shift) - 1;
}

# The lock-stats lines of error.log, merged per role and kind:
# { "worker hold" => { n, max, counts => { bucket => n } }, ..., sites => { "file:line" => { n, sum, max } } }
sub lock_stats {
	my ($log) = @_;
	my (%m, %dumps);
	for ($log =~ /lock-stats (?:hold|wait|cpu): pid \d+, .*$/mg) {
		my ($kind, $role, $n, $max, $first, $list) =
			/^lock-stats (\w+): pid \d+, (\w+), n (\d+), sum \d+ ns, max (\d+) ns, buckets from (\d+): (\S*) end$/
			or die "a cut or unknown lock-stats line: $_\n";
		my $h = $m{"$role $kind"} //= { n => 0, max => 0, counts => {} };
		$h->{n} += $n;
		$h->{max} = max($h->{max}, $max);
		my @c = split /,/, $list, -1;
		$h->{counts}{$first + $_} += $c[$_] || 0 for 0 .. $#c;
		$dumps{$role}++ if $kind eq 'hold';
	}
	for ($log =~ /lock-stats sites: pid \d+, \w+:(.*) end$/mg) {
		for (split /;/) {
			my ($at, $n, $sum, $max) = /^\s*(\S+) n (\d+) sum (\d+) max (\d+)$/ or next;
			my $s = $m{sites}{$at} //= { n => 0, sum => 0, max => 0 };
			$s->{n} += $n;
			$s->{sum} += $sum;
			$s->{max} = max($s->{max}, $max);
		}
	}
	$m{dumps} = \%dumps;
	return \%m;
}

# The q-quantile of a merged histogram (the bucket's upper bound, at most the max).
sub quantile {
	my ($h, $q) = @_;
	return 0 unless $h && $h->{n};
	my $want = max(1, POSIX::ceil($h->{n} * $q));
	my $seen = 0;
	for my $i (sort { $a <=> $b } keys %{$h->{counts}}) {
		$seen += $h->{counts}{$i};
		return min(upper_bound($i), $h->{max}) if $seen >= $want;
	}
	return $h->{max};
}

sub us {
	my ($ns) = @_;
	return $ns < 1e6 ? sprintf('%.1f us', $ns / 1e3) : sprintf('%.2f ms', $ns / 1e6);
}

sub section_holds {
	-f $lock_stats_module
		or die "$lock_stats_module is missing: run scripts/build.sh --lock-stats\n";
	my $backend = ok_backend($base_port, $per_upstream);
	my $t = Test::Nginx->new();
	keys_conf($t, $lock_stats_module, $workers, $upstreams);
	run_registered($t, $workers);
	my $scraper = start_scraper($t, $picks_secs);
	my ($requests, $timeouts, $latency) = picks($t, $picks_secs, 4 * $workers, $upstreams);
	waitpid($scraper, 0);
	my $scrapes = $t->read_file('scrapes.txt');
	$t->stop();
	$backend->stop();
	my $m = lock_stats($t->read_file('error.log'));
	die "lock-stats from $m->{dumps}{worker} workers and $m->{dumps}{master} master, expected $workers and 1: "
		. "is $lock_stats_module built with --features lock-stats?\n"
		unless ($m->{dumps}{worker} // 0) >= $workers && ($m->{dumps}{master} // 0) == 1;
	my ($hold, $wait, $cpu, $master) = @{$m}{'worker hold', 'worker wait', 'worker cpu', 'master hold'};
	my $p99 = quantile($hold, 0.99);

	print "### Zone mutex holds, $workers workers, $keys keys\n\n";
	printf "%d upstreams of %d servers, a `%s` zone; wrk `-c%d` for %d s cycling over the upstreams "
		. "(%d requests, %d of them unanswered within 2 s, average latency %s), a JSON status scrape "
		. "every %d ms meanwhile (%d made); then a graceful stop.\n\n",
		$upstreams, $per_upstream, $zone_size, 4 * $workers, $picks_secs, $requests, $timeouts,
		$latency, $scrape_ms, $scrapes;
	print "| figure | holds | p50 | p99 | p99.9 | max | goal |\n|---|---|---|---|---|---|---|\n";
	printf "| zone mutex held, workers (start to exit) | %d | %s | %s | %s | %s | p99 < 1 ms |\n",
		$hold->{n}, (map { us(quantile($hold, $_)) } 0.5, 0.99, 0.999), us($hold->{max});
	printf "| holder's own CPU time, from asking for the mutex to releasing it (spinning while waiting included), workers | %d | %s | %s | %s | %s | |\n",
		$cpu->{n}, (map { us(quantile($cpu, $_)) } 0.5, 0.99, 0.999), us($cpu->{max});
	printf "| waited for the zone mutex, workers | %d | %s | %s | %s | %s | |\n",
		$wait->{n}, (map { us(quantile($wait, $_)) } 0.5, 0.99, 0.999), us($wait->{max});
	printf "| zone mutex held, master (configuration load) | %d | %s | %s | %s | %s | |\n",
		$master->{n}, (map { us(quantile($master, $_)) } 0.5, 0.99, 0.999), us($master->{max});
	print "\nWhere the mutex was taken (every process), longest hold first:\n\n";
	print "| caller of `ZoneLink::lock()` / `Locked::new` | holds | mean | max |\n|---|---|---|---|\n";
	my $sites = $m->{sites};
	for my $at (sort { $sites->{$b}{max} <=> $sites->{$a}{max} } keys %$sites) {
		my $s = $sites->{$at};
		printf "| %s | %d | %s | %s |\n", $at, $s->{n}, us($s->{sum} / max(1, $s->{n})), us($s->{max});
	}
	printf "\nGoal, zone mutex held under 1 ms at p99 (workers): **%s** (p99 %s, max %s; "
		. "holder's CPU from asking to releasing: p99 %s, max %s).\n\n",
		$p99 < 1e6 ? 'met' : 'missed', us($p99), us($hold->{max}), us(quantile($cpu, 0.99)),
		us($cpu->{max});
}

# One configuration's zone: used at rest (every worker registered), used
# after picks over every upstream, and the (worker, key) pairs those picks
# counted on.
sub memory_run {
	my ($w, $ups) = @_;
	my $t = Test::Nginx->new();
	keys_conf($t, $Test::Nginx::MODULE, $w, $ups, access_log => 1);
	my $rest = run_registered($t, $w)->{used};
	picks($t, $memory_picks_secs, max(32, 4 * $w), $ups);
	my $after = zone_now()->{used};
	$t->stop();
	my (%pairs, %keys);
	for (split /\n/, $t->read_file('access.log')) {
		my ($pid, $uri, $addr) = split / /, $_, 3;
		next if ($addr // '-') eq '-';
		$pairs{"$pid $uri $addr"} = 1;
		$keys{"$uri $addr"} = 1;
	}
	return { rest => $rest, after => $after, pairs => scalar keys %pairs,
		keys_picked => scalar keys %keys };
}

sub section_memory {
	my $backend = ok_backend($base_port, $per_upstream);
	my %r;
	for my $w (1, $workers) {
		for my $ups (1, $upstreams) {
			$r{$w}{$ups} = memory_run($w, $ups);
		}
	}
	$backend->stop();
	my ($small, $big) = ($per_upstream, $keys);
	print "### Zone memory, 1 and $workers workers, $small and $big keys\n\n";
	print "A `$zone_size` zone (its hash buckets are sized from the zone, so every run has the same);"
		. " `used` is the zone's allocated pages, from the JSON status page. After picks: wrk for"
		. " $memory_picks_secs s over every upstream; the (worker, key) pairs counted on are the distinct"
		. " (pid, upstream, server) of the access log.\n\n";
	print "| workers | keys | zone used at rest | used after picks | keys picked | (worker, key) pairs counted on |\n";
	print "|---|---|---|---|---|---|\n";
	for my $w (1, $workers) {
		for my $ups (1, $upstreams) {
			my $x = $r{$w}{$ups};
			printf "| %d | %d | %d | %d | %d | %d |\n", $w, $ups * $per_upstream, $x->{rest}, $x->{after},
				$x->{keys_picked}, $x->{pairs};
		}
	}
	my $per_key = ($r{1}{$upstreams}{rest} - $r{1}{1}{rest}) / ($big - $small);
	my $per_key_w = ($r{$workers}{$upstreams}{rest} - $r{$workers}{1}{rest}) / ($big - $small);
	my $per_worker = ($r{$workers}{$upstreams}{rest} - $r{1}{$upstreams}{rest}) / ($workers - 1);
	my $x = $r{$workers}{$upstreams};
	my $per_pair = $x->{pairs} ? ($x->{after} - $x->{rest}) / $x->{pairs} : 0;
	print "\n| figure | bytes |\n|---|---|\n";
	printf "| per key, 1 worker (used at %d keys less used at %d, per key) | %.1f |\n", $big, $small, $per_key;
	printf "| per key, %d workers | %.1f |\n", $workers, $per_key_w;
	printf "| per worker at rest, %d keys (used at %d workers less used at 1, per worker) | %.0f |\n",
		$big, $workers, $per_worker;
	printf "| per worker at rest and key (the above over %d keys) | %.2f |\n", $big, $per_worker / $big;
	printf "| per (worker, key) pair counted on, %d workers and %d keys (growth after picks over the pairs) | %.2f |\n\n",
		$workers, $big, $per_pair;
}

print "Loopback; nginx logs at `notice`. Command for one part: `perl scripts/bench/scale.pl --only=idle`"
	. " (or `holds`, `memory`).\n\n";
section_idle() if $only{idle};
if ($only{holds}) {
	section_holds();
} else {
	print "### Zone mutex holds\n\nNot in this run: `scale.pl --only=holds` (full runs), "
		. "with the module built by `scripts/build.sh --lock-stats`.\n\n";
}
section_memory() if $only{memory};
