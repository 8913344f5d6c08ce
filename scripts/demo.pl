#!/usr/bin/perl
# The demo scripts/demo.sh runs once the module is built: the headline
# scenario for stock `least_conn; zone` and then for least_conn_persistent,
# on the same nginx and backends: 100 WebSockets over two servers, a reload
# adding a third, 60 more. It prints each backend's live connections (as the
# backends report them) as bars, both methods side by side, then leaves the
# module's nginx running with a few connections held and prints the status
# page's address; demo.sh's Ctrl-C handler stops everything.
#
#   demo.pl --nginx BIN --module SO --prefix DIR --port N [--check] [--first N --more N]
#
# --check: no waiting at the end; exits non-zero unless the module's spread
# is at most 1, stock's is larger, and the HTML status page shows the three
# backends.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Getopt::Long;
use List::Util qw/max min sum/;
use Time::HiRes qw/sleep time/;
use Test::Nginx qw/http/;
use Test::Nginx::WebSocket;

binmode STDOUT, ':encoding(UTF-8)';
$| = 1;

my %o = (first => 100, more => 60, keep => 12);
GetOptions(\%o, 'nginx=s', 'module=s', 'prefix=s', 'port=i', 'check', 'first=i', 'more=i',
	'keep=i', 'backend-port=i@') or die "demo: bad arguments\n";
