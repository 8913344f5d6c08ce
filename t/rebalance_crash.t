#!/usr/bin/perl

# Rebalancing (`least_conn_persistent_rebalance`) survives crashes and
# reloads, in stream {} with two workers: 80 held TCP sessions over a and b,
# clients that come back after a random backoff (0-500 ms) when closed, and
# a reload adding c starts the closes.
#
# 1. An old worker that holds sessions is killed (SIGKILL) while the
#    upstream sheds: the master lives on and serves, the dead worker's
#    counts are given back (the zone counts what the backends hold once the
#    clients are back), the shed totals do not go down, the survivors go on
#    closing until the spread is within the tolerance, the state ends, and
#    c (below its fair share) never loses a session.
# 2. A reload (the same configuration) while the upstream sheds keeps the
#    shed totals and the state, and the spread still converges.
# 3. A reload removing the directive stops the closes within about a
#    second, though the spread is still out of balance, and the status page
#    drops the upstream's "shed" and "rebalancing" fields.
#
# c has weight 3 (fair share 48 of 80, a and b 16 each): the crash drops
# only the sessions of the worker that holds fewer, and its clients come
# back to c, so a and b stay above their fair share and the survivors must
# go on shedding (with weight 1 the comebacks alone would even the spread).

use warnings;
use strict;

use Test::More;
use List::Util qw/max min sum0/;
use POSIX ();
use Time::HiRes qw/time sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http_get wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Reconnect;
use Test::Nginx::Status;

$SIG{PIPE} = 'IGNORE';    # sessions a killed worker dropped

# nginx_independent: the `upgrade` bit of an http upstream is read through
# the bindings generated from each nginx's own headers; what differs (a
# stream session's `connected` bit) t/stream_rebalance.t checks on each nginx.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent stream/)->plan(43);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

my $n = 80;
my ($rate, $tolerance, $workers) = (10, 10, 2);
my $slow = $Test::Nginx::SLOW;
my $directive = "least_conn_persistent_rebalance rate=$rate/s tolerance=$tolerance% min_age=0 jitter=0;";

my %name = (8091 => 'a', 8092 => 'b', 8093 => 'c');
my %weight = (8093 => 3);
my %name_of_addr = map { (addr($_) => $name{$_}) } keys %name;

