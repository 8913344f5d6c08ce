#!/usr/bin/perl

# A new version of the module installed over the running one: a reload
# keeps running the code nginx loaded at start (nginx keeps a loaded .so
# mapped across reloads), so a zone is never met by another version's code
# and its counts go on; only a stop and start (or a binary upgrade, which
# makes a new zone: t/upgrade.t) runs the new version, with a new zone, as
# docs/internals.md says. The "new version" is the crash-points build of the
# same source (scripts/build.sh --crash-points), told apart by what only it
# does: a worker it starts takes the request a test writes in the prefix
# (`crash-points/http`) and renames the file with its pid.

use warnings;
use strict;

use Test::More;
use File::Copy qw/copy/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

my $newer = $Test::Nginx::MODULE =~ s{/release/([^/]+)$}{/crash-points/release/$1}r;
my $t = Test::Nginx->new()->has(qw/nginx module/);
plan(skip_all => "no crash-points build at $newer: run scripts/build.sh --crash-points"
	. ($Test::Nginx::NGINX =~ m{nginx-1\.28} ? ' --nginx=1.28' : ''))
	unless -f $newer;
$t->plan(8);

# The module nginx loads: a copy in the prefix, which the test replaces.
my $installed = $t->testdir . '/lcp.so';
copy($Test::Nginx::MODULE, $installed) or die "copy: $!\n";
$Test::Nginx::MODULE = $installed;

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
        server 127.0.0.1:8082;
    }

    server {
        listen       127.0.0.1:8080;

        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;

        location /u { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

my %backend = (8081 => 'a', 8082 => 'b');
$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), $backend{$_}) for keys %backend;
$t->waitforsocket(addr($_)) for keys %backend;
$t->run();

# Asks the next worker the crash-points build starts to take a request
# that never fires (a point passed a million times): it renames the file.
my $request = $t->testdir . '/crash-points/http';
sub ask {
	mkdir $t->testdir . '/crash-points';
	chmod 0777, $t->testdir . '/crash-points';
	$t->write_file('crash-points/http.new', "status.locked 1000000\n");
	rename("$request.new", $request) or die "rename: $!\n";
}
sub taken { my @f = glob "$request.*"; scalar grep { /\.\d+$/ } @f }

###############################################################################

my @held = ws_open_many(4, '/u');
is_deeply(counts('u'), { addr(8081) => 2, addr(8082) => 2 }, '4 WebSockets 2/2');

# The newer build installed over the running one, then a reload.
copy($newer, "$installed.new") or die "copy: $!\n";
rename("$installed.new", $installed) or die "rename: $!\n";
ask();
$t->reload();
ok(scalar $t->old_worker_pids(), 'reloaded; the old workers hold the WebSockets');
push @held, ws_open_many(4, '/u');
ok(-f $request && !taken(), 'the new workers run the code loaded at start (the request is not taken)');
is_deeply(counts('u'), { addr(8081) => 4, addr(8082) => 4 }, 'in the same zone: the counts go on (4/4)');

# A stop and start runs the newer build, with a new zone.
ws_close(@held);
ok(at_rest(), 'every counter back to 0');
$t->stop();
$t->{_old_workers} = {};
$t->run();
ok(wait_until(sub { taken() }, 5), 'after a stop and start, the newer build runs (the request is taken)');
my @after = ws_open_many(4, '/u');
is_deeply(counts('u'), { addr(8081) => 2, addr(8082) => 2 }, 'and balances: 2/2');
ws_close(@after);
ok(at_rest(), 'every counter back to 0');
