package Test::Nginx::Udp;

# A UDP backend for run_daemon(), for stream {} upstreams that proxy
# datagrams (`listen ... udp`), and the client side of its sessions.
#
# The backend keeps a set of open sessions: the source addresses (nginx's
# upstream sockets, one per session) it has heard from and not let go.
# What it does with a datagram depends on the datagram:
#
# - "count": answers "count=<n>", n being the open sessions.
# - "release": sends "bye" to every open session (a second response, which
#   ends a session under `proxy_responses 2`), forgets them, and answers
#   "released=<n>". "release <n>": the same for n of them only.
# - "forget": forgets every open session without a word (sessions nginx
#   ended itself, at `proxy_timeout`), answers "forgot=<n>".
# - "quiet ...": opens (or keeps) a session and does not answer.
# - anything else: opens (or keeps) a session and answers "id=<id>".
#
# The control datagrams ("count", "release", "forget") are sent straight to
# the backend, not through nginx, and open no session.
#
#   $t->run_daemon(\&Test::Nginx::Udp::serve, port(8091), 'a');
#   udp_wait(port(8091));                        # until it answers
#   my $s = udp_open(port(8081));                # through nginx: $s->{backend}
#   udp_held(port(8091));                        # open sessions it sees
#   udp_release(port(8091));                     # ends them (proxy_responses 2)

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/udp_open udp_open_many udp_read udp_ask udp_held udp_release
	udp_forget udp_wait udp_tally/;

use IO::Select;
use IO::Socket::INET;
use Test::Nginx qw/wait_until/;

sub serve {
	my ($port, $id, $addr) = @_;
	my $s = IO::Socket::INET->new(Proto => 'udp', LocalAddr => $addr // '127.0.0.1',
		LocalPort => $port, ReuseAddr => 1)
		or die "udp backend $id: cannot bind $port: $!\n";
	# Open sessions: packed source address => 1.
	my %open;
	while (1) {
		my $from = recv($s, my $data, 65536, 0);
		next unless defined $from;
		if ($data eq 'count') {
			send($s, 'count=' . keys(%open), 0, $from);
		} elsif ($data =~ /^release(?: (\d+))?$/) {
			my @bye = (sort keys %open)[0 .. ($1 // keys %open) - 1];
			@bye = grep { defined } @bye;
			send($s, 'bye', 0, $_) for @bye;
			delete @open{@bye};
			send($s, 'released=' . @bye, 0, $from);
		} elsif ($data eq 'forget') {
			send($s, 'forgot=' . keys(%open), 0, $from);
			%open = ();
		} else {
			$open{$from} = 1;
			send($s, "id=$id", 0, $from) unless $data =~ /^quiet\b/;
		}
	}
}

# One datagram on $s within $timeout seconds (scaled by TEST_NGINX_SLOW);
# undef otherwise.
sub udp_read {
	my ($s, $timeout) = @_;
	return undef unless IO::Select->new($s)->can_read(($timeout // 5) * $Test::Nginx::SLOW);
	my $data;
	return defined recv($s, $data, 65536, 0) ? $data : undef;
}

sub socket_to {
	my ($port, $addr) = @_;
	return IO::Socket::INET->new(Proto => 'udp', PeerAddr => $addr // '127.0.0.1',
		PeerPort => $port);
}

# A session through nginx's UDP port: a socket of its own (nginx tells
# sessions apart by the client's address and port) sends "hello" (or
# $opts{send}) and waits for the backend's "id=" (unless $opts{quiet}).
# Returns { sock, backend }, or undef when no answer came. Keep the socket
# open while the session should be: a new socket could get the same port.
sub udp_open {
	my ($port, %opts) = @_;
	my $s = socket_to($port, $opts{addr}) or return undef;
	send($s, $opts{send} // ($opts{quiet} ? 'quiet' : 'hello'), 0) or return undef;
	return { sock => $s } if $opts{quiet};
	my $reply = udp_read($s, $opts{timeout}) // return undef;
	my ($id) = $reply =~ /^id=(\S+)/ or return undef;
	return { sock => $s, backend => $id };
}

sub udp_open_many {
	my ($n, $port, %opts) = @_;
	my @s;
	for (1 .. $n) {
		my $s = udp_open($port, %opts) or die "udp session $_ of $n got no answer\n";
		push @s, $s;
	}
	return @s;
}

# A control datagram straight to the backend on $port; its answer or undef.
sub udp_ask {
	my ($port, $what, $addr) = @_;
	my $s = socket_to($port, $addr) or return undef;
	send($s, $what, 0) or return undef;
	return udp_read($s, 2);
}

# The sessions the backend on $port has open, or -1 if it does not answer.
sub udp_held {
	my $r = udp_ask($_[0], 'count') // return -1;
	return $r =~ /^count=(\d+)$/ ? $1 : -1;
}

# Ends the backend's open sessions (a "bye" to each), or $n of them; how
# many it ended, or -1.
sub udp_release {
	my ($port, $n) = @_;
	my $r = udp_ask($port, 'release' . (defined $n ? " $n" : '')) // return -1;
	return $r =~ /^released=(\d+)$/ ? $1 : -1;
}

sub udp_forget {
	my $r = udp_ask($_[0], 'forget') // return -1;
	return $r =~ /^forgot=(\d+)$/ ? $1 : -1;
}

# Until the backend on $port answers.
sub udp_wait {
	my ($port) = @_;
	return wait_until(sub { udp_held($port) >= 0 }, 5);
}

# { backend => sessions } over sessions.
sub udp_tally {
	my %n;
	$n{$_->{backend} // 'none'}++ for @_;
	return \%n;
}

1;
