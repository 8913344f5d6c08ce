#!/usr/bin/perl

# Rebalancing in stream {} (`least_conn_persistent_rebalance`), two
# workers: 100 held TCP sessions over two backends; a reload adds c, and d
# as `down`: the upstream is out of balance but a down server pauses the
# shedding, so nothing closes. A reload bringing d up lets a and b shed
# their excess to c and d, clients coming back after a random backoff
# (0-500 ms): the spread gets within the tolerance, with about as many
# closes as the excess, at the rate given, never from a server at or below
# its fair share; the log, the status page and Prometheus agree. UDP
# sessions of an upstream as much out of balance are never closed.

use warnings;
use strict;

use Test::More;
use List::Util qw/max sum0/;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http_get wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Reconnect;
use Test::Nginx::Status;
use Test::Nginx::Udp;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(23);

my $n = 100;
my ($rate, $tolerance, $workers) = (20, 10, 2);
my $slow = $Test::Nginx::SLOW;
my $rebalance = "least_conn_persistent_rebalance rate=$rate/s tolerance=$tolerance% min_age=0 jitter=0;";

my %name = (8091 => 'a', 8092 => 'b', 8093 => 'c', 8094 => 'd');
my %udp_name = (8095 => 'ua', 8096 => 'ub', 8097 => 'uc');
my %name_of_addr = map { (addr($_) => $name{$_}) } keys %name;
my %udp_name_of_addr = map { (addr($_) => $udp_name{$_}) } keys %udp_name;

# $u: the server lines of u (TCP) and $v those of v (UDP).
sub conf {
	my ($u, $v) = @_;
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
        least_conn_persistent;
        $rebalance
$u
    }

    upstream v {
        least_conn_persistent;
        $rebalance
$v
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; proxy_timeout 1h; }

    # A UDP session lasts until its second response (none comes).
    server {
        listen 127.0.0.1:8082 udp reuseport;
        proxy_pass v;
        proxy_responses 2;
        proxy_timeout 120s;
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
}

sub servers { join "\n", map { "        server 127.0.0.1:$_;" } @_ }

