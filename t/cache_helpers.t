#!/usr/bin/perl

# nginx runs every module's init_process in its cache manager and cache
# loader too (a `proxy_cache_path` starts them). They balance nothing: they
# take no worker record in the zones (http's and stream's), so when they
# exit (the loader once it has loaded the cache; both on a reload) no
# worker reports them "gone".

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream/)->plan(13);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 2;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    proxy_cache_path %%TESTDIR%%/cache keys_zone=c:1m;
    least_conn_persistent_zone lcp 64k;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server {
        listen       127.0.0.1:8080 reuseport;
        location / {
            proxy_cache c;
            proxy_pass http://u;
        }
        location /status { least_conn_persistent_status; }
    }
}

stream {
    least_conn_persistent_zone s 64k;

    upstream su {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server { listen 127.0.0.1:8082; proxy_pass su; }
}

EOF

sub helper_pids { sort $t->cache_helpers() }

sub records {
	my ($uri) = @_;
	return join ' ', sort map { $_->{pid} } @{status($uri)->{zone}{workers}};
}

# The records of both zones are the running workers, no more (the new
# workers write theirs in init_process, which can run after they show up as
# children).
sub records_are_workers {
	my ($what) = @_;
	my $want = '';
	for my $uri ('/status', '/status?subsystem=stream') {
		my $subsystem = $uri =~ /stream/ ? 'stream' : 'http';
		ok(wait_until(sub {
			$want = join ' ', sort $t->worker_pids();
			records($uri) eq $want;
		}, 3), "$subsystem: the records are exactly the workers, $what")
			or diag('records: ' . records($uri) . "; workers: $want; helpers: @{[helper_pids()]}");
	}
}

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket(addr(8081));
$t->run();

###############################################################################

like(http_get('/'), qr/200 OK.*id=a/s, 'a request through the cache');
my @helpers;
ok(wait_until(sub { (@helpers = helper_pids()) == 2 }, 5), 'a cache manager and a cache loader run')
	or diag("helpers: @helpers");
records_are_workers('not the cache helpers');

# The loader exits once it has loaded the cache, a minute after it starts
# (a delay nginx does not let a configuration change): TERM makes it exit
# the same way now, through exit(), without exit_process. The master does
# not start another.
my ($loader) = $t->read_file('error.log') =~ /start cache loader process (\d+)/;
kill 'TERM', $loader;
ok(wait_until(sub { !grep { $_ == $loader } $t->cache_helpers() }, 5), 'the cache loader exits');
@helpers = grep { $_ != $loader } @helpers;

# A reload stops the helpers (and starts new ones): they exit without
# exit_process.
$t->reload();
ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'the old workers exit');
ok(wait_until(sub { !grep { kill(0, $_) } @helpers }, 10), 'the old cache manager exits');
records_are_workers('after a reload');

# Every worker looks for dead records on start and every 500 ms: a killed
# worker's replacement and the other worker's check have both looked once
# its warning is there.
my ($victim) = $t->worker_pids();
kill 'KILL', $victim;
ok(wait_until(sub {
	my @w = $t->read_file('error.log') =~ /worker process $victim is gone/g;
	@w == 2;
}, 5), 'a killed worker is reported gone, in each zone');
my @others = grep { $_ != $victim } $t->read_file('error.log') =~ /worker process (\d+) is gone/g;
is("@others", '', 'no cache helper is reported gone');
records_are_workers('after a worker crashed');

###############################################################################
