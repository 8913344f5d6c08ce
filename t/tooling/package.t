#!/usr/bin/perl

# scripts/package.sh builds a Debian package that installs into the system
# nginx like Debian's own module packages; installing it enables the module,
# `nginx -t` passes on the system configuration, a request goes through an
# upstream using the method with the installed .so; purging it leaves /etc
# as it was. Needs root (dpkg): CI and the scripts run as root.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::Hold;

my $t = Test::Nginx->new()->has(qw/nginx module root debian_nginx/);
$t->plan(18);

my $pkg = 'libnginx-mod-http-least-conn-persistent';
my $so = '/usr/lib/nginx/modules/ngx_http_least_conn_persistent_module.so';
my $enabled = '/etc/nginx/modules-enabled/50-mod-http-least-conn-persistent.conf';
# The stream module's package: loads after nginx's stream module (50-).
my $spkg = 'libnginx-mod-stream-least-conn-persistent';
my $sso = '/usr/lib/nginx/modules/ngx_stream_least_conn_persistent_module.so';
my $senabled = '/etc/nginx/modules-enabled/60-mod-stream-least-conn-persistent.conf';

sub installed {
	my $p = $_[0] // $pkg;
	`dpkg-query -W -f='\${Status}' $p 2>/dev/null` =~ /install ok installed/;
}
sub etc_state { scalar `find /etc/nginx -printf '%p %l\\n' 2>/dev/null | sort | md5sum` }

ok(!installed() && !installed($spkg), 'not installed before the test')
	or BAIL_OUT("$pkg or $spkg is installed: purge them first");
my $before = etc_state();

my $built = `../scripts/package.sh 2>/dev/null`;
my ($deb) = $built =~ /^(\S+-http-\S+\.deb)$/m;
my ($sdeb) = $built =~ /^(\S+-stream-\S+\.deb)$/m;
ok($deb && -f $deb && $sdeb && -f $sdeb, 'package.sh built ' . ($deb // 'nothing') . ' and ' . ($sdeb // 'nothing'));
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
error_log $d/error.log debug;
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
$t->waitforsocket(addr(8081));
$t->run();
like(http_get('/'), qr/200 OK.*id=a/s, 'a request through the installed module');
like(http_get('/status'), qr/"key":"conn_count:u:127\.0\.0\.1:\d+","count":0/, 'counted and released');
$t->stop();

# The stream package: needs nginx's stream module, loads after it.
like(`dpkg-deb -f $sdeb Depends`, qr/\bnginx-abi-1\.22\.1-7\b.*\blibnginx-mod-stream\b/,
	'the stream package depends on the nginx ABI and on nginx\'s stream module');
system("dpkg -i $sdeb >/dev/null 2>&1");
ok(installed($spkg) && -f $sso && -l $senabled, 'dpkg -i installs the stream module, enabled');
# Other stream modules Debian packages (libnginx-mod-stream-geoip, with
# nginx-full or nginx-extras) may be enabled too: only the order of these
# two matters.
my @order = grep { $_ eq '50-mod-stream.conf' || $_ eq '60-mod-stream-least-conn-persistent.conf' }
	sort map { s{.*/}{}r } glob '/etc/nginx/modules-enabled/*.conf';
is_deeply(\@order, ['50-mod-stream.conf', '60-mod-stream-least-conn-persistent.conf'],
	'nginx\'s stream module loads first');
$sys = `$Test::Nginx::NGINX -t 2>&1`;
is($? >> 8, 0, 'nginx -t passes on the system configuration with both') or diag($sys);

$t->write_file_expand('nginx.conf', <<"EOF");
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
load_module $sso;
pid $d/nginx.pid;
error_log $d/error.log debug;
events {
}
stream {
    least_conn_persistent_zone lcps 64k;
    upstream u {
        least_conn_persistent;
        server 127.0.0.1:8091;
    }
    server {
        listen 127.0.0.1:8090;
        proxy_pass u;
    }
}
EOF
$t->run_daemon(\&Test::Nginx::Hold::serve, port(8091), 's');
$t->waitforsocket(addr(8091));
$t->run();
my $c = hold_open(port(8090));
is($c && $c->{backend}, 's', 'a stream connection through the installed module');
hold_close($c) if $c;
$t->stop();
system("dpkg --purge $spkg >/dev/null 2>&1");
ok(!installed($spkg) && !-e $sso && !-e $senabled && !-l $senabled, 'dpkg --purge removes the stream module');

system("dpkg --purge $pkg >/dev/null 2>&1");
ok(!installed() && !-e $so, 'dpkg --purge removes it');
ok(!-e $enabled && !-l $enabled, 'and its modules-enabled link');
is(etc_state(), $before, '/etc/nginx is as it was');