# $rebalance: whether u has the directive; @ports: its servers.
sub conf {
	my ($rebalance, @ports) = @_;
	my $line = $rebalance ? $directive : '# no rebalancing';
	my $servers = join "\n", map {
		"        server 127.0.0.1:$_" . ($weight{$_} ? " weight=$weight{$_}" : '') . ';'
	} @ports;
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes $workers;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

    upstream u {
        least_conn_persistent;
        $line
$servers
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; proxy_timeout 1h; }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

sub stream_status { status('/status?subsystem=stream') }

# The status page's entries of u by server name: { a => { count, weight,
# shed, rebalancing, ... } }.
sub view {
	return { map { ($name_of_addr{$_->{server}} // $_->{server} => $_) } stream_entries('u') };
}
sub shed_of { my ($v) = @_; return { map { ($_ => $v->{$_}{shed}) } keys %$v } }
sub weights_of { my ($v) = @_; return { map { ($_ => $v->{$_}{weight}) } keys %$v } }
sub counts_of { my ($v) = @_; return { map { ($_ => $v->{$_}{count}) } keys %$v } }
# Whether u sheds, as its entries say (undef when none says).
sub state_of {
	my ($v) = @_;
	my @s = map { $_->{rebalancing} ? 1 : 0 } grep { exists $_->{rebalancing} } values %$v;
	return @s ? max(@s) : undef;
}
sub shed_sum { sum0(values %{shed_of($_[0] // view())}) }

# What the backends hold: { a => n, ... }.
sub live { named_counts(\%name, held_counts(keys %name)) }
sub show { my ($c) = @_; join('/', map { $c->{$_} // 0 } qw/a b c/) }




# The closes rebalancing logged after $mark (an error.log offset), each
# [server name, pid of the worker].
sub close_lines {
	my ($mark) = @_;
	return map {
		my ($pid) = /\[info\] (\d+)#/;
		my ($server) = /closing a connection to (\S+?)[,;:)]* /;
		[$name_of_addr{$server} // $server, $pid]
	} grep { /upstream "u": rebalancing: closing a connection to/ }
		split /\n/, $t->log_since($mark);
}

$t->run_daemon(\&Test::Nginx::Hold::serve, port($_), $name{$_}) for sort keys %name;
$t->waitforsocket(addr($_)) for keys %name;

my $crowd = Test::Nginx::Reconnect->new(open => sub { hold_open(port(8081)) }, backoff => 0.5);

# $n sessions on a and b (the directive on, nothing to do), then a reload
# adding c, and the first closes: returns the shed totals before the reload.
sub scale_up {
	my ($label) = @_;
	$crowd->open_many($n);
	is(show(live()), '40/40/0', "$label: $n sessions 40/40");
	my $base = shed_sum();
	conf(1, 8091, 8092, 8093);
	$t->reload();
	my $started = $crowd->pump(3 * $slow, sub { my $v = view(); state_of($v) && shed_sum($v) > $base });
	ok($started, "$label: a reload adding c starts the closes");
	return $base;
}

# Every client closes; once the counts are 0, a reload back to a and b.
sub reset_to_ab {
	$crowd->close_all();
	my $rest = wait_until(sub { my @e = stream_entries('u'); @e && !grep { $_->{count} } @e }, 5);
	conf(1, 8091, 8092);
	$t->reload();
	wait_until(sub { !$t->old_worker_pids() }, 5);
	return $rest;
}

# Runs the crowd until every client is back and the backends hold a spread
# within the tolerance, then until the state ends. `$also` is called at
# every check (to watch the shed totals). Returns (converged, ended, when
# it converged).
sub converge {
	my ($bound, $also) = @_;
	my $w = weights_of(view());
	my $done = $crowd->pump($bound, sub {
		my $v = view();
		$also->($v) if $also;
		my $l = live();
		$crowd->waiting_count == 0 && sum0(values %$l) == $n && within($l, $tolerance, $w);
	});
	my $at = time();
	my $ended = $crowd->pump(5 * $slow, sub {
		my $v = view();
		$also->($v) if $also;
		defined state_of($v) && !state_of($v);
	});
	return ($done, $ended, $at);
}

# A bound for converging from what the status page counts now: twice the
# time the excess takes at the rate, and 3 s more.
sub bound {
	my $v = view();
	my $need = excess(counts_of($v), weights_of($v));
	return ((2 * $need / $rate + 3) * $slow, $need);
}

# Records per server whether a shed total ever went down between two looks.
sub watcher {
	my ($last, $dropped) = @_;
	return sub {
		my ($v) = @_;
		my $now = shed_of($v);
		for (keys %$now) {
			$dropped->{$_} = "$last->{$_} -> $now->{$_}" if defined $last->{$_} && $now->{$_} < $last->{$_};
			$last->{$_} = $now->{$_};
		}
	};
}

conf(1, 8091, 8092);
$t->run();

###############################################################################

# 1. A crash while the upstream sheds.
my $closes0 = @{$crowd->closes};
scale_up('crash');
my $master = $t->master_pid();
my $reclaimed = stream_status()->{zone}{reclaimed};

# The old worker holding fewer sessions (but some).
my %old = map { ($_ => 1) } $t->old_worker_pids();
my ($victim, $holds) = map { ($_->{pid}, $_->{connections}) }
	(sort { $a->{connections} <=> $b->{connections} }
		grep { $old{$_->{pid}} && $_->{connections} > 0 } @{stream_status()->{zone}{workers}})[0];
ok($victim, 'an old worker (' . ($victim // 'none') . ') holds ' . ($holds // 0) . ' session(s) while u sheds')
	or die "no old worker holds sessions: nothing to kill\n";
my $v = view();
my $before = shed_of($v);
my $at_kill = show(counts_of($v));
my $mark = $t->log_mark();
kill 'KILL', $victim;
my $killed = time();
ok(wait_until(sub { !kill(0, $victim) || `cat /proc/$victim/stat 2>/dev/null` =~ /^\d+ \(.*\) Z/ }, 5),
	"old worker $victim killed (the zone counted $at_kill)");

my $given;
$crowd->pump(5 * $slow, sub {
	($given) = $t->log_since($mark) =~ /worker process $victim is gone: (\d+) connection/;
	defined $given;
});
ok(defined $given && $given > 0 && $given <= $holds,
	"its share given back: " . ($given // 'nothing') . " (it held $holds)");
is(stream_status()->{zone}{reclaimed} - $reclaimed, $given // -1, 'the status page counts them reclaimed');
ok(kill(0, $master), 'the master lives');
is(scalar $t->worker_pids(), $workers, 'the current workers are all there (an old one is not replaced)');
my $one = hold_open(port(8081));
ok($one && http_get('/status?subsystem=stream') =~ /^HTTP\/1\.1 200/,
	'and serve: a new session (to ' . ($one ? $one->{backend} : 'none') . '), the status page');
hold_close($one) if $one;
my $after = shed_of(view());
my $mark_after = $t->log_mark();
ok(!grep({ $after->{$_} < $before->{$_} } keys %$before),
	'the shed totals did not go down: ' . show($before) . ' then ' . show($after));

# The survivors go on.
my (%last, %dropped);
my $watch = watcher(\%last, \%dropped);
$watch->(view());
my ($bound, $need) = bound();
my $bound_from = time();
my ($converged, $ended, $at) = converge($bound, $watch);
ok($converged, sprintf('within %d%% of the fair share %.1f s after the kill (bound %.0f s from %.1f s): %s',
	$tolerance, $at - $killed, $bound, $bound_from - $killed, show(live())));
ok($ended, 'then u stops rebalancing');
ok(!%dropped, 'no shed total went down meanwhile') or diag(explain(\%dropped));
my $counted = counts_of(view());
ok(same_counts($counted, live()), 'the zone counts what the backends hold: ' . show($counted))
	or diag(explain($counted, live()));
is(sum0(values %$counted), $n, "all $n sessions counted again, no more");
my $end = shed_of(view());
my @later = grep { $_->[1] != $victim } close_lines($mark_after);
my %by_pid;
$by_pid{$_->[1]}++ for @later;
my $more = sum0(values %$end) - sum0(values %$after);
ok($more > 0 && @later > 0, sprintf('the survivors closed %d more (%d logged, by worker(s) %s; an excess of %.0f counted after the kill)',
	$more, scalar @later, join(',', sort keys %by_pid), $need));
ok(!grep({ !kill(0, $_) } keys %by_pid), 'every one by a worker still running');
my %by;
$by{$_->{backend}}++ for @{$crowd->closes}[$closes0 .. $#{$crowd->closes}];
ok(!$by{c} && !$end->{c} && !grep({ $_->[0] eq 'c' } close_lines(0)),
	'c, below its fair share, never lost a session (' . show(\%by) . ' closed, crash included)');

###############################################################################

# 2. A reload (the same configuration) while the upstream sheds.
ok(reset_to_ab(), 'every session closed: the counts are 0');
scale_up('reload');
my $poll = $t->testdir() . '/poll.txt';
my $poller = fork() // die "fork: $!";
if ($poller == 0) {
	open my $out, '>', $poll or POSIX::_exit(1);
	$out->autoflush(1);
	my $stop = time() + 10 * $slow;
	while (time() < $stop) {
		my $w = eval { view() };
		if (!$w) {
			sleep 0.02;
			next;
		}
		printf $out "%.3f %s %s\n", time(), state_of($w) // '-', show(shed_of($w));
		sleep 0.02;
	}
	POSIX::_exit(0);
}
wait_until(sub { -s $poll }, 2);
my $was = shed_of(view());
my $hup = time();
conf(1, 8091, 8092, 8093);
$t->reload();
my $reloaded = time();
$crowd->pump(0.5 * $slow);
my $still = live();
kill 'TERM', $poller;
waitpid($poller, 0);
my $w = weights_of(view());
ok(!within($still, $tolerance, $w), 'the reload came while u was out of balance: ' . show($still));
my @samples = map { [split / /] } split /\n/, $t->read_file('poll.txt');
my @window = grep { $_->[0] >= $hup - 0.1 } @samples;
ok(@window >= 5, sprintf('%d looks at the status page from the reload on (it took %.2f s)', scalar @window, $reloaded - $hup));
my @off = grep { $_->[1] ne '1' } @window;
ok(!@off, 'u was rebalancing at every look') or diag(explain(\@off));
my $down = 0;
for my $i (1 .. $#samples) {
	my @p = split m{/}, $samples[$i - 1][2];
	my @c = split m{/}, $samples[$i][2];
	$down++ if grep { $c[$_] < $p[$_] } 0 .. $#c;
}
ok(!$down, 'no shed total went down at any look');
my $now = shed_of(view());
ok(!grep({ $now->{$_} < $was->{$_} } keys %$was), 'shed totals: ' . show($was) . ' before, ' . show($now) . ' after');
(%last, %dropped) = ();
$watch = watcher(\%last, \%dropped);
($bound) = bound();
($converged, $ended, $at) = converge($bound, $watch);
ok($converged, sprintf('within %d%% %.1f s after the reload (bound %.0f s): %s',
	$tolerance, $at - $reloaded, $bound, show(live())));
ok($ended, 'then u stops rebalancing');
ok(!%dropped, 'no shed total went down') or diag(explain(\%dropped));
ok(shed_sum() > sum0(values %$now), 'closes went on after the reload: ' . show(shed_of(view())));

###############################################################################

# 3. A reload removing the directive stops the closes.
ok(reset_to_ab(), 'every session closed again');
scale_up('off');
conf(0, 8091, 8092, 8093);
$mark = $t->log_mark();
$t->reload();
my $off = time();
my $closes_then = @{$crowd->closes};
$crowd->pump(1 * $slow);
my $grace = @{$crowd->closes} - $closes_then;
my $mark_later = $t->log_mark();
my $counted_from = @{$crowd->closes};
$crowd->pump(3 * $slow);
my @late = @{$crowd->closes}[$counted_from .. $#{$crowd->closes}];
is(scalar @late, 0, "nothing closed from 1 s to 4 s after the reload ($grace in the first second)");
is(scalar close_lines($mark_later), 0, 'nothing logged closing then');
like($t->log_since($mark),
	qr/\[info\].*upstream "u": rebalancing stops: the newest configuration has no least_conn_persistent_rebalance/,
	'the old workers say why they stopped');
my $left = live();
ok(!within($left, $tolerance, weights_of(view())), 'though u is still out of balance: ' . show($left));
my @e = stream_entries('u');
ok(@e == 3 && !grep({ exists $_->{shed} || exists $_->{rebalancing} } @e),
	'the status page has no "shed" nor "rebalancing" for u any more');
unlike(http_get('/status?subsystem=stream&format=prometheus'),
	qr/least_conn_persistent_(shed_total|rebalancing)\{[^}]*upstream="u"/, 'nor Prometheus');
ok($crowd->pump(2 * $slow, sub { $crowd->waiting_count == 0 }), 'every closed client came back');
is($crowd->failures, 0, 'no reconnect failed');

$crowd->close_all();
ok(wait_until(sub { my @s = stream_entries('u'); @s && !grep { $_->{count} } @s }, 5),
	'every counter 0 once the clients close');
ok(wait_until(sub { !$t->old_worker_pids() }, 5), 'and the old workers exit');

###############################################################################
