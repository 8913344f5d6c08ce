#!/usr/bin/perl

# stream {} upstreams: the same persistent least-connections for long-lived
# TCP. Held connections (Test::Nginx::Hold backends, which report how many
# they hold) through a stream upstream with two workers: balance, weights,
# max_conns across workers, a reload adding a server, draining, retries to
# a refusing server released once, a crashed worker reconciled, 0 at rest;
# loading rules and misuse as nginx -t reports them. Counts are read from
# the http status page (`?subsystem=stream`).

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http_get wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(43);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

sub conf {
	my (%o) = @_;
	my $u = join "\n", map { "        server 127.0.0.1:$_;" } @{$o{u}};
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
        server 127.0.0.1:8091 weight=3;
        server 127.0.0.1:8092;
    }

    upstream m {
        least_conn_persistent;
        server 127.0.0.1:8091 max_conns=3;
        server 127.0.0.1:8092 max_conns=3;
    }

    # 8099: nothing listens (connection refused); 8093 takes the retries.
    upstream r {
        least_conn_persistent;
        server 127.0.0.1:8099;
        server 127.0.0.1:8093;
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; }
    server { listen 127.0.0.1:8082 reuseport; proxy_pass w; }
    server { listen 127.0.0.1:8083 reuseport; proxy_pass m; }
    server { listen 127.0.0.1:8084 reuseport; proxy_pass r; }
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



# { server => count } summed over upstreams, against what the backends hold.
sub sum_counts {
	my %sum;
	$sum{$_->{server}} += $_->{count} for stream_entries();
	return \%sum;
}

sub spread {
	my @v = sort { $a <=> $b } values %{$_[0]};
	return $v[-1] - $v[0];
}

port(8099);    # claimed, never listened on
$t->run_daemon(\&Test::Nginx::Hold::serve, port($_->[0]), $_->[1])
	for [8091, 'a'], [8092, 'b'], [8093, 'c'];
$t->waitforsocket(addr($_)) for 8091 .. 8093;

conf(u => [8091, 8092]);
$t->run();

###############################################################################

my @first = hold_open_many(100, port(8081));
is_deeply(hold_tally(@first), { a => 50, b => 50 }, '100 held over two servers: 50/50');
is_deeply(stream_counts('u'), { addr(8091) => 50, addr(8092) => 50 }, 'stream status shows the counts');

my @w = hold_open_many(8, port(8082));
is_deeply(hold_tally(@w), { a => 6, b => 2 }, 'weight 3:1 gives 6/2');

# max_conns across both workers: 3 each, then no server can take one more.
my @m = hold_open_many(6, port(8083));
is_deeply(hold_tally(@m), { a => 3, b => 3 }, 'max_conns=3 each: 3/3');
ok(!hold_open(port(8083), timeout => 3), 'a 7th connection is refused');
is_deeply(stream_counts('m'), { addr(8091) => 3, addr(8092) => 3 }, 'and counted nowhere');

# Retries: 8099 refuses, the retry goes to 8093; the refused attempt is
# released, once.
my @r = hold_open_many(4, port(8084));
is_deeply(hold_tally(@r), { c => 4 }, 'connections refused by one server are retried on the other');
is_deeply(stream_counts('r'), { addr(8099) => 0, addr(8093) => 4 }, 'the refused attempts were released');
unlike($t->read_file('error.log'), qr/already 0/, 'and released once (no release below 0)');

ok(same_counts(sum_counts(), held_counts(8091, 8092, 8093)), 'counts equal what the backends hold');

# The brief's scale-up, in stream: a reload adds a third server.
conf(u => [8091, 8092, 8093]);
$t->reload();
ok(scalar $t->old_worker_pids(), 'old workers hold the connections');
is_deeply(stream_counts('u'), { addr(8091) => 50, addr(8092) => 50, addr(8093) => 0 },
	'counts survive the reload; the new server starts at 0');
