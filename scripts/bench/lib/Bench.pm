package Bench;

# What the benchmark scripts share: the method under test as config lines,
# upstream server lists, the "ok" backend nginx, medians, CPU times,
# waiting for a quiet machine, and reading nginx under callgrind.

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/method_conf servers ok_backend median wrk held_backends scaled websocket_conf
	cpu_now wait_quiet callgrind_nginx stop_callgrind_nginx pick_edge total_ir/;

use POSIX qw/:sys_wait_h/;
use Time::HiRes qw/sleep time/;
use Test::Nginx;

# Benchmarks measure the module, not nginx's debug lines: the harness logs
# at `notice` here unless told otherwise.
BEGIN { $ENV{TEST_NGINX_LOG_LEVEL} //= 'notice'; }

# (http-level line, upstream-level lines) for 'stock' (`least_conn; zone`)
# or 'persistent' (`least_conn_persistent` and its zone).
sub method_conf {
	my ($method, %size) = @_;
	return $method eq 'stock'
		? ('', "least_conn;\n        zone stock " . ($size{stock} // '1m') . ";")
		: ('least_conn_persistent_zone lcp ' . ($size{zone} // '1m') . ';',
			'least_conn_persistent;');
}

# A harness with three backends (a, b, c) on the symbolic ports given,
# served by $serve (Test::Nginx::Backend's or Test::Nginx::Hold's), up.
sub held_backends {
	my ($serve, @ports) = @_;
	my @names = qw/a b c/;
	my $t = Test::Nginx->new();
	$t->run_daemon($serve, port($ports[$_]), $names[$_]) for 0 .. $#ports;
	$t->waitforsocket('127.0.0.1:' . port($_)) for @ports;
	return $t;
}

# Writes $t's nginx.conf: two workers proxying WebSockets on port 8080 to
# upstream u, balanced by $line (with $zone at http level), over the
# backends on @ports.
sub websocket_conf {
	my ($t, $zone, $line, @ports) = @_;
	my $ups = join "\n", map { "        server 127.0.0.1:$_;" } @ports;
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 2;
worker_rlimit_nofile 8192;
events {
    worker_connections 4096;
}
http {
    %%TEST_GLOBALS_HTTP%%
    $zone
    upstream u {
        $line
$ups
    }
    server {
        listen 127.0.0.1:8080 reuseport;
        location / {
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
    }
}
EOF
}

# $n connections, or a fifth of them with --quick among the arguments.
sub scaled {
	my ($n) = @_;
	my $quick = grep { $_ eq '--quick' } @ARGV;
	return int($n * ($quick ? 0.2 : 1) + 0.5);
}

# `server` lines for $n consecutive loopback ports from $first.
sub servers {
	my ($first, $n, $params) = @_;
	$params = $params ? " $params" : '';
	return join "\n", map { "        server 127.0.0.1:" . ($first + $_) . "$params;" } 0 .. $n - 1;
}

# A one-worker nginx answering "ok" on $n loopback ports from $first, on
# CPU $cpu (0 when not given). Options: `health => 1` answers /health with
# 200 (and `health_header => 'Name value'` adds that header to it);
# `stub_status => 1` serves nginx's counters at /backend_status.
sub ok_backend {
	my ($first, $n, $cpu, %opt) = @_;
	my $mask = $cpu ? '10' : '01';
	my $b = Test::Nginx->new();
	my $listens = join "\n", map { "        listen 127.0.0.1:" . ($first + $_) . ";" } 0 .. $n - 1;
	my $extra = '';
	if ($opt{health}) {
		my $header = $opt{health_header} ? "add_header $opt{health_header}; " : '';
		$extra .= "        location = /health { ${header}return 200 \"ok\"; }\n";
	}
	$extra .= "        location = /backend_status { stub_status; }\n" if $opt{stub_status};
	$b->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 1;
worker_cpu_affinity $mask;
worker_rlimit_nofile 16384;
events {
    worker_connections 8192;
}
http {
    %%TEST_GLOBALS_HTTP%%
    keepalive_requests 1000000;
    server {
$listens
        location / { return 200 "ok"; }
$extra    }
}
EOF
	return $b->run();
}

# Requests per second wrk measures through the proxy on port(8080), on CPU 1,
# for $duration seconds (after a 1 s warm-up of the keepalive caches unless
# $quick). Dies on errors or non-2xx answers.
sub wrk {
	my ($duration, $quick) = @_;
	my $url = 'http://127.0.0.1:' . port(8080) . '/';
	`taskset -c 1 wrk -t1 -c32 -d1s $url 2>&1` unless $quick;
	my $out = `taskset -c 1 wrk -t1 -c32 -d${duration}s $url 2>&1`;
	die "wrk failed:\n$out" unless $out =~ /Requests\/sec:\s+([\d.]+)/;
	my $rps = $1;
	die "errors during wrk:\n$out" if $out =~ /Non-2xx or 3xx responses/;
	return $rps;
}

# CPU used so far by each process: { pid => [utime + stime in clock ticks,
# ns on CPU from schedstat (exact, where ticks are sampled), stime ticks] }.
sub cpu_now {
	my %cpu;
	for my $pid (@_) {
		open my $st, '<', "/proc/$pid/stat" or next;
		my ($rest) = (<$st> // '') =~ /\) (.*)$/ or next;
		my @f = split ' ', $rest;    # from field 3 (state): utime is field 14
		open my $ss, '<', "/proc/$pid/schedstat" or next;
		my ($ns) = split ' ', <$ss> // '';
		$cpu{$pid} = [$f[11] + $f[12], $ns // 0, $f[12]];
	}
	return \%cpu;
}

# Waits until the machine is quiet: the 1-minute load below $max (0.6) for
# 30 s in a row, polled every 10 s, for at most $give_up s (20 minutes);
# says on STDERR what it waits for. Returns '' when quiet, else a sentence
# for the output saying it was not.
sub wait_quiet {
	my ($what, $max, $give_up) = @_;
	($max, $give_up) = ($max // 0.6, $give_up // 1200);
	my ($start, $quiet_since) = (time(), undef);
	while (1) {
		open my $fh, '<', '/proc/loadavg' or return '';
		my ($load) = split ' ', <$fh>;
		$quiet_since = $load < $max ? $quiet_since // time() : undef;
		return '' if defined $quiet_since && time() - $quiet_since >= 30;
		if (time() - $start >= $give_up) {
			print STDERR "$what: load still $load after $give_up s: measuring anyway\n";
			return "The machine was not quiet before $what: the 1-minute load was still $load after "
				. sprintf('%.0f', $give_up / 60) . " minutes of waiting for it to stay below $max"
				. " for 30 s; measured anyway.";
		}
		print STDERR "$what: load $load, waiting for it to stay below $max for 30 s\n";
		sleep 10;
	}
}

# Starts $t's nginx (its nginx.conf written) as one process under
# `valgrind --tool=callgrind`, profiling to $out; returns its pid once it
# listens on port(8080).
sub callgrind_nginx {
	my ($t, $out) = @_;
	my $pid = fork() // die "fork: $!\n";
	if ($pid == 0) {
		open STDOUT, '>', '/dev/null';
		open STDERR, '>', $t->testdir() . '/valgrind.log';
		exec 'valgrind', '--tool=callgrind', "--callgrind-out-file=$out",
			'--dump-instr=yes', '--compress-strings=no', '--compress-pos=no',
			$t->nginx_cmd('-g', 'daemon off; master_process off;');
		die "exec valgrind: $!\n";
	}
	$t->waitforsocket('127.0.0.1:' . port(8080)) or die "nginx under valgrind did not start\n";
	return $pid;
}

# QUIT, and TERM if nginx has not exited 30 s later (nginx 1.28 in single
# process mode can miss a QUIT sent right after it started); either way
# nginx exits normally and valgrind writes its profile.
sub stop_callgrind_nginx {
	my ($pid) = @_;
	kill 'QUIT', $pid;
	for (1 .. 300) {
		return if waitpid($pid, WNOHANG) == $pid;
		sleep 0.1;
	}
	kill 'TERM', $pid;
	waitpid($pid, 0);
}

# (name of peer.get, calls, inclusive Ir) from a callgrind output file: the
# function ngx_event_connect_peer() calls first (`rc = pc->get(pc,
# pc->data)`), its inclusive cost on that call edge. Where that call site
# reaches more than one function (a health check's connection has a get of
# its own), the one whose name matches $want.
sub pick_edge {
	my ($file, $want) = @_;
	open my $fh, '<', $file or die "$file: $!\n";
	my ($fn, $cfn, $calls, $pending);
	my %edge;    # call-site address => { callee => [calls, Ir] }
	while (my $l = <$fh>) {
		chomp $l;
		if ($l =~ /^fn=(.*)/) { $fn = $1; next }
		next unless defined $fn && $fn eq 'ngx_event_connect_peer';
		if ($l =~ /^cfn=(.*)/) { $cfn = $1; next }
		if ($l =~ /^calls=(\d+)/) { $calls = $1; $pending = 1; next }
		if ($pending && $l =~ /^(0x[0-9a-f]+|\d+)\s.*?(\d+)$/) {
			my $e = $edge{hex($1)}{$cfn} //= [0, 0];
			$e->[0] += $calls;
			$e->[1] += $2;
			$pending = 0;
		}
	}
	my ($first) = sort { $a <=> $b } keys %edge;
	die "no calls from ngx_event_connect_peer in $file\n" unless defined $first;
	my @callees = keys %{$edge{$first}};
	@callees = grep { /$want/ } @callees if @callees > 1 && defined $want;
	die "pc->get reaches " . join(', ', @callees) . " in $file\n" unless @callees == 1;
	return ($callees[0], @{$edge{$first}{$callees[0]}});
}

# Instructions the whole nginx process executed, from a callgrind file.
sub total_ir {
	my ($file) = @_;
	open my $fh, '<', $file or die "$file: $!\n";
	while (<$fh>) {
		return $1 if /^(?:summary|totals): (\d+)/;
	}
	die "no totals in $file\n";
}

sub median {
	my @v = sort { $a <=> $b } @_;
	return $v[int(@v / 2)];
}

1;
