#!/usr/bin/perl

# Two `server name resolve` lines whose names come to resolve to one
# address (nginx 1.27.3+). As stock least_conn counts them, each name's peer
# is its own: the address gets two keys (`<address>` and `<address>#2`), each
# peer its share, and together they count what the backend holds, each
# connection once, however the names move. A key that comes back while it
# still drains keeps its count. A DNS responder of our own answers for
# a.test and b.test; backends on 127.0.0.2-4 (one port), WebSockets held
# across every change.

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

my $t = Test::Nginx->new()->has(qw/nginx module resolve/)->plan(20);

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

# The keys of backend $b's address (its own, and numbered ones), and what
# they count together, draining ones included.
sub keys_for { my ($b) = @_; grep { $_->{server} =~ /^\Q${\addr($b)}\E(#\d+)?$/ } entries('u') }
sub counted { my ($b) = @_; my $n = 0; $n += $_->{count} for keys_for($b); $n }
sub counted_as_live {
	my (@b) = @_;
	my %c = map { (addr($_) => counted($_)) } @b;
	is_deeply(\%c, live(@b), "what the keys count equals what the backends hold ("
		. join('/', map { $c{addr($_)} } @b) . ')');
}
sub up { my ($b) = @_; grep { $_->{state} eq 'up' } keys_for($b) }

###############################################################################

my $c = wait_counts('u', { addr('a') => 0, addr('b') => 0 });
is_deeply($c, { addr('a') => 0, addr('b') => 0 }, 'two names, two addresses, two keys at 0');
my @first = ws_open_many(20, '/u');
is_deeply(tally(@first), { a => 10, b => 10 }, '20 WebSockets: 10/10');

# b.test now resolves to a's address: two peers on one backend, each with
# a key of its own; the one new to it starts at 0 and takes the next ones.
answer(a => 'a', b => 'a');
ok(wait_until(sub { up('a') == 2 && !up('b') }), 'the address both names give has two keys up, b\'s drains');
my @shared = ws_open_many(10, '/u');
is_deeply(tally(@shared), { a => 10 }, 'new connections go to the one address both names give');
is_deeply({ map { ($_->{server} => $_->{count}) } up('a') }, { addr('a') => 10, addr('a') . '#2' => 10 },
	'a.test keeps the address\'s key, b.test\'s peer has #2; each has its share (10/10)');
counted_as_live(qw/a b/);

# b.test comes back to its address while that still drains: its key is up
# again with the count it kept; b.test's key on a's address drains.
answer(a => 'a', b => 'b');
ok(wait_until(sub { up('b') == 1 && up('a') == 1 }), 'an address back while draining is up again');
my ($left) = grep { $_->{server} eq addr('a') . '#2' } keys_for('a');
is($left && $left->{state}, 'draining', 'and b.test\'s key on a\'s address drains');
is(counted('b'), 10, 'with the 10 it kept');
my ($on_a) = up('a');
my @back = ws_open_many(10, '/u');
my $level = (10 + $on_a->{count} + 10) / 2;
is_deeply(tally(@back), { map { $_->[1] ? ($_->[0] => $_->[1]) : () }
	[a => $level - $on_a->{count}], [b => $level - 10] }, "so the next 10 level the two peers at $level");
counted_as_live(qw/a b/);

answer(a => 'a', b => 'a');
my @on_b = grep { $_->{backend} eq 'b' } @first, @back;
ok(wait_until(sub { !up('b') && up('a') == 2 }), 'and drains again when b.test leaves it again');
ws_close(@on_b);
ok(wait_until(sub { !keys_for('b') }), 'the drained address goes once its connections close');

# Half of a's connections close, whichever peer they were picked through.
my @on_a = grep { $_->{backend} eq 'a' } @first, @shared, @back;
my @closing = splice(@on_a, 0, int(@on_a / 2));
ws_close(@closing);
ok(wait_until(sub { counted('a') == @on_a }), 'closing half of them: each close is counted once ('
	. counted('a') . ')');

# b.test moves to a third address: a fresh key at 0; a's keys keep the
# connections made through either name.
answer(a => 'a', b => 'c');
ok(wait_until(sub { up('a') == 1 && up('c') == 1 }), 'b.test moves on: one key up on each address');
is(counted('c'), 0, 'the new address starts at 0');
my @next = ws_open_many(12, '/u');
ok(tally(@next)->{c} >= 6, 'the new address takes most new connections (' . (tally(@next)->{c} // 0) . ' of 12)');
counted_as_live(qw/a c/);

ws_close(@on_a, @next);
ok(at_rest(), 'every counter back to 0');
unlike($t->read_file('error.log'), qr/already 0/, 'no counter was released twice');

###############################################################################
