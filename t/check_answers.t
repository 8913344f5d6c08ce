#!/usr/bin/perl

# Health check answers of any shape (`least_conn_persistent_check` with
# uri= and load=), each server a raw backend of this file that sends the
# exact bytes it is given and keeps the connection open afterwards (a
# probe must know the head's end by itself, not by the close):
#
# a. big heads: a 6 KB capacity header (longer than the capacity line's
#    256 bytes, under the 64 KiB bound): malformed, warned once, the server
#    stays up on its 200; a head of ~70 KB without its blank line within
#    64 KiB, status 200, `drain` and a load early in it: the server stays up,
#    neither is taken (no drain, no reported load), one warning; the same
#    head with status 503: down on its status.
# b. bare LF line ends: a head whose lines end in "\n" only, the connection
#    left open: passes, its capacity header (weight=3) is read.
# c. control bytes in a capacity header (ESC, CR, BEL, NUL, 0xFF, a quote
#    and a backslash): the [warn] quotes them escaped as \xHH, no raw byte
#    outside printable ASCII in the line.
#
# Intervals and timeouts scale with TEST_NGINX_SLOW.

use warnings;
use strict;

use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Health;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(5);

my $slow = $Test::Nginx::SLOW;
my $interval_ms = int(500 * $slow + 0.5);
my $timeout_ms = $interval_ms;
my $interval = $interval_ms / 1000;

