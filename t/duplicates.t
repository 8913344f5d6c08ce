#!/usr/bin/perl

# An address an upstream lists more than once, as stock least_conn takes it:
# each `server` line is its own peer, with its own weight, limit and counter,
# so an address listed twice gets two shares. The second occurrence's key is
# `<address>#2`, the third's `#3` (primary list first, then backup). Those
# keys keep their counts across a reload, drain when their line goes, and
# show on the status page. Two workers, WebSockets held throughout.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(16);

sub conf {
	my ($twice) = @_;
	my $again = $twice ? "server 127.0.0.1:8081;" : '';
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream dup {
        least_conn_persistent;
        server 127.0.0.1:8081;
        $again
        server 127.0.0.1:8082;
    }

    upstream backed {
        least_conn_persistent;
        server 127.0.0.1:8081 max_conns=1;
        server 127.0.0.1:8081 backup;
    }

    # A name giving an address a line lists already: the literal line keeps
    # the plain key (lines rank by name), the name's peer gets #2.
    upstream named {
        least_conn_persistent;
        server localhost:%%PORT_8081%%;
        server 127.0.0.1:8081;
    }

    upstream weighted {
        least_conn_persistent;
        server 127.0.0.1:8081 weight=2;
        server 127.0.0.1:8081 max_conns=1;
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /dup { proxy_pass http://dup; }
        location /backed { proxy_pass http://backed; }
        location /weighted { proxy_pass http://weighted; }
        location /status { least_conn_persistent_status; }
    }
}

EOF
}

conf(1);
$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'];
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

my $a = addr(8081);
my $b = addr(8082);

###############################################################################

# Two lines for a: two shares, each counted on its own key.
my @ws = ws_open_many(6, '/dup');
is_deeply(tally(@ws), { a => 4, b => 2 }, 'an address listed twice gets two shares');
is_deeply(wait_counts('dup', { $a => 2, "$a#2" => 2, $b => 2 }),
	{ $a => 2, "$a#2" => 2, $b => 2 }, 'each line has its own key and count');

# A reload of the same configuration: the keys keep their counts, so the
# next three go one to each line.
$t->reload();
is_deeply(counts('dup'), { $a => 2, "$a#2" => 2, $b => 2 }, 'the counts survive a reload');
my @more = ws_open_many(3, '/dup');
is_deeply(tally(@more), { a => 2, b => 1 }, 'and steer the new workers');

# The second line goes: its key drains while connections hold it, the first
# line's key is untouched.
conf(0);
$t->reload();
my ($second) = grep { $_->{server} eq "$a#2" } entries('dup');
is($second->{state}, 'draining', 'a removed second line drains');
is($second->{count}, 3, 'and keeps its count');
my @after = ws_open_many(2, '/dup');
is_deeply(tally(@after), { b => 1, a => 1 }, 'new connections go to the lines that remain');
ws_close(@ws, @more, @after);
is_deeply(wait_counts('dup', { $a => 0, $b => 0 }), { $a => 0, $b => 0 },
	'the drained key goes once its last connection closes');

# The same address as primary and as backup: the backup is a peer of its own.
my @p = ws_open_many(2, '/backed');
is_deeply(tally(@p), { a => 2 }, 'the backup line takes what the full primary line cannot');
my %state = map { ($_->{server} => $_->{count}) } entries('backed');
is_deeply(\%state, { $a => 1, "$a#2" => 1 }, 'primary and backup counted apart');
my ($backup) = grep { $_->{server} eq "$a#2" } entries('backed');
is($backup->{state}, 'backup', 'the status page shows the second key as backup');
ws_close(@p);

# Each line keeps its own weight and max_conns: 2, 1 (at most one), 1; seven
# connections balance as 4, 1, 2.
my @w = ws_open_many(7, '/weighted');
is_deeply(wait_counts('weighted', { $a => 4, "$a#2" => 1, $b => 2 }),
	{ $a => 4, "$a#2" => 1, $b => 2 }, 'weights and limits are per line');
ws_close(@w);

# A name and a literal line on one address.
my %named = map { ($_->{server} => $_->{state}) } entries('named');
is($named{$a}, 'up', 'the literal line keeps the address as its key');
is($named{"$a#2"}, 'up', 'the name giving it again has the #2 key');
is(scalar(grep { /^\Q$a\E/ } keys %named), 2, 'and no other key on that address');

ok(at_rest(), 'all counters back to 0');

###############################################################################
