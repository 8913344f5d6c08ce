#!/usr/bin/perl
# Puts the throughput and per-pick figures of both nginx versions side by
# side at the end of BENCHMARKS.md, copied from the two files scripts/bench.sh
# writes (BENCHMARKS.md for Debian's nginx, BENCHMARKS-nginx-1.28.md for
# nginx 1.28). Nothing here is measured: every figure comes from those runs,
# whose dates and commits the section names. scripts/bench.sh calls this after
# each full run; it can be run alone: perl scripts/bench/beside.pl [dir]

use warnings;
use strict;

my $dir = shift // '.';
my ($main, $other) = ("$dir/BENCHMARKS.md", "$dir/BENCHMARKS-nginx-1.28.md");
my ($begin, $end) = ('<!-- beside:begin -->', '<!-- beside:end -->');

sub slurp {
	my ($f) = @_;
	open my $fh, '<', $f or return undef;
	local $/;
	return <$fh>;
}

# { nginx, date, commit, throughput => { servers => ratio }, pick => { servers => ratio } }
sub figures {
	my ($text) = @_;
	my %f;
	($f{nginx}) = $text =~ /^\| nginx \| (.*?) \|$/m;
	($f{date}) = $text =~ /^\| date \| (.*?) \|$/m;
	($f{commit}) = $text =~ /^\| commit \| (.*?) \|$/m;
	for ([throughput => qr/^## 2\. Throughput$/m], [pick => qr/^## 3\. Cost per pick/m]) {
		my ($key, $title) = @$_;
		$text =~ /$title(.*?)(?=^## |\z)/ms or next;
		my $section = $1;
		for my $row ($section =~ /^\| (\d+) \|.*$/mg) {
			my ($line) = $section =~ /^(\| $row \|.*)$/m;
			my @cells = map { s/^\s+|\s+$//gr } split /\|/, $line;
			# servers, stock, ours, ratio, ...
			$f{$key}{$cells[1]} = $cells[4];
		}
	}
	return \%f;
}

my $m = slurp($main) // die "$main: $!\n";
my $o = slurp($other);
$m =~ s/\n*\Q$begin\E.*?\Q$end\E\n*/\n/s;
if (!defined $o) {
	open my $fh, '>', $main or die "$main: $!\n";
	print $fh $m;
	exit 0;
}
my ($deb, $new) = (figures($m), figures($o));
my %servers = map { ($_ => 1) } map { keys %{$_->{throughput} // {}}, keys %{$_->{pick} // {}} } $deb, $new;
my $section = "$begin\n## Beside: both nginx versions\n\n"
	. "Copied by `scripts/bench/beside.pl` from this file ($deb->{nginx}, $deb->{date}, commit $deb->{commit})"
	. " and `BENCHMARKS-nginx-1.28.md` ($new->{nginx}, $new->{date}, commit $new->{commit}).\n"
	. "Ratios are `least_conn_persistent` over stock `least_conn` on the same nginx.\n\n"
	. "| servers | throughput ratio, Debian | throughput ratio, 1.28 | per-pick ratio, Debian | per-pick ratio, 1.28 |\n"
	. "|---|---|---|---|---|\n";
for my $n (sort { $a <=> $b } keys %servers) {
	$section .= join(' | ', "| $n", map { $_ // '-' } $deb->{throughput}{$n}, $new->{throughput}{$n},
		$deb->{pick}{$n}, $new->{pick}{$n}) . " |\n";
}
$section .= "$end\n";
$m =~ s/\n*\z/\n\n$section/;
open my $fh, '>', $main or die "$main: $!\n";
print $fh $m;
