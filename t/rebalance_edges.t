#!/usr/bin/perl

# Rebalancing (`least_conn_persistent_rebalance rate=20/s tolerance=10%
# min_age=0 jitter=0`) at its edges, two workers, clients that come back
# after a random backoff (0-500 ms) when nginx closes them:
#
# 1. max_conns (stream): a and b hold 40 sessions each, a reload adds c
#    with max_conns=10. c fills to 10, then nothing more closes (a close
#    could only send its client back to a or b), and the upstream stops
#    rebalancing though a and b stay above their fair share.
# 2. max_fails (stream): d (max_fails=1) refuses connections and is marked
#    failed (an upstream `zone`: every worker sees it) while a and b take
#    40 each; a reload adds c. While d fails nothing closes, though the
#    upstream is rebalancing (the shared state): a failover is not an
#    imbalance. Once d's fail_timeout is over, the closes start.
# 3. http: a backend answers "101 Switching Protocols" to requests that
#    asked for no upgrade (nginx does not upgrade them: it proxies a
#    response whose body lasts until the server closes), and a WebSocket
#    handshake whose 101 head is still coming (the status line at once,
#    the rest seconds later). Both sit on servers above their fair share,
#    opened before the WebSockets (a worker closes its oldest first); only
#    the real WebSockets are closed, and the slow handshake completes
#    (`proxy_next_upstream off`: a close would show as a 502, not as a
#    retry elsewhere).

use warnings;
use strict;

use Test::More;
use IO::Select;
use IO::Socket::INET;
use List::Util qw/max sum0/;
use MIME::Base64 qw/encode_base64/;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::Hold;
use Test::Nginx::Reconnect;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

# nginx_independent: the `upgrade` bit of an http upstream is read through
# the bindings generated from each nginx's own headers; what differs (a
# stream session's `connected` bit) t/stream_rebalance.t checks on each nginx.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent stream/)->plan(33);

my $slow = $Test::Nginx::SLOW;
my $workers = 2;
my $directive = 'least_conn_persistent_rebalance rate=20/s tolerance=10% min_age=0 jitter=0;';

# Stream backends (Hold) and http ones (switch_serve below).
my %name = (8091 => 'a', 8092 => 'b', 8093 => 'c', 8094 => 'd', 8085 => 'a', 8086 => 'b', 8087 => 'c');
my %name_of_addr = map { (addr($_) => $name{$_}) } keys %name;

sub servers { join "\n", map { "        server 127.0.0.1:$_;" } @_ }

