#!/usr/bin/perl

# Rebalancing (`least_conn_persistent_rebalance rate=20/s tolerance=10%
# min_age=0 jitter=0`) with health checks, two workers, WebSockets whose
# clients come back after a random backoff (0-300 ms) when nginx closes
# them:
#
# 1. A checked `backup` on a port nothing listens on: its checks find it
#    down. A backup is in no primary's share: the primaries' rebalancing
#    runs (a holds 40, b comes back from draining; about 20 move to b),
#    where a primary down would pause it.
# 2. A server whose reported load (`load=X-Connections`) alone puts it over
#    its share, this nginx holding none of its connections: nothing this
#    nginx can close, so the upstream does not start rebalancing (the
#    status page's "rebalancing" stays false), where it would stay on for
#    as long as the server reports.

use warnings;
use strict;

use Test::More;
use List::Util qw/sum0/;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Health;
use Test::Nginx::Reconnect;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';
my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(9);

my $slow = $Test::Nginx::SLOW;
my $interval_ms = int(300 * $slow + 0.5);
my $timeout_ms = int(250 * $slow + 0.5);
my $verdict_wait = 3 + 3 * ($interval_ms + $timeout_ms) / 1000 / $slow;

my %name_of_addr = (addr(8081) => 'a', addr(8082) => 'b', addr(8089) => 'dead');

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
        least_conn_persistent_rebalance rate=20/s tolerance=10% min_age=0 jitter=0;
        least_conn_persistent_check uri=/health interval=${interval_ms}ms timeout=${timeout_ms}ms rise=1 fall=1 load=X-Connections;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
        server 127.0.0.1:8089 backup;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location / { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

###############################################################################

# u's status entries by name (a, b, dead).
sub by_name {
	return { map { ($name_of_addr{$_->{server}} // $_->{server} => $_) } health_entries('u') };
}

sub wait_health {
	my ($want) = @_;
	my $last = {};
	my $ok = wait_until(sub {
		$last = by_name();
		!grep { ($last->{$_}{health} // '') ne $want->{$_} } keys %$want;
	}, $verdict_wait);
	diag(join(', ', map { "$_: " . ($last->{$_}{health} // 'none') } sort keys %$want)) unless $ok;
	return $ok;
}

# Whether u rebalances, as the status page says (undef: not said).
sub rebalancing {
	my ($e) = grep { exists $_->{rebalancing} } entries('u');
	return $e ? ($e->{rebalancing} ? 1 : 0) : undef;
}

sub show { my ($c) = @_; join('/', map { $c->{$_} // 0 } qw/a b/) }

# What the clients hold: { a => n, b => n }.
sub held { return { a => 0, b => 0, %{$_[0]->tally} } }

health_dir($t);
set_health('a');
set_health('b', '200', 'X-LCP-Capacity: drain');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b');
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

# 1. The backup is down; b drains, so a takes all 40; then b comes back.
ok(wait_health({ a => 'up', b => 'drain', dead => 'down' }), 'a up, b draining, the backup down');
my $crowd = Test::Nginx::Reconnect->new(open => sub { ws_open('/') }, backoff => 0.3);
$crowd->open_many(40);
is_deeply($crowd->tally, { a => 40 }, '40 WebSockets on a');
set_health('b');
ok(wait_health({ b => 'up', dead => 'down' }), 'b up again, the backup still down');
my $bound = 20 * $slow;
my $spread = $crowd->pump($bound, sub { within(held($crowd), 10) && $crowd->waiting_count == 0 });
my $by = $crowd->closes_by_backend();
ok($spread, sprintf('rebalanced with the backup down: %s, %d closes (a %d, b %d)',
	show(held($crowd)), scalar @{$crowd->closes}, $by->{a} // 0, $by->{b} // 0));
like($t->read_file('error.log'), qr/upstream "u": rebalancing starts/, 'the log: rebalancing starts');
is(by_name()->{dead}{health}, 'down', 'the backup was down throughout');
$crowd->close_all();
ok(wait_until(sub { sum0(map { $_->{count} } entries('u')) == 0 }, 10), 'every connection closed');

# 2. a reports 100 connections, none of them this nginx's; b reports none.
ok(wait_until(sub { !(rebalancing() // 0) }, 10), 'then the upstream is not rebalancing');
set_health('a', '200', 'X-Connections: 100');
set_health('b', '200', 'X-Connections: 0');
my $reported = wait_until(sub { (by_name()->{a}{reported}{connections} // -1) == 100 }, $verdict_wait);
# A few ticks (200 ms each) of the decision and a few answers: never on.
my $on = 0;
my $until = time() + 2 * $slow;
while (time() < $until) {
	$on ||= rebalancing() // 0;
	select(undef, undef, undef, 0.1);
}
ok($reported && !$on, 'a reports 100 that this nginx holds none of: the upstream does not rebalance'
	. ($reported ? '' : ' (the load never showed)'));

###############################################################################
