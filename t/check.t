#!/usr/bin/perl

# Active health checks (`least_conn_persistent_check`), two workers, two
# backends whose /health answers the test changes (Test::Nginx::Health):
#
# a. fail and recover: 503 marks a server down after exactly `fall` failed
#    checks (one log line, from the one checker), picks skip it; 200 brings
#    it back after exactly `rise` passed ones. One checker: the hit rate is
#    one per interval, not one per worker.
# b. all down: 502 and "no live upstreams", as stock with every server down.
# c. drain (capacity answer) with WebSockets: no new ones, the held ones
#    kept, echoing and counted; plain 200 again takes new ones.
# d. overrides: weight=3 and maxconn=2 from the capacity answer, shown
#    beside the configured values, used by the picks, gone with the header.
# e. reported load: X-Connections above our count makes the server look
#    that much busier (excess = reported - ours at the answer); 0 undoes it;
#    a report equal to our count adds nothing.
# f. malformed capacity: the check passes, nothing changes, one [warn] per
#    server per change, not one per check or per worker.
# g. bad and slow answers: garbage and a close count as failures, a slow
#    answer within the timeout passes, one past it fails with "timeout".
# h. a check target that never answers: down after fall checks timed out,
#    requests meanwhile not held up, no connections leaked.
#
# TEST_CHECK_QUICK=1 (scripts/memcheck.sh) runs a and h only. Intervals
# and timeouts scale with TEST_NGINX_SLOW.

use warnings;
use strict;

use Test::More;
use List::Util qw/max/;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Health;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

# nginx_independent: the same code on each nginx; what differs (the probe
# on that nginx's connections) t/stream_check.t checks on each nginx.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent/)->plan(9);

my $slow = $Test::Nginx::SLOW;
my $quick = $ENV{TEST_CHECK_QUICK};
my ($rise, $fall) = (2, 3);
my $interval_ms = int(300 * $slow + 0.5);
my $timeout_ms = int(250 * $slow + 0.5);
my ($interval, $timeout) = ($interval_ms / 1000, $timeout_ms / 1000);
# Long enough for `fall` (or `rise`) checks, each up to interval + timeout
# apart with jitter, plus a margin (wait_until scales it once more).
my $verdict_wait = 2 + max($rise, $fall) * ($interval + $timeout) / $slow;

