#!/usr/bin/perl
# Slow start: WebSockets held 50/50 on two servers, a reload adding a
# third, then new WebSockets at a steady rate: the new server's share of
# each bucket's new connections, for stock `least_conn; zone`,
# `least_conn_persistent` and `least_conn_persistent slow_start=<window>`
# (2 workers, the same backends). Which backend took each connection is
# what the backend answered (X-Backend).
#
#   slow_start.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use Time::HiRes qw/time sleep/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::WebSocket;

my $quick = grep { $_ eq '--quick' } @ARGV;
my ($window, $bucket, $rate, $held) = $quick ? (4, 2, 5, 20) : (30, 5, 10, 100);
my $buckets = int($window * 1.5 / $bucket);

my @ports = (8081, 8082, 8083);
my $t = held_backends(\&Test::Nginx::Backend::serve, @ports);

sub conf {
	my ($method, @servers) = @_;
	my ($zone, $line) = method_conf($method eq 'stock' ? 'stock' : 'persistent');
	$line = "least_conn_persistent slow_start=${window}s;" if $method eq 'slow';
	websocket_conf($t, $zone, $line, @ports[@servers]);
}

# $held WebSockets over a and b, then a reload adding c: the WebSockets.
sub scale_up {
	my ($method) = @_;
	conf($method, 0, 1);
	$t->run();
	my @ws = ws_open_many($held, '/');
	conf($method, 0, 1, 2);
	$t->reload();
	return @ws;
}

# Who holds what: { backend => connections }, closing them and nginx.
sub finish {
	my %final;
	$final{$_->{backend}}++ for @_;
	ws_close(@_);
	$t->stop();
	return \%final;
}

# For each bucket after the reload: (new connections, of them to c).
sub run_method {
	my ($method) = @_;
	my @ws = scale_up($method);
	my $start = time();
	my @rows;
	for my $b (0 .. $buckets - 1) {
		my ($n, $c) = (0, 0);
		for my $i (0 .. $bucket * $rate - 1) {
			my $due = $start + $b * $bucket + $i / $rate;
			my $wait = $due - time();
			sleep($wait) if $wait > 0;
			my $w = ws_open('/') or die "a WebSocket failed to open\n";
			push @ws, $w;
			$n++;
			$c++ if $w->{backend} eq 'c';
		}
		push @rows, [$n, $c];
	}
	return (\@rows, finish(@ws));
}

# The trade-off: a burst one second after the reload, all at once.
my $burst = $quick ? 12 : 60;
sub run_burst {
	my ($method) = @_;
	my @ws = scale_up($method);
	sleep(1);
	return finish(@ws, ws_open_many($burst, '/'));
}

my %label = (
	stock => '`least_conn; zone`',
	persistent => '`least_conn_persistent`',
	slow => "`least_conn_persistent slow_start=${window}s`",
);
my @methods = qw/stock persistent slow/;
my %result = map { ($_ => [run_method($_)]) } @methods;
my %bursts = map { ($_ => run_burst($_)) } @methods;

print "$held WebSockets held over two servers (a, b), a reload adding c, then $rate new WebSockets a "
	. "second for " . ($buckets * $bucket) . " s. Per ${bucket}-s bucket after the reload: the share of "
	. "that bucket's new connections c took.\n\n";
print "| seconds after the reload | " . join(' | ', map { $label{$_} } @methods) . " |\n";
print "|---|" . join('', map { '---|' } @methods) . "\n";
for my $b (0 .. $buckets - 1) {
	printf "| %d-%d |", $b * $bucket, ($b + 1) * $bucket;
	for my $m (@methods) {
		my ($n, $c) = @{$result{$m}[0][$b]};
		printf " %d of %d (%d%%) |", $c, $n, $n ? 100 * $c / $n : 0;
	}
	print "\n";
}
print "| held at the end (a/b/c) |";
for my $m (@methods) {
	my $f = $result{$m}[1];
	printf " %s |", join('/', map { $f->{$_} // 0 } qw/a b c/);
}
print "\n";
print "| $burst at once, 1 s after the reload: held at the end (a/b/c) |";
for my $m (@methods) {
	my $f = $bursts{$m};
	printf " %s |", join('/', map { $f->{$_} // 0 } qw/a b c/);
}
print "\n";

# The ramp: c's share rises bucket by bucket inside the window, and starts
# below the herd that least connections without slow start sends it (stock
# spreads new connections evenly only because its new workers count from 0:
# it never catches the new server up).
my $share = sub { my ($n, $c) = @{$_[0]}; $n ? $c / $n : 0 };
my @in_window = map { $share->($_) } @{$result{slow}[0]}[0 .. int($window / $bucket) - 1];
my $herd = $share->($result{persistent}[0][0]);
my $rises = $in_window[-1] > $in_window[0] && $in_window[0] < $herd;
printf "\nGoal, with slow start c's share rises over the window instead of jumping to all new "
	. "connections: **%s** (first bucket %d%% against %d%% without slow start, last bucket of the "
	. "window %d%%).\n",
	$rises ? 'met' : 'missed', 100 * $in_window[0], 100 * $herd, 100 * $in_window[-1];
