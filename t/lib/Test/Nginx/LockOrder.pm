package Test::Nginx::LockOrder;

# What a debug log shows of the order a process takes its locks in. nginx
# logs "shmtx lock" and "shmtx unlock" (debug, on the cycle's log) when a
# zone's mutex is taken and released; round-robin's spin lock logs nothing,
# so the module says in a debug line where it released that lock before it
# works on the zone (following DNS, a stale counter).
#
#   my ($seen, @bad) = zone_work_after($t->read_file('error.log'),
#       qr/round-robin lock released/, $t->worker_pids());
#
# For every line matching the marker (logged by one of the pids, when any
# are given), the lines the same process logs after
# it, of nginx's zone mutex and of the module, must begin with "shmtx lock"
# then "shmtx unlock": the zone's mutex is taken only once round-robin's
# lock is released, and nothing of the module is logged while it is held.
# Returns how many marker lines were checked, then a description of each
# that breaks the rule.

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/zone_work_after/;

sub zone_work_after {
	my ($log, $marker, @pids) = @_;
	my %of = map { ($_ => 1) } @pids;
	my @lines;
	for (split /\n/, $log) {
		my ($pid, $text) = m{^\S+ \S+ \[\w+\] (\d+)#\d+: (.*)$} or next;
		push @lines, [$pid, $text];
	}
	my ($seen, @bad) = (0);
	for my $i (0 .. $#lines) {
		my ($pid, $text) = @{$lines[$i]};
		next unless $text =~ $marker && (!@pids || $of{$pid});
		$seen++;
		my @next = map { $_->[1] =~ /^shmtx (un)?lock$/ ? $_->[1] : 'module' }
			grep { $_->[0] == $pid && $_->[1] =~ /^shmtx (?:un)?lock$|least_conn_persistent/ }
			@lines[$i + 1 .. $#lines];
		my @got = @next[0 .. ($#next < 1 ? $#next : 1)];
		push @bad, "after \"$text\": " . join(', ', @got, '(end)')
			unless "@got" eq 'shmtx lock shmtx unlock';
	}
	return ($seen, @bad);
}

1;
