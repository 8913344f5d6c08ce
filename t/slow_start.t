#!/usr/bin/perl

# Slow start (`least_conn_persistent slow_start=<time>`), two workers: a
# server a reload adds takes a share of new connections that rises over
# the window instead of all of them at once; the ramp lives in the zone
# (a reload does not restart it), shows on the status page, and ends. A
# server back from `down` ramps, and so does one back after max_fails.
# Without the parameter nothing ramps.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

# nginx_independent: the ramp is pure logic; the round-robin peer fields it
# reads come through the bindings generated from each nginx's own headers.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent/)->plan(26);

# The window: long enough that opening 20 WebSockets stays early in it on
# a slow machine, short enough to wait out.
my $window = int(10 * $Test::Nginx::SLOW + 0.5);

# u: its servers' ports; c: parameters of the server on 8083.
sub conf {
	my (%o) = @_;
	my $u = join "\n", map { "        server 127.0.0.1:$_" . ($_ == 8083 ? $o{c} // '' : '') . ';' }
		@{$o{u}};
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
        least_conn_persistent slow_start=${window}s;
$u
    }

    # The same servers without slow start: the control.
    upstream v {
        least_conn_persistent;
$u
    }

    upstream w {
        least_conn_persistent slow_start=${window}s;
        server 127.0.0.1:8081;
        server 127.0.0.1:8084 max_fails=1 fail_timeout=1s;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /v { proxy_pass http://v; }
        location /w { proxy_pass http://w; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

# The ramp percent of a server of an upstream, undef when it does not ramp.
sub ramping {
	my ($upstream, $port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } entries($upstream);
	return $e && $e->{ramping};
}

sub ramping_anywhere {
	return grep { defined $_->{ramping} } entries();
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'], [8083, 'c'];
$t->waitforsocket(addr($_)) for 8081 .. 8083;

conf(u => [8081, 8082, 8083]);
$t->run();

###############################################################################

# A first load ramps nothing: every server is new.
is(scalar(ramping_anywhere()), 0, 'a fresh zone: nothing ramps');

# Start from two servers holding 10 each, then a reload adds the third.
conf(u => [8081, 8082]);
$t->reload();
my @held = (ws_open_many(20, '/u'), ws_open_many(20, '/v'));
is_deeply(counts('u'), { addr(8081) => 10, addr(8082) => 10 }, 'u: 10/10');
is_deeply(counts('v'), { addr(8081) => 10, addr(8082) => 10 }, 'v: 10/10');

conf(u => [8081, 8082, 8083]);
$t->reload();
my $p0 = ramping('u', 8083);
ok(defined $p0 && $p0 < 50, 'the added server ramps, early in its window: ' . ($p0 // 'no'));
is(ramping('v', 8083), undef, 'without slow_start it does not');
is(ramping('u', 8081), undef, 'a kept server does not');

# 20 more each: the control gives the new server its fill at once.
push @held, ws_open_many(20, '/u'), ws_open_many(20, '/v');
my ($cu, $cv) = (counts('u'), counts('v'));
my $p1 = ramping('u', 8083) // 100;
ok($cv->{addr(8083)} >= 12, "v: the new server took $cv->{addr(8083)} of 20 at once");
# After every pick the new server holds at most about p% of the others'
# (per unit of weight), plus the one it may take.
my $bound = int(($p1 + 5) / 100 * 20) + 2;
ok($cu->{addr(8083)} <= $bound && $cu->{addr(8083)} < $cv->{addr(8083)},
	"u: the ramping server took $cu->{addr(8083)} of 20 (at $p1%, bound $bound)");
is($cu->{addr(8081)} + $cu->{addr(8082)} + $cu->{addr(8083)}, 40, 'u: every connection counted');

# The ramp lives in the zone: it goes on across a reload, not from 0.
sleep(1);
my $before = ramping('u', 8083);
$t->reload();
my $after = ramping('u', 8083);
ok(defined $before && defined $after && $after >= $before,
	'a reload does not restart the ramp: ' . ($before // 'none') . '% then ' . ($after // 'none') . '%');

# It shows on every page.
like(http_get('/status?format=prometheus'),
	qr/^least_conn_persistent_ramp_percent\{upstream="u",server="\Q${\addr(8083)}\E"\} \d+$/m,
	'Prometheus: the ramp percent');
like(http_get('/status?format=html'), qr/data-server="\Q${\addr(8083)}\E"[^>]*data-ramping="\d+"/,
	'HTML: data-ramping');
like(http_get('/status?format=html'), qr/up, ramping \d+%/, 'HTML: "up, ramping N%"');

# The share rises as the window goes on.
my $mid = ramping('u', 8083);
ok(wait_until(sub { (ramping('u', 8083) // 100) >= ($mid // 0) + 20 }, $window),
	'the percent rises');

# Then it ends, and the server is compared as any other.
ok(wait_until(sub { !defined ramping('u', 8083) }, $window + 2), 'the ramp ends');
push @held, ws_open_many(30, '/u');
my $c = counts('u');
my @v = sort { $a <=> $b } values %$c;
ok($v[-1] - $v[0] <= 2, 'after the ramp, least connections evens them out: '
	. join('/', map { $c->{addr($_)} } 8081 .. 8083));

# Back from down: it ramps again.
conf(u => [8081, 8082, 8083], c => ' down');
$t->reload();
is(ramping('u', 8083), undef, 'a down server does not ramp');
conf(u => [8081, 8082, 8083], c => ' weight=2');
$t->reload();
ok(defined ramping('u', 8083), 'back from down, it ramps');
is(ramping('u', 8081), undef, 'the others do not');

# Back after max_fails: w's second server answers nothing at first, so
# each worker marks it failed; once its backend listens and fail_timeout
# has passed, the first connection that works starts its ramp.
for (1 .. 10) {
	like(http_get('/w/'), qr/X-Backend: a/, 'w: served by a while d is down') if $_ == 1;
	http_get('/w/');
}
is(ramping('w', 8084), undef, 'd failed: not ramping');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8084), 'd');
$t->waitforsocket(addr(8084));
sleep(1.2);
ok(wait_until(sub { http_get('/w/') =~ /X-Backend: d/ }, 5), 'd serves again after fail_timeout');
# Without an upstream zone each worker keeps its own failures: requests
# go on until the worker that marked d failed tries it again.
ok(wait_until(sub { http_get('/w/'); defined ramping('w', 8084) }, 5), 'back after max_fails, it ramps');
like($t->read_file('error.log'),
	qr/\[info\].*least_conn_persistent: upstream "w": server \Q${\addr(8084)}\E is back after max_fails: slow start over $window s/,
	'and the log says so');
is(ramping('w', 8081), undef, 'w: the other server does not ramp');

ws_close(@held);
ok(at_rest(), 'every counter back to 0');

###############################################################################
