package Test::Nginx::Status;

# Reads the module's status page (JSON) from nginx.
#
#   my $st = status();                      # decoded JSON
#   counts('u');                            # { '127.0.0.1:8081' => 3, ... }
#   wait_counts('u', { a => 1, b => 1 });   # until the counts match

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/status counts entries stream_entries stream_counts wait_counts at_rest live_count live_counts
	named_counts server_counts same_counts/;

use JSON::PP;
use Test::Nginx qw/http http_get wait_until port addr/;

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

# The stream zone's counter entries (the http status page, ?subsystem=stream)
# of one upstream (all when undef).
sub stream_entries {
	my ($upstream) = @_;
	return grep { !defined $upstream || $_->{upstream} eq $upstream }
		@{status('/status?subsystem=stream')->{counters} // []};
}

# { server => count } for a stream upstream (all when undef).
sub stream_counts {
	return { map { ($_->{server} => $_->{count}) } stream_entries($_[0]) };
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
	my %w = map { (/^\d+$/ ? addr($_) : $_) => $want->{$_} } keys %$want;
	my $last;
	wait_until(sub {
		$last = counts($upstream);
		join(',', map { "$_=$last->{$_}" } sort keys %$last)
			eq join(',', map { "$_=$w{$_}" } sort keys %w);
	}, $timeout // 5);
	return $last;
}

# The WebSockets a backend (Test::Nginx::Backend) on $port (a real port)
# and $addr (127.0.0.1 unless given) really holds; -1 if it does not answer.
sub live_count {
	my ($port, $addr) = @_;
	my $r = eval { http("GET /count HTTP/1.0\r\n\r\n", port => $port, addr => $addr) } // '';
	my ($n) = $r =~ /\r\n\r\n(\d+)/;
	return $n // -1;
}

# What the backends on these symbolic ports really hold:
# { "127.0.0.1:port" => WebSockets open }, -1 for one that does not answer.
sub live_counts {
	my (@ports) = @_;
	return { map { (addr($_) => live_count(port($_))) } @ports };
}

# A { "127.0.0.1:port" => count } map (live_counts, Test::Nginx::Hold's
# held_counts) keyed by name instead, the names given as { port => name }:
# named_counts(\%name, live_counts(keys %name)) is { a => 3, b => 2 }.
sub named_counts {
	my ($name, $counts) = @_;
	my %of = map { (addr($_) => $name->{$_}) } keys %$name;
	return { map { (($of{$_} // $_) => $counts->{$_}) } keys %$counts };
}

# { server => count } summed over the given upstreams (all when none given).
sub server_counts {
	my (@upstreams) = @_;
	my %want = map { ($_ => 1) } @upstreams;
	my %sum;
	$sum{$_->{server}} += $_->{count}
		for grep { !@upstreams || $want{$_->{upstream}} } entries();
	return \%sum;
}

# Whether two { server => count } maps agree, a server missing from one
# counting 0 there.
sub same_counts {
	my ($x, $y) = @_;
	return !grep { ($x->{$_} // 0) != ($y->{$_} // 0) } keys %$x, keys %$y;
}

# True when the status page lists counters and every one is 0 (an empty
# page is not at rest: it would hide a page that lost its counters).
sub at_rest {
	return wait_until(sub { my @e = entries(); @e && !grep { $_->{count} } @e }, $_[0] // 5);
}

1;
