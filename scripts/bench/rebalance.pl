#!/usr/bin/perl
# Rebalancing: WebSockets held over two servers (a, b), a reload adding a
# third (c), clients that reconnect after a random backoff (0-500 ms) when
# closed, as Socket.IO and SignalR clients do. For stock `least_conn; zone`,
# `least_conn_persistent` without rebalancing and with
# `least_conn_persistent_rebalance` (2 workers, the same backends): the
# time until the spread is within the tolerance, the closes, the most in
# any second, who held what at the end. Counts are the backends' own
# (connections they hold); closes are what the clients saw.
#
#   rebalance.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use List::Util qw/max min sum0/;
use Time::HiRes qw/time/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Reconnect;
use Test::Nginx::WebSocket;

if (grep { $_ ne '--quick' } @ARGV) {
	print STDERR "usage: scripts/bench/rebalance.pl [--quick] > section.md\n";
	exit 2;
}
my $quick = @ARGV;
my $held = $quick ? 300 : 3000;
# How long each method is watched after the reload, at most.
my $window = $quick ? 10 : 60;
my ($rate, $tolerance, $workers) = (50, 10, 2);
my $directive = "least_conn_persistent_rebalance rate=$rate/s tolerance=$tolerance% min_age=0 jitter=0;";

# Each held WebSocket is a socket here, one at a backend, and two in nginx.
my ($nofile) = `sh -c 'ulimit -n'` =~ /(\d+|unlimited)/;
die "ulimit -n is $nofile: $held WebSockets need at least " . ($held + 500) . " descriptors\n"
	if defined $nofile && $nofile ne 'unlimited' && $nofile < $held + 500;

my @ports = (8081, 8082, 8083);
my @names = qw/a b c/;
my $t = held_backends(\&Test::Nginx::Backend::serve, @ports);

sub conf {
	my ($method, @servers) = @_;
	my ($zone, $line) = method_conf($method eq 'stock' ? 'stock' : 'persistent');
	$line .= "\n        $directive" if $method eq 'rebalance';
	websocket_conf($t, $zone, $line, @ports[@servers]);
}

# What the backends hold: { a => n, b => n, c => n }.
sub live {
	return { map {
		my $r = eval { http("GET /count HTTP/1.0\r\n\r\n", port => port($ports[$_])) } // '';
		($names[$_] => $r =~ /\r\n\r\n(\d+)/ ? $1 : -1);
	} 0 .. $#ports };
}

sub show { my ($c) = @_; join('/', map { $c->{$_} // 0 } @names) }



sub settle {
	my ($want) = @_;
	wait_until(sub { sum0(values %{live()}) == $want }, 30)
		or die "backends hold " . show(live()) . ", expected $want in all\n";
}

sub run_method {
	my ($method) = @_;
	conf($method, 0, 1);
	$t->run();
	my $crowd = Test::Nginx::Reconnect->new(open => sub { ws_open('/') }, backoff => 0.5);
	$crowd->open_many($held);
	settle($held);
	my %r = (start => live());
	$r{excess} = excess($r{start});
	conf($method, 0, 1, 2);
	$t->reload();
	my $reloaded = time();
	my $ok = $crowd->pump($window, sub { within(live(), $tolerance) });
	$r{within} = $ok ? time() - $reloaded : undef;
	# Then until nothing has closed for 2 s (the shedding ends within half
	# the tolerance), within the window.
	my $quiet = sub {
		my $last = @{$crowd->closes} ? $crowd->closes->[-1]{at} : $reloaded;
		time() - $last >= 2;
	};
	$crowd->pump(max(0, $reloaded + $window - time()), $quiet) if $ok;
	$crowd->pump(2, sub { !$crowd->waiting_count });
	my @closes = @{$crowd->closes};
	$r{closes} = @closes;
	$r{last_close} = @closes ? $closes[-1]{at} - $reloaded : undef;
	$r{max1} = $crowd->max_in_window(1);
	# Closes a second from the first to the last. The workers close on
	# 200 ms ticks, each tick spending 200 ms of the rate: N ticks span
	# N - 1 intervals, so the span counts one tick more. (For the same
	# reason a 1 s window of the clients' clock may hold six ticks.)
	$r{avg} = @closes ? @closes / ($closes[-1]{at} - $closes[0]{at} + 0.2) : undef;
	$r{failures} = $crowd->failures;
	# Closes from a server at or below its fair share once the batch of
	# closes it was in had gone (as the clients saw it).
	$r{below} = grep {
		my $total = sum0(values %{$_->{after}});
		($_->{after}{$_->{backend}} // 0) < $total / @names - 1;
	} @closes;
	$r{final} = live();
	$r{spread} = max(values %{$r{final}}) - min(values %{$r{final}});
	$crowd->close_all();
	settle(0);
	$t->stop();
	return \%r;
}

my %label = (
	stock => '`least_conn; zone`',
	persistent => '`least_conn_persistent`',
	rebalance => '`least_conn_persistent` + `least_conn_persistent_rebalance`',
);
my @methods = qw/stock persistent rebalance/;
my %r = map { ($_ => run_method($_)) } @methods;

print "$held WebSockets held over two servers (a, b), then a reload adding c (2 workers). A client "
	. "whose connection closes comes back after a random backoff of 0-500 ms, through nginx. "
	. "Rebalancing: `$directive` (min_age and jitter 0 to keep the run short; in production a "
	. "min_age of minutes spares young connections, and jitter spreads them). Each method is "
	. "watched for up to $window s after the reload; counts are the backends' own, closes what "
	. "the clients saw.\n\n";
print "| method | time until every server is within $tolerance% of its fair share | closes "
	. "(excess at the reload) | most closes in any 1 s (a second, first to last close) | closes "
	. "from a server at or below its fair share | held at the end (a/b/c) | spread (max-min) |\n";
print "|---|---|---|---|---|---|---|\n";
for my $m (@methods) {
	my $x = $r{$m};
	printf "| %s | %s | %d (%.0f) | %d%s | %d | %s | %d |\n", $label{$m},
		defined $x->{within} ? sprintf('%.1f s', $x->{within}) : "never within $window s",
		$x->{closes}, $x->{excess}, $x->{max1},
		defined $x->{avg} ? sprintf(' (%.1f)', $x->{avg}) : '',
		$x->{below}, show($x->{final}), $x->{spread};
}
my $rb = $r{rebalance};
printf "\nWith rebalancing the last close came %.1f s after the reload; reconnects that failed: %d.\n",
	$rb->{last_close} // 0, $rb->{failures};

my $met = defined $rb->{within} && $rb->{closes} <= 1.5 * $rb->{excess}
	&& $rb->{max1} <= $rate + $rate / 5 + $workers && !$rb->{below} && !$rb->{failures}
	&& !$r{stock}{closes} && !$r{persistent}{closes};
printf "\nGoal, with rebalancing the spread gets within %d%%, with at most 1.5 times the excess in "
	. "closes, at most %d/s (and one 200 ms tick), none from a server at or below its fair share; "
	. "without it nothing is closed: **%s** (%s, %d closes for an excess of %.0f, at most %d in "
	. "1 s; stock and persistent: %d and %d closes, spread %d and %d).\n",
	$tolerance, $rate, $met ? 'met' : 'missed',
	defined $rb->{within} ? sprintf('within in %.1f s', $rb->{within}) : "never within $window s",
	$rb->{closes}, $rb->{excess}, $rb->{max1}, $r{stock}{closes}, $r{persistent}{closes},
	$r{stock}{spread}, $r{persistent}{spread};
