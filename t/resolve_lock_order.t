#!/usr/bin/perl

# Following DNS (`server name resolve`, nginx 1.27.3+) never holds
# round-robin's lock while it waits for the zone's mutex: round-robin's lock
# is a spin lock in the upstream zone that nothing frees if a worker dies
# holding it (nginx frees a dead worker's zone mutex, not that lock), and
# every other worker's pick would spin on it for good. The peer list is
# copied under round-robin's lock, the lock released, and only then is the
# zone locked; what changed is logged once the zone is unlocked. Both places
# that follow are checked, a pick (the list changed since the worker's last
# look) and the periodic check, from the debug log (see
# Test::Nginx::LockOrder).

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port http_get wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::LockOrder;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module resolve debug/);
$t->plan(7);

my $dns = $t->testdir . '/dns';
my $p = port(8081);
my %ip = (a => '127.0.0.2', b => '127.0.0.3', c => '127.0.0.4');
sub addr { "$ip{$_[0]}:$p" }
sub answer { Test::Nginx::DNS::set_answers($dns, 'b.test' => [map { $ip{$_} } @_]) }

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 1;

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
        server b.test:%%PORT_8081%% resolve;
    }

    server {
        listen       127.0.0.1:8080;

        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

answer(qw/a b/);
ok(Test::Nginx::DNS::start($t, port(8053), $dns, 'b.test'), 'DNS responder answers');
$t->run_daemon(\&Test::Nginx::Backend::serve, $p, $_, $ip{$_}) for qw/a b c/;
$t->waitforsocket(addr($_)) for qw/a b c/;
$t->run();

my $c = wait_counts('u', { addr('a') => 0, addr('b') => 0 });
is_deeply($c, { addr('a') => 0, addr('b') => 0 }, 'a key per resolved address');

# The periodic check follows a change within half a second: a pick follows
# it first when a request comes in between. Requests one after another,
# while DNS changes every second or so, until a pick has followed.
my @sets = ([qw/a b c/], [qw/a b/]);
my ($changes, $changed_at) = (0, 0);
my $log = sub { $t->read_file('error.log') };
my $by_pick = wait_until(sub {
	if (time() - $changed_at > 1.2) {
		answer(@{$sets[$changes++ % 2]});
		$changed_at = time();
	}
	http_get('/u');
	return $log->() =~ /copied \(pick\), round-robin lock released/;
}, 30);
ok($by_pick, "a pick followed a change (DNS changed $changes time(s))");
ok($log->() =~ /copied \(periodic\), round-robin lock released/, 'so did the periodic check');

# The master follows too, before the configuration is committed: with no
# zone yet, it locks nothing. The worker's lines are the ones to look at.
my ($seen, @bad) = zone_work_after($log->(),
	qr/copied \((?:pick|periodic)\), round-robin lock released/, $t->worker_pids());
ok($seen > 2, "the worker followed $seen times");
is_deeply(\@bad, [], 'every time, it locked the zone after round-robin\'s lock was released, '
	. 'and logged nothing until it unlocked it');
ok($log->() =~ /peers changed at run time: 1 added/, 'and what changed was logged');

###############################################################################
