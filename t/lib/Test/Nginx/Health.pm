package Test::Nginx::Health;

# Drives the health answers of Test::Nginx::Backend's /health and reads
# what the checks left behind.
#
#   health_dir($t);                              # before run_daemon()
#   set_health('b', '503');                      # the next checks fail
#   set_health('b', '200', 'X-LCP-Capacity: drain');
#   set_health('b');                             # plain 200 again
#   my @times = hits('b');                       # epoch seconds of each hit
#   my @e = health_entries('u');                 # status JSON entries of u

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/health_dir set_health hits health_entries request_tally tally_text/;

use File::Path qw/mkpath/;
use File::Temp qw/tempdir/;

use Test::Nginx qw/http_get/;
use Test::Nginx::Status;

# The directory of the control files, $ENV{TEST_NGINX_HEALTH_DIR}: with a
# Test::Nginx object, <testdir>/health (each test file its own, kept with
# the test directory); without, the variable's value, or a new temporary
# directory when unset. Backends read the variable: call this before
# forking them.
sub health_dir {
	my ($t) = @_;
	if ($t) {
		$ENV{TEST_NGINX_HEALTH_DIR} = $t->testdir() . '/health';
		mkpath($ENV{TEST_NGINX_HEALTH_DIR});
	} elsif (!defined $ENV{TEST_NGINX_HEALTH_DIR}) {
		$ENV{TEST_NGINX_HEALTH_DIR} = tempdir('lcp-health-XXXXXX', TMPDIR => 1,
			CLEANUP => !$ENV{TEST_NGINX_LEAVE});
	}
	return $ENV{TEST_NGINX_HEALTH_DIR};
}

# What backend $id answers to its next health checks: a first line (`200`
# unless given; `503`, `hang`, `close`, `garbage`, `slow MS`) and raw header
# lines. Written to a temporary file renamed over the control file, so a
# backend never reads half of it.
sub set_health {
	my ($id, $first, @headers) = @_;
	my $dir = health_dir();
	my $tmp = "$dir/.$id.$$.tmp";
	open my $f, '>', $tmp or die "set_health: $tmp: $!\n";
	print $f join('', map { "$_\n" } $first // '200', @headers);
	close $f or die "set_health: $tmp: $!\n";
	rename $tmp, "$dir/$id" or die "set_health: rename to $dir/$id: $!\n";
}

# The times (epoch seconds, with ms) of every health check backend $id got.
sub hits {
	my ($id) = @_;
	open my $f, '<', health_dir() . "/$id.hits" or return ();
	my @t = grep { /^\d+(\.\d+)?$/ } map { chomp; $_ } <$f>;
	close $f;
	return @t;
}

# The status page's counter entries of $upstream (all when undef); their
# health fields: health, check, override, reported.
sub health_entries {
	my ($upstream) = @_;
	return entries($upstream);
}

# $n requests to $uri ('/' by default) through nginx: { backend id (its
# X-Backend header, or "status NNN") => count }.
sub request_tally {
	my ($n, $uri) = @_;
	my %by;
	for (1 .. $n) {
		my $r = http_get($uri // '/');
		my ($b) = $r =~ /^X-Backend:\s*(\S+)/mi;
		my ($code) = $r =~ m{^HTTP/1\.\d (\d+)};
		$by{$b // 'status ' . ($code // 'none')}++;
	}
	return \%by;
}

# A tally as text: "b1=3, b2=7" ("none" when empty).
sub tally_text { my ($c) = @_; join(', ', map { "$_=$c->{$_}" } sort keys %$c) || 'none' }

1;
