#!/usr/bin/perl

# Counts stay true when workers die without releasing what they hold
# (SIGKILL): the replacement worker, or any live worker's periodic check,
# gives back the dead worker's share; max_conns serves again without a
# restart; old-generation workers killed while draining are covered too.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';    # writes to connections a killed worker dropped

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(21);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

sub conf {
	my ($extra) = @_;
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
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    upstream capped {
        least_conn_persistent;
        server 127.0.0.1:8081 max_conns=20;
        server 127.0.0.1:8082 max_conns=20;
    }
$extra
    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        add_header X-Worker \$pid always;

        location /u { proxy_pass http://u; }
        location /capped { proxy_pass http://capped; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

my %backend = (8081 => 'a', 8082 => 'b');

sub live { live_counts(keys %backend) }
sub counted { server_counts() }
sub same { same_counts(@_) }

sub kill_worker {
	my ($pid) = @_;
	kill 'KILL', $pid;
	wait_until(sub { !kill(0, $pid) || `cat /proc/$pid/stat 2>/dev/null` =~ /^\d+ \(.*\) Z/ }, 5);
}

# Waits for a replacement of `$dead`; returns when it is seen.
sub respawned {
	my ($dead) = @_;
	wait_until(sub {
		my @w = $t->worker_pids();
		@w >= 2 && !grep { $_ == $dead } @w;
	}, 5) or return undef;
	return time();
}

# A worker holding some of the given connections.
sub victim {
	my %by = map { $_->{worker} => 1 } grep { $_->{worker} } @_;
	my ($pid) = sort keys %by;
	return $pid;
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $backend{$_}) for keys %backend;
$t->waitforsocket(addr($_)) for keys %backend;
conf('');
$t->run();

###############################################################################

# 1. SIGKILL a worker holding WebSockets.
my @ws = ws_open_many(100, '/u');
is_deeply(counts('u'), { addr(8081) => 50, addr(8082) => 50 }, '100 WebSockets 50/50');
my $pid = victim(@ws);
my $lost = grep { $_->{worker} == $pid } @ws;
ok($lost > 0, "worker $pid holds $lost of them");
kill_worker($pid);
my $seen = respawned($pid);
ok($seen, 'the master started a replacement worker');
my $matched = wait_until(sub { same(live(), counted()) }, 3);
my $took = time() - $seen;
ok($matched && $took <= 1.0 * $Test::Nginx::SLOW, sprintf('counts equal the backends\' live connections %.2f s after the respawn', $took))
	or diag(explain(live(), counted()));
is(status()->{zone}{reclaimed}, $lost, "the status page counts $lost reclaimed");
# The new worker writes its record in init_process, which can run after it
# shows up as a child (valgrind makes that gap long): wait for it.
my $records = sub { [sort map { $_->{pid} } @{status()->{zone}{workers}}] };
ok(wait_until(sub { "@{$records->()}" eq join(' ', sort $t->worker_pids()) }, 3),
	'the records are exactly the live workers')
	or diag(explain($records->(), [sort $t->worker_pids()]));
like($t->read_file('error.log'),
	qr/\[warn\].*least_conn_persistent_zone "lcp": worker process $pid is gone: $lost connection\(s\) it held given back/,
	'one warning names the dead worker and what it held');

my @kept = grep { $_->{worker} != $pid } @ws;
ws_close(@kept);
ok(at_rest(), 'every counter back to 0 once the rest close');

# 2. max_conns: the dead worker's places come back without a restart.
my @c = ws_open_many(40, '/capped');
is_deeply(counts('capped'), { addr(8081) => 20, addr(8082) => 20 }, 'both servers at max_conns');
$pid = victim(@c);
my @gone = grep { $_->{worker} == $pid } @c;
kill_worker($pid);
respawned($pid);
ok(wait_until(sub { same(live(), counted()) }, 3), 'counts back to the live connections');
my @again = map { ws_open('/capped') } 1 .. scalar @gone;
is(scalar(grep { $_ } @again), scalar @gone, 'as many new WebSockets as died are served: ' . scalar @gone);
like(http_get('/capped'), qr/^HTTP\/1\.1 502/, 'and then the cap holds again');
ws_close(grep { $_->{worker} != $pid } @c);
ws_close(grep { $_ } @again);
ok(at_rest(), 'at rest');

# 3. An old-generation worker dies while draining: not replaced, found by the
# new workers' periodic check.
my @old = ws_open_many(20, '/u');
conf("    # generation 2\n");
$t->reload();
$pid = victim(@old);
@gone = grep { $_->{worker} == $pid } @old;
my $killed = time();
kill_worker($pid);
$matched = wait_until(sub { same(live(), counted()) }, 3);
$took = time() - $killed;
ok($matched && $took <= 1.5 * $Test::Nginx::SLOW, sprintf('draining worker\'s share given back %.2f s after the kill', $took));
ws_close(grep { $_->{worker} != $pid } @old);
ok(at_rest(), 'at rest after the old generation is gone');

# 4. A crash during churn: connections open and close while a worker dies.
my $churn = fork() // die "fork: $!";
if ($churn == 0) {
	my @open;
	my $end = time() + 3;
	while (time() < $end) {
		if (@open < 30 || rand() < 0.5) {
			my $w = ws_open('/u');
			push @open, $w if $w;
		} else {
			ws_close(splice(@open, int(rand(@open)), 1));
		}
	}
	ws_close(@open);
	POSIX::_exit(0);
}
sleep 1.5;
($pid) = $t->worker_pids();
kill_worker($pid);
waitpid($churn, 0);
respawned($pid);
ok(at_rest(3), 'every counter 0 once the churn ends');

# 5. A normal exit with nothing held says nothing.
$t->reload();
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'old workers exited');
my $log = $t->read_file('error.log');
unlike($log, qr/exits holding/, 'no worker exited holding connections');
my $warns = () = $log =~ /is gone: /g;
is($warns, 4, 'one warning per killed worker, none for workers that exited');

# 6. A fast shutdown (TERM) drops connections unreleased: each worker gives
# back what it held, with a [notice], not an [error].
my @last = ws_open_many(6, '/u');
my $master = $t->master_pid();
kill 'TERM', $master;
ok(wait_until(sub { !kill(0, $master) }, 10), 'nginx stopped at once');
$log = $t->read_file('error.log');
my $held = 0;
$held += $_ for $log =~ /\[notice\].*worker process \d+ exits holding (\d+) connection\(s\) \(fast shutdown\)/g;
is($held, 6, 'the workers gave back the 6 connections they held, each with a notice');
ws_close(@last);

###############################################################################