# What the TCP backends hold: { a => n, ... }.
sub live { named_counts(\%name, held_counts(@_ ? @_ : keys %name)) }
sub show { my ($c) = @_; join('/', map { $c->{$_} // 0 } qw/a b c d/) }



# The least margin over the fair share (over the servers in @$names) of a
# server that lost a connection, after each batch of closes.
sub least_margin {
	my ($crowd, $names) = @_;
	my $least;
	for my $c (@{$crowd->closes}) {
		my $total = sum0(map { $c->{after}{$_} // 0 } @$names);
		my $m = ($c->{after}{$c->{backend}} // 0) - $total / @$names;
		$least = $m if !defined $least || $m < $least;
	}
	return $least;
}

my $log_mark = 0;
sub log_now { $t->log_since($log_mark) }

sub close_lines {
	my ($upstream) = @_;
	return map {
		my ($server) = /closing a connection to (\S+)/;
		$server =~ s/[,;:)]+$//;
		my ($holds, $fair) = /holds (\d+), fair share ([\d.]+)/;
		[$name_of_addr{$server} // $server, $holds, $fair]
	} grep { /upstream "$upstream": rebalancing: closing a connection to/ } split /\n/, log_now();
}

sub shed_json {
	my ($upstream, $names) = @_;
	my (%shed, $state);
	for my $e (stream_entries($upstream)) {
		$shed{$names->{$e->{server}} // $e->{server}} = $e->{shed};
		$state = $e->{rebalancing} ? 1 : 0 if exists $e->{rebalancing};
	}
	return (\%shed, $state);
}

$t->run_daemon(\&Test::Nginx::Hold::serve, port($_), $name{$_}) for sort keys %name;
$t->run_daemon(\&Test::Nginx::Udp::serve, port($_), $udp_name{$_}) for sort keys %udp_name;
$t->waitforsocket(addr($_)) for keys %name;
udp_wait(port($_)) for keys %udp_name;

# Without a zone the directive has nothing to share its counts in: it is
# ignored, and the configuration says so.
$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
%%STREAM_MODULES%%
events { }
stream {
    upstream u {
        least_conn_persistent;
        $rebalance
        server 127.0.0.1:8091;
    }
    server { listen 127.0.0.1:8081; proxy_pass u; }
}
EOF
my ($rc, $out) = $t->test_config();
ok($rc == 0 && $out =~ /\[warn\].*least_conn_persistent_rebalance.*stream.*ignored.*least_conn_persistent_zone/,
	'nginx -t: without a zone the directive is ignored, with a warning') or diag($out);

conf(servers(8091, 8092), servers(8095, 8096));
$t->run();

###############################################################################

my $crowd = Test::Nginx::Reconnect->new(open => sub { hold_open(port(8081)) }, backoff => 0.5);
$crowd->open_many($n);
my @udp = udp_open_many(20, port(8082));
is_deeply(udp_tally(@udp), { ua => 10, ub => 10 }, 'UDP: 20 sessions 10/10');
my $start = live(8091, 8092);
is_deeply($start, { a => $n / 2, b => $n / 2 }, "TCP: $n sessions " . show($start));

# c added, d down: out of balance, but paused.
conf(servers(8091, 8092, 8093) . "\n        server 127.0.0.1:8094 down;", servers(8095, 8096, 8097));
$t->reload();
$crowd->pump(2 * $slow);
is(scalar @{$crowd->closes}, 0, 'a down server pauses the shedding: nothing closed in 2 s');
my $paused = live();
is(show($paused), "50/50/0/0", 'the spread stays while paused');
my (undef, $pstate) = shed_json('u', \%name_of_addr);
is($pstate, 0, 'status: u is not rebalancing while paused');

# d up: a and b shed to c and d.
$log_mark = $t->log_mark();
conf(servers(8091, 8092, 8093, 8094), servers(8095, 8096, 8097));
$t->reload();
my $reloaded = time();
my $need = excess(live());
my $bound = (2 * $need / $rate + 3) * $slow;
my $converged = $crowd->pump($bound, sub { within(live(), $tolerance) });
ok($converged, sprintf('within %d%% of the fair share after %.1f s (bound %.0f s): %s',
	$tolerance, time() - $reloaded, $bound, show(live())));
ok($crowd->pump(10 * $slow, sub { my (undef, $s) = shed_json('u', \%name_of_addr); defined $s && !$s }),
	'then u stops rebalancing');
$crowd->pump(1 * $slow);
ok(wait_until(sub { $crowd->waiting_count == 0 }, 2), 'every closed client came back');
is($crowd->failures, 0, 'no reconnect failed');
my $final = live();
is(sum0(values %$final), $n, "the backends hold all $n again");
ok(within($final, $tolerance / 2), 'within half the tolerance at the end: ' . show($final));

my @closes = @{$crowd->closes};
my $by = $crowd->closes_by_backend();
ok(@closes > 0 && @closes <= 1.5 * $need, sprintf('%d closes for an excess of %.0f: %s',
	scalar @closes, $need, show($by)));
ok(!$by->{c} && !$by->{d}, 'the servers below their fair share lost nothing');
my $margin = least_margin($crowd, [qw/a b c d/]);
ok(defined $margin && $margin >= -1,
	sprintf('no close took a server below its fair share (least margin %.1f)', $margin // 0));
my $in1 = $crowd->max_in_window(1);
ok($in1 <= $rate + $rate / 5 + $workers, "at most $in1 closes in any 1 s (rate $rate/s)");

my @lines = close_lines('u');
my %logged;
$logged{$_->[0]}++ for @lines;
is_deeply(\%logged, $by, 'one info line per close, naming the server: ' . scalar(@lines));
ok(!grep({ !defined $_->[1] || !defined $_->[2] || $_->[1] <= $_->[2] } @lines),
	'every line: the server held more than its fair share');
like(log_now(), qr/\[info\].*upstream "u": rebalancing starts.*\[info\].*upstream "u": rebalancing ends/s,
	'the log: rebalancing starts, then ends');

my ($json) = shed_json('u', \%name_of_addr);
is_deeply($json, { map { ($_ => $by->{$_} // 0) } qw/a b c d/ }, 'status: shed per server');
my $p = http_get('/status?subsystem=stream&format=prometheus');
my %prom;
while ($p =~ /^least_conn_persistent_shed_total\{([^}]*)\} (\d+)$/mg) {
	my ($labels, $v) = ($1, $2);
	next unless $labels =~ /subsystem="stream"/ && $labels =~ /upstream="u"/;
	my ($server) = $labels =~ /server="([^"]+)"/;
	$prom{$name_of_addr{$server} // $server} = $v;
}
is_deeply(\%prom, $json, 'Prometheus: shed_total per server, subsystem="stream"');

# UDP: v is as far out of balance (10/10/0), and no session is closed.
is_deeply(stream_counts('v'), { addr(8095) => 10, addr(8096) => 10, addr(8097) => 0 },
	'UDP: no session of v closed');
my ($vshed) = shed_json('v', \%udp_name_of_addr);
ok(!close_lines('v') && !grep({ $_ } values %$vshed), 'UDP: no close logged, shed 0');

$crowd->close_all();
udp_release(port($_)) for keys %udp_name;

###############################################################################