my @bports = @{$o{'backend-port'} // [9001, 9002, 9003]};
my @names = map { "backend$_" } 1 .. 3;
my $conf = "$o{prefix}/nginx.conf";

sub write_conf {
	my ($method, $n) = @_;
	open my $in, '<', "$FindBin::Bin/../nginx/demo.conf" or die "demo: nginx/demo.conf: $!\n";
	my $text = do { local $/; <$in> };
	my $lines = $method eq 'stock'
		? "least_conn;\n        zone backends 1m;"
		: 'least_conn_persistent;';
	my $servers = join "\n        ", map { "server 127.0.0.1:$_;" } @bports[0 .. $n - 1];
	$text =~ s/\@MODULE\@/$o{module}/g;
	$text =~ s/\@PREFIX\@/$o{prefix}/g;
	$text =~ s/\@PORT\@/$o{port}/g;
	$text =~ s/\@METHOD\@/$lines/g;
	$text =~ s/\@SERVERS\@/$servers/g;
	open my $out, '>', $conf or die "demo: $conf: $!\n";
	print $out $text;
	close $out;
}

sub nginx {
	my (@args) = @_;
	# nginx's own "signal process started" notices would clutter the chart.
	open my $saved, '>&', \*STDERR or die "demo: $!\n";
	open STDERR, '>', "$o{prefix}/nginx-commands.log" or die "demo: $!\n";
	my $rc = system($o{nginx}, '-p', "$o{prefix}/", '-c', $conf, @args);
	open STDERR, '>&', $saved or die "demo: $!\n";
	$rc == 0 or die "demo: nginx @args failed (see $o{prefix}/error.log)\n";
}

sub master {
	open my $fh, '<', "$o{prefix}/nginx.pid" or return undef;
	my $pid = <$fh>;
	return $pid ? $pid + 0 : undef;
}

sub workers {
	my $m = master() // return ();
	return grep { ((`cat /proc/$_/stat 2>/dev/null` =~ /^\d+ \(.*?\) \S (\d+)/)[0] // 0) == $m }
		map { m{/proc/(\d+)$} ? $1 : () } glob '/proc/[0-9]*';
}

sub wait_for {
	my ($cond, $what) = @_;
	my $end = time() + 15;
	until ($cond->()) {
		die "demo: timed out waiting for $what\n" if time() > $end;
		sleep 0.05;
	}
}

sub start {
	unlink "$o{prefix}/nginx.pid";
	nginx();
	wait_for(sub { my $r = eval { http("GET /lcp-status HTTP/1.0\r\n\r\n", port => $o{port}) };
		$r && $r =~ /^HTTP\/1\.1 200/ }, 'nginx to answer');
}

# A reload, done once the new workers run and the old ones stopped taking
# connections (they close their listening sockets at once).
sub reload {
	my %old = map { ($_ => 1) } workers();
	nginx('-s', 'reload');
	wait_for(sub { grep { !$old{$_} } workers() }, 'the new workers');
	sleep 0.5;
}

sub stop {
	my $m = master() or return;
	nginx('-s', 'stop');
	wait_for(sub { !kill 0, $m }, 'nginx to stop');
}

# What each backend holds right now, as it says itself.
sub live {
	return [map {
		my $r = eval { http("GET /count HTTP/1.0\r\n\r\n", port => $_) } // '';
		$r =~ /\r\n\r\n(\d+)/ ? $1 : -1;
	} @bports];
}

sub settle {
	my ($n) = @_;
	wait_for(sub { sum(@{live()}) == $n }, "the backends to hold $n connections");
}

# The scenario for one method; returns (the held WebSockets, live counts).
sub scenario {
	my ($method) = @_;
	write_conf($method, 2);
	start();
	my @ws = ws_open_many($o{first}, '/', port => $o{port});
	write_conf($method, 3);
	reload();
	push @ws, ws_open_many($o{more}, '/', port => $o{port});
	settle(scalar @ws);
	return (\@ws, live());
}

my %label = (stock => 'stock least_conn; zone', persistent => 'least_conn_persistent');

sub bar {
	my ($n, $scale) = @_;
	my $eighths = int($n * $scale * 8 + 0.5);
	return ("\x{2588}" x int($eighths / 8)) . ('', map { chr(0x2590 - $_) } 1 .. 7)[$eighths % 8];
}

sub chart {
	my (%counts) = @_;
	my $width = 30;
	my $scale = $width / max(1, map { @$_ } values %counts);
	my $col = sub { my ($s) = @_; $s . ' ' x max(0, $width + 20 - length $s) };
	print "\n  After $o{first} WebSockets over two servers, a reload adding a third, and $o{more} more,\n"
		. "  each backend holds (as it reports itself):\n\n";
	print '  ', $col->($label{stock}), $label{persistent}, "\n";
	for my $i (0 .. 2) {
		my $line = join('', map {
			my $n = $counts{$_}[$i];
			$col->(sprintf('%-9s %4d %s', $names[$i], $n, bar($n, $scale)));
		} qw/stock persistent/);
		print '  ', $line =~ s/\s+$//r, "\n";
	}
	my %spread = map { ($_ => max(@{$counts{$_}}) - min(@{$counts{$_}})) } keys %counts;
	print '  ', $col->("spread (max - min): $spread{stock}"), "spread (max - min): $spread{persistent}\n\n";
	return \%spread;
}

print ">> $label{stock}: $o{first} WebSockets over two backends, a reload adding a third, $o{more} more\n";
my ($ws, $stock) = scenario('stock');
ws_close(@$ws);
settle(0);
stop();

print ">> $label{persistent}: the same\n";
($ws, my $ours) = scenario('persistent');
my $spread = chart(stock => $stock, persistent => $ours);

# Keep a few connections for the status page, and close the rest.
# Keep a few connections on every backend for the status page, close the rest.
my (%taken, @keep, @rest);
for my $w (@$ws) {
	if (($taken{$w->{backend}} // 0) < $o{keep} / 3) {
		$taken{$w->{backend}}++;
		push @keep, $w;
	} else {
		push @rest, $w;
	}
}
ws_close(@rest);
settle(scalar @keep);
my $url = "http://127.0.0.1:$o{port}/lcp-status?format=html";
my $page = eval { http("GET /lcp-status?format=html HTTP/1.0\r\n\r\n", port => $o{port}) } // '';

if ($o{check}) {
	my @fail;
	push @fail, "least_conn_persistent spread $spread->{persistent} (want at most 1)"
		if $spread->{persistent} > 1;
	push @fail, "stock spread $spread->{stock} (want more than least_conn_persistent's)"
		if $spread->{stock} <= $spread->{persistent};
	push @fail, "counts of $o{first} + $o{more}: stock @$stock, ours @$ours"
		if sum(@$stock) != $o{first} + $o{more} || sum(@$ours) != $o{first} + $o{more};
	my $rows = () = $page =~ /<tr data-server="127\.0\.0\.1:\d+"/g;
	push @fail, "the HTML status page shows $rows servers, not 3" if $rows != 3;
	ws_close(@keep);
	stop();
	die "demo check failed: " . join('; ', @fail) . "\n" if @fail;
	print ">> demo check passed\n";
	exit 0;
}

print ">> nginx keeps running with least_conn_persistent and " . scalar(@keep) . " WebSockets held.\n"
	. ">> Status page: $url\n"
	. ">>   (JSON: http://127.0.0.1:$o{port}/lcp-status, Prometheus: ...?format=prometheus)\n"
	. ">> Ctrl-C stops everything.\n";
sleep 3600 while 1;
