#!/usr/bin/perl

# The scripts refuse what they do not understand before doing anything:
# a usage line and exit code 2, not a build, a demo or a benchmark run with
# a mistyped option ignored.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

my @cases = (
	['demo.sh', '--chek'],
	['demo.sh', '--check extra'],
	['soak.sh', '--bogus'],
	['soak.sh', '--crash-points'],
	['memcheck.sh', '--nginx=2.0'],
	['bench.sh', '--bogus'],
	['bench.sh', '--sections=3,x'],
	['mainline.sh', ''],
	['mainline.sh', '--bogus /tmp'],
	['mainline.sh', '/nonexistent-nginx-tree'],
	['nginx-tests.sh', '--bogus'],
	['nginx-tests.sh', '--nginx=1.30 /tmp'],
	['nginx-tests.sh', '--nginx=both,/nonexistent-nginx-tree /tmp'],
	['nginx-tests.sh', '--nginx=/tmp /tmp'],
	['nginx-tests.sh', '--nginx=both,, /tmp'],
);
plan(tests => 3 * @cases);

for my $c (@cases) {
	my ($script, $args) = @$c;
	my $started = time();
	my $out = `../scripts/$script $args 2>&1`;
	my $rc = $? >> 8;
	is($rc, 2, "scripts/$script $args: exit code 2");
	like($out, qr{\Ausage: scripts/\Q$script\E }, 'and a usage line, first')
		or diag($out);
	ok(time() - $started < 5, 'before building or starting anything');
}
