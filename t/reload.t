#!/usr/bin/perl

# Counts across reloads (HUP), two workers: WebSockets held by old workers
# stay counted, a server added by a reload takes the new connections until
# balanced, a removed server drains, and every counter returns to 0.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(19);

sub conf {
	my (%o) = @_;
	my $u = join "\n", map { "        server 127.0.0.1:$_;" } @{$o{u}};
	my $one = join "\n", map { "        server 127.0.0.1:$_;" } @{$o{one}};
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp $o{size};

    upstream u {
        least_conn_persistent;
$u
    }

    upstream one {
        least_conn_persistent;
$one
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /one { proxy_pass http://one; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

sub spread {
	my ($c) = @_;
	my @v = sort { $a <=> $b } values %$c;
	return $v[-1] - $v[0];
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'], [8083, 'c'];
$t->waitforsocket(addr($_)) for 8081 .. 8083;

conf(u => [8081, 8082], one => [8081], size => '1m');
$t->run();

###############################################################################

# The brief's measurement: 100 over two servers, reload adding a third, 60 more.
my @first = ws_open_many(100, '/u');
is_deeply(tally(@first), { a => 50, b => 50 }, '100 WebSockets 50/50');

# A single-server upstream counts too (APISIX did not).
my @one = ws_open_many(2, '/one');
is_deeply(counts('one'), { addr(8081) => 2 }, 'single-server upstream counts');

conf(u => [8081, 8082, 8083], one => [8081, 8082], size => '1m');
$t->reload();
ok(scalar $t->old_worker_pids(), 'old workers hold the WebSockets');
is_deeply(counts('u'), { addr(8081) => 50, addr(8082) => 50, addr(8083) => 0 },
	'counts survive the reload; the new server starts at 0');

my @next = ws_open_many(60, '/u');
my $c = counts('u');
is(spread($c), 1, 'after 60 more, all within one connection: '
	. join('/', map { $c->{addr($_)} } 8081 .. 8083));
ok($c->{addr(8083)} >= 53, "the new server took $c->{addr(8083)} of the 60");

my @one2 = ws_open_many(2, '/one');
is_deeply(tally(@one2), { b => 2 }, 'scaling 1 -> 2 sees the first server\'s load');

# Scale down: b leaves while it holds connections.
my @on_b = grep { $_->{backend} eq 'b' } @first, @next;
conf(u => [8081, 8083], one => [8081, 8082], size => '1m');
$t->reload();
my ($b) = grep { $_->{server} eq addr(8082) } entries('u');
is($b && $b->{state}, 'draining', 'removed server with connections is draining');
is($b && $b->{count}, scalar(@on_b), 'and keeps its count');

my @after = ws_open_many(10, '/u');
ok(!grep({ $_->{backend} eq 'b' } @after), 'no new connection to the removed server');

ws_close(@on_b);
ok(wait_until(sub { !grep { $_->{server} eq addr(8082) } entries('u') }),
	'draining key removed once its connections close');

# At rest, through reloads.
ws_close(grep({ $_->{backend} ne 'b' } @first, @next), @after, @one, @one2);
ok(at_rest(), 'every counter back to 0');
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'old workers gone');

$t->reload();
ok(at_rest(), 'still 0 after another reload');
is(scalar(entries()), 4, 'keys: u has a and c, one has a and b');

# Weight changes apply at once.
$t->write_file('nginx.conf', $t->read_file('nginx.conf')
	=~ s/(upstream one \{\s*least_conn_persistent;\s*server [^;\s]+)/$1 weight=3/r);
$t->reload();
my @w = ws_open_many(8, '/one');
is_deeply(tally(@w), { a => 6, b => 2 }, 'new weight 3:1 in effect after reload');
ws_close(@w);
ok(at_rest(), 'back to 0');

# A new zone size means a new zone: counts restart, and the log says so.
my @kept = ws_open_many(2, '/one');
conf(u => [8081, 8083], one => [8081, 8082], size => '2m');
$t->reload();
like($t->read_file('error.log'), qr/\[notice\].*least_conn_persistent_zone "lcp" changed size: connection counts restart from 0/,
	'size change logged');
is(status()->{zone}{size}, 2097152, 'new zone in use');
ws_close(@kept);
