#!/usr/bin/perl

# A reload while a worker holds the zone's mutex and is killed: nginx's
# master unlocks a dead worker's mutex when it reaps it, but it blocks
# signals while it loads a configuration, so it cannot reap then. Our
# configuration load locks the zone: the master must see that the holder
# died (a zombie it has not reaped) and unlock the mutex itself, or the
# load, and nginx's master with it, waits for ever.
#
# A worker of the crash-points build stops itself (SIGSTOP) inside the
# status page's locked section; the master is told to reload and waits for
# the mutex; the stopped worker is then killed.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Status;

my $module = $ENV{TEST_NGINX_CRASH_MODULE}
	// ($Test::Nginx::MODULE =~ s{/release/([^/]+)$}{/crash-points/release/$1}r);
plan(skip_all => "no crash-points build at $module: run scripts/build.sh --crash-points")
	unless -f $module;
$Test::Nginx::MODULE = $module;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(5);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/,
	qr/shared memory zone "lcp" was locked by \d+, which died: unlocked while loading a configuration/);

$t->write_file_expand('nginx.conf', <<'EOF2');

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server {
        listen       127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF2
$t->run();
# The first worker is past its start (where it looks for a request).
http_get('/status');

# Arm the next worker to start: it stops at its first pass of the status
# page's locked section.
my $dir = $t->testdir() . '/crash-points';
mkdir $dir;
chmod 0777, $dir;
$t->write_file('crash-points/http.new', "status.locked 1 stop\n");
rename("$dir/http.new", "$dir/http") or die "rename: $!\n";
$t->reload();
my ($victim) = map { /\.(\d+)$/ } glob "$dir/http.*";
ok($victim, 'a worker took the request to stop') or diag(join ' ', glob "$dir/*");

my $state = sub { (`cat /proc/$_[0]/stat 2>/dev/null` =~ /^\d+ \(.*\) (\S)/)[0] // '' };
eval { http_get('/status', timeout => 1) };
ok(wait_until(sub { $state->($victim) eq 'T' }, 5), "worker $victim stopped holding the zone's mutex");

my $master = $t->master_pid();
my @before = $t->children();
kill 'HUP', $master;
# Long enough for the master to be waiting for the mutex.
sleep 1;
kill 'KILL', $victim;
ok(wait_until(sub { my @now = $t->children(); grep { my $p = $_; !grep { $_ == $p } @before } @now }, 10),
	'the reload goes on once the holder died: new workers run');
like($t->read_file('error.log'), qr/"lcp" was locked by $victim, which died: unlocked while loading/,
	'the master says it unlocked the dead holder\'s mutex');
like(http_get('/status'), qr/"keys":1,/, 'the status page answers, the zone repaired');
