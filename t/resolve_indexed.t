#!/usr/bin/perl

# t/resolve.t with `least_conn_persistent index=1` on its upstream u: the
# same DNS changes, reload and retries, picked through a pick index that
# each worker rebuilds as it follows a new version of the list.

use warnings;
use strict;

BEGIN { use FindBin; chdir($FindBin::Bin); }

$ENV{TEST_RESOLVE_U_PARAMS} = 'index=1';
do './resolve.t' or die($@ || "resolve.t: $!");
