#!/usr/bin/perl

# Two `server name resolve` lines whose names come to resolve to one
# address (nginx 1.27.3+). Counts are kept by address, so the two peers
# share that address's key: it counts what the backend holds through
# either name, once, and keeps doing so when one name moves away again.
# Also: an address that comes back while it still drains keeps its count.
# A DNS responder of our own answers for a.test and b.test; backends on
# 127.0.0.2-4 (one port), WebSockets held across every change.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module resolve/)->plan(18);

my $dns = $t->testdir . '/dns';
my $p = port(8081);
my %ip = (a => '127.0.0.2', b => '127.0.0.3', c => '127.0.0.4');
sub addr { "$ip{$_[0]}:$p" }

# answer(a => 'a', b => 'b'): which backend each name resolves to.
sub answer {
	my (%to) = @_;
	Test::Nginx::DNS::set_answers($dns, map { ("$_.test" => [$ip{$to{$_}}]) } keys %to);
}

$t->write_file_expand('nginx.conf', <<'EOF');

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
        least_conn_persistent;
        server a.test:%%PORT_8081%% resolve;
        server b.test:%%PORT_8081%% resolve;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

answer(a => 'a', b => 'b');
Test::Nginx::DNS::start($t, port(8053), $dns, 'b.test')
	or BAIL_OUT('the DNS responder does not answer');
$t->run_daemon(\&Test::Nginx::Backend::serve, $p, $_, $ip{$_}) for qw/a b c/;
$t->waitforsocket(addr($_)) for qw/a b c/;
$t->run();

# What the backends really hold, by address.
sub live { return { map { (addr($_) => live_count($p, $ip{$_})) } @_ } }

sub keys_for { my ($b) = @_; scalar grep { $_->{server} eq addr($b) } entries('u') }

###############################################################################

my $c = wait_counts('u', { addr('a') => 0, addr('b') => 0 });
is_deeply($c, { addr('a') => 0, addr('b') => 0 }, 'two names, two addresses, two keys at 0');
my @first = ws_open_many(20, '/u');
is_deeply(tally(@first), { a => 10, b => 10 }, '20 WebSockets: 10/10');

# b.test now resolves to a's address: both peers are one backend.
answer(a => 'a', b => 'a');
ok(wait_until(sub { grep { $_->{server} eq addr('b') && $_->{state} eq 'draining' } entries('u') }),
	'the address b.test left drains');
my @shared = ws_open_many(10, '/u');
is_deeply(tally(@shared), { a => 10 }, 'new connections go to the one address both names give');
is(keys_for('a'), 1, 'that address has one key, not one per name');
is_deeply(counts('u'), live(qw/a b/), 'counts equal what the backends hold (' . join('/', map { counts('u')->{addr($_)} } qw/a b/) . ')');

# b.test comes back to its address while that still drains: the key is
# up again with the count it kept, and new connections see it.
answer(a => 'a', b => 'b');
ok(wait_until(sub { grep { $_->{server} eq addr('b') && $_->{state} eq 'up' } entries('u') }),
	'an address back while draining is up again');
is(counts('u')->{addr('b')}, 10, 'with the 10 it kept');
my @back = ws_open_many(10, '/u');
is_deeply(tally(@back), { b => 10 }, 'so the next 10 go there (20/20)');

answer(a => 'a', b => 'a');
my @on_b = grep { $_->{backend} eq 'b' } @first, @back;
ok(wait_until(sub { grep { $_->{server} eq addr('b') && $_->{state} eq 'draining' } entries('u') }),
	'and drains again when b.test leaves it again');
ws_close(@on_b);
ok(wait_until(sub { !keys_for('b') }), 'the drained address goes once its connections close');

# Half of a's connections close, whichever name they were picked through.
my @on_a = grep { $_->{backend} eq 'a' } @first, @shared;
my @closing = splice(@on_a, 0, 10);
ws_close(@closing);
$c = wait_counts('u', { addr('a') => scalar @on_a });
is_deeply($c, live('a'), 'closing half of them: the shared key counts each close once (' . $c->{addr('a')} . ')');

# b.test moves to a third address: a fresh key at 0; the shared one keeps
# the connections made through either name.
answer(a => 'a', b => 'c');
$c = wait_counts('u', { addr('a') => scalar @on_a, addr('c') => 0 });
is_deeply($c, { addr('a') => scalar @on_a, addr('c') => 0 },
	'b.test moves on: its new address starts at 0, the shared key keeps ' . scalar @on_a);
is(keys_for('a'), 1, 'and stays one key');
my @next = ws_open_many(12, '/u');
is_deeply(tally(@next), { a => 1, c => 11 }, 'the new address takes the new connections until level');
is_deeply(counts('u'), live(qw/a c/), 'counts equal what the backends hold');

ws_close(@on_a, @next);
ok(at_rest(), 'every counter back to 0');
unlike($t->read_file('error.log'), qr/already 0/, 'no counter was released twice');

###############################################################################
