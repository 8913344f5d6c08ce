#!/usr/bin/perl
# Opens N WebSockets through nginx on PORT, prints where each landed, then
# holds them open until killed.
use warnings;
use strict;
use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Test::Nginx::WebSocket;

my ($port, $n) = @ARGV;
$| = 1;
my @ws = ws_open_many($n, '/ws', port => $port);
my $t = tally(@ws);
print "held WebSockets: ", join(', ', map { "$_=$t->{$_}" } sort keys %$t), "\n";
sleep 3600;