my %id = (8081 => 'b1', 8082 => 'b2');
my ($B1, $B2) = (addr(8081), addr(8082));

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=$rise fall=$fall load=X-Connections;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location / { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

###############################################################################

# The status JSON entry of a server of u ({} when missing).
sub entry {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('u');
	return $e // {};
}

sub health { entry($_[0])->{health} // 'none' }
sub check_of { entry($_[0])->{check} // {} }

# Waits until $cond holds for the entry of $port; the last entry seen.
sub wait_entry {
	my ($port, $cond, $wait) = @_;
	my $last = {};
	my $ok = wait_until(sub { $last = entry($port); $cond->($last) }, $wait // $verdict_wait);
	return ($ok, $last);
}

sub wait_health {
	my ($port, $state) = @_;
	my ($ok, $e) = wait_entry($port, sub { ($_[0]{health} // '') eq $state });
	diag(explain($e)) unless $ok;
	return $ok;
}

sub wait_result {
	my ($port, $result) = @_;
	my ($ok, $e) = wait_entry($port, sub { ($_[0]{check}{result} // '') eq $result });
	diag(explain($e)) unless $ok;
	return ($ok, $e);
}

sub down_re { qr/\[warn\].*upstream "u": server \Q${\addr($_[0])}\E is down \($_[1] failed checks, last: / }
sub up_re { qr/\[notice\].*upstream "u": server \Q${\addr($_[0])}\E is up \($_[1] passed checks\)/ }
sub any_down_re { qr/upstream "u": server \Q${\addr($_[0])}\E is down \(/ }
sub any_up_re { qr/upstream "u": server \Q${\addr($_[0])}\E is up \(/ }


# Open file descriptors of a process (undef when unreadable).
sub fd_count {
	my ($pid) = @_;
	opendir my $d, "/proc/$pid/fd" or return undef;
	my $n = grep { !/^\./ } readdir $d;
	closedir $d;
	return $n;
}

# Every WebSocket closed and every count back to 0.
sub close_all {
	ws_close(@_);
	return at_rest(5);
}

sub reset_health {
	set_health($_) for values %id;
	ok(wait_until(sub { health(8081) eq 'up' && health(8082) eq 'up' }, $verdict_wait),
		'reset: both servers up');
}

###############################################################################

health_dir($t);
set_health($_) for values %id;
unlink map { health_dir() . "/$_.hits" } values %id;
$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $id{$_}) for sort keys %id;
$t->waitforsocket(addr($_)) for sort keys %id;
$t->run();

my $t0;
subtest 'first checks' => sub {
	ok(wait_until(sub { health(8081) eq 'up' && health(8082) eq 'up' }, $verdict_wait),
		'both servers up after their first checks') or diag(explain([health_entries('u')]));
	$t0 = time();
	my $c = check_of(8082);
	is($c->{result}, 'ok', 'result ok');
	is($c->{status}, 200, 'http status 200');
	is($c->{fails}, 0, 'no fails');
	ok(($c->{passes} // 0) >= 1, "passes: " . ($c->{passes} // 'none'));
	ok(defined $c->{last_ms_ago} && $c->{last_ms_ago} < 3 * $interval_ms,
		'last check ' . ($c->{last_ms_ago} // 'never') . ' ms ago');
	ok(defined $c->{duration_ms} && $c->{duration_ms} < $timeout_ms, 'duration ' . ($c->{duration_ms} // 'none') . ' ms');
	my $checker = status()->{zone}{checker} // 0;
	ok(scalar(grep { $_ == $checker } $t->worker_pids()), "zone checker $checker is a worker");
};

###############################################################################

# a, then b while b2 is still down (one down/up cycle for both), then a's
# recovery.
my $mark = $t->log_mark();

subtest 'a. fail' => sub {
	set_health('b2', '503');
	ok(wait_until(sub { $t->log_lines($mark, any_down_re(8082)) }, $verdict_wait), 'b2 is logged down');
	my @lines = $t->log_lines($mark, any_down_re(8082));
	like($lines[0] // '', down_re(8082, $fall), "after exactly $fall failed checks, a [warn]");
	my $e = entry(8082);
	is($e->{health}, 'down', 'JSON: health down');
	ok(($e->{check}{fails} // 0) >= $fall, "JSON: check.fails " . ($e->{check}{fails} // 'none'));
	is($e->{check}{passes}, 0, 'JSON: check.passes 0');
	is($e->{check}{result}, 'bad status', 'JSON: result "bad status"');
	is($e->{check}{status}, 503, 'JSON: status 503');
	my $by = request_tally(20);
	is($by->{b1} // 0, 20, '20 requests, all answered by b1: ' . tally_text($by));
};

SKIP: {
	skip 'TEST_CHECK_QUICK', 1 if $quick;
	subtest 'b. all down' => sub {
		set_health('b1', '503');
		ok(wait_until(sub { $t->log_lines($mark, any_down_re(8081)) }, $verdict_wait), 'b1 is logged down too');
		is(health(8081), 'down', 'JSON: b1 down');
		my $bmark = $t->log_mark();
		my $r = http_get('/');
		like($r, qr{^HTTP/1\.1 502 }, 'every server down: 502');
		ok(wait_until(sub { $t->log_since($bmark) =~ /\[error\].*no live upstreams/ }, 2),
			'the log says "no live upstreams"');
		set_health('b1');
		ok(wait_until(sub { $t->log_lines($mark, any_up_re(8081)) }, $verdict_wait), 'b1 is logged up');
		like(($t->log_lines($mark, any_up_re(8081)))[0] // '', up_re(8081, $rise), "after exactly $rise passed checks");
		like(http_get('/'), qr{^HTTP/1\.1 200 }, 'a server up again: 200');
	};
}

subtest 'a. recover' => sub {
	set_health('b2');
	ok(wait_until(sub { $t->log_lines($mark, any_up_re(8082)) }, $verdict_wait), 'b2 is logged up');
	my @lines = $t->log_lines($mark, any_up_re(8082));
	like($lines[0] // '', up_re(8082, $rise), "after exactly $rise passed checks, a [notice]");
	is(health(8082), 'up', 'JSON: health up');
	my $by = request_tally(20);
	ok(($by->{b2} // 0) > 0 && ($by->{b1} // 0) > 0 && !grep({ /status/ } keys %$by),
		'20 requests reach both again: ' . tally_text($by));
	# One checker: as many hits as intervals, whoever holds the lease.
	my $window = 10 * $interval;
	wait_until(sub { time() > $t0 + $window }, 2 * $window / $slow);
	my $n = grep { $_ >= $t0 && $_ < $t0 + $window } hits('b2');
	ok($n >= 5 && $n <= 14, sprintf('b2 got %d health checks in %.1f s (one checker, every %d ms)',
		$n, $window, $interval_ms));
	# Each verdict once, though two workers see it.
	is(scalar($t->log_lines($mark, any_down_re(8082))), 1, 'exactly one "is down" line for b2');
	is(scalar($t->log_lines($mark, any_up_re(8082))), 1, 'exactly one "is up" line for b2');
	is(scalar($t->log_lines($mark, any_down_re(8081))), $quick ? 0 : 1, 'and one for b1 (b)');
};

###############################################################################

SKIP: {
	skip 'TEST_CHECK_QUICK', 1 if $quick;
	subtest 'c. drain with WebSockets' => sub {
		my @ws = ws_open_many(10, '/');
		my $first = tally(@ws);
		ok(($first->{b1} // 0) > 0 && ($first->{b2} // 0) > 0, '10 WebSockets on both: ' . tally_text($first));
		my $cmark = $t->log_mark();
		set_health('b2', '200', 'X-LCP-Capacity: drain');
		ok(wait_health(8082, 'drain'), 'JSON: b2 health drain');
		ok(wait_until(sub {
			$t->log_lines($cmark, qr/\[notice\].*upstream "u": server \Q$B2\E drains \(capacity answer\)/) }, 2),
			'the log: b2 drains (capacity answer)');
		my $held = counts('u')->{$B2};
		is($held, $first->{b2}, "b2 still counts its $first->{b2}");
		my @more = ws_open_many(10, '/');
		is(tally_text(tally(@more)), 'b1=10', '10 new WebSockets all on b1');
		my @on_b2 = grep { $_->{backend} eq 'b2' } @ws;
		is(scalar(grep { (ws_echo($_, 'ping') // '') eq 'b2:ping' } @on_b2), scalar @on_b2,
			"b2's WebSockets still echo");
		is(counts('u')->{$B2}, $held, 'b2 count unchanged');
		is(live_count(port(8082)), $held, 'b2 really holds them');
		set_health('b2');
		ok(wait_until(sub {
			$t->log_lines($cmark, qr/\[notice\].*upstream "u": server \Q$B2\E takes new connections again \(capacity answer\)/) },
			$verdict_wait), 'the log: b2 takes new connections again');
		is(health(8082), 'up', 'JSON: b2 up');
		my @back = ws_open_many(10, '/');
		my $b = tally(@back);
		ok(($b->{b2} // 0) >= 8, "new WebSockets reach b2 (holding $held against b1's "
			. (20 - $held) . '): ' . tally_text($b));
		ok(close_all(@ws, @more, @back), 'all closed, counts back to 0');
	};
}

###############################################################################

SKIP: {
	skip 'TEST_CHECK_QUICK', 1 if $quick;
	subtest 'd. overrides' => sub {
		set_health('b1', '200', 'X-LCP-Capacity: weight=3');
		my ($ok, $e) = wait_entry(8081, sub { ($_[0]{override}{weight} // 0) == 3 });
		ok($ok, 'JSON: b1 override weight 3') or diag(explain($e));
		is_deeply($e->{override}, { weight => 3 }, 'only the weight is overridden');
		is($e->{weight}, 1, 'beside the configured weight 1');
		ok(!exists entry(8082)->{override}, 'b2: no override');
		my @ws = ws_open_many(40, '/');
		my $w = tally(@ws);
		ok(abs(($w->{b1} // 0) - 30) <= 4 && abs(($w->{b2} // 0) - 10) <= 4, '40 WebSockets about 30/10: ' . tally_text($w));
		ok(close_all(@ws), 'closed');

		set_health('b1');
		set_health('b2', '200', 'X-LCP-Capacity: maxconn=2');
		($ok, $e) = wait_entry(8082, sub { ($_[0]{override}{max_conns} // -1) == 2 });
		ok($ok, 'JSON: b2 override max_conns 2') or diag(explain($e));
		is_deeply($e->{override}, { max_conns => 2 }, 'only max_conns is overridden');
		is($e->{max_conns}, 0, 'beside the configured max_conns 0');
		($ok, $e) = wait_entry(8081, sub { !exists $_[0]{override} });
		ok($ok, 'b1 without the header: no override') or diag(explain($e));
		my ($most, @capped) = (0);
		for (1 .. 10) {
			push @capped, ws_open('/') // last;
			$most = max($most, counts('u')->{$B2} // 0);
		}
		is(scalar @capped, 10, '10 WebSockets opened');
		my $c = tally(@capped);
		ok(($c->{b2} // 0) <= 2 && $most <= 2, "b2 never holds more than 2 (at most $most): " . tally_text($c));
		is($c->{b2} // 0, 2, 'and takes its 2');
		set_health('b2');
		($ok, $e) = wait_entry(8082, sub { !exists $_[0]{override} });
		ok($ok, 'b2 without the header: no override') or diag(explain($e));
		ok(close_all(@capped), 'closed');
	};
}

###############################################################################

SKIP: {
	skip 'TEST_CHECK_QUICK', 1 if $quick;
	subtest 'e. reported load' => sub {
		set_health('b2', '200', 'X-Connections: 50');
		my ($ok, $e) = wait_entry(8082, sub { ($_[0]{reported}{connections} // -1) == 50 });
		ok($ok, 'JSON: b2 reports 50') or diag(explain($e));
		is_deeply($e->{reported}, { connections => 50, excess => 50 }, 'excess 50 over our 0');
		is(health(8082), 'up', 'b2 is up');
		my @ws = ws_open_many(20, '/');
		is(tally_text(tally(@ws)), 'b1=20', 'the next 20 WebSockets all on b1');

		set_health('b2', '200', 'X-Connections: 0');
		($ok, $e) = wait_entry(8082, sub { ($_[0]{reported}{connections} // -1) == 0 });
		ok($ok, 'JSON: b2 reports 0') or diag(explain($e));
		is($e->{reported}{excess}, 0, 'excess 0');
		my @more = ws_open_many(10, '/');
		my $m = tally(@more);
		ok(($m->{b2} // 0) >= 8, 'balance resumes: ' . tally_text($m));

		# A report equal to our own count adds nothing.
		my $ours = counts('u')->{$B2};
		set_health('b2', '200', "X-Connections: $ours");
		($ok, $e) = wait_entry(8082, sub { ($_[0]{reported}{connections} // -1) == $ours });
		ok($ok, "JSON: b2 reports $ours, what we hold") or diag(explain($e));
		is($e->{reported}{excess}, 0, 'excess 0');
		my @last = ws_open_many(4, '/');
		is(tally_text(tally(@last)), 'b2=4', "4 more on b2 ($ours against b1's 20)");
		set_health('b2');
		ok(close_all(@ws, @more, @last), 'closed');
	};
}

###############################################################################

# f on b1 while g runs on b2.
SKIP: {
	skip 'TEST_CHECK_QUICK', 1 if $quick;
	subtest 'f. malformed capacity, g. bad and slow answers' => sub {
		my $fmark = $t->log_mark();
		my $since = time();
		my $warn_b1 = qr/\[warn\].*upstream "u": server \Q$B1\E: capacity answer "([^"]*)" ignored: \S/;
		set_health('b1', '200', 'X-LCP-Capacity: maxconn=abc');
		ok(wait_until(sub { $t->log_lines($fmark, $warn_b1) }, $verdict_wait), 'b1: a [warn] for "maxconn=abc"');
		like(($t->log_lines($fmark, $warn_b1))[0] // '', qr/"maxconn=abc"/, 'naming the text');

		# g: b2 meanwhile.
		set_health('b2', 'garbage');
		my ($ok, $e) = wait_result(8082, 'bad response');
		ok($ok, 'garbage: result "bad response"');
		ok(($e->{check}{fails} // 0) >= 1 && ($e->{check}{passes} // -1) == 0, 'a failed check');
		is($e->{check}{status}, 0, 'no http status');
		set_health('b2', 'close');
		($ok, $e) = wait_result(8082, 'closed early');
		ok($ok && ($e->{check}{fails} // 0) >= 1, 'closed without an answer: a failed check, "closed early"');
		set_health('b2', 'slow 100');
		($ok, $e) = wait_entry(8082, sub { ($_[0]{check}{result} // '') eq 'ok' && $_[0]{health} eq 'up' });
		ok($ok, 'slow 100 ms (within the timeout): passes, b2 up') or diag(explain($e));
		ok(($e->{check}{duration_ms} // 0) >= 90, 'duration ' . ($e->{check}{duration_ms} // 'none') . ' ms');
		set_health('b2', 'slow ' . 4 * $timeout_ms);
		($ok, $e) = wait_result(8082, 'timeout');
		ok($ok, 'slow ' . 4 * $timeout_ms . ' ms (past the timeout): result "timeout"');
		ok(($e->{check}{fails} // 0) >= 1, 'a failed check');
		ok(($e->{check}{duration_ms} // 0) >= $timeout_ms - 10 && $e->{check}{duration_ms} < 2 * $timeout_ms + 50,
			'after the timeout: ' . ($e->{check}{duration_ms} // 'none') . ' ms');

		# f: ten intervals of the same bad line: still one warning.
		ok(wait_until(sub { grep({ $_ >= $since } hits('b1')) >= 11 }, 20 * $interval + 2),
			'b1 answered maxconn=abc to 10 more checks');
		is(scalar($t->log_lines($fmark, qr/\[warn\].*capacity answer .* ignored/)), 1, 'exactly one warning');
		$e = entry(8081);
		is($e->{health}, 'up', 'b1 passes its checks');
		is($e->{check}{result}, 'ok', 'result ok');
		ok(!exists $e->{override}, 'no override');
		set_health('b1', '200', 'X-LCP-Capacity: frobnicate');
		ok(wait_until(sub { $t->log_lines($fmark, $warn_b1) >= 2 }, $verdict_wait), 'another bad text: a second warning');
		like(($t->log_lines($fmark, $warn_b1))[1] // '', qr/"frobnicate"/, 'naming it');
		reset_health();
	};
}

###############################################################################

subtest 'h. never answers' => sub {
	my @pids = $t->worker_pids();
	my %fd = map { ($_ => fd_count($_)) } @pids;
	ok(!grep({ !defined $fd{$_} } @pids), 'open files of the workers readable: ' . join(', ', map { "$_: " . ($fd{$_} // '?') } @pids));
	my $hmark = $t->log_mark();
	my $set = time();
	set_health('b2', 'hang');
	my ($worst, $on_b1) = (0, 0);
	my $down = wait_until(sub {
		my $start = time();
		my $r = http_get('/');
		$worst = max($worst, time() - $start);
		$on_b1++ if $r =~ /^X-Backend: b1/mi;
		$t->log_lines($hmark, any_down_re(8082));
	}, $verdict_wait + $fall * $timeout);
	my $took = time() - $set;
	ok($down, sprintf('b2 is logged down %.2f s after it stopped answering', $took));
	like(($t->log_lines($hmark, any_down_re(8082)))[0] // '', qr/\($fall failed checks, last: timeout/, 'last: timeout');
	# fall checks: the first at once at best, the last one interval (less
	# 10% jitter) after the one before, then its timeout.
	my $least = ($fall - 1) * 0.9 * $interval + $timeout - 0.05;
	my $most = $fall * ($interval + $timeout) + 1 * $slow;
	ok($took >= $least && $took <= $most, sprintf('within %.2f-%.2f s', $least, $most));
	my $e = entry(8082);
	is($e->{health}, 'down', 'JSON: down');
	is($e->{check}{result}, 'timeout', 'JSON: result "timeout"');
	is($e->{check}{status}, 0, 'JSON: no http status');
	ok($on_b1 > 0 && $worst < 0.3 * $slow, sprintf('requests meanwhile (%d on b1) answered within %.0f ms', $on_b1, 1000 * $worst));

	ok(wait_until(sub { grep({ $_ >= $set } hits('b2')) >= 10 }, 20 * ($interval + $timeout) + 2),
		'10 checks that never got an answer');
	my %now = map { ($_ => fd_count($_)) } @pids;
	ok(!grep({ !defined $now{$_} || $now{$_} > ($fd{$_} // 0) + 5 } @pids),
		'no connections leaked: ' . join(', ', map { "$_: " . ($fd{$_} // '?') . ' -> ' . ($now{$_} // '?') } @pids));
	ok(wait_until(sub { live_count(port(8082)) >= 0 }, 2), 'b2 still serves');
	my $back = $t->log_mark();
	set_health('b2');
	ok(wait_until(sub { $t->log_lines($back, any_up_re(8082)) }, $verdict_wait), 'answering again: b2 up');
};

###############################################################################
