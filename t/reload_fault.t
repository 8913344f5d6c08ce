#!/usr/bin/perl

# Reloads that go wrong or run out of room: a reload that fails after
# `nginx -t` would pass (a listen port in use) leaves the zone exactly as the
# running configuration left it; keys a reload frees make room for the keys
# it adds; renaming the zone says that counts restart.

use warnings;
use strict;

use Test::More;
use IO::Socket::INET;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(9);
$t->alerts_allowed(qr/bind\(\) to 127\.0\.0\.1:\d+ failed/);

sub conf {
	my (%o) = @_;
	my $servers = $o{servers} // "        server 127.0.0.1:8081;\n        server 127.0.0.1:8082 weight=2;\n";
	my $listen = $o{listen} // '';
	my $zone = $o{zone} // 'lcp 1m';
	$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone $zone;

    upstream u {
        least_conn_persistent;
$servers    }

    server {
        listen       127.0.0.1:8080;
$listen
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

sub status_body {
	my $r = http_get('/status');
	$r =~ s/.*?\r\n\r\n//s;
	return $r;
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'], [8083, 'c'];
$t->waitforsocket(addr($_)) for 8081 .. 8083;
conf();
$t->run();

###############################################################################

# A failed reload: it passes `nginx -t` but cannot bind a port held here.
my @ws = ws_open_many(3, '/u');
my $before = status_body();
my $busy = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1',
	LocalPort => port(8090), ReuseAddr => 1) or die "listen: $!";
conf(servers => "        server 127.0.0.1:8083 weight=5;\n        server 127.0.0.1:8082;\n",
	listen => "        listen       127.0.0.1:8090;\n");
my ($rc) = $t->test_config();
is($rc, 0, 'the new configuration passes nginx -t');
kill 'HUP', $t->master_pid();
ok(wait_until(sub { $t->read_file('error.log') =~ /bind\(\) to 127\.0\.0\.1:${\port(8090)} failed/ }, 5),
	'the reload fails: port in use');
is(status_body(), $before, 'the status page is exactly what it was');
my @more = ws_open_many(3, '/u');
is_deeply(tally(@ws, @more), { a => 2, b => 4 }, 'the running weights still apply (1:2)');
unlike($t->read_file('error.log'), qr/re-added as draining/, 'no key went stale');
ws_close(@ws, @more);
ok(at_rest(), 'at rest');
close $busy;

# A near-full zone: a reload replacing every key by as many new ones fits,
# because the keys it drops are freed before the new ones are stored.
sub servers {
	my ($host, $n) = @_;
	return "        server 127.0.0.1:8081;\n"
		. join('', map { "        server $host:" . (20000 + $_) . " down;\n" } 1 .. $n - 1);
}
$t->stop();
conf(zone => 'lcp 32k', servers => servers('127.0.0.2', 400));
$t->run();
my ($dropped) = $t->read_file('error.log') =~ /"lcp" is full: (\d+) of 400 servers/;
my $fit = 400 - ($dropped // 400);
ok($dropped && $fit > 50, "the zone holds $fit of 400 keys");
conf(zone => 'lcp 32k', servers => servers('127.0.0.3', $fit));
$t->reload();
my $full = () = $t->read_file('error.log') =~ /is full: /g;
is($full, 1, "a reload replacing all $fit keys by $fit others still fits");

# Renaming the zone: a new zone, and the log says the counts restart.
conf(zone => 'lcp2 32k', servers => servers('127.0.0.3', 2));
$t->reload();
like($t->read_file('error.log'),
	qr/\[notice\].*least_conn_persistent_zone "lcp2" replaces "lcp": connection counts restart from 0/,
	'renaming the zone is logged');

###############################################################################
