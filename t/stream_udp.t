#!/usr/bin/perl

# UDP stream upstreams (`listen ... udp`): a session, not a datagram, is what
# is counted, and it is released once however it ends. nginx makes a session
# of the first datagram from a client address and port; it ends after
# `proxy_responses` responses per datagram, at `proxy_timeout` when idle, or
# at once with `proxy_responses 0`; with `proxy_requests 1` each datagram is
# a session of its own. Real UDP backends (Test::Nginx::Udp) answer with
# their id and end their sessions on request, so that sessions stay open
# while the counts are read: spread by least connections across two
# workers, counts equal to the sessions open, a reload that keeps them,
# max_conns, and every count back to 0 exactly once.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr wait_until/;
use Test::Nginx::Status;
use Test::Nginx::Udp;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(55);

# proxy_timeout of the sessions meant to time out, in seconds.
my $idle = 2 * $Test::Nginx::SLOW;

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 2;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

    # The balancer's debug lines, one "get peer" and one "free" per
    # session, and how nginx ended each session.
    error_log %%TESTDIR%%/stream.log debug;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8091;
        server 127.0.0.1:8092;
        server 127.0.0.1:8093;
    }

    upstream m {
        least_conn_persistent;
        server 127.0.0.1:8091 max_conns=2;
        server 127.0.0.1:8092 max_conns=2;
    }

    upstream p {
        least_conn_persistent;
        server 127.0.0.1:8091;
        server 127.0.0.1:8092;
    }

    upstream t {
        least_conn_persistent;
        server 127.0.0.1:8091;
        server 127.0.0.1:8092;
    }

    upstream q {
        least_conn_persistent;
        server 127.0.0.1:8093;
    }

    upstream z {
        least_conn_persistent;
        server 127.0.0.1:8091;
        server 127.0.0.1:8092;
        server 127.0.0.1:8093;
    }

    # A session ends with its second response: the backend's "id=", then
    # the "bye" that udp_release() has it send.
    server {
        listen 127.0.0.1:8081 udp reuseport;
        proxy_pass u;
        proxy_responses 2;
        proxy_timeout 120s;
    }

    server {
        listen 127.0.0.1:8083 udp reuseport;
        proxy_pass m;
        proxy_responses 2;
        proxy_timeout 120s;
    }

    # Each datagram is a session of its own, even from the same client.
    server {
        listen 127.0.0.1:8087 udp reuseport;
        proxy_pass p;
        proxy_requests 1;
        proxy_responses 2;
        proxy_timeout 120s;
    }

    # Any number of responses: a session ends when idle for proxy_timeout
    # ("udp timed out").
    server {
        listen 127.0.0.1:8084 udp reuseport;
        proxy_pass t;
        proxy_timeout ${idle}s;
    }

    # One response expected and none comes: "upstream timed out", a failure.
    server {
        listen 127.0.0.1:8085 udp reuseport;
        proxy_pass q;
        proxy_responses 1;
        proxy_timeout ${idle}s;
    }

    # No response expected: the session ends once the datagram is sent.
    server {
        listen 127.0.0.1:8086 udp reuseport;
        proxy_pass z;
        proxy_responses 0;
    }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF

my %id = (a => 8091, b => 8092, c => 8093);

# The stream zone's counters, as the http status page shows them.
sub stream_status { status('/status?subsystem=stream') }

