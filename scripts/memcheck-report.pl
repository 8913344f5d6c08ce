#!/usr/bin/perl
# Reads valgrind memcheck logs (one per process) and sorts every error
# record: attributed to the module when a frame of its stack is ours
# (`least_conn_persistent`), else nginx's or libc's. Prints the module's
# records whole, a summary line for each kind, and exits 1 if the module
# has any.
#
#   memcheck-report.pl vg.*.log

use warnings;
use strict;

my ($ours, $theirs, $summary, %kinds) = (0, 0, 0);
# A record runs from one "==pid== " separator line (nothing after the pid)
# to the next.
sub records {
	my ($f) = @_;
	open my $fh, '<', $f or die "$f: $!\n";
	my (@recs, $cur) = ();
	while (my $l = <$fh>) {
		if ($l =~ /^==\d+==\s*$/) {
			push @recs, $cur if defined $cur;
			$cur = undef;
		} else {
			$cur .= $l;
		}
	}
	push @recs, $cur if defined $cur;
	return @recs;
}

for my $f (@ARGV) {
	for my $rec (records($f)) {
		$summary += $1 if $rec =~ /ERROR SUMMARY: (\d+) errors/;
		next unless $rec =~ /^==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap|Argument '.*' of function)/m;
		my ($kind) = $rec =~ /^==\d+== (\S+(?: \S+){0,2})/m;
		if ($rec =~ /least_conn_persistent/) {
			$ours++;
			print "ATTRIBUTED TO THE MODULE ($f):\n$rec\n";
		} else {
			$theirs++;
			$kinds{$kind}++;
		}
	}
}
printf "memcheck: %d process logs; valgrind's error summaries add up to %d\n", scalar(@ARGV), $summary;
printf "memcheck: %d errors in nginx's or libc's own code%s\n", $theirs,
	$theirs ? ' (' . join(', ', map { "$kinds{$_} $_" } sort keys %kinds) . ')' : '';
printf "memcheck: %d errors attributed to the module\n", $ours;
exit($ours ? 1 : 0);
