package Test::Nginx::Status;

# Reads the module's status page (JSON) from nginx.
#
#   my $st = status();                      # decoded JSON
#   counts('u');                            # { '127.0.0.1:8081' => 3, ... }
#   wait_counts('u', { a => 1, b => 1 });   # until the counts match

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/status counts entries wait_counts at_rest/;

use JSON::PP;
use Test::Nginx qw/http_get wait_until port/;

sub status {
	my ($uri) = @_;
	my $r = http_get($uri // '/status');
	my ($body) = $r =~ /\r\n\r\n(.*)\z/s;
	return decode_json($body // '{}');
}

# Counter entries of one upstream (all when undef), each a hash from the JSON.
sub entries {
	my ($upstream) = @_;
	return grep { !defined $upstream || $_->{upstream} eq $upstream }
		@{status()->{counters} // []};
}

# { server => count } for an upstream; draining entries included.
sub counts {
	my ($upstream) = @_;
	return { map { ($_->{server} => $_->{count}) } entries($upstream) };
}

# Waits until counts($upstream) equals %$want (servers as "127.0.0.1:port"
# or as symbolic port numbers); returns the last counts seen.
sub wait_counts {
	my ($upstream, $want, $timeout) = @_;
	my %w = map { (/^\d+$/ ? "127.0.0.1:" . port($_) : $_) => $want->{$_} } keys %$want;
	my $last;
	wait_until(sub {
		$last = counts($upstream);
		join(',', map { "$_=$last->{$_}" } sort keys %$last)
			eq join(',', map { "$_=$w{$_}" } sort keys %w);
	}, $timeout // 5);
	return $last;
}

# True when every counter of every upstream is 0.
sub at_rest {
	return wait_until(sub { !grep { $_->{count} } entries() }, $_[0] // 5);
}

1;
