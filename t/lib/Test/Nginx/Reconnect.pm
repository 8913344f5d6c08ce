package Test::Nginx::Reconnect;

# A crowd of clients that hold long-lived connections through nginx and,
# when nginx closes one, come back after a random backoff (as Socket.IO and
# SignalR clients do): a new connection through nginx, which may land on
# another backend. For rebalancing (least_conn_persistent_rebalance): the
# crowd records every close it sees, with the backend it was on and what
# each backend held (by the crowd's own tally) around it.
#
#   my $crowd = Test::Nginx::Reconnect->new(open => sub { ws_open('/') },
#       backoff => 0.5);
#   $crowd->open_many(1000);
#   $crowd->pump(10, sub { converged() });   # runs the crowd for up to 10 s
#   $crowd->closes;                          # [{ at, backend, before, after }]
#   $crowd->max_in_window(1);                # most closes in any 1 s
#   $crowd->close_all;
#
# `open` returns { sock => ..., backend => ... } (ws_open, hold_open) or
# undef. Closes are seen in batches (all the sockets one select() finds
# closed): `before` is the tally before the batch, `after` once every close
# of the batch is taken away (the order of closes inside a batch is not
# known, and the state after the batch is what the balancer left).

use warnings;
use strict;

use Exporter qw/import/;
use IO::Select;
use List::Util qw/max min sum0/;
use Time::HiRes qw/time sleep/;

# Fair shares, as rebalancing computes them, of what each server holds
# ({ name => connections }), by weight ({ name => weight }, 1 if not given).
our @EXPORT = qw/fair within excess/;

sub fair {
	my ($c, $w) = @_;
	my $total = sum0(values %$c);
	my $weights = sum0(map { $w->{$_} // 1 } keys %$c);
	return { map { ($_ => $weights ? $total * ($w->{$_} // 1) / $weights : 0) } keys %$c };
}

# Every server within its fair share plus $percent, plus one.
sub within {
	my ($c, $percent, $w) = @_;
	my $f = fair($c, $w);
	return !grep { $c->{$_} < 0 || $c->{$_} > $f->{$_} * (1 + $percent / 100) + 1 } keys %$c;
}

# Connections above the fair shares, summed.
sub excess {
	my ($c, $w) = @_;
	my $f = fair($c, $w);
	return sum0(map { max(0, $c->{$_} - $f->{$_}) } keys %$c);
}

sub new {
	my ($class, %o) = @_;
	die "Reconnect->new: open => sub { ... } is required\n" unless $o{open};
	return bless {
		open => $o{open},
		backoff => $o{backoff} // 0.5,
		sel => IO::Select->new(),
		live => {},         # fileno => client
		waiting => [],      # clients closed, each with a `due` time
		tally => {},        # backend => connections open
		closes => [],
		reconnects => [],   # { at, backend }
		failures => 0,      # reconnects that got no connection (retried)
		stray => 0,         # bytes received (a close frame, data) before a close
	}, $class;
}

sub tally { return { %{$_[0]{tally}} } }
sub closes { return $_[0]{closes} }
sub reconnects { return $_[0]{reconnects} }
sub failures { return $_[0]{failures} }
sub stray { return $_[0]{stray} }
sub open_count { return scalar keys %{$_[0]{live}} }
sub waiting_count { return scalar @{$_[0]{waiting}} }

sub add {
	my ($self, $c) = @_;
	$c->{opened} = time();
	$self->{live}{fileno $c->{sock}} = $c;
	$self->{sel}->add($c->{sock});
	$self->{tally}{$c->{backend} // 'none'}++;
	return $c;
}

# $n connections opened one after another; dies when one fails.
sub open_many {
	my ($self, $n) = @_;
	for my $i (1 .. $n) {
		my $c = $self->{open}->() or die "connection $i of $n failed to open\n";
		$self->add($c);
	}
	return $self;
}

# Runs the crowd for up to $seconds: sees closes, reconnects the clients
# whose backoff is over. `$until` (optional) is called every `$every`
# seconds (0.2 unless given); pump returns as soon as it returns true (its
# value), undef when the time is up.
sub pump {
	my ($self, $seconds, $until, $every) = @_;
	$every //= 0.2;
	my $end = time() + $seconds;
	my $next_check = 0;
	while (1) {
		my $now = time();
		if ($until && $now >= $next_check) {
			$next_check = $now + $every;
			my $v = $until->();
			return $v if $v;
		}
		return undef if $now >= $end;
		$self->reconnect_due($now);
		my $next_due = min(map { $_->{due} } @{$self->{waiting}});
		my $wait = min(0.02, max(0, ($next_due // $now + 1) - time()));
		if ($self->{sel}->count()) {
			$self->read_ready($wait);
		} else {
			sleep($wait);
		}
	}
}

sub reconnect_due {
	my ($self, $now) = @_;
	my (@due, @later);
	push @{$_->{due} <= $now ? \@due : \@later}, $_ for @{$self->{waiting}};
	$self->{waiting} = \@later;
	for my $old (@due) {
		my $c = $self->{open}->();
		if (!$c) {
			$self->{failures}++;
			$old->{due} = time() + rand($self->{backoff});
			push @{$self->{waiting}}, $old;
			next;
		}
		$self->add($c);
		push @{$self->{reconnects}}, { at => time(), backend => $c->{backend} // 'none' };
	}
}

# One select(): the connections it finds closed make a batch.
sub read_ready {
	my ($self, $wait) = @_;
	my @gone;
	for my $s ($self->{sel}->can_read($wait)) {
		my $got = sysread($s, my $buf, 65536);
		if ($got) {
			$self->{stray} += $got;
			next;
		}
		push @gone, $self->{live}{fileno $s};
	}
	return unless @gone;
	my $at = time();
	my %before = %{$self->{tally}};
	for my $c (@gone) {
		$self->{sel}->remove($c->{sock});
		delete $self->{live}{fileno $c->{sock}};
		close $c->{sock};
		$self->{tally}{$c->{backend} // 'none'}--;
	}
	my %after = %{$self->{tally}};
	for my $c (@gone) {
		push @{$self->{closes}}, { at => $at, backend => $c->{backend} // 'none',
			age => $at - $c->{opened}, before => \%before, after => \%after };
		push @{$self->{waiting}}, { due => $at + rand($self->{backoff}) };
	}
}

# The most closes seen in any window of $len seconds (half-open), or 0.
sub max_in_window {
	my ($self, $len) = @_;
	my @t = map { $_->{at} } @{$self->{closes}};
	my ($best, $j) = (0, 0);
	for my $i (0 .. $#t) {
		$j++ while $j < @t && $t[$j] < $t[$i] + $len;
		$best = $j - $i if $j - $i > $best;
	}
	return $best;
}

# Closes seen since $since (a time), by backend: { backend => n }.
sub closes_by_backend {
	my ($self, $since) = @_;
	my %n;
	$n{$_->{backend}}++ for grep { $_->{at} >= ($since // 0) } @{$self->{closes}};
	return \%n;
}

# Every connection closed by the client, and nothing reconnects any more.
# `$bye` (optional) is called with each client first (ws_close sends a
# close frame).
sub close_all {
	my ($self, $bye) = @_;
	for my $c (values %{$self->{live}}) {
		$bye ? $bye->($c) : close $c->{sock};
	}
	$self->{sel} = IO::Select->new();
	$self->{live} = {};
	$self->{waiting} = [];
	$self->{tally} = {};
	return $self;
}

1;
