#!/usr/bin/perl

# The harness's own guarantees, which tests that kill and restart processes
# rely on: a forked child never tears down its parent's nginx; ports are
# claimed so that concurrent tests cannot share one; HTTP helpers time out;
# stop() is graceful first; reading a missing file fails loudly; what
# nginx's workers read is readable by them wherever the checkout lives; a
# test file that fails prints its error log's errors.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use File::Copy ();
use File::Path qw/mkpath/;
use File::Spec;
use File::Temp qw/tempdir/;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw/time sleep/;
use Test::Nginx;
use Test::Nginx::Backend;

my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(15);

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
$t->waitforsocket(addr(8081));
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

# Sub-processes: test files of their own, run by `perl` with this harness
# (or a copy of it), their STDOUT (TAP) and STDERR apart.
my $d = $t->testdir();
my $lib = File::Spec->rel2abs('lib');
delete $ENV{TEST_NGINX_CATLOG};
$ENV{TEST_NGINX_MODULE} = $Test::Nginx::MODULE;
$ENV{TEST_NGINX_BINARY} = $Test::Nginx::NGINX;

sub run_file {
	my ($name, $inc, $code) = @_;
	open my $fh, '>', "$d/$name.pl" or die "$name.pl: $!";
	print $fh "use warnings;\nuse strict;\nuse lib '$inc';\nuse Test::More;\nuse Test::Nginx;\n$code";
	close $fh;
	system("perl $d/$name.pl >$d/$name.out 2>$d/$name.err");
	my $rc = $? >> 8;
	my ($out, $err) = map { local $/; open my $f, '<', "$d/$name.$_" or die "$name.$_: $!"; <$f> // '' } qw/out err/;
	return ($rc, $out, $err);
}

# A checkout under a directory only its owner may enter (as `mktemp -d`
# makes one), its files private (umask 077): the Lua library (%%LUA_LIB%%)
# and a test's own files must still be readable by nginx's workers (user
# nobody when the tests run as root), here served by a worker as files.
my $private = tempdir('lcp-checkout-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $private;
for my $f (split /\n/, `cd .. && find lib t/lib -type f`) {
	mkpath("$private/repo/" . ($f =~ s{/[^/]+$}{}r), { mode => 0700 });
	File::Copy::copy("../$f", "$private/repo/$f") or die "$f: $!";
	chmod 0600, "$private/repo/$f";
}
my ($rc, $out, $err) = run_file('private', "$private/repo/t/lib", <<'EOF');
umask 077;
my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(2);
$t->write_file('own.lua', "return {}\n");
$t->write_file_expand('nginx.conf', <<'CONF');
%%TEST_GLOBALS%%
events {
}
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen       127.0.0.1:8080;
        location /lib/ { alias %%LUA_LIB%%/; }
        location /own/ { alias %%TESTDIR%%/; }
    }
}
CONF
$t->run();
like(http_get('/lib/resty/least_conn_persistent.lua'), qr/^HTTP\/1\.1 200 .*least_conn_persistent/s,
	'a worker reads the Lua library');
like(http_get('/own/own.lua'), qr/^HTTP\/1\.1 200 .*return \{\}/s, "a worker reads the test's own file");
EOF
is($rc, 0, "in a checkout only root may enter, workers read %%LUA_LIB%% and the test's files")
	or diag("$out$err");

# A file that fails prints the [warn]-and-above lines of its error logs
# (here a refused connection: "[error] ... connect() failed"), naming the
# log; one that passes prints none; one that dies prints them too.
my $refused = <<'EOF';
my $t = Test::Nginx->new()->has(qw/nginx module/)->plan(PLAN);
$t->write_file_expand('nginx.conf', <<'CONF');
%%TEST_GLOBALS%%
events {
}
http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen       127.0.0.1:8080;
        location / { proxy_pass http://127.0.0.1:8081; }
    }
}
CONF
$t->run();
like(http_get('/'), qr/^HTTP\/1\.1 502 /, 'answered 502') for 1 .. ($ENV{REQUESTS} // 1);
EOF
sub refused { my ($plan) = @_; $refused =~ s/PLAN/$plan/r }
my $error = qr/^#   \d{4}\/\d\d\/\d\d \S+ \[error\] .*connect\(\) failed \(111: Connection refused\)/m;
($rc, $out, $err) = run_file('fails', $lib, refused(2) . "ok(0, 'fails on purpose');\n");
ok($rc != 0 && $err =~ m{^# /\S+/lcp-test-\w+/error\.log: 1 message at \[warn\] and above:$}m
	&& $err =~ $error, "a failed file prints its error log's errors, naming the log") or diag($err);
($rc, $out, $err) = run_file('passes', $lib, refused(1));
ok($rc == 0 && $err !~ /connect\(\) failed/, 'a passing file prints none') or diag("$out$err");
($rc, $out, $err) = run_file('dies', $lib, refused(1) . "die \"on purpose\\n\";\n");
ok($rc != 0 && $err =~ $error, 'a file that dies prints them too') or diag($err);
$ENV{REQUESTS} = 60;
($rc, $out, $err) = run_file('many', $lib, refused(61) . "ok(0, 'fails on purpose');\n");
my $printed = () = $err =~ /$error/g;
ok($rc != 0 && $err =~ /: the last 50 of 60 messages at \[warn\] and above:$/m && $printed == 50,
	'at most the last 50, and how many there were') or diag($err);

###############################################################################
