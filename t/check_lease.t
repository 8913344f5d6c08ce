#!/usr/bin/perl

# The checks' lease when the checking worker cannot check, or stalls:
#
# a. One worker whose connections are nearly all taken by WebSockets
#    (`worker_connections 128`, the last 1/16 left to clients): its checks
#    pause, it says so in the log (a notice at once, a [warn] once no
#    other worker took them over) and on the status page
#    (`"checks_paused":true`); a server answering 503 meanwhile is not
#    taken down by "no connection" results. The WebSockets closed, the
#    checks resume and the server goes down.
# b. Two workers: the checker filled with WebSockets (the test keeps only
#    those that land on it) pauses, and the other worker, with room, takes
#    the checks over at once: a server answering 503 goes down.
# d. One worker with a few connections to spare, most of them held by
#    probes of servers that never answer: the probe of a server answering
#    503 waits for a connection (rather than end "no connection" and leave
#    its server unchecked until its next interval, for good): it goes down.
# c. A checker stopped (SIGSTOP) past its lease: another worker takes the
#    checks over; resumed (SIGCONT), the stopped one probes nothing more
#    (its sleeps expired while it was stopped, before its tick saw the
#    lease gone) and records nothing.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Health;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(4);

my $slow = $Test::Nginx::SLOW;
my $interval_ms = int(400 * $slow + 0.5);
my $timeout_ms = int(300 * $slow + 0.5);
# The servers checked in c: many, so that some check is due before the
# stopped checker's next tick when it resumes.
my @dead = map { 8090 + $_ } 0 .. 23;

