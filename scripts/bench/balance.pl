#!/usr/bin/perl
# Balance quality with held WebSockets, stock `least_conn; zone` against
# `least_conn_persistent`, on the same nginx (2 workers) and backends.
# Live counts come from the backends themselves (connections they hold), so
# both methods are measured the same way.
#
#   balance.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use List::Util qw/max min sum shuffle/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::WebSocket;

my @ports = (8081, 8082, 8083);
my $t = held_backends(\&Test::Nginx::Backend::serve, @ports);

sub conf {
	my ($method, @servers) = @_;
	websocket_conf($t, method_conf($method), @ports[@servers]);
}

# Connections each backend holds right now.
sub live {
	return [map {
		my $r = http("GET /count HTTP/1.0\r\n\r\n", port => port($_));
		$r =~ /\r\n\r\n(\d+)/ ? $1 : -1;
	} @ports];
}

sub settle {
	my ($want) = @_;
	wait_until(sub { sum(@{live()}) == $want }, 10)
		or die "backends hold " . sum(@{live()}) . " connections, expected $want\n";
}

sub n { scaled($_[0]) }

my %scenario = (
	a => sub {
		my ($m) = @_;
		conf($m, 0, 1);
		$t->run();
		my @ws = ws_open_many(n(100), '/');
		conf($m, 0, 1, 2);
		$t->reload();
		push @ws, ws_open_many(n(60), '/');
		return \@ws;
	},
	b => sub {
		my ($m) = @_;
		conf($m, 0, 1, 2);
		$t->run();
		my @ws = ws_open_many(n(90), '/');
		conf($m, 0, 1);
		$t->reload();
		push @ws, ws_open_many(n(30), '/');
		ws_close(grep { $_->{backend} eq 'c' } @ws);
		@ws = grep { $_->{backend} ne 'c' } @ws;
		settle(scalar @ws);
		conf($m, 0, 1, 2);
		$t->reload();
		push @ws, ws_open_many(n(60), '/');
		return \@ws;
	},
	c => sub {
		my ($m) = @_;
		srand(42);    # the same opens and closes for both methods
		conf($m, 0, 1, 2);
		$t->run();
		my @ws;
		for (1 .. 5) {
			push @ws, ws_open_many(n(20 + int(rand(21))), '/');
			@ws = shuffle(@ws);
			my $k = n(10 + int(rand(16)));
			ws_close(splice(@ws, 0, $k));
			settle(scalar @ws);
			$t->reload();
		}
		push @ws, ws_open_many(n(30), '/');
		return \@ws;
	},
);

my %what = (
	a => 'scale-up: ' . n(100) . ' over 2, reload adding a 3rd, ' . n(60) . ' more',
	b => 'scale-down and up: ' . n(90) . ' over 3, reload removing c, ' . n(30)
		. ' more, c\'s close, reload adding c back, ' . n(60) . ' more',
	c => 'five rolling reloads, random opens and closes (seed 42), then ' . n(30) . ' more',
);

print "| scenario | method | a | b | c | spread (max-min) |\n|---|---|---|---|---|---|\n";
my %spread;
for my $s (qw/a b c/) {
	for my $m (qw/stock persistent/) {
		my $ws = $scenario{$s}->($m);
		settle(scalar @$ws);
		my $l = live();
		my $spread = max(@$l) - min(@$l);
		$spread{$s}{$m} = $spread;
		my $label = $m eq 'stock' ? '`least_conn; zone`' : '`least_conn_persistent`';
		print "| ($s) $what{$s} | $label | $l->[0] | $l->[1] | $l->[2] | $spread |\n";
		ws_close(@$ws);
		settle(0);
		$t->stop();
	}
}

my $met = $spread{a}{persistent} <= 1 && $spread{b}{persistent} <= 1;
printf "\nGoal, spread <= 1 for `least_conn_persistent` in (a) and (b): **%s** "
	. "(%d and %d; stock: %d and %d; (c): %d against stock's %d).\n",
	$met ? 'met' : 'missed', $spread{a}{persistent}, $spread{b}{persistent},
	$spread{a}{stock}, $spread{b}{stock}, $spread{c}{persistent}, $spread{c}{stock};
