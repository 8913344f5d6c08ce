#!/usr/bin/perl

# scripts/check-layout.sh refuses what breaks the layout: a dependency
# against the layers, two source files that import each other, and a
# CONTRIBUTING.md layout list that differs from the tree. Each case runs on
# a copy of the checkout's src/ and CONTRIBUTING.md with one thing broken.

use warnings;
use strict;

use File::Copy qw/copy/;
use File::Path qw/make_path/;
use File::Temp qw/tempdir/;
use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/../.."); }    # the checkout's root

sub copy_tree {
	my ($dir) = @_;
	make_path("$dir/scripts");
	copy('scripts/check-layout.sh', "$dir/scripts/check-layout.sh") or die $!;
	chmod 0755, "$dir/scripts/check-layout.sh";
	copy('CONTRIBUTING.md', "$dir/CONTRIBUTING.md") or die $!;
	system('cp', '-r', 'src', "$dir/src") == 0 or die "cp src: $?";
}

sub append {
	my ($file, $text) = @_;
	open my $fh, '>>', $file or die "$file: $!";
	print $fh $text;
	close $fh;
}

sub run_check {
	my ($dir) = @_;
	my $out = `cd $dir && scripts/check-layout.sh 2>&1`;
	return ($? >> 8, $out);
}

my @cases = (
	['the tree as it is', sub { }, 0, qr/: ok$/m],
	['a core file using nginx', sub {
		append("$_[0]/src/core/key.rs", "\nuse crate::ngx::log::Log;\n");
	}, 1, qr{src/core must not use nginx.*\n.*core/key\.rs}],
	['two files importing each other', sub {
		append("$_[0]/src/core/key.rs", "\nuse super::ramp::elapsed;\n");
		append("$_[0]/src/core/ramp.rs", "\nuse super::key::hash;\n");
	}, 1, qr{import each other:\nsrc/core/key <-> src/core/ramp$}m],
	['a circle through a braced import', sub {
		append("$_[0]/src/core/key.rs", "\nuse crate::core::{ramp, sweep::plan};\n");
		append("$_[0]/src/core/sweep.rs", "\nuse super::key::hash;\n");
	}, 1, qr{^src/core/key <-> src/core/sweep$}m],
	['a source file the layout does not list', sub {
		append("$_[0]/src/core/unlisted.rs", "//! Not listed.\n");
	}, 1, qr{differ.*\n> src/core/unlisted\.rs$}m],
	['a listed file that is gone', sub {
		unlink("$_[0]/src/core/sweep.rs") or die $!;
	}, 1, qr{differ.*\n< src/core/sweep\.rs$}m],
);
plan(tests => 2 * @cases);

for my $c (@cases) {
	my ($name, $break, $rc_want, $says) = @$c;
	my $dir = tempdir(CLEANUP => 1);
	copy_tree($dir);
	$break->($dir);
	my ($rc, $out) = run_check($dir);
	is($rc, $rc_want, "$name: exit code $rc_want") or diag($out);
	like($out, $says, "$name: says so") or diag($out);
}
