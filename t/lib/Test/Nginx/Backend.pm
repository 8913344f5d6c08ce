package Test::Nginx::Backend;

# A backend daemon for run_daemon(): one process, one select loop, any number
# of connections on 127.0.0.1:$port, or on $addr:$port (all of 127.0.0.0/8
# is local: backends on one port can stand for the addresses of a DNS name).
#
# - Plain HTTP/1.x requests get "id=<id> conn=<n>" (n numbers the TCP
#   connections this backend accepted, so keepalive reuse shows) and an
#   X-Backend header; keep-alive is honoured.
# - GET /count answers with the number of WebSocket connections held open.
# - GET /slow?ms=N answers after N milliseconds, holding the connection.
# - A WebSocket upgrade (RFC 6455) gets "101 Switching Protocols" with the
#   Sec-WebSocket-Accept key and X-Backend; the connection is then held open,
#   text frames are echoed back prefixed with the id, and a close frame is
#   answered with a close frame.
# - GET /health (any path starting with /health) is a health check's
#   request, answered as the control file $ENV{TEST_NGINX_HEALTH_DIR}/<id>
#   says (re-read on every request; Test::Nginx::Health writes it): its
#   first line is a status code (`200`, `503`, ...), `hang` (read the
#   request, never answer, keep the connection), `close` (close without
#   answering), `garbage` (a head that is not HTTP, then close) or `slow MS`
#   (200 after MS ms, the other connections served meanwhile); the lines
#   after it are raw header lines added to the response. No file: 200.
#   Every hit appends its time (epoch seconds, ms) to <dir>/<id>.hits.
#   The connection is closed after the answer.

use warnings;
use strict;

use Digest::SHA qw/sha1_base64/;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/time/;

use constant WS_GUID => '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

sub accept_key {
	my ($key) = @_;
	my $k = sha1_base64($key . WS_GUID);
	return $k . '=' x ((4 - length($k) % 4) % 4);
}

