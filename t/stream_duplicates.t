#!/usr/bin/perl

# stream {}: an address an upstream lists twice is two peers, as stock
# least_conn counts them (each with its own key, `<address>#2` the second
# time), as in http (t/duplicates.t). Held TCP connections, two workers.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr wait_until/;
use Test::Nginx::Hold;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(4);

$t->write_file_expand('nginx.conf', <<'EOF2');

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
        server 127.0.0.1:8091;
        server 127.0.0.1:8091;
        server 127.0.0.1:8092;
        server 127.0.0.1:8092 backup;
    }

    server { listen 127.0.0.1:8081 reuseport; proxy_pass u; }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen 127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF2

$t->run_daemon(\&Test::Nginx::Hold::serve, port($_->[0]), $_->[1])
	for [8091, 'a'], [8092, 'b'];
$t->waitforsocket(addr($_)) for 8091, 8092;
$t->run();

my ($a, $b) = map { addr($_) } 8091, 8092;

###############################################################################

my @held = hold_open_many(9, port(8081));
is_deeply(hold_tally(@held), { a => 6, b => 3 }, 'an address listed twice gets two shares');
is_deeply(stream_counts(), { $a => 3, "$a#2" => 3, $b => 3, "$b#2" => 0 },
	'each line counted on its own key, the backup line too');
is(held(port(8091)) + held(port(8092)), 9, 'the backends hold what the keys count');
hold_close(@held);
my $zero = { $a => 0, "$a#2" => 0, $b => 0, "$b#2" => 0 };
ok(wait_until(sub { Test::Nginx::Status::same_counts(stream_counts(), $zero) && keys %{stream_counts()} == 4 }),
	'every counter back to 0');

###############################################################################