my %id = (8081 => 'big_cap', 8082 => 'huge_ok', 8083 => 'huge_503', 8084 => 'bare_lf', 8085 => 'ctl');

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=1 fall=2 load=X-Connections;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
        server 127.0.0.1:8083;
        server 127.0.0.1:8084;
        server 127.0.0.1:8085;
    }

    server {
        listen       127.0.0.1:8080;
        location / { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

###############################################################################

# A backend that answers every request (once its head is in) with the bytes
# of <health dir>/<id>.raw, as they are, and keeps the connection until the
# peer closes it. Each answer appends its time to <id>.hits.
sub raw_backend {
	my ($port, $id) = @_;
	my $dir = health_dir();
	my $server = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => '127.0.0.1',
		LocalPort => $port, Listen => 128, ReuseAddr => 1)
		or die "backend $id: cannot listen on $port: $!\n";
	local $SIG{PIPE} = 'IGNORE';
	my $sel = IO::Select->new($server);
	my %buf;
	while (1) {
		for my $c ($sel->can_read(0.5)) {
			if ($c == $server) {
				my $n = $server->accept() or next;
				$sel->add($n);
				$buf{$n} = '';
				next;
			}
			my $got = sysread($c, my $chunk, 65536);
			if (!$got) {
				$sel->remove($c);
				delete $buf{$c};
				close $c;
				next;
			}
			$buf{$c} .= $chunk;
			next unless $buf{$c} =~ s/^.*?\r\n\r\n//s;
			open my $f, '<:raw', "$dir/$id.raw" or die "backend $id: $dir/$id.raw: $!\n";
			my $answer = do { local $/; <$f> };
			close $f;
			if (open my $hits, '>>', "$dir/$id.hits") {
				printf $hits "%.3f\n", time();
				close $hits;
			}
			# Blocking: written whole, or cut short when the probe closes.
			my $off = 0;
			while ($off < length $answer) {
				my $n = syswrite($c, $answer, length($answer) - $off, $off);
				last unless $n;
				$off += $n;
			}
		}
	}
}

sub answer {
	my ($id, $bytes) = @_;
	my $f = health_dir() . "/$id.raw";
	open my $fh, '>:raw', $f or die "$f: $!\n";
	print $fh $bytes;
	close $fh;
}

# A head that goes on past 64 KiB without its blank line.
sub huge_head {
	my ($status) = @_;
	my $head = "HTTP/1.1 $status Whatever\r\nX-LCP-Capacity: drain\r\nX-Connections: 50\r\n";
	my $n = 0;
	$head .= sprintf("X-Pad-%05d: %s\r\n", $n++, 'p' x 100) while length $head < 70 * 1024;
	return $head;
}

health_dir($t);

my $ctl_value = "bad\x1b[31m\r\x07\x00\xff\"q\\";

answer('big_cap', "HTTP/1.1 200 OK\r\nX-LCP-Capacity: " . ('up,' x 2000) . "\r\nContent-Length: 0\r\n\r\n");
answer('huge_ok', huge_head(200));
answer('huge_503', huge_head(503));
answer('bare_lf', "HTTP/1.1 200 OK\nX-LCP-Capacity: weight=3\nContent-Length: 0\n\n");
answer('ctl', "HTTP/1.1 200 OK\r\nX-LCP-Capacity: $ctl_value\r\nContent-Length: 0\r\n\r\n");

###############################################################################

sub entry {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('u');
	return $e // {};
}

sub warn_re { qr/\[warn\].*upstream "u": server \Q${\addr($_[0])}\E: capacity answer "(.*)" ignored: (.*)$/ }
sub down_re { qr/upstream "u": server \Q${\addr($_[0])}\E is down \((.*)\)/ }

# Up, passing, never down, after at least $n checks answered.
sub stays_up {
	my ($port, $n) = @_;
	my $id = $id{$port};
	ok(wait_until(sub { (() = hits($id)) >= $n }, 10 + 2 * $n * $interval), "$id: answered $n checks")
		or diag('hits: ' . scalar(hits($id)));
	my $e = entry($port);
	is($e->{health}, 'up', "$id: up") or diag(explain($e));
	is($e->{check}{result}, 'ok', "$id: last check passed");
	is($e->{check}{status}, 200, "$id: status 200");
	is(scalar($t->log_lines(0, down_re($port))), 0, "$id: never logged down");
	return $e;
}

$t->run_daemon(\&raw_backend, port($_), $id{$_}) for sort keys %id;
$t->waitforsocket(addr($_)) for sort keys %id;
$t->run();

# Enough checks for fall=2 to have taken any of them down twice over.
my $checks = 8;

subtest 'a. a 6 KB capacity header' => sub {
	stays_up(8081, $checks);
	my @w = $t->log_lines(0, warn_re(8081));
	is(scalar @w, 1, 'exactly one [warn]') or diag(join("\n", @w));
	my ($text, $why) = ($w[0] // '') =~ warn_re(8081);
	is($why, 'longer than 256 bytes', 'the reason');
	is($text, 'up,' x 21 . 'u', 'quoting its first 64 bytes');
	ok(!exists entry(8081)->{override}, 'no override');
};

subtest 'a. a 70 KB head, status 200' => sub {
	my $e = stays_up(8082, $checks);
	ok(!exists $e->{override}, 'no override');
	ok(!exists $e->{reported}, 'no reported load (its X-Connections: 50 not taken)') or diag(explain($e));
	my @w = $t->log_lines(0, warn_re(8082));
	is(scalar @w, 1, 'exactly one [warn]') or diag(join("\n", @w));
	my ($text, $why) = ($w[0] // '') =~ warn_re(8082);
	is($why, 'response head over 65536 bytes', 'the reason');
	is($text, '', 'no text quoted');
};

subtest 'a. a 70 KB head, status 503' => sub {
	ok(wait_until(sub { $t->log_lines(0, down_re(8083)) }, 10 + 4 * $interval), 'huge_503 is logged down');
	my ($why) = (($t->log_lines(0, down_re(8083)))[0] // '') =~ down_re(8083);
	like($why // '', qr/last: status 503$/, 'on its status: ' . ($why // 'none'));
	my $e = entry(8083);
	is($e->{health}, 'down', 'JSON: down');
	is($e->{check}{result}, 'bad status', 'JSON: result "bad status"');
	is($e->{check}{status}, 503, 'JSON: status 503');
};

subtest 'b. bare LF line ends, connection kept open' => sub {
	my $e = stays_up(8084, $checks);
	is_deeply($e->{override}, { weight => 3 }, 'its capacity header read: weight 3') or diag(explain($e));
	ok(($e->{check}{duration_ms} // 1e9) < $timeout_ms, 'answered in ' . ($e->{check}{duration_ms} // 'none') . ' ms, no timeout');
};

subtest 'c. control bytes in a capacity answer' => sub {
	stays_up(8085, $checks);
	my @w = $t->log_lines(0, warn_re(8085));
	is(scalar @w, 1, 'exactly one [warn]') or diag(join("\n", map { s/([^\x20-\x7e])/sprintf('<%02X>', ord $1)/ger } @w));
	my $line = $w[0] // '';
	my ($text, $why) = $line =~ warn_re(8085);
	is($text, 'bad\x1B[31m\x0D\x07\x00\xFF\x22q\x5C', 'the text escaped as \xHH');
	is($why, 'an unknown token', 'the reason');
	ok($line ne '' && $line !~ /[^\x20-\x7e]/, 'no raw byte outside printable ASCII in the line')
		or diag($line =~ s/([^\x20-\x7e])/sprintf('<%02X>', ord $1)/ger);
	my $log = $t->read_file('error.log');
	ok($log !~ /\x1b/, 'no raw ESC anywhere in the error log');
};

###############################################################################
