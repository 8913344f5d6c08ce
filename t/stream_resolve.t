#!/usr/bin/perl

# `server name resolve` in a stream upstream (nginx 1.27.3+): as in http
# (t/resolve.t), keys follow the addresses DNS gives at run time, with held
# TCP connections across the changes.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Test::Nginx qw/port wait_until/;
use Test::Nginx::DNS;
use Test::Nginx::Hold;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module stream resolve/)->plan(8);

my $dns = $t->testdir . '/dns';
my $p = port(8091);
my %ip = (a => '127.0.0.2', b => '127.0.0.3', c => '127.0.0.4');
sub addr { "$ip{$_[0]}:$p" }
sub answer { Test::Nginx::DNS::set_answers($dns, 's.test' => [map { $ip{$_} } @_]) }

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%
%%STREAM_MODULES%%

worker_processes 2;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone s 1m;
    resolver 127.0.0.1:%%PORT_8053%% valid=1s ipv6=off;

    upstream su {
        zone su 64k;
        least_conn_persistent;
        server s.test:%%PORT_8091%% resolve;
    }

    server { listen 127.0.0.1:8090 reuseport; proxy_pass su; }
}

http {
    %%TEST_GLOBALS_HTTP%%
    server {
        listen 127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF

answer(qw/a b/);
Test::Nginx::DNS::start($t, port(8053), $dns, 's.test')
	or BAIL_OUT('the DNS responder does not answer');
$t->run_daemon(\&Test::Nginx::Hold::serve, $p, $_, $ip{$_}) for qw/a b c/;
$t->waitforsocket(addr($_)) for qw/a b c/;
$t->run();

sub counts_of {
	my @e = grep { $_->{upstream} eq 'su' } @{status('/status?subsystem=stream')->{counters} // []};
	return { map { ($_->{server} => $_->{count}) } @e };
}

sub live { return { map { (addr($_) => held($p, $ip{$_})) } @_ } }

sub wait_counts_of {
	my ($want) = @_;
	my $got;
	wait_until(sub { $got = counts_of(); same_counts($got, $want) && keys %$got == keys %$want }, 10);
	return $got;
}

###############################################################################

ok(same_counts(wait_counts_of({ addr('a') => 0, addr('b') => 0 }), { addr('a') => 0, addr('b') => 0 }),
	'a key per resolved address, at 0');
my @first = hold_open_many(10, port(8090));
is_deeply(hold_tally(@first), { a => 5, b => 5 }, '10 held over two addresses: 5/5');

answer(qw/a b c/);
my $c = wait_counts_of({ addr('a') => 5, addr('b') => 5, addr('c') => 0 });
is_deeply($c, { addr('a') => 5, addr('b') => 5, addr('c') => 0 }, 'a new address gets a key at 0');
my @more = hold_open_many(11, port(8090));
$c = counts_of();
is_deeply([sort map { $c->{addr($_)} } qw/a b c/], [7, 7, 7], 'after 11 more: 7/7/7');
ok(same_counts($c, live(qw/a b c/)), 'counts equal what the backends hold');

my @on_a = grep { $_->{backend} eq 'a' } @first, @more;
answer(qw/b c/);
ok(wait_until(sub { grep { $_->{server} eq addr('a') && $_->{state} eq 'draining' }
	@{status('/status?subsystem=stream')->{counters} // []} }, 10),
	'a gone address with connections is draining');
hold_close(@on_a);
ok(wait_until(sub { !exists counts_of()->{addr('a')} }, 10), 'and goes once they close');

hold_close(grep { $_->{backend} ne 'a' } @first, @more);
ok(wait_until(sub { !grep { $_ } values %{counts_of()} }), 'every counter back to 0');

###############################################################################
