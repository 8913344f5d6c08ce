#!/usr/bin/perl
# Zone capacity: how many keys fit in a 1 MiB zone, and what a reload costs
# with 10,000 servers in the zone (stock `least_conn; zone` as the baseline).
#
#   capacity.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib";
use List::Util qw/sum/;
use Time::HiRes qw/time/;
use Test::Nginx;

my $quick = grep { $_ eq '--quick' } @ARGV;
my $servers = $quick ? 2000 : 10000;
my $rounds = $quick ? 3 : 7;

my $t = Test::Nginx->new();

sub conf {
	my ($method, $n, $size) = @_;
	my $ups = join "\n", map { "        server 127.0.0.1:" . (10000 + $_) . " down;" } 1 .. $n;
	my ($zone, $line) = $method eq 'stock'
		? ('', "least_conn;\n        zone stock ${\ int($n / 100 + 1)}m;")
		: ("least_conn_persistent_zone lcp $size;", 'least_conn_persistent;');
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 2;
events {
}
http {
    %%TEST_GLOBALS_HTTP%%
    $zone
    upstream u {
        $line
        server 127.0.0.1:8081;
$ups
    }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://u; }
    }
}
EOF
}

sub median {
	my @v = sort { $a <=> $b } @_;
	return $v[int(@v / 2)];
}

# Keys in 1 MiB: offer more servers than can fit and read how many were stored.
conf('persistent', 12000, '1m');
$t->run();
my ($fallback) = $t->read_file('error.log') =~ /is full: (\d+) of 12001 servers/;
my $fit = 12001 - ($fallback // 0);
$t->stop();

# Reload time: HUP until the new workers run, median of several reloads.
my %reload;
my @inner;
for my $m (qw/stock persistent/) {
	conf($m, $servers, '4m');
	$t->run();
	my @times;
	for (1 .. $rounds) {
		my $t0 = time();
		$t->reload();
		push @times, (time() - $t0) * 1000;
	}
	$reload{$m} = median(@times);
	@inner = $t->read_file('error.log') =~ /lcp": \d+ servers.*, in ([\d.]+) ms/g
		if $m eq 'persistent';
	$t->stop();
	unlink $t->testdir() . '/error.log';
}
shift @inner;    # the first load creates the zone; reloads reuse it

printf "| figure | value | goal |\n|---|---|---|\n";
printf "| keys stored in a 1 MiB zone | %d | >= 4,000 |\n", $fit;
printf "| zone reconcile on reload, %d servers (module's own timing, median) | %.2f ms | |\n",
	$servers + 1, median(@inner);
printf "| reload, HUP to new workers running, `least_conn; zone` (median of %d) | %.0f ms | |\n",
	$rounds, $reload{stock};
printf "| reload, same, `least_conn_persistent` (median of %d) | %.0f ms | |\n",
	$rounds, $reload{persistent};
printf "| time the module adds to a reload (difference of the medians) | %.1f ms | < 50 ms |\n",
	$reload{persistent} - $reload{stock};
