#!/usr/bin/perl
# A bounded soak: reloads, churning connections and worker kills together,
# then checks that nothing leaked. Loopback only; stops by itself.
#
#   soak.pl [--quick]
#
# Full: 30 reloads in about 30 s (servers added and removed at random), 4
# client processes opening and closing at least 300 connections at random
# (held WebSockets, requests over upstream keepalive, retries past a
# refusing server), and 3 workers killed with SIGKILL in between. --quick:
# the same at a fifth of the size. At rest it checks: every counter 0; the
# keys exactly those configured; zone `used` back to its baseline; no
# underflow [error]; no [alert] or [crit] but nginx's own line about a
# killed worker. Prints one line per check and exits non-zero on a failure.
#
# On nginx 1.27.3+ (`resolve`) an upstream `dns` follows a name whose
# addresses (127.0.0.2-5, a DNS responder of our own) change twice per
# reload step; clients hold WebSockets through it too, and at rest its keys
# must be exactly the name's last addresses.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use POSIX ();
use Time::HiRes qw/time sleep/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';
my $quick = grep { $_ eq '--quick' } @ARGV;
my ($seconds, $reloads, $kills, $min_conns) = $quick ? (6, 6, 1, 60) : (30, 30, 3, 300);
my $clients = 4;

my $t = Test::Nginx->new();
$t->has(qw/nginx module/);
my @backends = (8081 .. 8084);
my $refusing = 8089;    # nothing listens there

# `resolve` (nginx 1.27.3+): the name d.test, answered from a file.
my $resolve = Test::Nginx::version_at_least(Test::Nginx::nginx_version(), '1.27.3');
my @dns_ips = map { "127.0.0.$_" } 2 .. 5;
my $dns_port = port(8085);
my $dns_file = $t->testdir . '/dns';
sub answer { Test::Nginx::DNS::set_answers($dns_file, 'd.test' => [@_]) }
sub dns_keys { map { "conn_count:dns:$_:$dns_port" } @_ }
# d.test's addresses at the start and at the end (the zone's baseline).
my @dns_rest = @dns_ips[0, 2];
sub dns_keys_are {
	my (@want) = sort(dns_keys(@_));
	return wait_until(sub { join(',', sort map { $_->{key} } entries('dns')) eq join(',', @want) }, 10);
}

# Upstreams `ws` and `ka` get the given backends; `retry` tries the
# refusing server first (weight 10) and goes on to the others.
sub conf {
	my (@up) = @_;
	my $list = join '', map { "        server 127.0.0.1:$_;\n" } @up;
	my $dns = $resolve ? <<"EOF" : '';
    resolver 127.0.0.1:%%PORT_8053%% valid=1s ipv6=off;
    resolver_timeout 1s;
    upstream dns {
        zone dns 64k;
        least_conn_persistent;
        server d.test:$dns_port resolve;
    }
EOF
	my $dns_location = $resolve ? <<"EOF" : '';
        location /dns {
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_pass http://dns;
        }
EOF
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 2;
events {
    worker_connections 4096;
}
http {
    %%TEST_GLOBALS_HTTP%%
    least_conn_persistent_zone lcp 1m;
    upstream ws {
        least_conn_persistent;
$list    }
    upstream ka {
        least_conn_persistent;
$list        keepalive 8;
    }
    upstream retry {
        least_conn_persistent;
        server 127.0.0.1:$refusing weight=10 max_fails=0;
$list    }
$dns    server {
        listen 127.0.0.1:8080 reuseport;
        proxy_http_version 1.1;
        proxy_read_timeout 1h;
        location /ws {
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_pass http://ws;
        }
$dns_location        location /ka {
            proxy_set_header Connection "";
            proxy_pass http://ka;
        }
        location /retry { proxy_pass http://retry; }
        location /status { least_conn_persistent_status; }
    }
}
EOF
	return ("conn_count:retry:" . addr($refusing),
		map { ("conn_count:ws:" . addr($_), "conn_count:ka:" . addr($_), "conn_count:retry:" . addr($_)) } @up);
}

my @checks;
sub check {
	my ($ok, $what) = @_;
	push @checks, [$ok ? 1 : 0, $what];
	printf "%s %s\n", $ok ? 'ok  ' : 'FAIL', $what;
}

# One client: random actions until the deadline; prints how many
# connections it opened.
sub client {
	my ($deadline, $out) = @_;
	srand($$ ^ time());
	my %n = (ws => 0, ka => 0, retry => 0, dns => 0);
	my @held;
	while (time() < $deadline) {
		my $r = rand();
		if ($r < 0.35 && @held < 40) {
			my $dns = $resolve && rand() < 0.5;
			my $ws = eval { ws_open($dns ? '/dns' : '/ws') };
			if ($ws) { push @held, $ws; $n{ws}++; $n{dns} += $dns }
		} elsif ($r < 0.6 && @held) {
			ws_close(splice(@held, int(rand(@held)), 1));
		} elsif ($r < 0.85) {
			$n{ka}++ if eval { http_get('/ka', timeout => 5) };
		} else {
			$n{retry}++ if eval { http_get('/retry', timeout => 5) };
		}
		sleep 0.005;
	}
	ws_close(@held);
	print $out "$n{ws} $n{ka} $n{retry} $n{dns}\n";
	close $out;
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), "b$_") for @backends;
$t->waitforsocket(addr($_)) for @backends;
if ($resolve) {
	answer(@dns_rest);
	Test::Nginx::DNS::start($t, port(8053), $dns_file, 'd.test')
		or die "the DNS responder does not answer\n";
	$t->run_daemon(\&Test::Nginx::Backend::serve, $dns_port, "d$_", $dns_ips[$_]) for 0 .. $#dns_ips;
	$t->waitforsocket("$_:$dns_port") for @dns_ips;
}
my @all_keys = conf(@backends);
$t->run();
# Baseline: the full configuration (and d.test's keys), both workers
# registered, nothing held.
!$resolve || dns_keys_are(@dns_rest) or die "the keys of d.test's addresses did not appear\n";
at_rest() or die "not at rest at the start\n";
my $baseline = status()->{zone}{used};

