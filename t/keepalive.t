#!/usr/bin/perl

# Upstream keepalive with the method: connections to the servers are reused,
# and each request is counted while it runs and released after, however
# keepalive comes in. Before nginx 1.29.7 `keepalive` must follow the method:
# placed before it, it is dropped (as with every stock method) with a [warn],
# and each request opens a connection of its own. 1.29.7 hooks it in after
# every method wherever it stands, and keeps connections alive by default
# (`keepalive` not written at all): both orders reuse connections there.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http_get wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module/);
my $version = Test::Nginx::nginx_version();
my $any_order = Test::Nginx::version_at_least($version, '1.29.7');

# [upstream, its lines besides the servers, whether connections are reused]
my @upstreams = (['after', "least_conn_persistent;\n        keepalive 4;", 1],
	['before', "keepalive 4;\n        least_conn_persistent;", $any_order]);
push @upstreams, ['default', 'least_conn_persistent;', 1] if $any_order;
diag("nginx $version: keepalive " . ($any_order ? 'after, before and by default'
	: 'after the method (before it, it is dropped, as stock nginx drops it)'));

$t->plan(5 * @upstreams + 2);

my $ups = join '', map { <<"EOF" } @upstreams;
    upstream $_->[0] {
        $_->[1]
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }
    server {
        listen 127.0.0.1:8080;
        server_name $_->[0];
        location / {
            proxy_pass http://$_->[0];
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /status { least_conn_persistent_status; }
    }
EOF

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 64k;

$ups
}

EOF

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b');
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

my ($a, $b) = map { addr($_) } 8081, 8082;

for my $up (@upstreams) {
	my ($u, $reused) = @$up[0, 2];
	# One at a time: each backend gets one connection, reused by the
	# requests after the first it serves.
	my @r = map { http_get('/', host => $u) } 1 .. 6;
	is(scalar(grep { /^HTTP\/1\.1 200 / } @r), 6, "$u: six requests");
	my %conns;
	$conns{$_}++ for map { /id=(\w) conn=(\d+)/ ? "$1 $2" : () } @r;
	my %servers = map { (/^(\w)/ => 1) } keys %conns;
	is(scalar keys %servers, 2, "$u: both servers used");
	my $seen = join(', ', map { "$_ x$conns{$_}" } sort keys %conns);
	if ($reused) {
		is(scalar keys %conns, 2, "$u: one connection per server, reused ($seen)");
	} else {
		is(scalar keys %conns, 6, "$u: keepalive dropped, a connection per request ($seen)");
	}

	# A request in flight counts 1; once answered, its connection idles in
	# the cache and counts 0.
	my $slow = http_get('/slow?ms=1500', host => $u, start => 1);
	ok(wait_until(sub { my $c = counts($u); ($c->{$a} // 0) + ($c->{$b} // 0) == 1 }),
		"$u: a request in flight counts 1");
	close $slow;
	ok(at_rest(), "$u: idle kept-alive connections count 0");
}

# Configuration warnings go to nginx's output (the log is not open yet).
my $warned = ($t->test_config())[1] =~ /\[warn\].*"least_conn_persistent" in upstream "before": load balancing method redefined/;
ok($any_order ? !$warned : $warned, 'keepalive before the method is '
	. ($any_order ? 'not warned about' : 'dropped with a [warn]'));
unlike($t->read_file('error.log'), qr/\[(alert|crit|emerg)\]/, 'no alert');

###############################################################################
