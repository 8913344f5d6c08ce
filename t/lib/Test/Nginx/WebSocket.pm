package Test::Nginx::WebSocket;

# WebSocket clients that hold their connections open through nginx.
#
#   my $ws = ws_open('/ws') or fail;   # RFC 6455 handshake, checked
#   $ws->{backend};                     # X-Backend of the 101 response
#   ws_echo($ws, 'hi');                 # "<backend>:hi" once the backend echoes
#   ws_close($ws);

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/ws_open ws_open_many ws_echo ws_close tally/;

use IO::Select;
use IO::Socket::INET;
use MIME::Base64 qw/encode_base64/;
use Time::HiRes qw/time/;

use Test::Nginx qw/port/;
use Test::Nginx::Backend;

sub read_until {
	my ($s, $done, $timeout) = @_;
	my $buf = '';
	my $end = time() + ($timeout // 5) * $Test::Nginx::SLOW;
	my $sel = IO::Select->new($s);
	while (!$done->($buf)) {
		my $left = $end - time();
		return undef if $left <= 0 || !$sel->can_read($left);
		my $got = sysread($s, $buf, 65536, length $buf);
		return undef unless $got;
	}
	return $buf;
}

sub ws_open {
	my ($uri, %opts) = @_;
	my $s = IO::Socket::INET->new(Proto => 'tcp', Timeout => 5 * $Test::Nginx::SLOW,
		PeerAddr => '127.0.0.1:' . ($opts{port} // port(8080))) or return undef;
	my $key = encode_base64(join('', map { chr(int(rand(256))) } 1 .. 16), '');
	syswrite $s, "GET $uri HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
		. "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\n"
		. "Sec-WebSocket-Version: 13\r\n\r\n";
	my $head = read_until($s, sub { $_[0] =~ /\r\n\r\n/ }) // return undef;
	return undef unless $head =~ m{^HTTP/1\.1 101 };
	my ($accept) = $head =~ /^Sec-WebSocket-Accept:\s*(\S+)/mi;
	return undef unless ($accept // '') eq Test::Nginx::Backend::accept_key($key);
	my ($backend) = $head =~ /^X-Backend:\s*(\S+)/mi;
	my ($worker) = $head =~ /^X-Worker:\s*(\d+)/mi;
	return { sock => $s, backend => $backend, worker => $worker };
}

sub ws_open_many {
	my ($n, $uri, %opts) = @_;
	my @ws;
	for (1 .. $n) {
		my $ws = ws_open($uri, %opts) or die "WebSocket $_ of $n failed\n";
		push @ws, $ws;
	}
	return @ws;
}

sub ws_echo {
	my ($ws, $text) = @_;
	syswrite $ws->{sock}, Test::Nginx::Backend::encode_frame(0x1, $text, 1);
	my $buf = read_until($ws->{sock},
		sub { Test::Nginx::Backend::decode_frame($_[0]) }) // return undef;
	my ($op, $payload) = Test::Nginx::Backend::decode_frame($buf);
	return $op == 0x1 ? $payload : undef;
}

sub ws_close {
	for my $ws (@_) {
		syswrite $ws->{sock}, Test::Nginx::Backend::encode_frame(0x8, '', 1);
		close $ws->{sock};
	}
}

# { backend => number of connections } over a list of WebSockets.
sub tally {
	my %n;
	$n{$_->{backend} // 'none'}++ for @_;
	return \%n;
}

1;
