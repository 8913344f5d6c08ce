#!/usr/bin/perl

# scripts/package.sh builds a Debian package that installs into the system
# nginx like Debian's own module packages; installing it enables the module,
# `nginx -t` passes on the system configuration, a request goes through an
# upstream using the method with the installed .so; purging it leaves /etc
# as it was. Needs root (dpkg): CI and the scripts run as root.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;

my $t = Test::Nginx->new()->has(qw/nginx module/);
plan(skip_all => 'dpkg -i needs root') unless $> == 0;
plan(skip_all => 'the package is for Debian\'s nginx') unless $Test::Nginx::NGINX eq '/usr/sbin/nginx';
$t->plan(12);

my $pkg = 'libnginx-mod-http-least-conn-persistent';
my $so = '/usr/lib/nginx/modules/ngx_http_least_conn_persistent_module.so';
my $enabled = '/etc/nginx/modules-enabled/50-mod-http-least-conn-persistent.conf';

sub installed { `dpkg-query -W -f='\${Status}' $pkg 2>/dev/null` =~ /install ok installed/ }
sub etc_state { scalar `find /etc/nginx -printf '%p %l\\n' 2>/dev/null | sort | md5sum` }

ok(!installed(), 'not installed before the test') or BAIL_OUT("$pkg is installed: purge it first");
my $before = etc_state();

my $deb = `../scripts/package.sh 2>/dev/null`;
chomp $deb;
($deb) = $deb =~ /(\S+\.deb)\s*\z/;
ok($deb && -f $deb, 'package.sh built ' . ($deb // 'nothing'));
like(`dpkg-deb -f $deb Depends`, qr/\bnginx-abi-1\.22\.1-7\b/, 'it depends on the exact nginx ABI');

system("dpkg -i $deb >/dev/null 2>&1");
ok(installed(), 'dpkg -i installs it');
ok(-f $so && -l $enabled, 'the .so is in place and the module enabled');
is(`cat $enabled`, "load_module modules/ngx_http_least_conn_persistent_module.so;\n",
	'the load_module snippet, as Debian writes them');
my $sys = `$Test::Nginx::NGINX -t 2>&1`;
is($? >> 8, 0, 'nginx -t passes on the system configuration') or diag($sys);

# A request through an upstream using the method, with the installed .so.
my $d = $t->testdir();
$t->write_file_expand('nginx.conf', <<"EOF");
load_module $so;
pid $d/nginx.pid;
error_log $d/error.log notice;
events {
}
http {
    %%TEST_GLOBALS_HTTP%%
    least_conn_persistent_zone lcp 64k;
    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8081;
    }
    server {
        listen 127.0.0.1:8080;
        location / { proxy_pass http://u; }
        location /status { least_conn_persistent_status; }
    }
}
EOF
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->waitforsocket('127.0.0.1:' . port(8081));
$t->run();
like(http_get('/'), qr/200 OK.*id=a/s, 'a request through the installed module');
like(http_get('/status'), qr/"key":"conn_count:u:127\.0\.0\.1:\d+","count":0/, 'counted and released');
$t->stop();

system("dpkg --purge $pkg >/dev/null 2>&1");
ok(!installed() && !-e $so, 'dpkg --purge removes it');
ok(!-e $enabled && !-l $enabled, 'and its modules-enabled link');
is(etc_state(), $before, '/etc/nginx is as it was');
