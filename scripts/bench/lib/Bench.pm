package Bench;

# What the benchmark scripts share: the method under test as config lines,
# upstream server lists, the "ok" backend nginx, and medians.

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/method_conf servers ok_backend median wrk held_backends scaled websocket_conf/;

use Test::Nginx;

# Benchmarks measure the module, not nginx's debug lines: the harness logs
# at `notice` here unless told otherwise.
BEGIN { $ENV{TEST_NGINX_LOG_LEVEL} //= 'notice'; }

# (http-level line, upstream-level lines) for 'stock' (`least_conn; zone`)
# or 'persistent' (`least_conn_persistent` and its zone).
sub method_conf {
	my ($method, %size) = @_;
	return $method eq 'stock'
		? ('', "least_conn;\n        zone stock " . ($size{stock} // '1m') . ";")
		: ('least_conn_persistent_zone lcp ' . ($size{zone} // '1m') . ';',
			'least_conn_persistent;');
}

# A harness with three backends (a, b, c) on the symbolic ports given,
# served by $serve (Test::Nginx::Backend's or Test::Nginx::Hold's), up.
sub held_backends {
	my ($serve, @ports) = @_;
	my @names = qw/a b c/;
	my $t = Test::Nginx->new();
	$t->run_daemon($serve, port($ports[$_]), $names[$_]) for 0 .. $#ports;
	$t->waitforsocket('127.0.0.1:' . port($_)) for @ports;
	return $t;
}

# Writes $t's nginx.conf: two workers proxying WebSockets on port 8080 to
# upstream u, balanced by $line (with $zone at http level), over the
# backends on @ports.
sub websocket_conf {
	my ($t, $zone, $line, @ports) = @_;
	my $ups = join "\n", map { "        server 127.0.0.1:$_;" } @ports;
	$t->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 2;
worker_rlimit_nofile 8192;
events {
    worker_connections 4096;
}
http {
    %%TEST_GLOBALS_HTTP%%
    $zone
    upstream u {
        $line
$ups
    }
    server {
        listen 127.0.0.1:8080 reuseport;
        location / {
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
    }
}
EOF
}

# $n connections, or a fifth of them with --quick among the arguments.
sub scaled {
	my ($n) = @_;
	my $quick = grep { $_ eq '--quick' } @ARGV;
	return int($n * ($quick ? 0.2 : 1) + 0.5);
}

# `server` lines for $n consecutive loopback ports from $first.
sub servers {
	my ($first, $n, $params) = @_;
	$params = $params ? " $params" : '';
	return join "\n", map { "        server 127.0.0.1:" . ($first + $_) . "$params;" } 0 .. $n - 1;
}

# A one-worker nginx answering "ok" on $n loopback ports from $first, on
# CPU $cpu (0 when not given).
sub ok_backend {
	my ($first, $n, $cpu) = @_;
	my $mask = $cpu ? '10' : '01';
	my $b = Test::Nginx->new();
	my $listens = join "\n", map { "        listen 127.0.0.1:" . ($first + $_) . ";" } 0 .. $n - 1;
	$b->write_file_expand('nginx.conf', <<"EOF");
%%TEST_GLOBALS%%
worker_processes 1;
worker_cpu_affinity $mask;
worker_rlimit_nofile 16384;
events {
    worker_connections 8192;
}
http {
    %%TEST_GLOBALS_HTTP%%
    keepalive_requests 1000000;
    server {
$listens
        location / { return 200 "ok"; }
    }
}
EOF
	return $b->run();
}

# Requests per second wrk measures through the proxy on port(8080), on CPU 1,
# for $duration seconds (after a 1 s warm-up of the keepalive caches unless
# $quick). Dies on errors or non-2xx answers.
sub wrk {
	my ($duration, $quick) = @_;
	my $url = 'http://127.0.0.1:' . port(8080) . '/';
	`taskset -c 1 wrk -t1 -c32 -d1s $url 2>&1` unless $quick;
	my $out = `taskset -c 1 wrk -t1 -c32 -d${duration}s $url 2>&1`;
	die "wrk failed:\n$out" unless $out =~ /Requests\/sec:\s+([\d.]+)/;
	my $rps = $1;
	die "errors during wrk:\n$out" if $out =~ /Non-2xx or 3xx responses/;
	return $rps;
}

sub median {
	my @v = sort { $a <=> $b } @_;
	return $v[int(@v / 2)];
}

1;
