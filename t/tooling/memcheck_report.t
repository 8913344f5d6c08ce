#!/usr/bin/perl

# scripts/memcheck-report.pl, the judge of scripts/memcheck.sh, can fail: an
# error record with a frame of the module fails the run; nginx's own errors
# are counted apart.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir("$FindBin::Bin/.."); }    # t/, as for the module's tests

use lib 'lib';
use Test::Nginx;

my $t = Test::Nginx->new()->plan(6);
my $d = $t->testdir();

my $theirs = <<'EOF';
==100== Memcheck, a memory error detector
==100== Command: /usr/sbin/nginx
==100== 
==100== Syscall param sendmsg(msg.msg_iov[0]) points to uninitialised byte(s)
==100==    at 0x1: sendmsg (sendmsg.c:28)
==100==    by 0x2: ngx_write_channel (in /usr/sbin/nginx)
==100== 
==100== ERROR SUMMARY: 1 errors from 1 contexts (suppressed: 0 from 0)
EOF
my $ours = <<'EOF';
==101== Invalid read of size 8
==101==    at 0x4A: ngx_http_least_conn_persistent_module::http::balancer::get (in /x/libngx_http_least_conn_persistent_module.so)
==101==    by 0x4B: ngx_event_connect_peer (in /usr/sbin/nginx)
==101==  Address 0x0 is not stack'd, malloc'd or (recently) free'd
==101== 
==101== ERROR SUMMARY: 1 errors from 1 contexts (suppressed: 0 from 0)
EOF
$t->write_file('theirs.log', $theirs);
$t->write_file('ours.log', $ours);

my $report = '../scripts/memcheck-report.pl';
my $out = `perl $report $d/theirs.log`;
is($? >> 8, 0, 'nginx\'s own error alone: passes');
like($out, qr/^memcheck: 1 errors in nginx's or libc's own code \(1 Syscall param sendmsg/m, 'and is counted apart');
like($out, qr/^memcheck: 0 errors attributed to the module$/m, 'none attributed');

$out = `perl $report $d/theirs.log $d/ours.log`;
is($? >> 8, 1, 'an error with a frame of the module: fails');
like($out, qr/^ATTRIBUTED TO THE MODULE .*\n==101== Invalid read of size 8\n/m, 'the record is printed whole');
like($out, qr/^memcheck: 1 errors attributed to the module$/m, 'and counted');
