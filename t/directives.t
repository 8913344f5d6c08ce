#!/usr/bin/perl

# Each directive's good and bad forms, as `nginx -t` judges them.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;

# What changed in nginx: 1.29.6 added `sticky`, which (like `keepalive` did
# before 1.29.7) wraps the method declared before it, so must follow ours;
# 1.29.7 hooks `keepalive` in after every method, wherever it stands.
my $version = Test::Nginx::nginx_version();
my $has_sticky = Test::Nginx::version_at_least($version, '1.29.6');
my $keepalive_any_order = Test::Nginx::version_at_least($version, '1.29.7');
my $wrappers = $keepalive_any_order ? '"sticky"'
	: $has_sticky ? '"keepalive" and "sticky"' : '"keepalive"';
# As stock nginx, a method declared before ours (or a directive that wraps
# one) is replaced, with a warning; so is ours by a method declared after it.
my $redefined = { warn => qr/\[warn\].*"least_conn_persistent" in upstream "u": load balancing method redefined; what was declared before it is dropped, as stock nginx drops it \(use one method, and put \Q$wrappers\E after it\)/ };
my $replaced = { warn => qr/\[warn\].*"least_conn_persistent" in upstream "u" is overridden by a load balancing method declared after it, which balances that upstream, as stock nginx does; its connections are not counted in the zone/ };

