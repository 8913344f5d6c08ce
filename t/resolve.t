#!/usr/bin/perl

# `server name resolve` (nginx 1.27.3+): DNS changes an upstream's peers at
# run time, without a reload. Keys follow the addresses: a new address gets
# a key at 0 and so the new connections, a kept one keeps its count, a gone
# one drains and then goes; nothing falls back to per-worker counts. A DNS
# responder of our own answers for b.test from a file this test rewrites;
# backends on 127.0.0.2-4 (one port) stand for the name's addresses, with
# WebSockets held across every change. t/resolve_indexed.t runs the same
# with `index=1` on u: its list picks through a pick index, rebuilt as each
# worker follows DNS.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port http_get wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

# Parameters of u's method (t/resolve_indexed.t: index=1).
my $u_params = $ENV{TEST_RESOLVE_U_PARAMS} // '';
my $indexed = $u_params =~ /\bindex=/;
my $t = Test::Nginx->new()->has(qw/nginx module resolve/)->plan(30 + $indexed);

my $dns = $t->testdir . '/dns';
# Slow start's window, longer on a slow machine: the opens below stay early in it.
my $window = int(10 * $Test::Nginx::SLOW + 0.5);
my $p = port(8081);
my %ip = (a => '127.0.0.2', b => '127.0.0.3', c => '127.0.0.4');
sub addr { "$ip{$_[0]}:$p" }
sub answer { Test::Nginx::DNS::set_answers($dns, 'b.test' => [map { $ip{$_} } @_]) }

$t->write_file_expand('nginx.conf', <<'EOF' =~ s/%%WINDOW%%/$window/r =~ s/%%U_PARAMS%%/$u_params/r);

%%TEST_GLOBALS%%

worker_processes 2;

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
        least_conn_persistent %%U_PARAMS%%;
        server b.test:%%PORT_8081%% resolve;
    }

    # The same name with slow start: an address DNS adds ramps up.
    upstream s {
        zone s 64k;
        least_conn_persistent slow_start=%%WINDOW%%s;
        server b.test:%%PORT_8081%% resolve;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /s { proxy_pass http://s; }
        location /slow {
            proxy_pass http://u;
            proxy_read_timeout 4s;
        }
        location /status { least_conn_persistent_status; }
    }
}

EOF

answer(qw/a b/);
ok(Test::Nginx::DNS::start($t, port(8053), $dns, 'b.test'), 'DNS responder answers');
$t->run_daemon(\&Test::Nginx::Backend::serve, $p, $_, $ip{$_}) for qw/a b c/;
$t->waitforsocket(addr($_)) for qw/a b c/;
$t->run();

# What the backends really hold, by address.
sub live { return { map { (addr($_) => live_count($p, $ip{$_})) } @_ } }

sub spread {
	my @v = sort { $a <=> $b } @_;
	return $v[-1] - $v[0];
}

my %states;
sub note_states { $states{$_->{state}}++ for entries('u') }

###############################################################################

my $c = wait_counts('u', { addr('a') => 0, addr('b') => 0 });
is_deeply($c, { addr('a') => 0, addr('b') => 0 }, 'a key per resolved address, at 0');

my @first = ws_open_many(20, '/u');
is_deeply(tally(@first), { a => 10, b => 10 }, '20 WebSockets over two addresses: 10/10');
note_states();
wait_counts('s', { addr('a') => 0, addr('b') => 0 });
ok(!grep({ defined $_->{ramping} } entries('s')), 'slow start: the first resolution ramps nothing');
my @slow = ws_open_many(10, '/s');

# DNS adds an address: its key appears at 0 (no request needed).
answer(qw/a b c/);
$c = wait_counts('u', { addr('a') => 10, addr('b') => 10, addr('c') => 0 });
is_deeply($c, { addr('a') => 10, addr('b') => 10, addr('c') => 0 },
	'a new address gets a key at 0; kept addresses keep their counts');
