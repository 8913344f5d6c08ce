#!/usr/bin/perl
# Balance quality in stream {} with held TCP connections: stock stream
# `least_conn; zone` against `least_conn_persistent`, on the same nginx (2
# workers) and backends (Test::Nginx::Hold, which report the connections
# they hold). The brief's scenario: 100 over two servers, a reload adding a
# third, 60 more.
#
#   stream_balance.pl [--quick] > section.md

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../../t/lib", "$FindBin::Bin/lib";
use Bench;
use List::Util qw/max min sum/;
use Test::Nginx;
use Test::Nginx::Hold;

my @ports = (8091, 8092, 8093);
my $t = held_backends(\&Test::Nginx::Hold::serve, @ports);

sub conf {
	my ($method, @servers) = @_;
	my $ups = join "\n", map { "        server 127.0.0.1:$ports[$_];" } @servers;
	my ($zone, $line) = method_conf($method);
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
%%STREAM_MODULES%%
worker_processes 2;
worker_rlimit_nofile 8192;
events {
    worker_connections 4096;
}
stream {
    $zone
    upstream u {
        $line
$ups
    }
    server {
        listen 127.0.0.1:8090 reuseport;
        proxy_pass u;
    }
}
EOF
}

sub live { [map { held(port($_)) } @ports] }

sub settle {
	my ($want) = @_;
	wait_until(sub { sum(@{live()}) == $want }, 10)
		or die "backends hold " . sum(@{live()}) . " connections, expected $want\n";
}

sub n { scaled($_[0]) }

print "| scenario | method | a | b | c | spread (max-min) |\n|---|---|---|---|---|---|\n";
my %spread;
for my $m (qw/stock persistent/) {
	conf($m, 0, 1);
	$t->run();
	my @c = hold_open_many(n(100), port(8090));
	conf($m, 0, 1, 2);
	$t->reload();
	push @c, hold_open_many(n(60), port(8090));
	settle(scalar @c);
	my $l = live();
	$spread{$m} = max(@$l) - min(@$l);
	my $label = $m eq 'stock' ? '`least_conn; zone`' : '`least_conn_persistent`';
	printf "| %d over 2, reload adding a 3rd, %d more | %s | %d | %d | %d | %d |\n",
		n(100), n(60), $label, @$l, $spread{$m};
	hold_close(@c);
	settle(0);
	$t->stop();
}

printf "\nGoal, spread <= 1 for `least_conn_persistent`: **%s** (%d; stock: %d).\n",
	$spread{persistent} <= 1 ? 'met' : 'missed', $spread{persistent}, $spread{stock};