# { backend id => count } of an upstream.
sub scounts {
	my %name = map { (addr($id{$_}) => $_) } keys %id;
	return { map { ($name{$_->{server}} // $_->{server} => $_->{count}) } stream_entries($_[0]) };
}

# Waits until an upstream's counts are %$want, server for server (a
# missing entry is no 0); returns whether they were.
sub counts_become {
	my ($upstream, $want, $timeout) = @_;
	return wait_until(sub { show(scounts($upstream)) eq show($want) }, $timeout // 5);
}

# { backend id => sessions it has open }, as the backends see them.
sub backend_sessions { return { map { ($_ => udp_held(port($id{$_}))) } @_ } }

sub show { my ($h) = @_; join ' ', map { "$_=$h->{$_}" } sort keys %$h }

# Sessions whose client got the "bye" that ended them.
sub got_bye { return scalar grep { (udp_read($_->{sock}, 2) // '') eq 'bye' } @_ }

sub all_zero {
	my @e = stream_entries();
	return @e && !grep { $_->{count} } @e;
}

# The sessions these workers hold, as the zone records them; undef when it
# records none of them.
sub workers_holding {
	my ($pids) = @_;
	my %want = map { ($_ => 1) } @$pids;
	my @w = grep { $want{$_->{pid}} } @{stream_status()->{zone}{workers} // []};
	my $n = 0;
	$n += $_->{connections} for @w;
	return @w ? $n : undef;
}

$t->run_daemon(\&Test::Nginx::Udp::serve, port($id{$_}), $_) for sort keys %id;
udp_wait(port($id{$_})) or die "udp backend $_ does not answer\n" for sort keys %id;

$t->run();

###############################################################################

# Sessions stay open until their backend ends them: 30 over three servers.
my @first = udp_open_many(30, port(8081));
is_deeply(udp_tally(@first), { a => 10, b => 10, c => 10 }, '30 UDP sessions over three servers: 10/10/10');
is_deeply(scounts('u'), { a => 10, b => 10, c => 10 }, 'the zone counts 10/10/10 while they are open');
is_deeply(backend_sessions(qw/a b c/), { a => 10, b => 10, c => 10 },
	'which is what the backends have open');

# a ends its sessions (the second response): released, once each; half
# of them first, so that a release counted twice would show.
my @on_a = grep { $_->{backend} eq 'a' } @first;
is(udp_release(port(8091), 4), 4, 'backend a ends 4 of its sessions');
ok(counts_become('u', { a => 6, b => 10, c => 10 }), 'those 4 are released: 6/10/10')
	or diag show(scounts('u'));
is(udp_release(port(8091)), 6, 'backend a ends the other 6');
is(got_bye(@on_a), 10, 'their clients got the last response');
ok(counts_become('u', { a => 0, b => 10, c => 10 }), 'a\'s sessions are released: 0/10/10')
	or diag show(scounts('u'));

# Least connections across both workers: every new session goes to a.
my @again = udp_open_many(10, port(8081));
is_deeply(udp_tally(@again), { a => 10 }, '10 new sessions all go to the server with none');
is_deeply(scounts('u'), { a => 10, b => 10, c => 10 }, 'counts 10/10/10 again');

# A reload while sessions are open: the old workers keep them, and the
# new workers see their counts.
my @on_b = grep { $_->{backend} eq 'b' } @first;
is(udp_release(port(8092)), 10, 'backend b ends its 10 sessions');
ok(counts_become('u', { a => 10, b => 0, c => 10 }), 'counts 10/0/10') or diag show(scounts('u'));
$t->reload();
my @old = $t->old_worker_pids();
ok(scalar @old, 'old workers still run, holding sessions');
is_deeply(scounts('u'), { a => 10, b => 0, c => 10 }, 'the counts survive the reload');
is(workers_holding(\@old), 20, 'the old workers hold the 20 sessions');
my @after = udp_open_many(10, port(8081));
is_deeply(udp_tally(@after), { b => 10 }, 'after the reload, 10 new sessions all go to b');
is_deeply(scounts('u'), { a => 10, b => 10, c => 10 }, 'counts 10/10/10');
is_deeply(backend_sessions(qw/a b c/), { a => 10, b => 10, c => 10 }, 'as the backends see them');

# Ending the old workers' sessions releases them (nginx closes them
# without passing the response on: the worker is exiting), and the old
# workers exit.
is(udp_release(port($id{$_})), 10, "backend $_ ends its 10 sessions") for qw/a b c/;
ok(counts_become('u', { a => 0, b => 0, c => 0 }), 'every session of u is released: 0/0/0')
	or diag show(scounts('u'));
ok(wait_until(sub { !$t->old_worker_pids() }), 'the old workers exit');
is(got_bye(@after), 10, 'the new workers\' clients got their last response');

# max_conns: two sessions per server across both workers, then none.
my @m = udp_open_many(4, port(8083));
is_deeply(udp_tally(@m), { a => 2, b => 2 }, 'max_conns=2 each: 2/2');
ok(!udp_open(port(8083), timeout => 2), 'a fifth session gets no backend');
is_deeply(scounts('m'), { a => 2, b => 2 }, 'and is counted nowhere');
like($t->read_file('stream.log'), qr/\[error\].*no live upstreams.*udp client/,
	'nginx logs "no live upstreams" for it');
is_deeply(backend_sessions(qw/a b/), { a => 2, b => 2 }, 'the backends have the 4 sessions');
udp_release(port($id{$_})) for qw/a b/;
ok(counts_become('m', { a => 0, b => 0 }), 'released: 0/0') or diag show(scounts('m'));
my @m2 = udp_open_many(4, port(8083));
is_deeply(udp_tally(@m2), { a => 2, b => 2 }, 'and the places are free again: 2/2');
udp_release(port($id{$_})) for qw/a b/;
ok(counts_become('m', { a => 0, b => 0 }), 'released again');

# proxy_requests 1: one client socket, four datagrams, four sessions.
my $one = { sock => Test::Nginx::Udp::socket_to(port(8087)) };
my @p;
for (1 .. 4) {
	send($one->{sock}, "hello $_", 0);
	push @p, (udp_read($one->{sock}) // '') =~ /^id=(\S+)/ ? $1 : 'none';
}
is(join(' ', sort @p), 'a a b b', 'proxy_requests 1: four datagrams of one client, four sessions, 2/2');
is_deeply(scounts('p'), { a => 2, b => 2 }, 'each counted');
udp_release(port($id{$_})) for qw/a b/;
ok(counts_become('p', { a => 0, b => 0 }), 'and each released') or diag show(scounts('p'));

# Idle sessions end at proxy_timeout.
my @idle = udp_open_many(4, port(8084));
is_deeply(udp_tally(@idle), { a => 2, b => 2 }, 'four sessions that will go idle: 2/2');
is_deeply(scounts('t'), { a => 2, b => 2 }, 'counted while open');
ok(counts_become('t', { a => 0, b => 0 }, $idle + 5), 'released once proxy_timeout ends them')
	or diag show(scounts('t'));
is_deeply([map { udp_forget(port($id{$_})) } qw/a b/], [2, 2], 'the backends had 2/2 of them');

# A backend that never answers: "upstream timed out", counted as a failure,
# released once.
my @quiet = map { udp_open(port(8085), quiet => 1) } 1 .. 3;
ok(wait_until(sub { udp_held(port(8093)) == 3 }), 'three sessions to a backend that does not answer');
is_deeply(scounts('q'), { c => 3 }, 'counted while open');
ok(counts_become('q', { c => 0 }, $idle + 5), 'released when they time out') or diag show(scounts('q'));
my $timed_out = () = $t->read_file('stream.log') =~ /\[error\].*upstream timed out/g;
is($timed_out, 3, 'nginx logs "upstream timed out" for each');
udp_forget(port(8093));

# proxy_responses 0: a session ends as soon as its datagram is sent.
my @fire = map { udp_open(port(8086), quiet => 1) } 1 .. 30;
ok(wait_until(sub { my $s = backend_sessions(qw/a b c/); $s->{a} + $s->{b} + $s->{c} == 30 }),
	'proxy_responses 0: 30 datagrams reach the backends');
ok(counts_become('z', { a => 0, b => 0, c => 0 }), 'each session released as it ends')
	or diag show(scounts('z'));
udp_forget(port($id{$_})) for qw/a b c/;

# At rest: nothing held, nothing released twice.
ok(all_zero(), 'every stream counter is 0');
is(workers_holding([$t->worker_pids()]), 0, 'no worker holds a session');
unlike($t->read_file($_), qr/already 0/, "no count was released twice ($_)") for qw/error.log stream.log/;

# Every session, as the debug log tells them apart ("pid#tid: *connection"):
# one pick, one release; sessions that timed out waiting for a response
# released as failed (NGX_PEER_FAILED, 4), every other one as 0.
my (%get, %free, %state);
for (split /\n/, $t->read_file('stream.log')) {
	my ($session) = /\[debug\] (\d+#\d+: \*\d+) least_conn_persistent: / or next;
	$get{$session}++ if /least_conn_persistent: get peer /;
	if (/least_conn_persistent: free (\w+).*, state (\d+)$/) {
		$free{$session}++;
		$state{"$1 $2"}++;
	}
}
# u: 30 + 10 + 10; m: 4 + 4; p: 4; t: 4; q: 3; z: 30.
is(scalar keys %get, 99, '99 sessions were given a server');
is(join(' ', grep { $get{$_} != 1 || ($free{$_} // 0) != 1 } sort keys %get, keys %free), '',
	'each was picked once and released once');
is(show(\%state), 'Shared 0=96 Shared 4=3', 'the 3 that timed out as failures, the others as 0');

# How nginx ended them: the old workers' sessions as those workers exited.
my %ended;
$ended{$_}++ for $t->read_file('stream.log')
	=~ /\] \d+#\d+: \*\d+ (udp done|udp timed out|upstream timed out|disconnected on shutdown)/g;
is(show(\%ended), 'disconnected on shutdown=20 udp done=72 udp timed out=4 upstream timed out=3',
	'ended by their last response, proxy_timeout, or the old workers\' exit');
like($t->read_file('stream.log'), qr/\[debug\]/, 'the stream log is at debug level');
is(join("\n", grep { /\[(alert|crit|emerg)\]/ } split /\n/, $t->read_file('stream.log')), '',
	'no alerts in stream.log');

###############################################################################
