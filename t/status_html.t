#!/usr/bin/perl

# The HTML status page (`?format=html`) in a real browser: headless
# Chromium (Debian's) renders it while WebSockets are held; the test reads
# every server's count and state from the rendered table, opens more
# connections, and sees the page update on its own (it refreshes itself;
# the test never reloads it). Escaping, the refresh argument and the page's
# self-containment are checked on the HTML itself.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port addr http_get wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::Browser;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $t = Test::Nginx->new()->has(qw/nginx module/);
# Installed by scripts/test.sh: a missing browser must not pass as a skip.
Test::Nginx::Browser::available()
	or BAIL_OUT("$Test::Nginx::Browser::CHROMIUM is missing: apt-get install chromium");
$t->plan(13);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 2;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082 weight=2 max_conns=50;
        server 127.0.0.1:8083 down;
    }

    upstream "<b>&x" {
        least_conn_persistent;
        server 127.0.0.1:8081;
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

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_->[0]), $_->[1])
	for [8081, 'a'], [8082, 'b'];
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

# The HTML itself.
my $page = http_get('/status?format=html');
like($page, qr{^HTTP/1\.1 200 .*Content-Type: text/html; charset=utf-8}s, 'served as HTML');
like($page, qr{<meta http-equiv="refresh" content="5">}, 'refreshes itself every 5 s by default');
like($page, qr{<code>&lt;b&gt;&amp;x</code>}, 'an upstream name with markup is escaped');
unlike($page, qr{<(script|link|img|iframe)\b|\b(src|href)=}i, 'self-contained: nothing loaded from elsewhere');
like(http_get('/status?format=html&refresh=0'), qr{<title>}, 'refresh=0 is accepted');
unlike(http_get('/status?format=html&refresh=0'), qr{http-equiv}, 'and stops the refresh');
like(http_get('/status?format=html&refresh=9999'), qr{^HTTP/1\.1 400 }, 'a refresh past an hour: 400');

# In the browser.
my @ws = ws_open_many(6, '/u');
wait_counts('u', { 8081 => 2, 8082 => 4, 8083 => 0 });
my $b = Test::Nginx::Browser->launch('http://127.0.0.1:' . port(8080) . '/status?format=html&refresh=1',
	port => port(8095), dir => $t->testdir);

# Each row as rendered: [upstream, server, state, count], from visible text.
my $rows_js = q{JSON.stringify(Array.from(document.querySelectorAll('table')).flatMap(t =>
	Array.from(t.tBodies[0].rows).map(r => [t.dataset.upstream, r.cells[0].innerText,
		r.cells[1].innerText, r.cells[2].innerText])))};

sub rendered {
	my $json = $b->js($rows_js) // return {};
	my %r;
	$r{"$_->[0] $_->[1]"} = "$_->[2] $_->[3]" for @{JSON::PP::decode_json($json)};
	return \%r;
}

my $want = {
	'u ' . addr(8081) => 'up 2',
	'u ' . addr(8082) => 'up 4',
	'u ' . addr(8083) => 'down 0',
	'<b>&x ' . addr(8081) => 'up 0',
};
my $seen;
ok(wait_until(sub { $seen = rendered(); join(',', map { "$_=$seen->{$_}" } sort keys %$seen)
	eq join(',', map { "$_=$want->{$_}" } sort keys %$want) }, 10),
	'the rendered page shows every server with its state and count')
	or diag explain $seen;
like($b->js('document.querySelector("#zone-name").innerText'), qr/^lcp$/, 'and the zone');
is($b->js(q{document.querySelector('tr[data-server="} . addr(8082) . q{"] meter').value}), 4,
	'the bar of the busiest server is drawn to its count');

# More connections: the page, never reloaded by the test, shows them.
my $origin = $b->js('performance.timeOrigin');
push @ws, ws_open_many(6, '/u');
$want->{'u ' . addr(8081)} = 'up 4';
$want->{'u ' . addr(8082)} = 'up 8';
ok(wait_until(sub { $seen = rendered(); ($seen->{'u ' . addr(8081)} // '') eq 'up 4'
	&& ($seen->{'u ' . addr(8082)} // '') eq 'up 8' }, 10),
	'after 6 more connections the page updates itself: '
	. join(', ', map { "$_ $seen->{$_}" } grep { /^u / } sort keys %$seen));
my $now = $b->js('performance.timeOrigin');
ok($origin && $now && $now > $origin, 'through its own refresh: a new document, not the test\'s reload');

$b->screenshot($t->testdir . '/status.png');
ok(-s $t->testdir . '/status.png' > 1000, 'the browser renders a screenshot');
$b->quit;

ws_close(@ws);
at_rest();

###############################################################################
