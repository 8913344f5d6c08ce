package Test::Nginx::DNS;

# A DNS responder for run_daemon(): UDP on 127.0.0.1:$port, answering A
# queries from a file the test rewrites while nginx runs, so that names
# change their addresses at run time (`server ... resolve`).
#
# The file holds one "name address" pair per line; a name with several
# lines has several addresses. It is read again for every query. A name it
# does not list gets NXDOMAIN; other query types get an empty answer.
#
#   Test::Nginx::DNS::set_answers($t->testdir . '/dns', 'b.test' => ['127.0.0.2']);
#   Test::Nginx::DNS::start($t, port(8053), $t->testdir . '/dns', 'b.test') or BAIL_OUT(...);

use warnings;
use strict;

use IO::Select;
use IO::Socket::INET;
use Socket qw/inet_aton/;
use Test::Nginx qw/wait_until/;

use constant { TYPE_A => 1, CLASS_IN => 1, TTL => 1 };

# Writes the answers atomically (a query never sees half a file).
sub set_answers {
	my ($file, %names) = @_;
	open my $fh, '>', "$file.new" or die "dns: $file.new: $!\n";
	for my $name (sort keys %names) {
		print $fh "$name $_\n" for @{$names{$name}};
	}
	close $fh or die "dns: $file.new: $!\n";
	rename "$file.new", $file or die "dns: rename to $file: $!\n";
}

sub answers {
	my ($file) = @_;
	my %a;
	open my $fh, '<', $file or return \%a;
	while (<$fh>) {
		my ($name, $addr) = split;
		push @{$a{lc $name}}, $addr if defined $addr;
	}
	return \%a;
}

# The question of a query: (name, type, offset past the question), or ().
sub question {
	my ($q) = @_;
	my ($off, @labels) = (12);
	while (1) {
		return () if $off >= length $q;
		my $len = ord substr($q, $off, 1);
		$off++;
		last if $len == 0;
		return () if $len > 63 || $off + $len > length $q;
		push @labels, substr($q, $off, $len);
		$off += $len;
	}
	return () if $off + 4 > length $q;
	my ($type) = unpack('n', substr($q, $off, 2));
	return (lc join('.', @labels), $type, $off + 4);
}

sub reply {
	my ($q, $file) = @_;
	return undef if length $q < 12;
	my ($id, $flags, $qdcount) = unpack('n3', $q);
	return undef if $flags & 0x8000 || $qdcount != 1;
	my ($name, $type, $end) = question($q) or return undef;
	my $known = answers($file)->{$name};
	my @addrs = $known && $type == TYPE_A ? @$known : ();
	# QR, opcode 0, AA, RD copied, RA; rcode 3 (NXDOMAIN) for unknown names.
	my $rflags = 0x8400 | ($flags & 0x0100) | 0x0080 | ($known ? 0 : 3);
	my $r = pack('n6', $id, $rflags, 1, scalar @addrs, 0, 0)
		. substr($q, 12, $end - 12);
	$r .= pack('n n n N n', 0xc00c, TYPE_A, CLASS_IN, TTL, 4) . inet_aton($_)
		for @addrs;
	return $r;
}

# Asks the responder for a name's A records (to know it is up); returns the
# addresses, or () without an answer within $timeout seconds.
sub query {
	my ($port, $name, $timeout) = @_;
	my $s = IO::Socket::INET->new(Proto => 'udp', PeerAddr => "127.0.0.1:$port")
		or return ();
	my $q = pack('n6', 0x1234, 0x0100, 1, 0, 0, 0)
		. join('', map { chr(length) . $_ } split /\./, $name) . "\0"
		. pack('n2', TYPE_A, CLASS_IN);
	$s->send($q);
	my $sel = IO::Select->new($s);
	return () unless $sel->can_read($timeout // 1);
	$s->recv(my $r, 512) // return ();
	my (undef, $end) = (question($r))[0, 2];
	my $an = unpack('n', substr($r, 6, 2));
	my @addrs;
	for (1 .. $an) {
		push @addrs, join('.', unpack('C4', substr($r, $end + 12, 4)));
		$end += 16;
	}
	return @addrs;
}

# Runs the responder as one of $t's daemons and waits until it answers
# for $name with the addresses the file lists; false if it never does.
sub start {
	my ($t, $port, $file, $name) = @_;
	$t->run_daemon(\&serve, $port, $file);
	my $want = join ' ', @{answers($file)->{lc $name} // []};
	return wait_until(sub { join(' ', query($port, $name)) eq $want });
}

sub serve {
	my ($port, $file) = @_;
	my $s = IO::Socket::INET->new(Proto => 'udp', LocalAddr => "127.0.0.1:$port")
		or die "dns: cannot bind 127.0.0.1:$port: $!\n";
	while (1) {
		my $peer = $s->recv(my $q, 512) // next;
		my $r = reply($q, $file) // next;
		$s->send($r, 0, $peer);
	}
}

1;