sub serve {
	my ($port, $id, $addr) = @_;
	my $server = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => $addr // '127.0.0.1',
		LocalPort => $port, Listen => 1024, ReuseAddr => 1)
		or die "backend $id: cannot listen on $port: $!\n";
	local $SIG{PIPE} = 'IGNORE';

	my $sel = IO::Select->new($server);
	my (%buf, %ws, %due, %hung);
	my $accepted = 0;
	my %conn_no;

	my $drop = sub {
		my ($c) = @_;
		$sel->remove($c);
		delete $buf{$c}; delete $ws{$c}; delete $due{$c}; delete $conn_no{$c}; delete $hung{$c};
		close $c;
	};

	while (1) {
		my $now = time();
		for my $c (grep { $due{$_} && $due{$_}[0] <= $now } $sel->handles) {
			my $d = delete $due{$c};
			syswrite $c, $d->[1];
			$drop->($c) if $d->[2];
		}
		my @ready = $sel->can_read(0.02);
		for my $c (@ready) {
			if ($c == $server) {
				my $n = $server->accept() or next;
				$sel->add($n);
				$buf{$n} = '';
				$conn_no{$n} = ++$accepted;
				next;
			}
			my $got = sysread($c, my $chunk, 65536);
			if (!$got) {
				$drop->($c);
				next;
			}
			$buf{$c} .= $chunk;
			next if $hung{$c};
			if ($ws{$c}) {
				ws_frames($c, \$buf{$c}, $id, $drop);
				next;
			}
			while ($buf{$c} =~ s/^(.*?)\r\n\r\n//s) {
				my $head = $1;
				my ($method, $uri) = $head =~ /^(\S+)\s+(\S+)/;
				my $close = $head =~ /^Connection:\s*close/mi
					|| $head =~ /HTTP\/1\.0/ && $head !~ /^Connection:\s*keep-alive/mi;
				if ($head =~ /^Upgrade:\s*websocket/mi) {
					my ($key) = $head =~ /^Sec-WebSocket-Key:\s*(\S+)/mi;
					syswrite $c, "HTTP/1.1 101 Switching Protocols\r\n"
						. "Upgrade: websocket\r\nConnection: Upgrade\r\n"
						. "Sec-WebSocket-Accept: " . accept_key($key // '') . "\r\n"
						. "X-Backend: $id\r\n\r\n";
					$ws{$c} = 1;
					ws_frames($c, \$buf{$c}, $id, $drop) if length $buf{$c};
					last;
				}
				if (($uri // "") =~ m{^/health}) {
					my $act = health_answer($id);
					if ($act->{hang}) {
						$hung{$c} = 1;
					} elsif ($act->{after}) {
						$due{$c} = [time() + $act->{after}, $act->{write}, 1];
					} else {
						syswrite $c, $act->{write} if defined $act->{write};
						$drop->($c);
					}
					last;
				}
				my $body = $uri eq '/count'
					? scalar(keys %ws) . "\n"
					: "id=$id conn=$conn_no{$c}\n";
				my $resp = "HTTP/1.1 200 OK\r\nX-Backend: $id\r\n"
					. "Content-Length: " . length($body) . "\r\n"
					. ($close ? "Connection: close\r\n" : '') . "\r\n$body";
				if ($uri =~ /^\/slow\?ms=(\d+)/) {
					$due{$c} = [time() + $1 / 1000, $resp, $close];
					last;
				}
				syswrite $c, $resp;
				if ($close) {
					$drop->($c);
					last;
				}
			}
		}
	}
}

# What to do with a /health request, from the backend's control file:
# { write => bytes (undef: close without answering), after => seconds before
# writing (then close), hang => 1 (never answer) }. Records the hit.
sub health_answer {
	my ($id) = @_;
	my $dir = $ENV{TEST_NGINX_HEALTH_DIR};
	my @lines = ('200');
	if (defined $dir) {
		if (open my $hits, '>>', "$dir/$id.hits") {
			printf $hits "%.3f\n", time();
			close $hits;
		}
		if (open my $f, '<', "$dir/$id") {
			@lines = grep { length } map { s/\r?\n\z//r } <$f>;
			close $f;
			@lines = ('200') unless @lines;
		}
	}
	my ($first, @headers) = @lines;
	return { hang => 1 } if $first eq 'hang';
	return { write => undef } if $first eq 'close';
	return { write => "not http\r\n\r\n" } if $first eq 'garbage';
	my ($code, $after) = (200, 0);
	if ($first =~ /^slow\s+(\d+)$/) {
		$after = $1 / 1000;
	} elsif ($first =~ /^(\d{3})$/) {
		$code = $1;
	} else {
		print STDERR "backend $id: bad health control line \"$first\"\n";
		$code = 500;
	}
	my %reason = (200 => 'OK', 503 => 'Service Unavailable');
	my $body = "id=$id health $code\n";
	my $resp = "HTTP/1.1 $code " . ($reason{$code} // 'Status') . "\r\n"
		. "X-Backend: $id\r\n" . join('', map { "$_\r\n" } @headers)
		. "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
	return { write => $resp, after => $after };
}

# Reads complete client frames (masked) from $$buf and answers them.
sub ws_frames {
	my ($c, $buf, $id, $drop) = @_;
	while (my ($op, $payload, $used) = decode_frame($$buf)) {
		substr($$buf, 0, $used) = '';
		if ($op == 0x8) {
			syswrite $c, encode_frame(0x8, '', 0);
			$drop->($c);
			return;
		}
		syswrite $c, encode_frame(0x1, "$id:$payload", 0) if $op == 0x1;
		syswrite $c, encode_frame(0xA, $payload, 0) if $op == 0x9;
	}
}

# (opcode, payload, bytes used) of the first complete frame, or ().
sub decode_frame {
	my ($data) = @_;
	return () if length $data < 2;
	my ($b1, $b2) = unpack 'CC', $data;
	my $len = $b2 & 0x7f;
	my $off = 2;
	if ($len == 126) {
		return () if length $data < 4;
		$len = unpack 'n', substr($data, 2, 2);
		$off = 4;
	} elsif ($len == 127) {
		return () if length $data < 10;
		$len = unpack 'Q>', substr($data, 2, 8);
		$off = 10;
	}
	my $masked = $b2 & 0x80;
	my $mask = '';
	if ($masked) {
		return () if length $data < $off + 4;
		$mask = substr($data, $off, 4);
		$off += 4;
	}
	return () if length $data < $off + $len;
	my $payload = substr($data, $off, $len);
	$payload ^= substr($mask x (int($len / 4) + 1), 0, $len) if $masked;
	return ($b1 & 0x0f, $payload, $off + $len);
}

sub encode_frame {
	my ($op, $payload, $mask) = @_;
	my $len = length $payload;
	my $head = pack 'C', 0x80 | $op;
	my $m = $mask ? 0x80 : 0;
	$head .= $len < 126 ? pack('C', $m | $len)
		: $len < 65536 ? pack('Cn', $m | 126, $len)
		: pack('CQ>', $m | 127, $len);
	return $head . $payload unless $mask;
	my $key = pack 'N', int(rand(2**32));
	return $head . $key . ($payload ^ substr($key x (int($len / 4) + 1), 0, $len));
}

1;
