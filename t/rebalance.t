#!/usr/bin/perl

# Rebalancing (`least_conn_persistent_rebalance`), two workers, 1,000 held
# WebSockets over two backends, then a reload adding a third. The clients
# come back after a random backoff (0-500 ms) when nginx closes them, as
# Socket.IO and SignalR clients do, and a comeback is a new WebSocket
# through nginx, which least connections sends to the new backend.
#
# With the directive the spread gets within the tolerance (by the
# backends' own counts), with about as many closes as the excess, at the
# rate given, never from a backend at or below its fair share, and a plain
# request in flight is never closed; the info log, the status page and
# Prometheus agree with the closes the clients saw. Without the directive
# nothing is closed and the spread stays; with min_age=1h nothing is old
# enough to be closed.

use warnings;
use strict;

use Test::More;
use List::Util qw/max min sum0/;
use Time::HiRes qw/time/;

# 1,000 connections' debug lines would make tens of MB of error.log that
# the harness reads at every reload; what this file checks is logged at
# info. (t/stream_rebalance.t runs the same code paths at debug.)
BEGIN { $ENV{TEST_NGINX_LOG_LEVEL} //= 'info'; }

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Reconnect;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

# nginx_independent: the `upgrade` bit of an http upstream is read through
# the bindings generated from each nginx's own headers; what differs (a
# stream session's `connected` bit) t/stream_rebalance.t checks on each nginx.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent/)->plan(35);

my $n = 1000;
my ($rate, $tolerance, $workers) = (50, 10, 2);
my $rebalance = "least_conn_persistent_rebalance rate=$rate/s tolerance=$tolerance% min_age=0 jitter=0;";
my $slow = $Test::Nginx::SLOW;

my %name = (8081 => 'a', 8082 => 'b', 8083 => 'c');
my %port_of = reverse %name;
my %name_of_addr = map { (addr($_) => $name{$_}) } keys %name;

# $line: the rebalance directive or nothing; @ports: the servers of u.
sub conf {
	my ($line, @ports) = @_;
	my $servers = join "\n", map { "        server 127.0.0.1:$_;" } @ports;
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes $workers;
worker_rlimit_nofile 8192;

events {
    worker_connections 4096;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        $line
$servers
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
}

# What the backends really hold: { a => n, b => n, c => n }.
sub live { named_counts(\%name, live_counts(keys %name)) }

sub show { my ($c) = @_; join('/', map { $c->{$_} // 0 } qw/a b c/) }



# How far the least margin over the fair share went, over every close
# the clients saw: for each batch of closes, what each server that lost a
# connection held after it, less its fair share of what was left then.
sub least_margin {
	my ($crowd) = @_;
	my $least;
	for my $c (@{$crowd->closes}) {
		my $after = $c->{after};
		my $total = sum0(map { $after->{$_} // 0 } qw/a b c/);
		my $m = ($after->{$c->{backend}} // 0) - $total / 3;
		$least = $m if !defined $least || $m < $least;
	}
	return $least;
}

# The error log since the start of the current scenario.
my $log_mark = 0;
sub log_now { $t->log_since($log_mark) }

# Lines of the error log about closes in upstream u: [server name, holds,
# fair share] each.
sub close_lines {
	return map {
		my ($server) = /closing a connection to (\S+)/;
		$server =~ s/[,;:)]+$//;
		my ($holds, $fair) = /holds (\d+), fair share ([\d.]+)/;
		[$name_of_addr{$server} // $server, $holds, $fair]
	} grep { /upstream "u": rebalancing: closing a connection to/ } split /\n/, log_now();
}

# { name => shed } from the JSON status page, and whether u rebalances
# (undef when the entries say nothing of it).
sub shed_json {
	my %shed;
	my $state;
	for my $e (entries('u')) {
		$shed{$name_of_addr{$e->{server}} // $e->{server}} = $e->{shed};
		$state = $e->{rebalancing} ? 1 : 0 if exists $e->{rebalancing};
	}
	return (\%shed, $state);
}

sub shed_prometheus {
	my $p = http_get('/status?format=prometheus');
	my %shed;
	while ($p =~ /^least_conn_persistent_shed_total\{[^}]*upstream="u"[^}]*server="([^"]+)"[^}]*\} (\d+)$/mg) {
		$shed{$name_of_addr{$1} // $1} = $2;
	}
	my ($state) = $p =~ /^least_conn_persistent_rebalancing\{[^}]*upstream="u"[^}]*\} (\d+)$/m;
	return (\%shed, $state, $p);
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $name{$_}) for sort keys %name;
$t->waitforsocket(addr($_)) for keys %name;

# $held WebSockets over a and b under $line, then a reload adding c: the
# crowd holding them.
sub scale_up {
	my ($line, $held, %opts) = @_;
	$log_mark = $t->log_mark();
	conf($line, 8081, 8082);
	$t->run();
	my $crowd = Test::Nginx::Reconnect->new(open => sub { ws_open('/') }, backoff => 0.5);
	$crowd->open_many($held);
	$opts{before_reload}->() if $opts{before_reload};
	conf($line, 8081, 8082, 8083);
	$t->reload();
	return $crowd;
}

# Closes every client, waits until the backends hold nothing, stops nginx.
sub finish {
	my ($crowd) = @_;
	$crowd->close_all();
	wait_until(sub { sum0(values %{live()}) == 0 }, 10);
	$t->stop();
}

###############################################################################

# 1. With the directive. A slow plain request to a or b is in flight when
# the shedding starts: a request, not an upgraded connection, is never
# closed.
my $plain;
my $crowd = scale_up($rebalance, $n, before_reload => sub {
	$plain = http_get('/slow?ms=' . int(6000 * $slow), start => 1);
});
my $reloaded = time();
my $start = live();
ok(abs($start->{a} - $start->{b}) <= 1 && $start->{a} + $start->{b} == $n && $start->{c} == 0,
	"$n WebSockets over a and b: " . show($start));
my $need = excess($start);

# The bound: twice the time the excess takes at the rate, and 3 s more.
my $bound = (2 * $need / $rate + 3) * $slow;
my $converged = $crowd->pump($bound, sub { within(live(), $tolerance) });
my $took = time() - $reloaded;
ok($converged, sprintf('within %d%% of the fair share after %.1f s (bound %.0f s): %s',
	$tolerance, $took, $bound, show(live())));

# It goes on until every server is within half the tolerance, then stops.
my $ended = $crowd->pump(10 * $slow, sub { my (undef, $s) = shed_json(); defined $s && !$s });
ok($ended, 'then the upstream stops rebalancing (status)');
# The plain request in flight (a or b held it through the shedding) was
# served to its end.
my $reply = eval { http_read($plain, 10 * $slow) } // "died: $@";
like($reply, qr/^HTTP\/1\.1 200 .*\r\nX-Backend: [ab]\r\n/s, 'the slow plain request in flight completed: 200');

# The last clients come back; nothing more is closed.
my $closes_then = @{$crowd->closes};
$crowd->pump(1.5 * $slow);
ok(wait_until(sub { $crowd->waiting_count == 0 }, 2), 'every closed client came back');
is(scalar @{$crowd->closes}, $closes_then, 'nothing closed once rebalancing ended');
is($crowd->failures, 0, 'no reconnect failed');

my $final = live();
is(sum0(values %$final), $n, "the backends hold all $n again");
ok(within($final, $tolerance / 2), 'rebalancing ended within half the tolerance: ' . show($final));
ok(same_counts(counts('u'), { map { (addr($port_of{$_}) => $final->{$_}) } keys %$final }),
	'the zone counts what the backends hold');

# The closes: about the excess, from the servers above fair share only,
# never faster than the rate.
my @closes = @{$crowd->closes};
my $by = $crowd->closes_by_backend();
ok(@closes > 0 && @closes <= 1.5 * $need,
	sprintf('%d closes for an excess of %.0f (at most 1.5 times): a %d, b %d, c %d',
		scalar @closes, $need, $by->{a} // 0, $by->{b} // 0, $by->{c} // 0));
is($by->{c} // 0, 0, 'the new server, below its fair share all along, lost nothing');
my $margin = least_margin($crowd);
ok(defined $margin && $margin >= -1, sprintf('no close took a server below its fair share '
	. '(least margin over it after a close, as the clients saw it: %.1f)', $margin // 0));

# Rate: the timer runs every 200 ms in each worker, and the clients see
# closes with a few ms of jitter, so a 1 s window can hold a sixth tick:
# one tick's worth (rate / 5) and one per worker more.
my $slack = $rate / 5 + $workers;
my $in1 = $crowd->max_in_window(1);
my $in2 = $crowd->max_in_window(2);
ok($in1 <= $rate + $slack, "at most $in1 closes in any 1 s (rate $rate/s, slack $slack)");
ok($in2 <= 2 * $rate + $slack, "at most $in2 closes in any 2 s");
my $span = @closes > 1 ? $closes[-1]{at} - $closes[0]{at} : 0;
ok(@closes <= $rate * $span + $slack + 1,
	sprintf('on average no faster than the rate: %d closes over %.1f s', scalar @closes, $span));

# The info log: one line per close, each from a server above its share.
my @lines = close_lines();
is(scalar @lines, scalar @closes, 'one info line per close: ' . scalar(@lines));
my %logged;
$logged{$_->[0]}++ for @lines;
is_deeply(\%logged, $by, 'the log names the servers the clients were on');
ok(!grep({ !defined $_->[1] || !defined $_->[2] || $_->[1] <= $_->[2] } @lines),
	'every line: the server held more than its fair share');
my $log = log_now();
like($log, qr/\[info\].*upstream "u": rebalancing starts/, 'the log: rebalancing starts');
like($log, qr/\[info\].*upstream "u": rebalancing ends/, 'the log: rebalancing ends');

# The status page and Prometheus count the same closes.
my ($json, $state) = shed_json();
is_deeply($json, { a => $by->{a} // 0, b => $by->{b} // 0, c => 0 }, 'status: shed per server');
is($state, 0, 'status: rebalancing false');
my ($prom, $pstate) = shed_prometheus();
is_deeply($prom, { a => $by->{a} // 0, b => $by->{b} // 0, c => 0 }, 'Prometheus: shed_total per server');
is($pstate, 0, 'Prometheus: rebalancing 0');

# The old workers hold WebSockets to the end; once those close they exit
# (the rebalancing timer does not keep them).
$crowd->close_all();
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'the old workers exit once their connections close');
finish($crowd);

###############################################################################

# 2. Without the directive: nothing closes, the spread stays, and neither
# the status page nor Prometheus shows rebalancing.
$crowd = scale_up('', $n);
my $quiet = 5 * $slow;
$crowd->pump($quiet);
is(scalar @{$crowd->closes}, 0, "without the directive nothing is closed in ${quiet} s");
my $stay = live();
ok($stay->{c} == 0 && $stay->{a} + $stay->{b} == $n, 'the spread stays: ' . show($stay));
unlike(log_now(), qr/rebalancing/, 'the log says nothing of rebalancing');
ok(!grep({ exists $_->{shed} || exists $_->{rebalancing} } entries('u')),
	'status: no "shed" nor "rebalancing"');
unlike(http_get('/status?format=prometheus'), qr/^least_conn_persistent_(shed_total|rebalancing)\{/m,
	'Prometheus: no shed_total nor rebalancing sample');
finish($crowd);

###############################################################################

# 3. min_age=1h: the upstream rebalances, but no connection is old enough.
my $held = 300;
$crowd = scale_up("least_conn_persistent_rebalance rate=$rate/s tolerance=$tolerance% min_age=1h jitter=0;", $held);
my $waited = $crowd->pump(5 * $slow, sub { my (undef, $s) = shed_json(); $s });
ok($waited, 'min_age=1h: the upstream is rebalancing');
$crowd->pump(3 * $slow);
is(scalar @{$crowd->closes}, 0, 'and closes nothing');
my ($shed) = shed_json();
is(sum0(map { $_ // 0 } values %$shed), 0, 'status: shed 0');
my $kept = live();
is($kept->{c}, 0, 'the spread stays: ' . show($kept));
finish($crowd);

###############################################################################
