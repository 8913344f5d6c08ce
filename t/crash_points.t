#!/usr/bin/perl

# Crash points (src/core/crash.rs): for every point in `crash::POINTS` a
# process of nginx is made to die exactly there, with SIGKILL, by the
# crash-points build of the module (scripts/build.sh --crash-points): its
# src/ngx/crash.rs arms the first worker that starts once this test has
# written `crash-points/http` ("<point> <n>") into the prefix, or the master
# at its next configuration load for `crash-points/http-master`; the armed
# process renames the file to `<file>.<pid>`, which tells the test its pid.
#
# Each test sets nginx up so that a worker passes its point (which process
# passes which point: see the scenarios below), lets it die there, then
# checks what a crash must never break:
# - the dead process really died there (nginx logs its exit on signal 9);
# - the master is alive, survives a reload and still answers;
# - within 1 s the counts equal the connections the backends really hold;
# - the zone lists no key twice and records exactly the live workers;
# - at rest every count is 0, the keys are exactly the configured ones, and
#   zone `used` is back to its baseline;
# - no [alert], [crit] or [emerg] in the error log but nginx's own lines
#   about the killed process (its exit, and the zone mutex it held).
#
# Health checks (`check` option): the backends answer /health as
# Test::Nginx::Health's control files say (200 unless told otherwise).
#
# The list of points is read from src/core/crash.rs, so a point without a
# test here fails, as does a listed point that no `crash::point` call in
# src/ places. TEST_CRASH_POINTS=insert.*,status.locked runs only those.

use warnings;
use strict;

use Test::More;
use Time::HiRes qw/time sleep/;

BEGIN { use FindBin; chdir($FindBin::Bin); }

use lib 'lib';
use IO::Socket::INET;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Health;
use Test::Nginx::Hold;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';    # writes to connections a killed worker dropped

# The crash-points build beside the module under test: target/release/X.so
# -> target/crash-points/release/X.so (and the same for nginx 1.28's).
my $module = $ENV{TEST_NGINX_CRASH_MODULE}
	// ($Test::Nginx::MODULE =~ s{/release/([^/]+)$}{/crash-points/release/$1}r);
plan(skip_all => "no crash-points build at $module: run scripts/build.sh --crash-points"
	. ($Test::Nginx::NGINX =~ m{nginx-1\.28} ? ' --nginx=1.28' : ''))
	unless -f $module;
$Test::Nginx::MODULE = $module;
$Test::Nginx::STREAM_MODULE = $ENV{TEST_NGINX_CRASH_STREAM_MODULE}
	// ($module =~ s{libngx_http_least_conn_persistent_module\.so$}{libngx_stream_least_conn_persistent_module.so}r);
-x $Test::Nginx::NGINX or BAIL_OUT("$Test::Nginx::NGINX is missing");

###############################################################################

# The points, as src/core/crash.rs lists them, and where src/ places them.
sub listed_points {
	open my $f, '<', '../src/core/crash.rs' or BAIL_OUT("../src/core/crash.rs: $!");
	my $src = do { local $/; <$f> };
	my ($list) = $src =~ /pub const POINTS: &\[&str\] = &\[(.*?)\];/s
		or BAIL_OUT('no POINTS list in src/core/crash.rs');
	$list =~ s{//[^\n]*}{}g;
	return $list =~ /"([^"]+)"/g;
}

sub placed_points {
	my %placed;
	for my $file (split /\n/, `find ../src -name '*.rs'`) {
		open my $f, '<', $file or next;
		my $src = do { local $/; <$f> };
		$placed{$1}++ while $src =~ /crash::point\("([^"]+)"\)/g;
	}
	return \%placed;
}

my %backend = (8081 => 'a', 8082 => 'b', 8083 => 'c');
my $black_hole = 8089;
sub key { "conn_count:$_[0]:$_[1]" }

# DNS (nginx 1.27.3+, `resolve`): d.test answers with some of these
# addresses, each a backend on port 8084.
my @dns_ips = qw/127.0.0.2 127.0.0.3 127.0.0.4/;
sub dns_addr { "$_[0]:" . port(8084) }

# 8089 swallows each request and closes after a while without answering,
# so that nginx retries (t/stale.t).
sub black_hole_serve {
	my ($port, $hold) = @_;
	my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
		Listen => 16, ReuseAddr => 1) or die "black hole: $!\n";
	while (my $c = $s->accept()) {
		sysread($c, my $buf, 65536);
		sleep $hold;
		close $c;
	}
}

