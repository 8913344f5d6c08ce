#!/usr/bin/perl

# The harness's health backend (Test::Nginx::Backend's /health, driven by
# Test::Nginx::Health), alone, without nginx: every answer t/check.t relies
# on, the hits it counts, and a slow or hung answer holding up nothing else.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/time/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Health;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(14);

health_dir($t);
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'h');
$t->waitforsocket(addr(8081));

# Sends a check's request; { reply => what came, closed => whether the
# backend closed, took => seconds } after at most $wait seconds.
sub ask {
	my ($uri, $wait) = @_;
	my $s = IO::Socket::INET->new(Proto => 'tcp', PeerAddr => addr(8081)) or die "connect: $!\n";
	syswrite $s, "GET $uri HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
	my ($reply, $closed, $start) = ('', 0, time());
	my $sel = IO::Select->new($s);
	while (my $left = $start + ($wait // 2) - time()) {
		last if $left <= 0 || !$sel->can_read($left);
		my $got = sysread($s, $reply, 65536, length $reply);
		if (!$got) { $closed = 1; last }
	}
	return { reply => $reply, closed => $closed, took => time() - $start, sock => $s };
}

like(ask('/health')->{reply}, qr{^HTTP/1\.1 200 OK\r\n.*Connection: close\r\n}s, 'no control file: 200, then closed');
set_health('h', '503', 'X-LCP-Capacity: drain', 'X-Connections: 50');
my $r = ask('/health/deep');
like($r->{reply}, qr{^HTTP/1\.1 503 .*\r\nX-LCP-Capacity: drain\r\nX-Connections: 50\r\n}s,
	'503 with the header lines, any path under /health');
ok($r->{closed}, 'and closed');
set_health('h', 'garbage');
is(ask('/health')->{reply}, "not http\r\n\r\n", 'garbage');
set_health('h', 'close');
$r = ask('/health');
ok($r->{closed} && $r->{reply} eq '', 'close: closed without a byte');

set_health('h', 'slow 400');
my $slow = IO::Socket::INET->new(Proto => 'tcp', PeerAddr => addr(8081)) or die;
syswrite $slow, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
my $asked = time();
my $plain = http_get('/', port => port(8081));
ok(time() - $asked < 0.3, 'a slow answer holds up no other connection');
like($plain, qr/id=h conn=/, 'which is answered as before');
my $slow_reply = Test::Nginx::http_read($slow, 3);
my $took = time() - $asked;
ok($slow_reply =~ m{^HTTP/1\.1 200 OK} && $took >= 0.39 && $took < 1.5,
	sprintf('slow 400: 200 after %.2f s', $took));

set_health('h', 'hang');
$r = ask('/health', 1);
ok(!$r->{closed} && $r->{reply} eq '' && $r->{took} >= 0.9, 'hang: nothing, the connection kept for 1 s');
like(http_get('/', port => port(8081)), qr/id=h conn=/, 'meanwhile other requests answered');
close $r->{sock};

set_health('h', 'bogus');
like(ask('/health')->{reply}, qr{^HTTP/1\.1 500 }, 'an unknown control line: 500');

set_health('h');
my $before = () = hits('h');
my $at = time();
ask('/health');
my @hits = hits('h');
is(scalar @hits, $before + 1, 'every check is a hit');
ok(abs($hits[-1] - $at) < 0.5 && $hits[-1] =~ /^\d+\.\d{3}$/, "at its time, in ms ($hits[-1])");
like(ask('/count')->{reply}, qr/\r\n\r\n0\n/, '/count unchanged');