my @next = hold_open_many(60, port(8081));
my $c = stream_counts('u');
is(spread($c), 1, 'after 60 more, all within one: '
	. join('/', map { $c->{addr($_)} } 8091 .. 8093));
ok($c->{addr(8093)} >= 53, "the new server took $c->{addr(8093)} of the 60");
ok(same_counts(sum_counts(), held_counts(8091, 8092, 8093)), 'counts equal what the backends hold');

# A reload removes b while it holds connections: it drains.
my @on_b = grep { $_->{backend} eq 'b' } @first, @next;
conf(u => [8091, 8093]);
$t->reload();
my ($b) = grep { $_->{server} eq addr(8092) } stream_entries('u');
is($b && $b->{state}, 'draining', 'a removed server with connections is draining');
is($b && $b->{count}, scalar @on_b, 'and keeps its count (' . scalar(@on_b) . ')');
my @after = hold_open_many(10, port(8081));
ok(!grep({ $_->{backend} eq 'b' } @after), 'no new connection to the removed server');
hold_close(@on_b);
ok(wait_until(sub { !grep { $_->{server} eq addr(8092) } stream_entries('u') }),
	'its key goes once its connections close');

# A worker killed while holding connections: its counts are given back.
my ($victim, $held) = map { ($_->{pid}, $_->{connections}) }
	sort { ($b->{connections} // 0) <=> ($a->{connections} // 0) }
	grep { my $p = $_->{pid}; grep { $_ == $p } $t->worker_pids() }
	@{status('/status?subsystem=stream')->{zone}{workers}};
ok($held, "a current worker ($victim) holds $held connection(s)");
kill 'KILL', $victim;
ok(wait_until(sub { !kill 0, $victim }), 'worker killed');
ok(wait_until(sub { same_counts(sum_counts(), held_counts(8091, 8092, 8093)) }, 10),
	'after a worker crash, counts equal what the backends hold');
like($t->read_file('error.log'), qr/\[warn\].*least_conn_persistent_zone "s": worker process $victim is gone/,
	'the crash is logged');

hold_close(grep({ $_->{backend} ne 'b' } @first, @next), @w, @m, @r, @after);
ok(wait_until(sub { !grep { $_->{count} } stream_entries() }, 5), 'every stream counter back to 0');

# The http status page keeps its own zone apart.
unlike(http_get('/status'), qr/"upstream":"u"/, 'the http page shows no stream counter');
like(http_get('/status?subsystem=stream&format=prometheus'),
	qr/least_conn_persistent_connections\{subsystem="stream",upstream="u",server="\Q${\addr(8091)}\E",state="up"\} 0/,
	'Prometheus series of the stream zone carry subsystem="stream"');
like(http_get('/status?subsystem=mail'), qr{^HTTP/1\.1 400 }, 'an unknown subsystem: 400');
like(http_get('/status?subsystem=stream&format=html'),
	qr{<title>least_conn_persistent \(stream\)</title>.*<table data-upstream="u">}s,
	'and the HTML page of the stream zone');

# Without a zone: per-worker counts, and the log says so.
$t->write_file('nginx.conf', $t->read_file('nginx.conf') =~ s/least_conn_persistent_zone s 1m;//r);
$t->reload();
my @f = hold_open_many(4, port(8081));
is(scalar @f, 4, 'without a zone, connections are still balanced (per worker)');
like($t->read_file('error.log'),
	qr/\[warn\].*no "least_conn_persistent_zone" is configured: 4 stream upstream\(s\) balance on per-worker counts/,
	'and the log says the stream upstreams count per worker');
like(http_get('/status?subsystem=stream'), qr{^HTTP/1\.1 404 }, 'no stream zone to show: 404');
hold_close(@f);

###############################################################################

# Loading rules and misuse, as nginx -t reports them.

sub nginx_t {
	my ($conf) = @_;
	$t->write_file('check.conf', $t->expand($conf));
	my $d = $t->testdir;
	my $out = `$Test::Nginx::NGINX -p $d/ -c $d/check.conf -t 2>&1`;
	return ($? >> 8, $out);
}

my $stream_only = sub {
	my ($modules, $body) = @_;
	return "load_module $Test::Nginx::NGINX_STREAM_MODULE;\n" x !!($modules =~ /nginx/)
		. "load_module $Test::Nginx::STREAM_MODULE;\n" x !!($modules =~ /ours/)
		. "pid %%TESTDIR%%/check.pid;\nerror_log %%TESTDIR%%/check.log notice;\n"
		. "events {}\nstream {\n$body\n}\n";
};

my ($rc, $out) = nginx_t("load_module $Test::Nginx::MODULE;\npid %%TESTDIR%%/check.pid;\n"
	. "events {}\nhttp {\n upstream u { least_conn_persistent; server 127.0.0.1:1; }\n}\n");
is($rc, 0, 'an http-only configuration loads without any stream module') or diag $out;

($rc, $out) = nginx_t($stream_only->('ours', 'upstream u { server 127.0.0.1:1; }'));
like($out, qr/\[emerg\].*ngx_stream_least_conn_persistent_module|undefined symbol: ngx_stream/,
	'our stream module without nginx\'s stream module: nginx says why');

my $ups = sub { "upstream u {\n$_[0]\n server 127.0.0.1:1;\n}\nserver { listen 127.0.0.1:1; proxy_pass u; }" };
($rc, $out) = nginx_t($stream_only->('nginx ours', "least_conn_persistent_zone s 64k;\n" . $ups->('least_conn_persistent;')));
is($rc, 0, 'the method and zone in stream: nginx -t is happy') or diag $out;

for my $case (
	['zone twice', "least_conn_persistent_zone s 64k;\nleast_conn_persistent_zone t 64k;\n" . $ups->(''),
		qr/\[emerg\].*"least_conn_persistent_zone" is duplicate/],
	['zone too small', "least_conn_persistent_zone s 16k;\n" . $ups->(''),
		qr/\[emerg\].*"least_conn_persistent_zone" zone "s" is too small/],
	['method twice', $ups->("least_conn_persistent;\nleast_conn_persistent;"),
		qr/\A(?!.*\[emerg\]).*\[warn\].*"least_conn_persistent" in upstream "u": load balancing method redefined \(given twice\)/s],
	# Accepted as stock nginx accepts it: the later method balances u.
	['another method after ours', $ups->("least_conn_persistent;\nleast_conn;"),
		qr/\A(?!.*\[emerg\]).*\[warn\].*"least_conn_persistent" in upstream "u" is overridden by a load balancing method declared after it/s],
	['another method before ours', $ups->("hash \$remote_addr;\nleast_conn_persistent;"),
		qr/\A(?!.*\[emerg\]).*\[warn\].*"least_conn_persistent" in upstream "u": load balancing method redefined; what was declared before it is dropped, as stock nginx drops it \(use one method\)/s],
	['method with an unknown parameter', $ups->('least_conn_persistent 1;'),
		qr/\[emerg\].*"least_conn_persistent" has an invalid parameter "1"/],
	['method with a parameter twice', $ups->('least_conn_persistent slow_start=1s slow_start=2s;'),
		qr/\[emerg\].*"least_conn_persistent" has the parameter "slow_start" twice/],
	['method with three parameters', $ups->('least_conn_persistent slow_start=1s index=2 index=3;'),
		qr/\[emerg\].*invalid number of arguments in "least_conn_persistent"/],
	['method with a bad index', $ups->('least_conn_persistent index=0;'),
		qr/\[emerg\].*"least_conn_persistent" has an invalid index "0" \(a number of servers, 1 or more, or off\)/],
) {
	my ($name, $body, $want) = @$case;
	($rc, $out) = nginx_t($stream_only->('nginx ours', $body));
	like($out, $want, "nginx -t: $name");
}

###############################################################################
