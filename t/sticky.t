#!/usr/bin/perl

# `sticky` (nginx 1.29.6+, http) in front of the method: a new session is
# placed by least connections, a returning one goes to its server even when
# that server is the busier, and both are counted in the zone while they
# run, and released after. The three kinds: cookie (the server's route in a
# cookie nginx sets), route (the route from a variable, `server ... route=`),
# learn (sessions nginx remembers in a zone). And `server ... drain`: no new
# session goes to a draining server, its sessions still do, counted.

use warnings;
use strict;

use Test::More;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use Digest::MD5 qw/md5_hex/;
use Test::Nginx qw/port addr http http_get wait_until/;
use Test::Nginx::Backend;
use Test::Nginx::Status;

my $t = Test::Nginx->new()->has(qw/nginx module sticky/);
$t->plan(21);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

worker_processes 1;

events {
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 64k;

    upstream ck {
        least_conn_persistent;
        sticky cookie srv_id;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    upstream rt {
        least_conn_persistent;
        sticky route $arg_route;
        server 127.0.0.1:8081 route=a;
        server 127.0.0.1:8082 route=b;
    }

    upstream ln {
        least_conn_persistent;
        sticky learn create=$arg_session lookup=$arg_session zone=sessions:1m;
        server 127.0.0.1:8081;
        server 127.0.0.1:8082;
    }

    upstream dr {
        least_conn_persistent;
        sticky cookie srv_id;
        server 127.0.0.1:8081 drain;
        server 127.0.0.1:8082;
    }

    server {
        listen 127.0.0.1:8080;
        location /ck/ { proxy_pass http://ck/; }
        location /rt/ { proxy_pass http://rt/; }
        location /ln/ { proxy_pass http://ln/; }
        location /dr/ { proxy_pass http://dr/; }
        location /status { least_conn_persistent_status; }
    }
}

EOF

$t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
$t->run_daemon(\&Test::Nginx::Backend::serve, port(8082), 'b');
$t->waitforsocket(addr($_)) for 8081, 8082;
$t->run();

###############################################################################

my %addr = (a => addr(8081), b => addr(8082));
# Without `route=`, a server's route is the md5 of its address, in hex.
my %sid = map { ($_ => md5_hex($addr{$_})) } keys %addr;
my $other = sub { $_[0] eq 'a' ? 'b' : 'a' };

sub backend { $_[0] =~ /^X-Backend: (\w)/m ? $1 : '?' }

sub get {
	my ($uri, $cookie, %opts) = @_;
	return http("GET $uri HTTP/1.0\r\nHost: localhost\r\n"
		. ($cookie ? "Cookie: srv_id=$cookie\r\n" : '') . "\r\n", %opts);
}

# The counts of an upstream's servers, by backend id, once they are $want.
sub counted {
	my ($u, $want) = @_;
	my %w = map { ($addr{$_} => $want->{$_}) } keys %$want;
	my $got = wait_counts($u, \%w);
	return join ' ', map { "$_=" . ($got->{$addr{$_}} // '?') } sort keys %addr;
}

# What counted() returns for these counts.
sub expect {
	my %c = @_;
	return join ' ', map { "$_=$c{$_}" } sort keys %c;
}

# cookie: a new session holds its server; the next new session goes to the
# other (least connections) and gets that server's route in the cookie.
my $first = get('/ck/slow?ms=4000', undef, start => 1);
my $busy;
ok(wait_until(sub {
	my $c = counts('ck');
	($busy) = grep { ($c->{$addr{$_}} // 0) == 1 } keys %addr;
	$busy;
}), 'cookie: a new session is placed and counted');
$busy //= 'a';
my $free = $other->($busy);
my $r = get('/ck/');
is(backend($r), $free, 'cookie: the next new session goes to the less loaded server');
like($r, qr/^Set-Cookie: srv_id=$sid{$free}/m, 'cookie: its cookie names that server');

# A returning session goes to its server although it is the busier one.
my @back = map { backend(get('/ck/', $sid{$busy})) } 1 .. 3;
is("@back", "$busy $busy $busy", 'cookie: a returning session goes to its (busier) server');
my $second = get('/ck/slow?ms=4000', $sid{$busy}, start => 1);
is(counted('ck', { $busy => 2, $free => 0 }), expect($busy => 2, $free => 0),
	'cookie: both sessions on that server are counted in the zone');
close $_ for $first, $second;
ok(at_rest(), 'cookie: released');

# route: the route from a variable, whatever the load.
my $held = get('/rt/slow?ms=4000&route=b', undef, start => 1);
is(counted('rt', { a => 0, b => 1 }), 'a=0 b=1', 'route: a session held on b');
@back = map { backend(get("/rt/?route=b")) } 1 .. 3;
is("@back", 'b b b', 'route: route=b goes to b although it is the busier');
is(backend(get('/rt/')), 'a', 'route: no route, least connections');
my $held2 = get('/rt/slow?ms=4000&route=b', undef, start => 1);
is(counted('rt', { a => 0, b => 2 }), 'a=0 b=2', 'route: both counted on b');
close $_ for $held, $held2;
ok(at_rest(), 'route: released');

# learn: the server a session was first placed on is remembered.
my $s1 = backend(get('/ln/?session=s1'));
ok($s1 =~ /^[ab]$/, "learn: a new session placed on $s1");
$held = get("/ln/slow?ms=4000&session=s1", undef, start => 1);
is(counted('ln', { $s1 => 1, $other->($s1) => 0 }), expect($s1 => 1, $other->($s1) => 0),
	'learn: its request in flight is counted');
@back = map { backend(get('/ln/?session=s1')) } 1 .. 3;
is("@back", "$s1 $s1 $s1", 'learn: the session keeps to its (busier) server');
is(backend(get('/ln/?session=s2')), $other->($s1), 'learn: a new session, least connections');
close $held;
ok(at_rest(), 'learn: released');

# drain: a is draining. New sessions all go to b, even while b is the busier;
# a's sessions still go to a, counted.
$held = get('/dr/slow?ms=4000', undef, start => 1);
is(counted('dr', { a => 0, b => 1 }), 'a=0 b=1', 'drain: a new session goes to b');
@back = map { backend(get('/dr/')) } 1 .. 3;
is("@back", 'b b b', 'drain: no new session goes to the draining server');
$held2 = get('/dr/slow?ms=4000', $sid{a}, start => 1);
is(counted('dr', { a => 1, b => 1 }), 'a=1 b=1', "drain: a's session still goes to a, counted");
close $_ for $held, $held2;
ok(at_rest(), 'drain: released');

unlike($t->read_file('error.log'), qr/\[(alert|crit|emerg)\]|balancer does not support sticky/,
	'no alert, no "balancer does not support sticky"');

###############################################################################
