#!/usr/bin/perl

# Without a zone, and with a zone too small for every key: the method falls
# back to per-worker counting, says so once per load, and keeps serving.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(12);

sub conf {
	my ($zone, $downs) = @_;
	my $down = join "\n", map { "        server 127.0.0.2:" . (20000 + $_) . " down;" } 1 .. $downs;
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    $zone

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
$down
    }

    server {
        listen       127.0.0.1:8080;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'];
$t->waitforsocket(addr($_)) for 8081, 8082;

###############################################################################

# No zone: stock least_conn semantics, per worker.
conf('', 0);
$t->run();

my @warn = $t->read_file('error.log') =~ /\[warn\].*(no "least_conn_persistent_zone" is configured.*)/g;
is(scalar @warn, 1, 'one warning at startup');

my @ws = ws_open_many(4, '/u');
is_deeply(tally(@ws), { a => 2, b => 2 }, 'balanced without a zone');
ws_close(grep { $_->{backend} eq 'b' } @ws);
my @a = grep { $_->{backend} eq 'a' } @ws;
wait_until(sub { (counts('u')->{addr(8082)} // -1) == 0 });
my @next = ws_open_many(2, '/u');
is_deeply(tally(@next), { b => 2 }, 'held connections still steer, per worker');

my $st = status();
is($st->{zone}, undef, 'status: no zone');
is_deeply([sort map { "$_->{state}=$_->{count}" } @{$st->{counters}}],
	['fallback=2', 'fallback=2'], 'status: fallback entries with this worker\'s counts');
ws_close(@a, @next);

# A zone too small for all keys: 400 servers (398 of them down) in 32k.
$t->stop();
conf('least_conn_persistent_zone lcp 32k;', 398);
$t->run();
my $full = () = $t->read_file('error.log') =~ /\[error\].*least_conn_persistent_zone "lcp" is full: \d+ of 400 servers fall back/g;
is($full, 1, 'zone full: one error line');

like(http_get('/u'), qr/200 OK.*id=[ab]/s, 'still serving');
my @e = entries('u');
my @fb = grep { $_->{state} eq 'fallback' } @e;
ok(@fb > 0 && @e == 400, scalar(@e - @fb) . ' keys stored, ' . scalar(@fb) . ' in fallback');
is(status()->{zone}{keys}, @e - @fb, 'zone reports the keys it holds');

my @w = ws_open_many(4, '/u');
is_deeply(tally(@w), { a => 2, b => 2 }, 'balancing unaffected');
ws_close(@w);

$t->reload();
$full = () = $t->read_file('error.log') =~ /\[error\].*least_conn_persistent_zone "lcp" is full/g;
is($full, 2, 'one more error line for the reload');
like(http_get('/u'), qr/200 OK/, 'serving after the reload');