# u: stream upstream's server lines, w: http upstream's; zone: an upstream
# `zone` in u (round-robin's peer states, failures included, shared).
sub conf {
	my (%o) = @_;
	my $zone = $o{zone} ? 'zone u 64k;' : '';
	my $u = $o{u} // servers(8091, 8092);
	my $w = $o{w} // servers(8085, 8086);
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes $workers;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

    upstream u {
        $zone
        least_conn_persistent;
        $directive
$u
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; proxy_timeout 1h; }
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone h 1m;

    upstream w {
        least_conn_persistent;
        $directive
$w
    }

    server {
        listen 127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        # A close while a response head is still coming shows as a 502
        # (a retry on another server would hide it).
        proxy_next_upstream off;

        location / { proxy_pass http://w; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

# What the stream backends on these ports hold: { a => n, ... }.
sub live { named_counts(\%name, held_counts(@_)) }
sub show { my ($c, @n) = @_; join('/', map { $c->{$_} // 0 } @n ? @n : qw/a b c/) }

# Whether the entries (of one upstream) say it rebalances; undef if none
# says.
sub rebalancing {
	my @s = map { $_->{rebalancing} ? 1 : 0 } grep { exists $_->{rebalancing} } @_;
	return @s ? max(@s) : undef;
}

sub shed_by_name { return { map { ($name_of_addr{$_->{server}} // $_->{server} => $_->{shed} // 0) } @_ } }


# The servers rebalancing logged closing a connection to, in upstream
# $upstream since $mark: { name => n }.
sub closes_logged {
	my ($upstream, $mark) = @_;
	my %n;
	for (grep { /upstream "$upstream": rebalancing: closing a connection to/ } split /\n/, $t->log_since($mark)) {
		my ($server) = /closing a connection to (\S+?)[,;:)]* /;
		$n{$name_of_addr{$server} // $server}++;
	}
	return \%n;
}

sub finish {
	my ($crowd, $entries) = @_;
	$crowd->close_all();
	wait_until(sub { my @e = $entries->(); @e && !grep { $_->{count} } @e }, 5);
	$t->stop();
}

$t->run_daemon(\&Test::Nginx::Hold::serve, port($_), $name{$_}) for 8091, 8092, 8093;
# d listens only once told to (case 2): until then it refuses. (A daemon
# forked later would hold copies of the clients' sockets.)
my $d_go = $t->testdir() . '/d.go';
$t->run_daemon(sub { Time::HiRes::sleep(0.05) until -e $d_go; Test::Nginx::Hold::serve(@_) }, port(8094), 'd');
$t->run_daemon(\&switch_serve, port($_), $name{$_}) for 8085, 8086, 8087;
$t->waitforsocket(addr($_)) for 8091, 8092, 8093, 8085, 8086, 8087;

###############################################################################

# 1. max_conns: c takes 10, then no close would help.
conf();
$t->run();
my $crowd = Test::Nginx::Reconnect->new(open => sub { hold_open(port(8081)) }, backoff => 0.5);
$crowd->open_many(80);
is(show(live(8091, 8092, 8093)), '40/40/0', 'max_conns: 80 sessions 40/40');

my $mark = $t->log_mark();
conf(u => servers(8091, 8092) . "\n        server 127.0.0.1:8093 max_conns=10;");
$t->reload();
my $reloaded = time();
my $full = $crowd->pump(5 * $slow, sub { ($crowd->tally->{c} // 0) >= 10 });
ok($full, sprintf('c has its max_conns (10) of sessions %.1f s after the reload', time() - $reloaded));
my $closes_full = @{$crowd->closes};
$crowd->pump(1 * $slow);
my $ramp = @{$crowd->closes} - $closes_full;
my ($quiet_from, $quiet_mark) = (scalar @{$crowd->closes}, $t->log_mark());
$crowd->pump(2 * $slow);
ok($ramp <= 2, "at most a couple closed in the second after c was full: $ramp");
is(@{$crowd->closes} - $quiet_from, 0, 'none in the 2 s after that');
is_deeply(closes_logged('u', $quiet_mark), {}, 'and none logged');
my $end = live(8091, 8092, 8093);
is($end->{c}, 10, 'c holds its 10: ' . show($end));
is(sum0(values %$end), 80, 'the backends hold all 80');
my $total = @{$crowd->closes};
ok($total >= 10 && $total <= 12, "$total closes in all (10 filled c): " . show($crowd->closes_by_backend()));
is(rebalancing(stream_entries('u')), 0, 'status: u is not rebalancing, though a and b are above their fair share');
like($t->log_since($mark), qr/upstream "u": rebalancing starts.*upstream "u": rebalancing ends/s,
	'the log: rebalancing starts, then ends');
finish($crowd, sub { stream_entries('u') });

###############################################################################

# 2. max_fails: d refuses, and is failed for $fail_timeout s from the
# first session that tried it.
my $fail_timeout = int(3 + 2 * $slow);
my $d = "        server 127.0.0.1:8094 max_fails=1 fail_timeout=${fail_timeout}s;";
conf(zone => 1, u => servers(8091, 8092) . "\n$d");
$mark = $t->log_mark();
$t->run();
$crowd = Test::Nginx::Reconnect->new(open => sub { hold_open(port(8081)) }, backoff => 0.5);
my $opening = time();
$crowd->open_many(80);
my $opened = time();
my $start = live(8091, 8092);
ok($start->{a} + $start->{b} == 80 && abs($start->{a} - $start->{b}) <= 1, 'max_fails: 80 sessions ' . show($start));
like($t->log_since($mark), qr/upstream server temporarily disabled[^\n]*\Q${\addr(8094)}\E/,
	'd refused a session and is marked failed');

conf(zone => 1, u => servers(8091, 8092, 8093) . "\n$d");
$t->reload();
$crowd->pump(2 * $slow);
my $held_until = time();
is(scalar @{$crowd->closes}, 0, 'while d fails nothing closes in 2 s: ' . show(live(8091, 8092, 8093)));
is(rebalancing(stream_entries('u')), 1, 'though u is rebalancing (status)');
ok($held_until < $opening + $fail_timeout, sprintf('all within d\'s fail_timeout (%.1f s of %d)',
	$held_until - $opening, $fail_timeout));
like($t->log_since($mark), qr/\[info\].*upstream "u": rebalancing waits: a server is failing \(max_fails\)/,
	'the log says why it waits');

# d back; round-robin forgets its failure after fail_timeout.
$t->write_file('d.go', '');
$t->waitforsocket(addr(8094));
my $began = $crowd->pump($opened + $fail_timeout + 3 * $slow - time(), sub { scalar @{$crowd->closes} });
my $first = $began ? $crowd->closes->[0]{at} : time();
ok($began, sprintf('the closes start %.1f s after d failed (fail_timeout %d s)', $first - $opening, $fail_timeout));
ok($first > $opening + $fail_timeout - 0.1, 'not before its fail_timeout is over');
finish($crowd, sub { stream_entries('u') });

###############################################################################

# 3. http: 101 to a request without Upgrade, and a 101 whose head is
# still coming, are not long-lived connections.
my $pending = 4 * $slow;
conf(w => servers(8085, 8086));
$mark = $t->log_mark();
$t->run();

my @fake = map { switch_open() } 1 .. 4;
ok(!grep({ !$_ || $_->{head} !~ m{^HTTP/1\.1 101 } } @fake),
	'4 requests without Upgrade answered 101: ' . show(tally(grep { $_ } @fake)));
my $half = slow_handshake(int(1000 * $pending));

$crowd = Test::Nginx::Reconnect->new(open => sub { ws_open('/') }, backoff => 0.5);
$crowd->open_many(36);
my $ws_before = $crowd->tally;
conf(w => servers(8085, 8086, 8087));
$t->reload();
my $ended = $crowd->pump(10 * $slow, sub {
	@{$crowd->closes} && defined rebalancing(entries('w')) && !rebalancing(entries('w'));
});
my $ended_at = time();
ok($ended, sprintf('WebSockets %s: closes (%d) until w stops rebalancing', show($ws_before),
	scalar @{$crowd->closes}));
ok($ended_at < $half->{sent} + $pending, sprintf('all while the slow 101 head was still coming (%.1f s of %.0f)',
	$ended_at - $half->{sent}, $pending));
my $by = $crowd->closes_by_backend();
ok(@{$crowd->closes} > 0 && !$by->{c}, 'only a and b lost WebSockets: ' . show($by));
ok(!grep({ !still_open($_) } @fake), 'every 101 without Upgrade is still open');
my $head = Test::Nginx::WebSocket::read_until($half->{sock}, sub { $_[0] =~ /\r\n\r\n/ }, $pending + 5);
ok(defined $head && $head =~ m{^HTTP/1\.1 101 }
	&& ($head =~ /^Sec-WebSocket-Accept:\s*(\S+)/mi)[0] eq Test::Nginx::Backend::accept_key($half->{key}),
	sprintf('the WebSocket whose 101 head came %.0f s late completed', $pending));
ok(still_open($half), 'and is open');
$crowd->pump(1 * $slow);
my $logged = closes_logged('w', $mark);
is_deeply($logged, $crowd->closes_by_backend(), 'the log closed only the WebSockets the clients saw closed: '
	. show($logged));
is_deeply(shed_by_name(entries('w')), { a => $by->{a} // 0, b => $by->{b} // 0, c => 0 }, 'status: shed per server');
is(sum0(map { $_->{count} } entries('w')), 36 + @fake + 1, 'the zone counts every connection, 101s included');
is($crowd->failures, 0, 'no reconnect failed');
close $_->{sock} for grep { $_ } @fake, $half;
finish($crowd, sub { entries('w') });

###############################################################################

# 4. A new server that refuses every connection (stream): the old workers,
# which hold the connections and never try it, cannot see it fail; the
# clients they close come back to a and b. Closes then wait: once those of
# more than 2 s ago brought the servers below their share nothing.
conf();
$t->run();
$crowd = Test::Nginx::Reconnect->new(open => sub { hold_open(port(8081)) }, backoff => 0.5);
$crowd->open_many(80);
$mark = $t->log_mark();
conf(u => servers(8091, 8092) . "\n        server 127.0.0.1:" . port(8098) . ';');
$t->reload();
$reloaded = time();
$crowd->pump(5 * $slow);
my $before_quiet = @{$crowd->closes};
$crowd->pump(3 * $slow);
my $dead = live(8091, 8092);
ok($before_quiet > 0, "dead c: the old workers closed $before_quiet at first");
is(@{$crowd->closes} - $before_quiet, 0, 'then nothing from 5 s to 8 s after the reload: ' . show($dead, qw/a b/));
is(sum0(values %$dead), 80, 'every client back on a or b');
like($t->log_since($mark), qr/\[info\].*upstream "u": rebalancing waits: the connections it closed did not come back/,
	'the log says why closes wait');
finish($crowd, sub { stream_entries('u') });

###############################################################################

# An http backend for run_daemon(): a WebSocket handshake gets its 101 (a
# URI /slow?ms=N gets its status line at once and the rest of the head N
# ms later); any other request gets "101 Switching Protocols" and 16 kB of
# body (nginx, buffering, passes the client the head with the first full
# buffer).
# Every connection is then held open until its client closes it.
sub switch_serve {
	my ($port, $id) = @_;
	my $server = IO::Socket::INET->new(Proto => 'tcp', LocalAddr => '127.0.0.1',
		LocalPort => $port, Listen => 1024, ReuseAddr => 1)
		or die "switch backend $id: cannot listen on $port: $!\n";
	local $SIG{PIPE} = 'IGNORE';
	my $sel = IO::Select->new($server);
	my (%buf, %done, %later);
	while (1) {
		for my $c (grep { $later{$_} && $later{$_}[0] <= time() } $sel->handles) {
			syswrite $c, (delete $later{$c})->[1];
		}
		for my $c ($sel->can_read(0.02)) {
			if ($c == $server) {
				my $new = $server->accept() or next;
				$sel->add($new);
				$buf{$new} = '';
				next;
			}
			if (!sysread($c, $buf{$c}, 65536, length $buf{$c})) {
				$sel->remove($c);
				delete $_->{$c} for \%buf, \%done, \%later;
				close $c;
				next;
			}
			next if $done{$c} || $buf{$c} !~ /^(.*?)\r\n\r\n/s;
			my $req = $1;
			$done{$c} = 1;
			my ($key) = $req =~ /^Sec-WebSocket-Key:\s*(\S+)/mi;
			if ($req !~ /^Upgrade:\s*websocket/mi) {
				syswrite $c, "HTTP/1.1 101 Switching Protocols\r\nX-Backend: $id\r\n\r\n" . ('x' x 16384);
				next;
			}
			my $status = "HTTP/1.1 101 Switching Protocols\r\n";
			my $rest = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
				. 'Sec-WebSocket-Accept: ' . Test::Nginx::Backend::accept_key($key // '') . "\r\n"
				. "X-Backend: $id\r\n\r\n";
			if ($req =~ m{^GET /slow\?ms=(\d+)}) {
				syswrite $c, $status;
				$later{$c} = [time() + $1 / 1000, $rest];
				next;
			}
			syswrite $c, $status . $rest;
		}
	}
}

# A request without Upgrade through nginx; { sock, backend, head }, or
# undef without a head.
sub switch_open {
	my $s = http("GET /switch HTTP/1.1\r\nHost: localhost\r\n\r\n", start => 1);
	my $head = Test::Nginx::WebSocket::read_until($s, sub { $_[0] =~ /\r\n\r\n/ }) // return undef;
	my ($backend) = $head =~ /^X-Backend:\s*(\S+)/mi;
	return { sock => $s, backend => $backend, head => $head };
}

# A WebSocket handshake whose 101 head the backend finishes $ms later;
# { sock, key }, nothing read yet.
sub slow_handshake {
	my ($ms) = @_;
	my $key = encode_base64(join('', map { chr(int(rand(256))) } 1 .. 16), '');
	my $s = http("GET /slow?ms=$ms HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
		. "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n", start => 1);
	return { sock => $s, key => $key, sent => time() };
}

# Whether nginx has not closed the client's connection: what is there to
# read is read, and no end of it comes.
sub still_open {
	my ($c) = @_;
	my $sel = IO::Select->new($c->{sock});
	while ($sel->can_read(0.1)) {
		my $got = sysread($c->{sock}, my $buf, 65536);
		return 0 unless $got;
	}
	return 1;
}

###############################################################################
