#!/usr/bin/perl

# Picks through a pick index: upstream lists of at least `index=` servers
# (16 by default) take the least loaded server from an index in the zone
# instead of a scan. Held connections (Test::Nginx::Hold backends) through
# stream upstreams with two workers: 20 servers fill evenly; weights give
# their shares; max_conns holds across workers; a refused server is retried
# on another and released; a reload adding servers fills them first while
# the old workers hold their connections, and what the old workers release
# is picked again first; index=1 indexes a list of 3, index=off none; the
# debug log shows which picks went through an index. 0 at rest.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(19);

my @big = map { 8100 + $_ } 1 .. 24;    # 20 at first, 24 after the reload

sub servers {
	my ($ports, $params) = @_;
	$params //= "";
	return join "\n", map { "        server 127.0.0.1:$_$params;" } @$ports;
}

sub conf {
	my (%o) = @_;
	my $u = servers($o{u});
	my $w = join "\n", map { "        server 127.0.0.1:$_ weight=" . ($_ % 2 ? 3 : 1) . ';' } @big[0 .. 15];
	my $m = servers([@big[0 .. 15]], ' max_conns=1');
	my $r = servers([8099, @big[0 .. 15]], ' max_fails=1 fail_timeout=60s');
	my $small = servers([@big[0 .. 2]]);
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
        least_conn_persistent;
$u
    }

    upstream w {
        least_conn_persistent;
$w
    }

    upstream m {
        least_conn_persistent;
$m
    }

    # 8099: nothing listens (connection refused).
    upstream r {
        least_conn_persistent;
$r
    }

    upstream small {
        least_conn_persistent index=1;
$small
    }

    upstream off {
        least_conn_persistent index=off;
$u
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; }
    server { listen 127.0.0.1:8082 reuseport; proxy_pass w; }
    server { listen 127.0.0.1:8083 reuseport; proxy_pass m; }
    server { listen 127.0.0.1:8084 reuseport; proxy_pass r; }
    server { listen 127.0.0.1:8085 reuseport; proxy_pass small; }
    server { listen 127.0.0.1:8086 reuseport; proxy_pass off; }
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

# Highest less lowest of a { key => n }.
sub spread {
	my @v = sort { $a <=> $b } values %{$_[0]};
	return $v[-1] - $v[0];
}

port(8099);    # claimed, never listened on
$t->run_daemon(\&Test::Nginx::Hold::serve, port($_), "b$_") for @big;
$t->waitforsocket(addr($_)) for @big;

conf(u => [@big[0 .. 19]]);
$t->run();

###############################################################################

my $mark = $t->log_mark();
my @first = hold_open_many(40, port(8081));
my $c = stream_counts('u');
is(spread($c), 0, '40 held over 20 servers: 2 each');
is(scalar(grep { $_ == 2 } values %{hold_tally(@first)}), 20, 'as the backends say');

my @w = hold_open_many(32, port(8082));
my $tally = hold_tally(@w);
is_deeply([sort { $a <=> $b } map { $tally->{"b$_"} // 0 } @big[0 .. 15]],
	[(1) x 8, (3) x 8], 'weights 3 and 1 over 16 servers: 3 and 1 each');

my @m = hold_open_many(16, port(8083));
is(scalar(keys %{hold_tally(@m)}), 16, 'max_conns=1 on 16 servers: one each');
ok(!hold_open(port(8083), timeout => 3), 'a 17th connection is refused');

my @r = hold_open_many(16, port(8084));
ok(!exists hold_tally(@r)->{b8099}, 'the refused server is retried on another');
is(stream_counts('r')->{addr(8099)}, 0, 'its attempts released');

my @small = hold_open_many(6, port(8085));
is_deeply(hold_tally(@small), { map { ("b$_" => 2) } @big[0 .. 2] }, 'index=1: a list of 3 indexed, 2 each');
my @off = hold_open_many(20, port(8086));
is(spread(stream_counts('off')), 0, 'index=off: scanned, 1 each');

SKIP: {
	skip 'nginx built without --with-debug', 2
		unless `$Test::Nginx::NGINX -V 2>&1` =~ /--with-debug/;
	my $log = $t->log_since($mark);
	my $indexed = () = $log =~ /get peer \d+ of Primary list through its index/g;
	ok($indexed >= 40 + 32 + 16 + 6, "picks through an index: $indexed");
	my $scanned = () = $log =~ /get peer \d+ of Primary list, holding/g;
	# 20, and the harness's probe of the listening port when nginx started.
	ok($scanned == 20 || $scanned == 21, "index=off's picks scanned: $scanned");
}

# A reload adds 4 servers while the old workers hold 40 connections of u:
# the 4 new ones take the next 8 connections, then all fill evenly.
conf(u => [@big]);
$t->reload();
ok(scalar $t->old_worker_pids(), 'old workers hold the connections');
my @next = hold_open_many(8, port(8081));
$c = stream_counts('u');
is_deeply([map { $c->{addr($_)} } @big[20 .. 23]], [(2) x 4], 'the 4 new servers took the next 8');
push @next, hold_open_many(24, port(8081));
is(spread(stream_counts('u')), 0, '24 more: 3 on each of the 24 servers');

# The old workers' connections close on 5 servers: the next 5 go there.
my %first_of;
$first_of{$_->{backend}} //= $_ for @first;
hold_close(map { $first_of{"b$_"} } @big[0 .. 4]);
ok(wait_until(sub { my $n = stream_counts('u'); !grep { $n->{addr($_)} != 2 } @big[0 .. 4] }),
	'the old workers\' releases are counted');
my @again = hold_open_many(5, port(8081));
is_deeply([sort map { $_->{backend} } @again], [sort map { "b$_" } @big[0 .. 4]],
	'and those servers are picked again first');

my %sum;
$sum{$_->{server}} += $_->{count} for stream_entries();
ok(same_counts(\%sum, held_counts(@big)), 'counts equal what the backends hold');
hold_close(@first, @w, @m, @r, @small, @off, @next, @again);
ok(wait_until(sub { my @e = stream_entries(); @e && !grep { $_->{count} } @e }),
	'every counter back to 0');

# A zone with room for the keys but not for their index: the list scans,
# and the load says so.
my $ports = join "\n", map { "        server 127.0.0.1:$_;" } map { 10000 + $_ } 1 .. 150;
$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone small 32k;

    upstream big {
        least_conn_persistent;
$ports
    }
}

EOF
my (undef, $out) = $t->test_config();
like($out, qr/\[warn\].*zone "small" has no room for the pick index of 150 server\(s\).*make the zone larger/,
	'a zone with no room for an index: nginx -t says the list scans');