my $deadline = time() + $seconds;
pipe(my $from_clients, my $to_parent) or die "pipe: $!\n";
my @kids;
for (1 .. $clients) {
	my $pid = fork() // die "fork: $!\n";
	if ($pid == 0) {
		close $from_clients;
		client($deadline, $to_parent);
		POSIX::_exit(0);
	}
	push @kids, $pid;
}
close $to_parent;

my %kill_at = map { (int($reloads * $_ / ($kills + 1)) => 1) } 1 .. $kills;
my ($done_reloads, @killed) = (0);
# d.test's address sets as the status page showed them, and how many
# times the answers changed.
my (%dns_seen, $dns_changes);
sub change_dns {
	my @ips = grep { rand() < 0.5 } @dns_ips;
	@ips = ($dns_ips[int(rand(@dns_ips))]) unless @ips;
	answer(@ips);
	$dns_changes++;
	$dns_seen{join ',', sort map { $_->{server} } grep { $_->{state} ne 'draining' } entries('dns')}++;
}
my $started = time();
for my $i (1 .. $reloads) {
	my @up = grep { rand() < 0.6 } @backends;
	@up = ($backends[int(rand(@backends))]) unless @up;
	conf(@up);
	$t->reload();
	$done_reloads++;
	if ($kill_at{$i}) {
		my @w = $t->children();
		my $victim = $w[int(rand(@w))];
		kill 'KILL', $victim;
		push @killed, $victim;
	}
	my $next = $started + $i * $seconds / $reloads;
	if ($resolve) {
		sleep(($next - time()) / 2) if $next > time();
		change_dns();
	}
	sleep($next - time()) if $next > time();
	change_dns() if $resolve;
}
my @n = (0, 0, 0, 0);
for (<$from_clients>) {
	my @c = split;
	$n[$_] += $c[$_] for 0 .. 3;
}
my $opened = $n[0] + $n[1] + $n[2];
waitpid($_, 0) for @kids;
my $elapsed = time() - $started;

# Back to the full configuration, and let every old worker finish.
@all_keys = conf(@backends);
$t->reload();
wait_until(sub { !$t->old_worker_pids() }, 30);
if ($resolve) {
	# d.test back to its first two addresses: its keys must become exactly theirs.
	answer(@dns_rest);
	push @all_keys, dns_keys(@dns_rest);
	dns_keys_are(@dns_rest);
}

check($done_reloads >= $reloads && $elapsed <= $seconds + 5,
	sprintf('%d reloads in %.1f s', $done_reloads, $elapsed));
check($opened >= $min_conns && $n[0] > 0 && (!$resolve || $n[3] > 0),
	"$opened connections opened and closed (at least $min_conns): $n[0] WebSockets"
	. ($resolve ? " ($n[3] through the resolved upstream)" : '')
	. ", $n[1] requests over upstream keepalive, $n[2] past a refusing server");
check(@killed == $kills, scalar(@killed) . ' workers killed with SIGKILL');
check(keys %dns_seen >= 2, "resolve: d.test's answers changed $dns_changes times; the status page showed "
	. scalar(keys %dns_seen) . ' different address sets') if $resolve;
check(at_rest(10), 'at rest, every counter is 0');
my @keys = sort map { $_->{key} } entries();
check(join(',', @keys) eq join(',', sort @all_keys),
	'the keys are exactly those configured (' . scalar(@keys) . ')');
my $used = status()->{zone}{used};
check($used == $baseline, "zone used $used bytes, baseline $baseline");
my $log = $t->read_file('error.log');
check($log !~ /already 0/, 'no release below zero');
my @alerts = grep { !/worker process \d+ exited on signal 9/ }
	grep { /\[(alert|crit)\]/ } split /\n/, $log;
check(!@alerts, 'no [alert] or [crit] but the killed workers\' lines');
print "  $_\n" for @alerts;
my $reclaims = () = $log =~ /is gone: \d+ connection/g;
check($reclaims == @killed, "$reclaims dead workers' shares given back");

$t->stop();
$t->stop_daemons();
my $failed = grep { !$_->[0] } @checks;
printf "soak: %d passed, %d failed\n", @checks - $failed, $failed;
exit($failed ? 1 : 0);
