#!/usr/bin/perl

# Active health checks across the death of the checker and a reload, two
# workers, `interval=1s`:
#
# 1. The checking worker (the status page's zone `checker`) is SIGKILLed:
#    within two intervals (and a second) another live worker checks, every
#    server's last check is recent, and the backend sees no gap in its
#    checks longer than two intervals.
# 2. A reload keeps the health state: a server down before it is still down
#    right after it (requests skip it, its failed checks still counted),
#    and nothing logs it down again.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Health;
use Test::Nginx::Status;

# nginx_independent: the same code on each nginx; what differs (the probe
# on that nginx's connections) t/stream_check.t checks on each nginx.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent/)->plan(14);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

my $slow = $Test::Nginx::SLOW;
my ($rise, $fall) = (2, 3);
my $interval_ms = int(1000 * $slow + 0.5);
my $timeout_ms = int(500 * $slow + 0.5);
my $interval = $interval_ms / 1000;

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
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=$rise fall=$fall;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        location / { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

sub entry {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('u');
	return $e // {};
}

sub health { entry($_[0])->{health} // 'none' }
sub checker { status()->{zone}{checker} // 0 }


###############################################################################

health_dir($t);
set_health($_) for values %id;
unlink map { health_dir() . "/$_.hits" } values %id;
$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $id{$_}) for sort keys %id;
$t->waitforsocket(addr($_)) for sort keys %id;
$t->run();

ok(wait_until(sub { health(8081) eq 'up' && health(8082) eq 'up' }, 2 + 2 * $interval),
	'both servers up after their first checks') or diag(explain([health_entries('u')]));

###############################################################################

# 1. SIGKILL the checker.
my $victim = checker();
my $valid = $victim && grep({ $_ == $victim } $t->worker_pids());
ok($valid, "the zone's checker ($victim) is a worker");
SKIP: {
	# kill() with pid 0 would signal this test's own process group.
	skip 'no checker to kill', 6 unless $valid;

	# Some checks before the kill, to see the gap around it.
	my $before = time();
	wait_until(sub { grep({ $_ >= $before } hits('b1')) >= 2 }, 4 * $interval + 2);
	kill 'KILL', $victim;
	my $killed = time();
	wait_until(sub { !kill(0, $victim) || `cat /proc/$victim/stat 2>/dev/null` =~ /^\d+ \(.*\) Z/ }, 5);

	my ($new, @ages) = (0);
	my $taken = wait_until(sub {
		$new = checker();
		return 0 unless $new && $new != $victim && kill(0, $new);
		my @e = grep { $_->{check} } health_entries('u');
		@ages = map { $_->{check}{last_ms_ago} // 1e9 } @e;
		return @e == 2 && !grep { $_ >= 2000 * $slow } @ages;
	}, 2 * $interval / $slow + 1);
	my $took = time() - $killed;
	ok($taken, sprintf('%.2f s after the kill another worker (%s) checks', $took, $new || 'none'));
	ok($took <= 2 * $interval + 1 * $slow, 'within two intervals and a second');
	ok(scalar(grep { $_ == $new } $t->worker_pids()), 'a live worker of nginx');
	ok(@ages == 2 && !grep({ $_ >= 2000 * $slow } @ages),
		'every server\'s last check under 2 s ago: ' . join(', ', @ages) . ' ms');

	# The checks go on: look at the gaps around the kill.
	ok(wait_until(sub { grep({ $_ >= $killed } hits('b1')) >= 3 }, 6 * $interval + 2), 'b1 checked 3 times since');
	my @around = grep { $_ >= $before } hits('b1');
	my @gaps = map { $around[$_] - $around[$_ - 1] } 1 .. $#around;
	my ($widest) = sort { $b <=> $a } @gaps;
	ok(defined $widest && $widest <= 2 * $interval,
		sprintf('no gap between checks over two intervals (widest %.2f s)', $widest // -1));
}

###############################################################################

# 2. A reload keeps the state.
my $mark = $t->log_mark();
set_health('b2', '503');
ok(wait_until(sub { health(8082) eq 'down' }, 2 + ($fall + 1) * $interval), 'b2 down');
my $fails = entry(8082)->{check}{fails} // 0;
ok($fails >= $fall, "after $fails failed checks");
is(scalar($t->log_lines($mark, qr/upstream "u": server \Q$B2\E is down \(/)), 1, 'logged down once');

$mark = $t->log_mark();
$t->reload();
my $reloaded = time();
my %by;
for (1 .. 10) {
	my ($b) = http_get('/') =~ /^X-Backend:\s*(\S+)/mi;
	$by{$b // 'none'}++;
}
my $e = entry(8082);
ok(($by{b1} // 0) == 10, 'right after the reload, 10 requests all on b1: '
	. join(', ', map { "$_=$by{$_}" } sort keys %by));
ok(($e->{health} // '') eq 'down' && ($e->{check}{fails} // 0) >= $fails,
	sprintf('status: b2 still down, %s failed checks (%d before)', $e->{check}{fails} // 'no', $fails))
	or diag(explain($e));

# The new workers go on from that state: no second "down" verdict.
wait_until(sub { grep({ $_ >= $reloaded } hits('b2')) >= 2 }, 4 * $interval + 2);
is(scalar($t->log_lines($mark, qr/upstream "u": server \Q$B2\E is down \(/)), 0,
	'after 2 more checks nothing logs b2 down again');

###############################################################################
