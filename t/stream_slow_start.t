#!/usr/bin/perl

# Slow start in stream {}: held TCP connections, two workers. A server a
# reload adds ramps up over the window (the control, the same servers
# without slow start, gives it its fill at once); the status page shows the
# ramp until it ends; a bad value fails nginx -t.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http_get wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Status;

# nginx_independent: the ramp is pure logic; the round-robin peer fields it
# reads come through the bindings generated from each nginx's own headers.
my $t = Test::Nginx->new()->has(qw/nginx module nginx_independent stream/)->plan(14);

my $window = int(10 * $Test::Nginx::SLOW + 0.5);

sub conf {
	my (%o) = @_;
	my $u = join "\n", map { "        server 127.0.0.1:$_;" } @{$o{u}};
	my $slow = $o{slow} // "slow_start=${window}s";
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 2;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;

    upstream u {
        least_conn_persistent $slow;
$u
    }

    upstream v {
        least_conn_persistent;
$u
    }

    # 8094 answers nothing at first: stream clears its failures when a
    # connection to it is made again.
    upstream w {
        least_conn_persistent slow_start=${window}s;
        server 127.0.0.1:8091;
        server 127.0.0.1:8094 max_fails=1 fail_timeout=1s;
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; }
    server { listen 127.0.0.1:8082 reuseport; proxy_pass v; }
    server { listen 127.0.0.1:8083 reuseport; proxy_pass w; proxy_connect_timeout 2s; }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

sub counts_of {
	my ($upstream) = @_;
	return { map { ($_->{server} => $_->{count}) } stream_entries($upstream) };
}

sub ramping {
	my ($upstream, $port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } stream_entries($upstream);
	return $e && $e->{ramping};
}

$t->run_daemon(\&Test::Nginx::Hold::serve, port($_->[0]), $_->[1])
	for [8091, 'a'], [8092, 'b'], [8093, 'c'];
$t->waitforsocket(addr($_)) for 8091 .. 8093;

conf(u => [8091, 8092], slow => 'slow_start=1x');
my ($rc, $out) = $t->test_config();
like($out, qr/\[emerg\].*"least_conn_persistent" has an invalid slow_start "1x"/, 'nginx -t: a bad value');

conf(u => [8091, 8092]);
$t->run();

###############################################################################

my @held = (hold_open_many(20, port(8081)), hold_open_many(20, port(8082)));
is_deeply(counts_of('u'), { addr(8091) => 10, addr(8092) => 10 }, 'u: 10/10');

conf(u => [8091, 8092, 8093]);
$t->reload();
my $p0 = ramping('u', 8093);
ok(defined $p0 && $p0 < 50, 'the added server ramps: ' . ($p0 // 'no'));
is(ramping('v', 8093), undef, 'without slow_start it does not');

push @held, hold_open_many(20, port(8081)), hold_open_many(20, port(8082));
my ($cu, $cv) = (counts_of('u'), counts_of('v'));
my $p1 = ramping('u', 8093) // 100;
my $bound = int(($p1 + 5) / 100 * 20) + 2;
ok($cv->{addr(8093)} >= 12, "v: the new server took $cv->{addr(8093)} of 20 at once");
ok($cu->{addr(8093)} <= $bound && $cu->{addr(8093)} < $cv->{addr(8093)},
	"u: the ramping server took $cu->{addr(8093)} of 20 (at $p1%, bound $bound)");
is($cu->{addr(8091)} + $cu->{addr(8092)} + $cu->{addr(8093)}, 40, 'u: every connection counted');

ok(wait_until(sub { !defined ramping('u', 8093) }, $window + 2), 'the ramp ends');
push @held, hold_open_many(30, port(8081));
my @v = sort { $a <=> $b } values %{counts_of('u')};
ok($v[-1] - $v[0] <= 2, 'then least connections evens them out: ' . join('/', @v));

hold_close(@held);
ok(wait_until(sub { !grep { $_->{count} } stream_entries() }), 'every counter back to 0');

# (After the held connections are closed: the backend started below is a
# fork of this test, which would hold their sockets open.)
# Back after max_fails: each worker marks d failed, then d listens again.
port(8094);
my @w = hold_open_many(10, port(8083));
ok(!grep({ $_->{backend} ne 'a' } @w), 'w: served by a while d is down');
hold_close(@w);
is(ramping('w', 8094), undef, 'd failed: not ramping');
$t->run_daemon(\&Test::Nginx::Hold::serve, port(8094), 'd');
$t->waitforsocket(addr(8094));
select(undef, undef, undef, 1.2);
ok(wait_until(sub { my $h = hold_open(port(8083)); hold_close($h) if $h; defined ramping('w', 8094) }, 5),
	'back after max_fails, it ramps');
like($t->read_file('error.log'),
	qr/\[info\].*upstream "w": server \Q${\addr(8094)}\E is back after max_fails/, 'and the log says so');

###############################################################################