my @cases = (
	# [name, http-level lines, upstream lines, location lines, expected error,
	#  or undef (passes), or { warn => qr// } (passes with that warning),
	#  and optionally http-level lines after the upstream]
	['all good', 'least_conn_persistent_zone z 64k;',
		'least_conn_persistent;', 'least_conn_persistent_status;', undef],
	['upstream before zone is fine', '', 'least_conn_persistent;', '', undef],
	["keepalive before the method (nginx $version)", 'least_conn_persistent_zone z 64k;',
		"keepalive 8;\n least_conn_persistent;", '', $keepalive_any_order ? undef : $redefined],
	['keepalive after the method', 'least_conn_persistent_zone z 64k;',
		"least_conn_persistent;\n keepalive 8;", '', undef],
	($has_sticky ? (
		['sticky before the method', 'least_conn_persistent_zone z 64k;',
			"sticky cookie srv;\n least_conn_persistent;", '', $redefined],
		['sticky after the method', 'least_conn_persistent_zone z 64k;',
			"least_conn_persistent;\n sticky cookie srv;", '', undef],
		['drain and route', 'least_conn_persistent_zone z 64k;',
			"least_conn_persistent;\n server 127.0.0.1:8083 drain route=c;", '', undef],
	) : ()),
	['zone too small', 'least_conn_persistent_zone z 16k;', '', '',
		qr/\[emerg\].*"least_conn_persistent_zone" zone "z" is too small/],
	['zone bad size', 'least_conn_persistent_zone z 12q;', '', '',
		qr/\[emerg\].*"least_conn_persistent_zone" has an invalid zone size "12q"/],
	['zone declared twice',
		"least_conn_persistent_zone z 64k;\n least_conn_persistent_zone y 64k;", '', '',
		qr/\[emerg\].*"least_conn_persistent_zone" is duplicate/],
	['zone without size', 'least_conn_persistent_zone z;', '', '',
		qr/\[emerg\].*invalid number of arguments in "least_conn_persistent_zone"/],
	['zone name used by another module',
		"limit_conn_zone \$binary_remote_addr zone=z:64k;\n least_conn_persistent_zone z 64k;",
		'', '', qr/\A[^\n]*\[emerg\][^\n]*"least_conn_persistent_zone" shared memory zone "z" is already declared for a different use[^\n]*\n[^\[]*\z/],
	['zone with an empty name', 'least_conn_persistent_zone "" 64k;', '', '',
		qr/\[emerg\].*"least_conn_persistent_zone" has an invalid zone name ""/],
	# Stock nginx takes these; the pick compares 32-bit values, so they count
	# as the largest, and configuration says so.
	['weight past 2^32', '', "least_conn_persistent;\n server 127.0.0.1:8083 weight=5000000000;", '',
		{ warn => qr/\[warn\].*"least_conn_persistent" weight 5000000000 of server "127\.0\.0\.1:\d+" in upstream "u" is compared as 4294967295, the largest 32-bit value/ }],
	['max_conns past 2^32', '', "least_conn_persistent;\n server 127.0.0.1:8083 max_conns=4294967297;", '',
		{ warn => qr/\[warn\].*"least_conn_persistent" max_conns 4294967297 of server "127\.0\.0\.1:\d+" in upstream "u" is compared as 4294967295/ }],
	['max_conns at 2^32 - 1', '', "least_conn_persistent;\n server 127.0.0.1:8083 max_conns=4294967295;", '', undef],
	# Accepted as stock least_conn accepts them: each line is its own peer,
	# with its own key (t/duplicates.t checks how they are counted).
	['the same address twice', '', "least_conn_persistent;\n server 127.0.0.1:8081 weight=2;", '', undef],
	['a name giving an address listed already', '', "least_conn_persistent;\n server localhost:%%PORT_8081%% backup;", '', undef],
	['the same address as primary and backup, both down', '',
		"least_conn_persistent;\n server 127.0.0.1:8082 down;\n server 127.0.0.1:8082 backup down;", '', undef],
	['method twice', '', "least_conn_persistent;\n least_conn_persistent;", '',
		{ warn => qr/\[warn\].*"least_conn_persistent" in upstream "u": load balancing method redefined \(given twice\)/ }],
	['method with an unknown parameter', '', 'least_conn_persistent on;', '',
		qr/\[emerg\].*"least_conn_persistent" has an invalid parameter "on"/],
	['rebalance with every parameter', 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent;\n least_conn_persistent_rebalance rate=5/s tolerance=10% min_age=5m jitter=30s;", '', undef],
	['rebalance with none', 'least_conn_persistent_zone z 1m;', "least_conn_persistent;\n least_conn_persistent_rebalance;", '', undef],
	['rebalance without a zone', '', "least_conn_persistent;\n least_conn_persistent_rebalance;", '',
		{ warn => qr/\[warn\].*least_conn_persistent_rebalance of 1 http upstream\(s\) is ignored: it needs "least_conn_persistent_zone"/ }],
	['rebalance after the method it needs', '', "least_conn_persistent_rebalance;\n least_conn_persistent;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" needs "least_conn_persistent" before it in the upstream/],
	['rebalance without the method', '', 'least_conn_persistent_rebalance;', '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" needs "least_conn_persistent" before it in the upstream/],
	['rebalance twice', '', "least_conn_persistent;\n least_conn_persistent_rebalance;\n least_conn_persistent_rebalance;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" is duplicate/],
	['rebalance with a bad rate', '', "least_conn_persistent;\n least_conn_persistent_rebalance rate=5;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" has an invalid rate "5" \(closes a second, such as 5\/s or 5r\/s, 1 to 100000\)/],
	['rebalance with a bad tolerance', '', "least_conn_persistent;\n least_conn_persistent_rebalance tolerance=x%;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" has an invalid tolerance "x%"/],
	['rebalance with a bad min_age', '', "least_conn_persistent;\n least_conn_persistent_rebalance min_age=500ms;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" has an invalid min_age "500ms" \(a time such as 30s or 5m\)/],
	['rebalance with an unknown parameter', '', "least_conn_persistent;\n least_conn_persistent_rebalance speed=1;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" has an invalid parameter "speed=1"/],
	['rebalance with a parameter twice', '', "least_conn_persistent;\n least_conn_persistent_rebalance jitter=1s jitter=2s;", '',
		qr/\[emerg\].*"least_conn_persistent_rebalance" has the parameter "jitter" twice/],
	# least_conn_persistent_check: the active health checks.
	['check with defaults', 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent;\n least_conn_persistent_check;", '', undef],
	['check, http, every parameter', 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent;\n least_conn_persistent_check type=http uri=/health?deep=1 port=8080 interval=300ms timeout=250ms rise=1 fall=5 status=200,204,300-399 capacity=X-Cap load=X-Conns;", '', undef],
	['check, tcp', 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent;\n least_conn_persistent_check type=tcp port=9000 interval=1m;", '', undef],
	['check with the zone after the upstream', '',
		"least_conn_persistent;\n least_conn_persistent_check uri=/health;", '', undef,
		'least_conn_persistent_zone z 1m;'],
	['check without a zone', '', "least_conn_persistent;\n least_conn_persistent_check;", '',
		qr/\[emerg\].*"least_conn_persistent_check" in upstream "u" needs "least_conn_persistent_zone" \(checks keep their state in the zone, shared by every worker\)/],
	['check after the method it needs', 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent_check;\n least_conn_persistent;", '',
		qr/\[emerg\].*"least_conn_persistent_check" needs "least_conn_persistent" before it in the upstream \(it checks the servers that method balances\)/],
	['check without the method', 'least_conn_persistent_zone z 1m;', 'least_conn_persistent_check;', '',
		qr/\[emerg\].*"least_conn_persistent_check" needs "least_conn_persistent" before it in the upstream/],
	['check twice', 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent;\n least_conn_persistent_check;\n least_conn_persistent_check type=http;", '',
		qr/\[emerg\].*"least_conn_persistent_check" is duplicate/],
	(map { my ($arg, $msg) = @$_; ["check $arg", 'least_conn_persistent_zone z 1m;',
		"least_conn_persistent;\n least_conn_persistent_check $arg;", '',
		qr/\[emerg\].*"least_conn_persistent_check" \Q$msg\E/] } (
		['on', 'has an invalid parameter "on"'],
		['speed=1', 'has an invalid parameter "speed=1"'],
		['type=udp', 'has an invalid type "udp" (tcp or http)'],
		['uri=health', 'has an invalid uri "health" (a path such as /health, starting with /, no spaces)'],
		['port=0', 'has an invalid port "0" (1 to 65535)'],
		['port=65536', 'has an invalid port "65536" (1 to 65535)'],
		['interval=50ms', 'has an invalid interval "50ms" (a time such as 5s or 300ms, 100ms to 1h)'],
		['interval=2h', 'has an invalid interval "2h" (a time such as 5s or 300ms, 100ms to 1h)'],
		['interval=soon', 'has an invalid interval "soon"'],
		['timeout=0', 'has an invalid timeout "0" (a time such as 2s or 500ms, more than 0)'],
		['rise=0', 'has an invalid rise "0" (a count of checks, 1 to 255)'],
		['fall=256', 'has an invalid fall "256" (a count of checks, 1 to 255)'],
		['status=600', 'has an invalid status "600" (codes and ranges such as 200,204,300-399, each 100 to 599)'],
		['status=399-200', 'has an invalid status "399-200"'],
		['"capacity=X Cap"', 'has an invalid capacity "X Cap" (a header name such as X-LCP-Capacity)'],
		['load=', 'has an invalid load "" (a header name such as X-Connections, not the capacity header)'],
		['load=x-lcp-capacity', 'has an invalid load "x-lcp-capacity"'],
		['rise=2 rise=3', 'has the parameter "rise" twice'],
		['interval=1s timeout=2s', 'has an invalid timeout "2s" (longer than the interval "1s": a check must end before the next one starts)'],
		['timeout=6s', 'has an invalid timeout "6s" (longer than the interval "5s"'],
		['type=tcp uri=/health', 'has the parameter "uri", which needs type=http'],
		['status=200 type=tcp', 'has the parameter "status", which needs type=http'],
	)),
	['method with a parameter twice', '', 'least_conn_persistent slow_start=10s slow_start=20s;', '',
		qr/\[emerg\].*"least_conn_persistent" has the parameter "slow_start" twice/],
	['method with three parameters', '', 'least_conn_persistent slow_start=10s index=4 index=5;', '',
		qr/\[emerg\].*invalid number of arguments in "least_conn_persistent"/],
	(map { ["index=$_", 'least_conn_persistent_zone z 1m;', "least_conn_persistent index=$_;", '', undef] }
		qw/1 16 1000 off/),
	['index and slow_start', 'least_conn_persistent_zone z 1m;', 'least_conn_persistent index=off slow_start=30s;', '', undef],
	(map { my $v = $_; ["index=$v", '', "least_conn_persistent index=$v;", '',
		qr/\[emerg\].*"least_conn_persistent" has an invalid index "\Q$v\E" \(a number of servers, 1 or more, or off\)/] }
		'0', '', 'on', '-1', '5000000000'),
	['index twice', '', 'least_conn_persistent index=1 index=2;', '',
		qr/\[emerg\].*"least_conn_persistent" has the parameter "index" twice/],
	(map { ["slow_start=$_", 'least_conn_persistent_zone z 1m;', "least_conn_persistent slow_start=$_;", '', undef] }
		qw/10s 0 1m 1h30m 45/),
	['slow_start without a zone', '', 'least_conn_persistent slow_start=10s;', '',
		{ warn => qr/\[warn\].*slow_start of 1 http upstream\(s\) is ignored: it needs "least_conn_persistent_zone"/ }],
	(map { my $v = $_; ["slow_start=$v", '', "least_conn_persistent slow_start=$v;", '',
		qr/\[emerg\].*"least_conn_persistent" has an invalid slow_start "\Q$v\E" \(a time such as 30s or 2m, 0 for none\)/] }
		'abc', '', '500ms', '-1', '500000000s'),
	(map { my $m = $_; ["after $m", '', "$m;\n least_conn_persistent;", '', $redefined] }
		'least_conn', 'hash $uri', 'ip_hash', 'random'),
	(map { my $m = $_; ["followed by $m", '', "least_conn_persistent;\n $m;", '', $replaced] }
		'least_conn', 'hash $uri', 'ip_hash', 'random'),
	['method outside upstream', '', '', 'least_conn_persistent;',
		qr/\[emerg\].*"least_conn_persistent" directive is not allowed here/],
	['status with an argument', '', '', 'least_conn_persistent_status on;',
		qr/\[emerg\].*invalid number of arguments in "least_conn_persistent_status"/],
	['status twice', '', '', "least_conn_persistent_status;\n least_conn_persistent_status;",
		qr/\[emerg\].*"least_conn_persistent_status" is duplicate/],
	['status with another handler', '', '', "proxy_pass http://u;\n least_conn_persistent_status;",
		qr/\[emerg\].*"least_conn_persistent_status" is duplicate/],
);

# The same directive in stream {}: [name, stream-level lines, upstream
# lines, expected error or undef].
my @stream_cases = (
	['stream check, tcp', 'least_conn_persistent_zone s 1m;',
		"least_conn_persistent;\n least_conn_persistent_check interval=300ms fall=2;", undef],
	['stream check, http', 'least_conn_persistent_zone s 1m;',
		"least_conn_persistent;\n least_conn_persistent_check uri=/health status=200 capacity=X-Cap;", undef],
	['stream check without a zone', '', "least_conn_persistent;\n least_conn_persistent_check;",
		qr/\[emerg\].*"least_conn_persistent_check" in upstream "u" needs "least_conn_persistent_zone"/],
	['stream check without the method', 'least_conn_persistent_zone s 1m;', 'least_conn_persistent_check;',
		qr/\[emerg\].*"least_conn_persistent_check" needs "least_conn_persistent" before it in the upstream/],
	['stream check with a bad rise', 'least_conn_persistent_zone s 1m;',
		"least_conn_persistent;\n least_conn_persistent_check rise=x;",
		qr/\[emerg\].*"least_conn_persistent_check" has an invalid rise "x"/],
);

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(2 * (@cases + @stream_cases));

sub judge {
	my ($name, $rc, $out, $want) = @_;
	if (ref $want eq 'HASH') {
		is($rc, 0, "$name: nginx -t passes, as stock nginx") or diag($out);
		like($out, $want->{warn}, "$name: with a warning");
	} elsif (defined $want) {
		isnt($rc, 0, "$name: nginx -t fails");
		like($out, $want, "$name: message");
	} else {
		is($rc, 0, "$name: nginx -t passes") or diag($out);
		unlike($out, qr/\[(emerg|alert|crit)\]/, "$name: no error");
	}
}

for my $c (@cases) {
	my ($name, $http, $ups, $loc, $want, $after) = @$c;
	$after //= '';
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
events {
}
http {
    %%TEST_GLOBALS_HTTP%%
    $http
    upstream u {
        $ups
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }
    $after
    server {
        listen 127.0.0.1:8080;
        location / {
            $loc
        }
    }
}
EOF
	judge($name, $t->test_config(), $want);
}

for my $c (@stream_cases) {
	my ($name, $stream, $ups, $want) = @$c;
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
%%STREAM_MODULES%%
events {
}
stream {
    $stream
    upstream u {
        $ups
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }
    server {
        listen 127.0.0.1:8080;
        proxy_pass u;
    }
}
EOF
	judge($name, $t->test_config(), $want);
}
