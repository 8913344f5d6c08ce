#!/usr/bin/perl

# Health checks of a `resolve` upstream (nginx 1.27.3+) while DNS changes
# its addresses: what a key's record says (its health, capacity override
# and reported load) is always what that key's address answered, through
# DNS changes and takeovers of the checks.
#
# Backends a, b, c on 127.0.0.2-4 (one port) answer differently: a plain
# 200; b 200 with a weight override and a reported load; c 503. DNS flips
# b.test between {a, b} and {b, c}, and right after each flip the checker
# is SIGKILLed: the worker taking over starts its checks at once, before
# its own periodic look at the peer lists (four workers: each looks every
# two seconds). Paired by position with counters that did not follow the
# flip yet, b's key would be checked at c's address (503: down) and stay
# so until the lease moved again.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Health;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module resolve/)->plan(8);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

my $slow = $Test::Nginx::SLOW;
my $interval_ms = int(300 * $slow + 0.5);
my $timeout_ms = int(250 * $slow + 0.5);
my $wait = 10;

my $dns = $t->testdir . '/dns';
my $p = port(8081);
my %ip = (a => '127.0.0.2', b => '127.0.0.3', c => '127.0.0.4');
sub addr { "$ip{$_[0]}:$p" }
sub answer { Test::Nginx::DNS::set_answers($dns, 'b.test' => [map { $ip{$_} } @_]) }

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 4;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    resolver 127.0.0.1:%%PORT_8053%% valid=1s ipv6=off;
    resolver_timeout 1s;

    upstream u {
        zone u 64k;
        least_conn_persistent;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=1 fall=1 load=X-Load;
        server b.test:%%PORT_8081%% resolve;
    }

    server {
        listen       127.0.0.1:8080;
        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

health_dir($t);
set_health('a');
set_health('b', '200', 'X-LCP-Capacity: weight=5', 'X-Load: 7');
set_health('c', '503');
answer(qw/a b/);
ok(Test::Nginx::DNS::start($t, port(8053), $dns, 'b.test'), 'DNS responder answers');
$t->run_daemon(\&Test::Nginx::Backend::serve, $p, $_, $ip{$_}) for qw/a b c/;
$t->waitforsocket(addr($_)) for qw/a b c/;
$t->run();

sub entry {
	my ($who) = @_;
	my ($e) = grep { $_->{server} eq addr($who) } health_entries('u');
	return $e;
}

# What each address's record must say, from its own answers.
my %expect = (
	a => sub { ($_[0]{health} // '') eq 'up' && !defined $_[0]{override} && !defined $_[0]{reported} },
	b => sub {
		($_[0]{health} // '') eq 'up' && ($_[0]{override}{weight} // 0) == 5
			&& ($_[0]{reported}{connections} // -1) == 7
	},
	c => sub { ($_[0]{health} // '') eq 'down' && ($_[0]{check}{status} // 0) == 503 },
);

# Every address of @who has a record saying its own answers, several
# checks running.
sub records_hold {
	my (@who) = @_;
	my %seen;
	my $ok = wait_until(sub {
		%seen = map { ($_ => entry($_)) } @who;
		!grep { !$seen{$_} || !$expect{$_}->($seen{$_}) } @who;
	}, $wait);
	diag(explain(\%seen)) unless $ok;
	return $ok;
}

# The zone's checker, once one holds the lease.
sub checker {
	my $pid;
	wait_until(sub { $pid = status()->{zone}{checker} }, $wait);
	return $pid;
}

ok(records_hold(qw/a b/), '{a, b}: each record says what its own address answers');

# Flips DNS to @to, waits until some worker followed (a key for the new
# address shows), then kills the checker.
sub flip_and_kill {
	my (@to) = @_;
	answer(@to);
	my %want = map { (addr($_) => 1) } @to;
	wait_until(sub { my %c = %{counts('u')}; !grep { !exists $c{$_} } keys %want }, $wait)
		or diag('no key for ' . join(', ', @to));
	my $victim = checker();
	kill 'KILL', $victim if $victim;
	wait_until(sub { my $c = status()->{zone}{checker}; $c && $c != $victim }, $wait);
}

# A key checked at another's address for a single check is down at once
# (fall=1, c answers 503): logged, however soon it is put right.
sub wrongly_down {
	my $re = join('|', map { quotemeta(addr($_)) } qw/a b/);
	return grep { /upstream "u": server (?:$re) is down/ } split /\n/, $t->read_file('error.log');
}

for my $round (1 .. 3) {
	flip_and_kill(qw/b c/);
	ok(records_hold(qw/b c/), "round $round, {b, c} after a takeover: b's key is b's, c's is c's");
	flip_and_kill(qw/a b/);
	ok(records_hold(qw/a b/), "round $round, {a, b} after a takeover: a's key is a's, b's is b's")
		if $round < 3;
}

is(join("\n", wrongly_down()), '', 'a and b were never found down: never checked at c\'s address');

###############################################################################
