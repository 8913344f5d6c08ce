#!/usr/bin/perl

# The harness's own guarantees, which tests that kill and restart processes
# rely on: a forked child never tears down its parent's nginx; ports are
# claimed so that concurrent tests cannot share one; HTTP helpers time out;
# stop() is graceful first; reading a missing file fails loudly.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw/time sleep/;
use Test::Nginx;
use Test::Nginx::Backend;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(10);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }

    server {
        listen       127.0.0.1:8080;
        location / { proxy_pass http://u; }
    }
}

EOF
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket('127.0.0.1:' . port(8081));
$t->run();
my $master = $t->master_pid();

# A child that exits normally runs END blocks: ours must leave nginx alone.
my $pid = fork() // die "fork: $!";
if ($pid == 0) {
	exit 0;
}
waitpid($pid, 0);
ok(kill(0, $master), 'a forked child exiting normally leaves nginx running');
like(http_get('/'), qr/200 OK.*id=a/s, 'and nginx still serves');

# A daemon that dies exits without running the parent's teardown either.
$t->run_daemon(sub { die "on purpose\n" });
sleep 0.3;
ok(kill(0, $master), 'a daemon that dies leaves nginx running');

# Ports: each claimed by a lock file naming this process, distinct, and
# never one another process holds.
my $lock = "$Test::Nginx::PORT_LOCKS/" . port(8080);
open my $fh, '<', $lock or die "$lock: $!";
is(scalar <$fh>, $$, 'the port lock names this process');
pipe(my $r, my $w) or die;
$pid = fork() // die "fork: $!";
if ($pid == 0) {
	close $r;
	print $w join(',', map { Test::Nginx::port("child$_") } 1 .. 200);
	close $w;
	POSIX::_exit(0);
}
close $w;
my %other = map { $_ => 1 } split /,/, do { local $/; <$r> };
waitpid($pid, 0);
ok(keys(%other) == 200 && !grep({ $other{port($_)} } 8080, 8081),
	'another process gets 200 other ports, never one this one holds');

# A server that accepts and never answers: the helper gives up, loudly.
my $mute = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1',
	LocalPort => port(8099), ReuseAddr => 1) or die "listen: $!";
my $started = time();
my $ok = eval { http_get('/', port => port(8099), timeout => 1); 1 };
ok(!$ok && $@ =~ /no complete reply within 1 s/, 'http_get times out with a message');
ok(time() - $started < 5, 'and does so on time');

ok(!eval { $t->read_file('no-such-file'); 1 }, 'read_file of a missing file dies');

# Graceful stop: workers log that they shut down gracefully (QUIT), not that
# they exit at once (TERM).
$t->stop();
ok(!kill(0, $master), 'stop() ended nginx');
like($t->read_file('error.log'), qr/gracefully shutting down/, 'stop() asked for a graceful quit');

###############################################################################