my ($ramp) = map { $_->{ramping} } grep { $_->{server} eq addr('c') }
	@{wait_until(sub { my @e = grep { $_->{server} eq addr('c') } entries('s'); @e ? \@e : undef }) // []};
ok(defined $ramp, 'slow start: the address DNS added ramps up: ' . ($ramp // 'no'));
push @slow, ws_open_many(10, '/s');
my $on_c = grep { $_->{backend} eq 'c' } @slow;
# The bound from the percent once the opens are done (the highest it was
# during them).
my ($after) = map { $_->{ramping} } grep { $_->{server} eq addr('c') } entries('s');
my $bound = int((($after // 100) + 5) / 100 * 10) + 2;
ok($on_c <= $bound, "and takes $on_c of 10 new connections (bound $bound; without slow start, 5 or more)");
ws_close(@slow);
ok(wait_until(sub { !grep { $_->{count} } entries('s') }), 'slow start upstream back to 0');

my @more = ws_open_many(20, '/u');
$c = counts('u');
is(spread(values %$c), 1, 'after 20 more, all within one: '
	. join('/', map { $c->{addr($_)} } qw/a b c/));
ok($c->{addr('c')} >= 13, "the new address took $c->{addr('c')} of the 20");
is_deeply($c, live(qw/a b c/), 'counts equal what the backends hold');
note_states();

# DNS drops an address that holds connections: it drains.
my @on_a = grep { $_->{backend} eq 'a' } @first, @more;
answer(qw/b c/);
ok(wait_until(sub { grep { $_->{server} eq addr('a') && $_->{state} eq 'draining' } entries('u') }),
	'a gone address with connections is draining');
$c = counts('u');
is($c->{addr('a')}, scalar @on_a, 'and keeps its count (' . scalar(@on_a) . ')');
my @after = ws_open_many(10, '/u');
ok(!grep({ $_->{backend} eq 'a' } @after), 'no new connection to the gone address');
is_deeply(counts('u'), live(qw/a b c/), 'counts still equal what the backends hold');
note_states();

ws_close(@on_a);
ok(wait_until(sub { !grep { $_->{server} eq addr('a') } entries('u') }),
	'its key goes once its connections close');

# A reload keeps the resolved peers (nginx copies them to the new zone) and
# so their keys and counts: nothing drains, nothing restarts.
my $before = counts('u');
$t->reload();
ok(scalar $t->old_worker_pids(), 'old workers hold the WebSockets');
is_deeply(counts('u'), $before, 'counts of resolved addresses survive a reload');
ok(!grep({ $_->{state} eq 'draining' } entries('u')), 'and none is draining');
note_states();
my @reloaded = ws_open_many(10, '/u');
$c = counts('u');
ok(spread(values %$c) <= 1, 'new workers keep balancing: ' . join('/', map { $c->{addr($_)} } qw/b c/));

# The address comes back: a fresh key at 0, which takes the new connections.
answer(qw/a b c/);
wait_counts('u', { %$c, addr('a') => 0 });
is(counts('u')->{addr('a')}, 0, 'a returning address starts at 0');
my @back = ws_open_many(6, '/u');
is_deeply(tally(@back), { a => 6 }, 'and takes the new connections');
is_deeply(counts('u'), live(qw/a b c/), 'counts equal what the backends hold');
note_states();

ok(!$states{fallback}, 'no per-worker fallback at any step (states seen: '
	. join(', ', map { "$_ $states{$_}" } sort keys %states) . ')');

ws_close(grep({ $_->{backend} ne 'a' } @first, @more), @after, @reloaded, @back);
ok(at_rest(), 'every counter back to 0');
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'old workers gone');

if ($indexed) {
	SKIP: {
		skip 'nginx built without --with-debug', 1
			unless `$Test::Nginx::NGINX -V 2>&1` =~ /--with-debug/;
		my $n = () = $t->read_file('error.log') =~ /get peer \d+ of Primary list through its index/g;
		ok($n >= 60, "picks of u through its index, across DNS changes and a reload: $n");
	}
}

# A request whose peer list changes under it: its retry gives up as busy
# (as stock balancers do: its tried-bitmap no longer fits the list) and
# releases what its first attempt took, once.
my $started = time();
my $s = http_get('/slow?ms=8000', start => 1);
answer(qw/b c/);
my $r = Test::Nginx::http_read($s, 15);
my $took = time() - $started;
# A retry that picked again would time out a second time (8 s and more).
like($r, qr{^HTTP/1\.1 502 }, 'retry after the list changed: 502');
ok($took < 7, sprintf('after the first attempt only (%.1f s)', $took));
like($t->read_file('error.log'), qr/\[error\].*no live upstreams/, 'logged as no live upstreams');
ok(at_rest(), 'and every counter is back to 0');

###############################################################################