# The http configuration and the keys it declares. %o:
#   workers  worker processes (1)
#   w        ports of upstream `w`, for held WebSockets ([8081, 8082])
#   u        ports of upstream `u` (the black hole weighs 2), for a retry
#            through a stale handle; none: no `u`
#   filler   servers in upstream `f`, addresses nothing listens on (0)
#   dns      the addresses d.test is expected at: upstream `d` follows it
#   lua      Lua upstream `lw` (a and b), declared by its balancer
#   check    health checks of `w`: 1, or parameters to change
#            ({ interval => ms, timeout => ms, rise => n, fall => n })
sub http_conf {
	my ($t, %o) = @_;
	my @w = @{$o{w} // [8081, 8082]};
	my @keys = map { key('w', addr($_)) } @w;
	my $check = $o{check}
		? '        least_conn_persistent_check ' . check_params($o{check}) . ";\n" : '';
	my $upstreams = upstream_with('w', $check, map { "127.0.0.1:$_" } @w);
	my $locations = "        location /w { proxy_pass http://w; }\n";
	if ($o{u}) {
		$upstreams .= upstream('u', map { $_ == $black_hole ? "127.0.0.1:$_ weight=2" : "127.0.0.1:$_" } @{$o{u}});
		$locations .= "        location /u { proxy_pass http://u; proxy_next_upstream error timeout; }\n";
		push @keys, map { key('u', addr($_)) } @{$o{u}};
	}
	if ($o{filler}) {
		my @f = map { '127.0.1.' . $_ . ':9' } 1 .. $o{filler};
		$upstreams .= upstream('f', @f);
		push @keys, map { key('f', $_) } @f;
	}
	my ($top, $http) = ('', '');
	if ($o{dns}) {
		$http .= "    resolver 127.0.0.1:%%PORT_8053%% valid=1s ipv6=off;\n    resolver_timeout 1s;\n";
		$upstreams .= "    upstream d {\n        zone d 64k;\n        least_conn_persistent;\n"
			. "        server d.test:%%PORT_8084%% resolve;\n    }\n";
		$locations .= "        location /d { proxy_pass http://d; }\n";
		push @keys, map { key('d', dns_addr($_)) } @{$o{dns}};
	}
	if ($o{lua}) {
		$top = "%%LUA_MODULES%%\n";
		$http .= lua_http();
		$upstreams .= "    upstream lw {\n        server 0.0.0.1;\n        balancer_by_lua_block {\n"
			. "            balance(\"lw\", { { addr = \"127.0.0.1:%%PORT_8081%%\" }, { addr = \"127.0.0.1:%%PORT_8082%%\" } })\n"
			. "        }\n    }\n";
		$locations .= "        location /lw { proxy_pass http://lw; log_by_lua_block { release() } }\n";
		push @keys, map { key('lw', addr($_)) } 8081, 8082;
	}
	# Every list indexed (pick indexes), however short.
	$upstreams =~ s/least_conn_persistent;/least_conn_persistent index=1;/g if $o{index};
	my $workers = $o{workers} // 1;
	$t->write_file_expand('nginx.conf', <<"EOF");

$top%%TEST_GLOBALS%%

worker_processes $workers;

events {
    worker_connections 1024;
}

http {
    %%TEST_GLOBALS_HTTP%%

    least_conn_persistent_zone lcp 1m;
$http
$upstreams
    server {
        listen       127.0.0.1:8080 reuseport;

        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_read_timeout 1h;
        add_header X-Worker \$pid always;

$locations        location /status { least_conn_persistent_status; }
    }
}

EOF
	return [sort @keys];
}

sub upstream { upstream_with($_[0], '', @_[1 .. $#_]) }

# An upstream with $more (directive lines) after the method.
sub upstream_with {
	my ($name, $more, @servers) = @_;
	return "    upstream $name {\n        least_conn_persistent;\n$more"
		. join('', map { "        server $_;\n" } @servers) . "    }\n";
}

# `least_conn_persistent_check`'s parameters: an http check of /health,
# every 300 ms, rise 2, fall 2, unless $p (a hash) says otherwise; times
# scaled by TEST_NGINX_SLOW.
sub check_params {
	my ($p) = @_;
	my %p = (interval => 300, timeout => 250, rise => 2, fall => 2, ref $p ? %$p : ());
	$p{$_} = int($p{$_} * $Test::Nginx::SLOW + 0.5) . 'ms' for qw/interval timeout/;
	return join ' ', 'uri=/health', map { "$_=$p{$_}" } qw/interval timeout rise fall/;
}

# The Lua balancer of docs/lua.md (t/lua.t).
sub lua_http {
	return <<'EOF' . Test::Nginx::lua_recipe();
    lua_package_path "%%LUA_LIB%%/?.lua;;";
EOF
}

# A stream configuration (the stream module's crash points): upstream `s`
# over Hold backends, the http status page showing the stream zone.
sub stream_conf {
	my ($t, %o) = @_;
	my @s = @{$o{s} // [8081, 8082]};
	my $workers = $o{workers} // 1;
	$t->write_file_expand('nginx.conf', <<"EOF");

%%STREAM_MODULES%%
%%TEST_GLOBALS%%

worker_processes $workers;

events {
    worker_connections 1024;
}

stream {
    least_conn_persistent_zone lcps 1m;
${\ upstream('s', map { "127.0.0.1:$_" } @s)}
    server {
        listen 127.0.0.1:8090 reuseport;
        proxy_pass s;
    }
}

http {
    %%TEST_GLOBALS_HTTP%%

    server {
        listen       127.0.0.1:8080;
        location /status { least_conn_persistent_status; }
    }
}

EOF
	return [sort map { key('s', addr($_)) } @s];
}

###############################################################################

# What a test does with one nginx: its backends, the request files, the
# checks after the death.
package Crash;

use Test::More;
use Test::Nginx;
use Test::Nginx::Health;
use Test::Nginx::Hold;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;
use Time::HiRes qw/time sleep/;

# %o: stream (a stream configuration), dns (d.test's first addresses),
# black_hole (seconds it holds a request), conf (options of *_conf).
sub new {
	my ($class, %o) = @_;
	my $t = Test::Nginx->new();
	$t->alerts_allowed(qr/worker process \d+ exited on signal 9/,
		qr/shared memory zone "\w+" was locked by \d+/);
	my $self = bless { t => $t, stream => $o{stream}, held => [], dns => $o{dns} }, $class;
	# The backends read where their /health control files are when forked.
	health_dir($t);
	my $serve = $o{stream} ? \&Test::Nginx::Hold::serve : \&Test::Nginx::Backend::serve;
	$t->run_daemon($serve, port($_), $backend{$_}) for sort keys %backend;
	$t->waitforsocket(addr($_)) for sort keys %backend;
	if ($o{black_hole}) {
		$t->run_daemon(\&main::black_hole_serve, port($black_hole), $o{black_hole});
		$t->waitforsocket(addr($black_hole));
	}
	if ($o{dns}) {
		$self->answer(@{$o{dns}});
		Test::Nginx::DNS::start($t, port(8053), $t->testdir . '/dns', 'd.test')
			or die "the DNS responder does not answer\n";
		$t->run_daemon(\&Test::Nginx::Backend::serve, port(8084), "d$_", $dns_ips[$_]) for 0 .. $#dns_ips;
		$t->waitforsocket(main::dns_addr($_)) for @dns_ips;
	}
	return $self;
}

sub t { $_[0]{t} }

sub answer {
	my ($self, @ips) = @_;
	Test::Nginx::DNS::set_answers($self->t->testdir . '/dns', 'd.test' => [@ips]);
	$self->{dns} = [@ips];
}

# Writes the configuration; remembers the keys it declares.
sub conf {
	my ($self, %o) = @_;
	$o{dns} = $self->{dns} if $self->{dns};
	$self->{keys} = $self->{stream} ? main::stream_conf($self->t, %o) : main::http_conf($self->t, %o);
	return $self;
}

sub status_uri { $_[0]{stream} ? '/status?subsystem=stream' : '/status' }
sub all_entries { @{status($_[0]->status_uri)->{counters} // []} }
sub zone { status($_[0]->status_uri)->{zone} }

# Every count at 0 (and some listed).
sub resting {
	my ($self, $timeout) = @_;
	return wait_until(sub { my @e = $self->all_entries(); @e && !grep { $_->{count} } @e },
		$timeout // 5);
}

# Starts nginx; returns once the zone shows the configured keys at rest.
sub run {
	my ($self) = @_;
	$self->t->run();
	$self->wait_keys() or die "nginx started without its keys\n";
	return $self;
}

sub keys_now { [sort map { $_->{key} } $_[0]->all_entries()] }

sub wait_keys {
	my ($self, $timeout) = @_;
	return wait_until(sub { "@{$self->keys_now()}" eq "@{$self->{keys}}" }, $timeout // 5);
}

# The zone's `used` at rest: what the end must come back to.
sub baseline {
	my ($self) = @_;
	$self->resting() or die "not at rest for the baseline\n";
	$self->records_live() or die "the zone's records are not the workers\n";
	return $self->{baseline} = $self->zone()->{used};
}

# Asks the next worker (or, `master`, the master at its next load) to die
# at the n-th pass of $point.
sub arm {
	my ($self, $point, $n, $master) = @_;
	# Workers run as nobody under a root master: they rename in here.
	mkdir $self->t->testdir . '/crash-points';
	chmod 0777, $self->t->testdir . '/crash-points';
	my $file = 'crash-points/' . ($self->{stream} ? 'stream' : 'http') . ($master ? '-master' : '');
	$self->t->write_file("$file.new", "$point $n\n");
	rename($self->t->testdir . "/$file.new", $self->t->testdir . "/$file") or die "rename: $!\n";
	$self->{request} = $file;
}

# The pid of the process that took the last request.
sub armed {
	my ($self, $timeout) = @_;
	my $glob = $self->t->testdir . "/$self->{request}.*";
	my $seen = $self->{taken} //= {};
	my $pid;
	wait_until(sub { ($pid) = grep { !$seen->{$_} } map { /\.(\d+)$/ } glob $glob; $pid },
		$timeout // 5);
	$seen->{$pid} = 1 if $pid;
	return $pid;
}

# Whether worker $pid died of SIGKILL (as the master logged).
sub died {
	my ($self, $pid, $timeout) = @_;
	return wait_until(sub {
		$self->t->read_file('error.log') =~ /worker process $pid exited on signal 9/
	}, $timeout // 5);
}

# Held connections, through nginx: WebSockets (http) or plain held TCP
# connections (stream). Those held by a worker that dies are dropped.
sub hold {
	my ($self, $n, $uri) = @_;
	my @c = $self->{stream}
		? map { hold_open(port(8090)) } 1 .. $n
		: map { ws_open($uri // '/w') } 1 .. $n;
	@c = grep { $_ } @c;
	push @{$self->{held}}, @c;
	return @c;
}

sub close_held {
	my ($self, @c) = @_;
	@c = @{$self->{held}} unless @c;
	my %gone = map { ($_ => 1) } @c;
	$self->{stream} ? hold_close(@c) : ws_close(@c);
	$self->{held} = [grep { !$gone{$_} } @{$self->{held}}];
}

# { server => connections } the backends really hold.
sub live {
	my ($self) = @_;
	my %live = $self->{stream}
		? %{held_counts(sort keys %backend)}
		: %{live_counts(sort keys %backend)};
	$live{main::dns_addr($_)} = live_count(port(8084), $_) for $self->{dns} ? @dns_ips : ();
	return \%live;
}

sub counted {
	my ($self) = @_;
	my %sum;
	$sum{$_->{server}} += $_->{count} for $self->all_entries();
	return \%sum;
}

sub show { join ', ', map { "$_=$_[0]{$_}" } sort keys %{$_[0]} }

# Pids the zone records, and the processes serving.
sub records { [sort { $a <=> $b } map { $_->{pid} } @{$_[0]->zone()->{workers}}] }
sub workers_now { [sort { $a <=> $b } $_[0]->t->children()] }

sub records_live {
	my ($self, $timeout) = @_;
	return wait_until(sub { "@{$self->records()}" eq "@{$self->workers_now()}" }, $timeout // 3);
}

# The checks right after the death of $victim (a worker).
sub after_death {
	my ($self, $victim) = @_;
	my $t = $self->t;
	ok($self->died($victim), "worker $victim died at the point (SIGKILL)");
	my $seen = time();
	ok($t->master_pid(), 'the master is alive');
	# A replacement (or the rest) serves again before anything is measured.
	wait_until(sub { scalar $t->worker_pids() >= $t->workers() }, 5);
	ok($self->answers(), 'nginx answers (the status page)') or return 0;
	my $same = wait_until(sub { same_counts($self->live(), $self->counted()) }, 1);
	ok($same, sprintf('counts equal the live connections %.2f s after the death', time() - $seen))
		or diag('live: ' . show($self->live()) . '; counted: ' . show($self->counted()));
	my @keys = map { $_->{key} } $self->all_entries();
	my %n;
	$n{$_}++ for @keys;
	ok(!grep({ $n{$_} > 1 } keys %n), 'no key listed twice')
		or diag(join ', ', grep { $n{$_} > 1 } sort keys %n);
	ok($self->records_live(), 'the zone records exactly the live workers')
		or diag("records @{$self->records()}, workers @{$self->workers_now()}");
	my @more = $self->hold(2);
	is(scalar @more, 2, 'new connections are served');
	ok(wait_until(sub { same_counts($self->live(), $self->counted()) }, 1), 'and counted')
		or diag('live: ' . show($self->live()) . '; counted: ' . show($self->counted()));
	return 1;
}

# Whether every worker answers a status request within 3 s (a worker
# stuck on a lock the dead one held does not).
sub answers {
	my ($self) = @_;
	for (1 .. 2 * $self->t->workers()) {
		my $r = eval { Test::Nginx::http_get($self->status_uri, timeout => 3) } // '';
		return 0 unless $r =~ /^HTTP\/1\.1 200 /;
	}
	return 1;
}

# The end of every test: a reload with %conf, at rest: keys exactly those
# configured, `used` at the baseline (plus `$extra` bytes), a clean log.
sub settle {
	my ($self, %o) = @_;
	my $t = $self->t;
	my $extra = delete $o{extra} // 0;
	$self->conf(%{$o{conf} // {}});
	my $master = $t->master_pid();
	my $reloaded = eval { $t->reload(); 1 };
	ok($reloaded && ($t->master_pid() // 0) == $master, 'the master survives a reload')
		or return diag($@), $self->finish();
	my $answers = $self->{stream}
		? hold_open(port(8090))
		: Test::Nginx::http_get('/w') =~ /^HTTP\/1\.1 200 /;
	ok($answers, 'and nginx still answers');
	hold_close($answers) if $self->{stream} && $answers;
	$self->close_held();
	ok(wait_until(sub { !$t->old_worker_pids() }, 10), 'the old workers exit');
	ok($self->resting(), 'at rest: every count 0');
	ok($self->wait_keys(3), 'the keys are exactly the configured ones')
		or diag("keys: @{$self->keys_now()}\nwant: @{$self->{keys}}");
	ok($self->records_live(), 'the zone records exactly the live workers')
		or diag("records @{$self->records()}, workers @{$self->workers_now()}");
	my $zone = $self->zone();
	is($zone->{keys}, scalar(@{$self->keys_now()}), 'the zone counts the keys it lists');
	is($zone->{used}, $self->{baseline} + $extra, 'zone used back to its baseline'
		. ($extra ? " plus the new block ($extra)" : ''));
	$self->finish();
}

# The health checks: the worker running them took over from $victim (the
# zone's `checker` is a current worker), and every checked server of `w`
# is $health (`up`), or as %health says ({ port => health }).
sub checks_resume {
	my ($self, $victim, %health) = @_;
	my $t = $self->t;
	my $checker = 0;
	ok(wait_until(sub {
		$checker = $self->zone()->{checker} // 0;
		$checker != $victim && grep { $_ == $checker } $t->worker_pids();
	}, 3), "a current worker checks now (checker $checker, dead $victim)");
	my %want = map { ($_ => $health{$_} // 'up') } 8081, 8082;
	my $now = '';
	ok(wait_until(sub {
		$now = join ' ', map { $backend{$_} . '=' . main::health_of($_) } sort keys %want;
		$now eq join ' ', map { "$backend{$_}=$want{$_}" } sort keys %want;
	}, 5), "the checks' verdicts: $now");
}

sub finish {
	my ($self) = @_;
	my $t = $self->t;
	unlike($t->read_file('error.log'), qr/already 0/, 'no release below zero');
	$self->cleanup();
	is(join("\n", $t->alerts()), '', 'no alerts but the killed process\'s');
}

# Stops nginx, and kills what a master that died left behind (its workers
# would go on listening beside the next test's nginx).
sub cleanup {
	my ($self) = @_;
	return if $self->{cleaned}++;
	my $t = $self->t;
	$t->stop();
	my @pids = $t->has_file('error.log')
		? $t->read_file('error.log') =~ /(?:start worker process|^\S+ \S+ \[\w+\]) (\d+)/mg : ();
	my @left = grep { nginx_process($_) } keys %{{ map { ($_ => 1) } @pids }};
	kill 'KILL', @left;
	wait_until(sub { !grep { kill 0, $_ } @left }, 5);
	$t->stop_daemons();
}

sub nginx_process {
	my ($pid) = @_;
	open my $c, '<', "/proc/$pid/cmdline" or return 0;
	return (<$c> // '') =~ /^nginx: (master|worker)/;
}

sub DESTROY { $_[0]->cleanup() }

package main;

###############################################################################

# A worker of an earlier configuration retries through a key a reload
# removed: its stale handle puts the key back (`upsert`, worker side), as
# t/stale.t shows. `$grow`: the table's blocks are full then, so the upsert
# needs a new block.
sub stale_upsert {
	my ($point, $n, $grow) = @_;
	# Before: u holds x (8083); after, it does not. With `$grow`, fillers
	# keep the table at a full block in both: w (2), u (2) and the rest;
	# w, u (1) and one filler more.
	my $f = slots_per_block() - 4;
	my $before = { u => [$black_hole, 8083], $grow ? (filler => $f) : () };
	my $after = { u => [$black_hole], $grow ? (filler => $f + 1) : () };
	my $c = Crash->new(black_hole => 1.5);
	$c->conf(%$after)->run();
	$c->baseline();
	$c->arm($point, $n);
	$c->conf(%$before);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->hold(3);
	# The black hole holds a request while a reload drops x: the retry
	# then finds x's key gone.
	my $retry = Test::Nginx::http_get('/u', start => 1);
	ok(wait_until(sub { (counts('u')->{addr($black_hole)} // 0) == 1 }), 'a request waits on the black hole');
	$c->conf(%$after);
	$c->t->reload();
	$c->hold(2);
	eval { Test::Nginx::http_read($retry, 5) };
	$c->after_death($victim) or return $c->finish();
	return $c->settle(conf => $after) unless $grow;
	# A key more than a block holds takes two blocks. The block the dead
	# worker allocated is in use or was given back, never lost: exactly one
	# page (a block) more than the baseline.
	$c->settle(conf => { u => [$black_hole, 8083], filler => $f + 1 }, extra => 4096);
}

# Slots in a block of the table (a block is a page, 4 KiB).
sub slots_per_block {
	open my $f, '<', '../src/core/table/slot.rs' or die "../src/core/table/slot.rs: $!\n";
	my ($n) = do { local $/; <$f> } =~ /const SLOTS_PER_BLOCK: usize = (\d+);/
		or die "no SLOTS_PER_BLOCK in src/core/table/slot.rs\n";
	return $n;
}

# The last connection of a draining key closes in a worker of an earlier
# configuration: `remove_if_drained` removes the key (worker side).
sub drained_remove {
	my ($point, $n, %o) = @_;
	my $c = Crash->new(stream => $o{stream});
	my ($one, $two) = $o{stream} ? ({ s => [8081] }, { s => [8081, 8082] }) : ({ w => [8081] }, { w => [8081, 8082] });
	$c->conf(%$one)->run();
	$c->baseline();
	$c->arm($point, $n);
	$c->conf(%$two);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	my @held = $c->hold(4);
	my @on_b = grep { $_->{backend} eq 'b' } @held;
	is(scalar @on_b, 2, 'two connections on b');
	# b leaves the configuration: it drains in the old worker.
	$c->conf(%$one);
	$c->t->reload();
	$c->hold(2);
	$c->close_held(@on_b);
	$c->after_death($victim) or return $c->finish();
	$c->settle(conf => $one);
}

# A worker's start: its record (`register_worker`) and its cells (`cell`).
sub worker_start {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf(workers => 2)->run();
	$c->baseline();
	$c->hold(4);
	$c->arm($point, $n);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	# Connections through the new workers too, for a table that gives a
	# worker its record or cells at its first count rather than at start:
	# one at a time until the armed worker has counted (and died), as
	# which worker accepts a connection is up to the kernel.
	for (1 .. 40) {
		$c->hold(1);
		last unless kill 0, $victim;
	}
	$c->after_death($victim) or return $c->finish();
	$c->settle(conf => { workers => 2 });
}

# A dead worker's share given back (`reclaim`) by the worker that replaces
# it: the test kills the first worker, its replacement dies reclaiming it.
sub reclaim_dead {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf()->run();
	$c->baseline();
	$c->hold(4);
	my ($first) = $c->t->worker_pids();
	$c->arm($point, $n);
	kill 'KILL', $first;
	ok($c->died($first), "the test killed worker $first holding 4 connections");
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->after_death($victim) or return $c->finish();
	$c->settle();
}

# The periodic check (every 500 ms): the test kills an old worker that
# holds connections, so that a check has something to reclaim.
sub periodic_check {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf()->run();
	$c->baseline();
	$c->hold(4);
	my ($old) = $c->t->worker_pids();
	$c->arm($point, $n);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->hold(2);
	kill 'KILL', $old;
	$c->after_death($victim) or return $c->finish();
	$c->settle();
}

# The status page.
sub status_page {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf()->run();
	$c->baseline();
	$c->hold(2);
	$c->arm($point, $n);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->hold(4);
	my $r = eval { Test::Nginx::http_get('/status', timeout => 3) } // '';
	unlike($r, qr/^HTTP\/1\.1 200/, 'the status request got no answer');
	$c->after_death($victim) or return $c->finish();
	$c->settle();
}

# DNS changes a `resolve` upstream's addresses: the worker follows
# (nginx 1.27.3+).
sub dns_follow {
	my ($point, $n) = @_;
	my $c = Crash->new(dns => [@dns_ips[0, 1]]);
	$c->conf()->run();
	$c->baseline();
	$c->hold(4, '/d');
	$c->arm($point, $n);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->hold(2, '/d');
	$c->answer(@dns_ips[1, 2]);
	$c->after_death($victim) or return $c->finish();
	$c->answer(@dns_ips[0, 1]);
	$c->settle();
}

# A Lua upstream declared (`declare_lua`), by the first request a new
# worker balances through it.
sub lua_declare {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf(lua => 1)->t->run();
	like(Test::Nginx::http_get('/lw'), qr/^HTTP\/1\.1 200/, 'the Lua upstream declared');
	$c->wait_keys() or die "no Lua keys\n";
	$c->baseline();
	$c->hold(2, '/lw');
	$c->arm($point, $n);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	my $r = eval { Test::Nginx::http_get('/lw', timeout => 3) } // '';
	unlike($r, qr/^HTTP\/1\.1 200/, 'the declaring request got no answer');
	$c->after_death($victim) or return $c->finish();
	like(Test::Nginx::http_get('/lw'), qr/^HTTP\/1\.1 200/, 'the replacement declares it');
	$c->settle(conf => { lua => 1 });
}

# The master's sweep at a reload (`sweep.marked`: a key left undeclared
# with connections is marked draining). Only the master sweeps, so only the
# master can die there, holding the zone's mutex. nginx gives a dead
# process's shared-memory mutexes back from the master (when it reaps the
# process): with the master gone, nobody can, and its workers, orphaned,
# wait for the mutex for ever. That is nginx's own limit, as for every
# zone of a master that dies. What a crash in the sweep must not corrupt is
# the table, which only a later load could see, and a load by another
# master never sees it (the zone goes with the last process): the unit
# tests (cargo test) cover it, with the panicking hook of core::crash. Here:
# the master really dies there, and a fresh start on the same prefix works.
sub master_sweep {
	my ($point, $n) = @_;
	master_load_dies($point, $n, {}, { w => [8081] });
}

# A configuration load's pick indexes (in the master): a load that indexes
# a new upstream (`index.entry`, `.allocated`, `.linked`), or drops them
# (`index.freeing`).
sub index_load {
	my ($point, $n) = @_;
	master_load_dies($point, $n, { index => 1 },
		$point eq 'index.freeing' ? {} : { index => 1, u => [8083] });
}

# The master dies at $point of a load from configuration $before to
# $after (Crash->conf's options); a fresh start of $before works.
sub master_load_dies {
	my ($point, $n, $before, $after) = @_;
	my $c = Crash->new();
	$c->conf(%$before)->run();
	my $base = $c->baseline();
	$c->hold(4);
	my @workers = $c->t->worker_pids();
	my $master = $c->t->master_pid();
	$c->arm($point, $n, 'master');
	$c->conf(%$after);
	kill 'HUP', $master;
	ok(wait_until(sub { !kill(0, $master) }, 5), "the master ($master) died at the point");
	is($c->armed(), $master, 'the master took the request');
	kill 'KILL', @workers;
	wait_until(sub { !grep { kill 0, $_ } @workers }, 5);
	$c->close_held();
	# A fresh master: none of its workers is old.
	$c->t->{_old_workers} = {};
	$c->conf(%$before);
	$c->run();
	ok(1, 'a fresh start works');
	ok($c->resting(), 'at rest');
	is($c->zone()->{used}, $base, 'zone used at the baseline of a first start');
	$c->hold(2);
	ok(wait_until(sub { same_counts($c->live(), $c->counted()) }, 1), 'connections counted');
	$c->close_held();
	$c->finish();
}

# A pick through an index (`index.picked`): counted, not yet recorded in
# the index, when the worker dies holding the zone's lock.
sub index_pick {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf(index => 1)->run();
	$c->baseline();
	$c->hold(2);
	$c->arm($point, $n);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->hold(4);
	$c->after_death($victim) or return $c->finish();
	$c->settle(conf => { index => 1 });
}

# What the checks make of the server of `w` on $port ('none': not listed
# or not checked).
sub health_of {
	my ($port) = @_;
	my ($e) = grep { $_->{server} eq addr($port) } health_entries('w');
	return ($e // {})->{health} // 'none';
}

# $n plain requests to /w: { backend id => requests }.
sub requests_by_backend {
	my ($n) = @_;
	my %by;
	for (1 .. $n) {
		my ($id) = Test::Nginx::http_get('/w') =~ /^X-Backend:\s*(\S+)/mi;
		$by{$id // 'none'}++;
	}
	return \%by;
}

# Checks added to `w` by a reload: the new worker, the first to hold the
# checks' lease, gives w's block its health records at its first tick
# (`ensure_health`: a page allocated, then linked) and dies there. The
# replacement takes the checks over and finds a and b up. The page the dead
# worker allocated is linked or freed by the repair, never lost: at rest the
# zone uses exactly one page (the block's health records) more than before.
sub first_checks {
	my ($point, $n) = @_;
	my $c = Crash->new();
	$c->conf()->run();
	$c->baseline();
	$c->hold(2);
	$c->arm($point, $n);
	$c->conf(check => 1);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	$c->after_death($victim) or return $c->finish();
	$c->checks_resume($victim);
	$c->settle(conf => { check => 1 }, extra => 4096);
}

# A check's result written (`record_check`), the checker dead before the
# key's pick bits follow it: the repair recomputes them from the records
# (`reconcile_health`). Checks added by a reload, b failing them, fall=1:
# b's first check takes it down. a answers its checks late (past half an
# interval, the latest a first check starts), so that b's result is the
# first the new worker records whatever the two servers' phases: pass 1.
# Right after the death, before the replacement checks b again (a whole
# interval later; its record would set the bits anyway), no request may go
# to b.
sub check_recorded {
	my ($point, $n) = @_;
	my $check = { interval => 1000, timeout => 1000, fall => 1 };
	my $c = Crash->new();
	$c->conf()->run();
	$c->baseline();
	my $by = requests_by_backend(6);
	ok($by->{a} && $by->{b}, 'unchecked, requests go to a and b: ' . Crash::show($by));
	set_health('a', 'slow ' . int(750 * $Test::Nginx::SLOW));
	set_health('b', '503');
	$c->arm($point, $n);
	$c->conf(check => $check);
	$c->t->reload();
	my $victim = $c->armed() or die "no worker took the request\n";
	ok($c->died($victim), "worker $victim died at the point: the replacement serves");
	$by = requests_by_backend(6);
	is($by->{b} // 0, 0, 'right after the death no request goes to b: ' . Crash::show($by));
	# Died at b's record, before anything recorded a's check.
	is(health_of(8082), 'down', 'b is down (the dead worker\'s record)');
	is(health_of(8081), 'checking', 'a not checked yet');
	$c->after_death($victim) or return $c->finish();
	$c->checks_resume($victim, 8082 => 'down');
	$c->settle(conf => { check => $check }, extra => 4096);
}

###############################################################################

# Which test drives each point, and the pass to die at.
my %test = (
	'insert.claimed' => [\&stale_upsert, 1],
	'insert.published' => [\&stale_upsert, 1],
	'remove.retired' => [\&drained_remove, 1],
	'remove.unlinked' => [\&drained_remove, 1],
	'remove.freeing' => [\&drained_remove, 1],
	'grow.allocated' => [sub { stale_upsert(@_, 'grow') }, 1],
	'grow.linked' => [sub { stale_upsert(@_, 'grow') }, 1],
	'health.allocated' => [\&first_checks, 1],
	'health.linked' => [\&first_checks, 1],
	'health.recorded' => [\&check_recorded, 1],
	'register.allocated' => [\&worker_start, 1],
	'cell.allocated' => [\&worker_start, 1],
	'reclaim.journalled' => [\&reclaim_dead, 1],
	'reclaim.subtracted' => [\&reclaim_dead, 1],
	'reclaim.unlinked' => [\&reclaim_dead, 1],
	'sweep.marked' => [\&master_sweep, 1],
	'follow.locked' => [\&dns_follow, 1, 'resolve'],
	'lua.declared' => [\&lua_declare, 1, 'lua'],
	'status.locked' => [\&status_page, 1],
	'reclaim.locked' => [\&periodic_check, 1],
	'index.entry' => [\&index_load, 1],
	'index.allocated' => [\&index_load, 1],
	'index.linked' => [\&index_load, 1],
	'index.freeing' => [\&index_load, 1],
	'index.picked' => [\&index_pick, 1],
);

# What a point's test needs that this nginx may not have.
sub missing {
	my ($need) = @_;
	return undef unless $need;
	my $v = Test::Nginx::nginx_version();
	return "nginx $v has no \"resolve\" (1.27.3+)"
		if $need eq 'resolve' && !Test::Nginx::version_at_least($v, '1.27.3');
	return "Debian's Lua module is built for Debian's nginx, not $Test::Nginx::NGINX"
		if $need eq 'lua' && $Test::Nginx::NGINX ne '/usr/sbin/nginx';
	return undef;
}

my @points = listed_points();
my $placed = placed_points();
ok(@points >= 10, scalar(@points) . ' crash points listed in src/core/crash.rs');
my %listed = map { ($_ => 1) } @points;
ok(!grep({ !$listed{$_} } sort keys %test), 'every test here is for a listed point')
	or diag('not listed: ' . join(', ', grep { !$listed{$_} } sort keys %test));

my $only = $ENV{TEST_CRASH_POINTS};    # e.g. "remove.*,status.locked"
for my $point (@points) {
	next if $only && !grep { $point =~ /^\Q$_\E$/ || ($_ =~ /\*$/ && index($point, substr($_, 0, -1)) == 0) } split /,/, $only;
	my $test = $test{$point};
	subtest $point => sub {
		ok($test, "crash point $point has a test") or return;
		ok($placed->{$point}, "crash point $point is placed in src/ (crash::point(\"$point\"))") or return;
		my ($code, $n, $need) = @$test;
		if (my $why = missing($need)) {
			plan(skip_all => $why);
		}
		my $ok = eval { $code->($point, $n); 1 };
		ok($ok, 'the test ran to its end') or diag($@);
	};
}

# The stream module's hook: a drained key's removal in a stream worker.
subtest 'stream: remove.retired' => sub {
	ok($placed->{'remove.retired'}, 'remove.retired is placed') or return;
	-f $Test::Nginx::STREAM_MODULE && -f $Test::Nginx::NGINX_STREAM_MODULE
		or plan(skip_all => "no stream modules ($Test::Nginx::STREAM_MODULE)");
	my $ok = eval { drained_remove('remove.retired', 1, stream => 1); 1 };
	ok($ok, 'the test ran to its end') or diag($@);
} unless $only;

# A request naming no point, or no pass, arms nothing and says so.
subtest 'a bad request' => sub {
	my $c = Crash->new();
	$c->t->alerts_allowed(qr/crash point request "(no\.such\.point 1|status\.locked 0)" names no known point/);
	$c->conf()->run();
	for my $bad ('no.such.point 1', 'status.locked 0') {
		$c->arm(split ' ', $bad);
		$c->t->reload();
		my $pid = $c->armed();
		ok($pid, "a worker took \"$bad\"");
		like($c->t->read_file('error.log'), qr/\[alert\] $pid#\d+: .*crash point request "\Q$bad\E" names no known point and pass/,
			'and refused it with an [alert]');
		like(Test::Nginx::http_get('/status'), qr/^HTTP\/1\.1 200 /, 'it serves, unarmed');
		ok(kill(0, $pid), 'and lives');
	}
	$c->finish();
} unless $only;

done_testing();

###############################################################################