# Case c checks the @dead servers (a and b keep the worker's connections
# for the WebSockets).
sub conf {
	my ($workers, $many) = @_;
	my $dead = join("\n", map { "        server 127.0.0.1:$_;" } $many ? @dead : $dead[0]);
	return <<"EOF";

%%TEST_GLOBALS%%

worker_processes $workers;

events {
    worker_connections 128;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=1 fall=2;
        server 127.0.0.1:8081;
    }

    upstream ws {
        least_conn_persistent;
        server 127.0.0.1:8082;
    }

    upstream many {
        least_conn_persistent;
        least_conn_persistent_check type=tcp interval=${interval_ms}ms timeout=${timeout_ms}ms;
$dead
    }

    server {
        listen       127.0.0.1:8080;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location / { proxy_pass http://ws; }
        location /u { proxy_pass http://u; }
        location /m { proxy_pass http://many; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

sub health_of {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('u');
	return ($e // {})->{health} // 'none';
}

sub zone { status()->{zone} // {} }

# Open file descriptors of a process.
sub fd_count {
	my ($pid) = @_;
	opendir my $d, "/proc/$pid/fd" or return 0;
	my $n = grep { !/^\./ } readdir $d;
	closedir $d;
	return $n;
}

# Opens WebSockets until $pid's checks pause (the log says so), keeping
# only those that land on $pid (its open files grow by two: the client's
# and the backend's). The ones kept.
sub fill_until_paused {
	my ($pid, $mark, $near) = @_;
	$near //= 50;
	my @kept;
	my $paused = sub { $t->log_lines($mark, qr/\b$pid#\d+: .*health checks paused in this worker/) };
	for (1 .. 400) {
		last if $paused->();
		last if @kept >= 62;
		# Near the end, one at a time: the checker's tick (every 100 ms)
		# must see it before the next, or the clients take the last
		# connections ("worker_connections are not enough").
		wait_until($paused, 0.3) if @kept >= $near;
		last if $paused->();
		my $before = fd_count($pid);
		my $ws = ws_open('/') or last;
		sleep(0.02);
		if (fd_count($pid) >= $before + 2) {
			push @kept, $ws;
		} else {
			ws_close($ws);
		}
	}
	return @kept;
}

###############################################################################

health_dir($t);
set_health('b1');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'b1');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b2');
$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1]) for [8083, 'h1'], [8084, 'h2'], [8085, 'h3'];
$t->waitforsocket(addr($_)) for 8081 .. 8085;

my $wait = 10;

subtest 'a. one worker with no connection to spare: paused, said, resumed' => sub {
	$t->write_file_expand('nginx.conf', conf(1));
	$t->run();
	ok(wait_until(sub { health_of(8081) eq 'up' }, $wait), 'b1 up');
	my ($pid) = $t->worker_pids();
	my $mark = $t->log_mark();
	my @ws = fill_until_paused($pid, $mark);
	ok(scalar($t->log_lines($mark, qr/\[notice\].*health checks paused in this worker: \d+ of 128 connections free/)),
		scalar(@ws) . ' WebSockets held: the checks pause, with a notice');
	set_health('b1', '503');
	ok(wait_until(sub { $t->log_lines($mark, qr/\[warn\].*health checks paused: no worker has a connection to spare/) }, $wait),
		'no other worker: a [warn]');
	my $z = zone();
	ok($z->{checks_paused}, 'status: checks_paused') or diag(explain($z));
	is($z->{checker}, $pid, 'status: the paused holder');
	sleep(4 * $interval_ms / 1000);
	is(health_of(8081), 'up', 'b1 answering 503 is not taken down by checks that cannot run');
	is(scalar($t->log_lines($mark, qr/\[warn\].*health checks paused/)), 1, 'warned once');
	ws_close(@ws);
	ok(wait_until(sub { $t->log_lines($mark, qr/\[notice\].*health checks resume/) }, $wait),
		'WebSockets closed: the checks resume');
	ok(wait_until(sub { health_of(8081) eq 'down' }, $wait), 'b1 goes down');
	ok(!zone()->{checks_paused}, 'status: not paused');
	set_health('b1');
	ok(wait_until(sub { health_of(8081) eq 'up' }, $wait), 'b1 up again');
	$t->stop();
};

subtest 'b. two workers: a worker with room takes paused checks over' => sub {
	$t->write_file_expand('nginx.conf', conf(2));
	$t->run();
	ok(wait_until(sub { health_of(8081) eq 'up' && zone()->{checker} }, $wait), 'b1 up, a checker');
	my $checker = zone()->{checker};
	my ($other) = grep { $_ != $checker } $t->worker_pids();
	my $mark = $t->log_mark();
	my @ws = fill_until_paused($checker, $mark);
	ok(scalar($t->log_lines($mark, qr/\b$checker#\d+: .*health checks paused in this worker/)),
		scalar(@ws) . " WebSockets on the checker $checker: its checks pause");
	ok(wait_until(sub { (zone()->{checker} // 0) == $other }, $wait), "worker $other took them over")
		or diag(explain(zone()));
	ok(!zone()->{checks_paused}, 'status: not paused');
	ok(wait_until(sub { $t->log_lines($mark, qr/\b$other#\d+: .*health checks run in this worker now/) }, $wait),
		'the new checker says so');
	set_health('b1', '503');
	ok(wait_until(sub { health_of(8081) eq 'down' }, $wait), 'b1 answering 503 goes down');
	is(scalar($t->log_lines($mark, qr/\[warn\].*health checks paused/)), 0, 'no [warn]: someone checks');
	ws_close(@ws);
	set_health('b1');
	$t->stop();
};

# worker_connections 32 (2 left to clients), three servers that accept
# and never answer, checked with timeout = interval (each probe holds its
# connection the whole interval, and takes it again at once), and b1.
sub conf_small {
	my $iv = int(1000 * $slow + 0.5);
	return <<"EOF";

%%TEST_GLOBALS%%

worker_processes 1;

events {
    worker_connections 32;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${iv}ms timeout=${iv}ms rise=1 fall=1;
        server 127.0.0.1:8081;
        server 127.0.0.1:8083;
        server 127.0.0.1:8084;
        server 127.0.0.1:8085;
    }

    upstream ws {
        least_conn_persistent;
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location / { proxy_pass http://ws; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

subtest 'd. a probe with no connection to spare waits for one' => sub {
	$t->write_file_expand('nginx.conf', conf_small());
	set_health($_) for qw/h1 h2 h3/;
	$t->run();
	ok(wait_until(sub { health_of(8081) eq 'up' }, $wait), 'b1 up');
	my ($pid) = $t->worker_pids();
	my $mark = $t->log_mark();
	# Filled to the line (the checks pause), then one WebSocket less: a
	# connection or two to spare.
	my @ws = fill_until_paused($pid, $mark, 0);
	ok(scalar($t->log_lines($mark, qr/health checks paused in this worker/)),
		scalar(@ws) . ' WebSockets: paused at the line');
	ws_close(pop @ws);
	ok(wait_until(sub { $t->log_lines($mark, qr/health checks resume/) }, $wait), 'one closed: resumed');
	set_health($_, 'hang') for qw/h1 h2 h3/;
	# Their probes hold the connections to spare, one after the other.
	ok(wait_until(sub { !grep { health_of($_) ne 'down' } 8083 .. 8085 }, $wait),
		'the three that never answer are down');
	sleep(2 * $slow);
	set_health('b1', '503');
	# Meanwhile no probe may end "no connection": each waits for one
	# (turns are handed as connections are to spare, one each).
	my %none;
	my $watch = sub {
		$none{$_->{server}}++ for grep { ($_->{check}{result} // '') eq 'no connection' } health_entries('u');
	};
	ok(wait_until(sub { $watch->(); health_of(8081) eq 'down' }, 3 * $wait), 'b1 answering 503 goes down')
		or diag(explain([health_entries('u')]));
	wait_until(sub { $watch->(); 0 }, 3);
	is(join(', ', sort keys %none), '', 'no check ended "no connection"');
	ws_close(@ws);
	set_health($_) for qw/b1 h1 h2 h3/;
	$t->stop();
};

# Never left stopped, whatever happens to the test.
my $stopped;
END { kill 'CONT', $stopped if $stopped }

SKIP: {
skip 'the probes are seen in debug lines: TEST_NGINX_LOG_LEVEL is not debug', 1
	if ($ENV{TEST_NGINX_LOG_LEVEL} // 'debug') ne 'debug';
subtest 'c. a checker stopped past its lease checks no more once resumed' => sub {
	$t->write_file_expand('nginx.conf', conf(2, 1));
	$t->run();
	ok(wait_until(sub { zone()->{checker} }, $wait), 'a checker');
	$stopped = zone()->{checker};
	my ($other) = grep { $_ != $stopped } $t->worker_pids();
	# Its checks are under way.
	sleep(3 * $interval_ms / 1000);
	my $stop_mark = $t->log_mark();
	kill 'STOP', $stopped;
	# Not through the status page: a stopped worker may be the one the
	# kernel hands the status request to.
	my $took = wait_until(sub { $t->log_lines($stop_mark, qr/\b$other#\d+: .*health checks run in this worker now/) }, $wait);
	ok($took, "worker $other took the checks over");
	sleep(2 * $interval_ms / 1000);
	my $mark = $t->log_mark();
	kill 'CONT', $stopped;
	ok(wait_until(sub { $t->log_lines($mark, qr/\b$stopped#\d+: .*health checks taken over by another worker/) }, $wait),
		'resumed, it sees the lease gone');
	sleep(2 * $interval_ms / 1000);
	my $dead = join('|', map { quotemeta(addr($_)) } @dead);
	my @probes = grep { /\[debug\] $stopped#\d+: .*connect to (?:$dead)\b/ } split /\n/, $t->log_since($mark);
	is(scalar(@probes), 0, 'no probe from the resumed worker') or diag(join("\n", @probes[0 .. min(4, $#probes)]));
	is(zone()->{checker}, $other, "worker $other still checks");
	$t->stop();
};
}

sub min { $_[0] < $_[1] ? $_[0] : $_[1] }

###############################################################################
