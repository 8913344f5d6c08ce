#!/usr/bin/perl

# The example configurations in nginx/ stay valid: `nginx -t` passes on
# each, with the paths pointed at this checkout.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use Test::Nginx;

my $t = Test::Nginx->new()->has(qw/nginx module lua/)->plan(2);
my $d = $t->testdir();
my $lib = $t->lua_lib();

for my $name (qw/example.conf lua-example.conf/) {
	open my $fh, '<', "../nginx/$name" or die "$name: $!";
	my $conf = do { local $/; <$fh> };
	$conf =~ s{/usr/lib/nginx/modules/libngx_http_least_conn_persistent_module\.so}{$Test::Nginx::MODULE};
	$conf =~ s{/usr/local/share/lua/5\.1/\?\.lua}{$lib/?.lua};
	# Keep nginx -t's files inside the test's directory.
	$conf =~ s{^(events \{)}{pid $d/nginx.pid;\nerror_log $d/error.log debug;\n\n$1}m;
	$conf =~ s{^(http \{)}{$1\n    access_log off;\n    client_body_temp_path $d/cb;\n    proxy_temp_path $d/p;\n    fastcgi_temp_path $d/f;\n    uwsgi_temp_path $d/u;\n    scgi_temp_path $d/s;}m;
	$t->write_file('nginx.conf', $conf);
	my ($rc, $out) = $t->test_config();
	is($rc, 0, "nginx/$name passes nginx -t") or diag($out);
}
