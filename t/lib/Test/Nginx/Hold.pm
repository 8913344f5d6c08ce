package Test::Nginx::Hold;

# A TCP backend for run_daemon() that holds connections, for stream {}
# upstreams: long-lived connections that are not HTTP.
#
# - Every connection is greeted with "id=<id>\n" and then held open; lines
#   it sends are echoed back prefixed with the id.
# - A connection whose first line is "count" gets "count=<n>\n", n being the
#   connections held (itself not included), and is closed.
#
#   $t->run_daemon(\&Test::Nginx::Hold::serve, port(8091), 'a');
#   my $c = hold_open(port(8090));            # through nginx: $c->{backend}
#   held(port(8091));                         # what the backend holds
#   held_counts(8091, 8092);                  # { "127.0.0.1:port" => n }

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/hold_open hold_open_many hold_close held held_counts hold_tally/;

use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/time/;

use Test::Nginx qw/port addr/;

sub serve {
	my ($port, $id, $addr) = @_;
	my $server = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => $addr // '127.0.0.1',
		LocalPort => $port, Listen => 1024, ReuseAddr => 1)
		or die "hold backend $id: cannot listen on $port: $!\n";
	local $SIG{PIPE} = 'IGNORE';
	my $sel = IO::Select->new($server);
	my (%buf, %control);
	while (1) {
		for my $c ($sel->can_read(1)) {
			if ($c == $server) {
				my $new = $server->accept() or next;
				$sel->add($new);
				syswrite $new, "id=$id\n";
				next;
			}
			my $got = sysread($c, $buf{$c}, 4096, length($buf{$c} // ''));
			if (!$got) {
				$sel->remove($c);
				delete $buf{$c};
				delete $control{$c};
				close $c;
				next;
			}
			while ($buf{$c} =~ s/^([^\n]*)\n//) {
				my $line = $1;
				if ($line eq 'count') {
					$control{$c} = 1;
					my $n = grep { $_ != $server && !$control{$_} } $sel->handles;
					syswrite $c, "count=$n\n";
					$sel->remove($c);
					delete $buf{$c};
					delete $control{$c};
					close $c;
					last;
				}
				syswrite $c, "$id: $line\n";
			}
		}
	}
}

# Reads one line within $timeout seconds; undef otherwise.
sub read_line {
	my ($s, $timeout) = @_;
	my ($buf, $end) = ('', time() + ($timeout // 5));
	my $sel = IO::Select->new($s);
	while ($buf !~ /\n/) {
		my $left = $end - time();
		return undef if $left <= 0 || !$sel->can_read($left);
		sysread($s, $buf, 1024, length $buf) or return undef;
	}
	return $buf =~ /^([^\n]*)\n/ ? $1 : undef;
}

# A connection through nginx's stream port, held open; undef if nginx gave
# no backend's greeting.
sub hold_open {
	my ($port, %opts) = @_;
	my $s = IO::Socket::INET->new(Proto => 'tcp', Timeout => 5,
		PeerAddr => ($opts{addr} // '127.0.0.1') . ":$port") or return undef;
	my $hello = read_line($s, $opts{timeout}) // return undef;
	my ($id) = $hello =~ /^id=(\S+)/ or return undef;
	return { sock => $s, backend => $id };
}

sub hold_open_many {
	my ($n, $port, %opts) = @_;
	my @c;
	for (1 .. $n) {
		my $c = hold_open($port, %opts) or die "held connection $_ of $n failed\n";
		push @c, $c;
	}
	return @c;
}

sub hold_close { close $_->{sock} for @_ }

# What the backend on $port holds, or -1 if it does not answer.
sub held {
	my ($port, $addr) = @_;
	my $s = IO::Socket::INET->new(Proto => 'tcp', Timeout => 5,
		PeerAddr => ($addr // '127.0.0.1') . ":$port") or return -1;
	read_line($s) // return -1;
	syswrite $s, "count\n";
	my $line = read_line($s) // return -1;
	return $line =~ /^count=(\d+)/ ? $1 : -1;
}

# What the backends on these symbolic ports really hold:
# { "127.0.0.1:port" => connections }, -1 for one that does not answer.
sub held_counts {
	my (@ports) = @_;
	return { map { (addr($_) => held(port($_))) } @ports };
}

# { backend => connections } over held connections.
sub hold_tally {
	my %n;
	$n{$_->{backend} // 'none'}++ for @_;
	return \%n;
}

1;
