#!/usr/bin/perl
# The kill storm (scripts/soak.sh --kill-storm): worker processes killed
# with SIGKILL, hundreds of times, at the moments that stress the zone most,
# then checks that nothing leaked. Loopback only; stops by itself.
#
#   kill_storm.pl [--quick] [--crash-points]
#
# nginx runs 8 workers. Client processes hold WebSockets (through a
# configured upstream, a Lua upstream on Debian's nginx, a `resolve`
# upstream on nginx 1.27.3+; the first and the last pick through a pick
# index, `index=1`) and send requests over upstream keepalive (an upstream
# that scans).
# Each step of the storm makes every client close half of what it holds at
# once (a burst of releases, and of removals of draining keys), then kills
# one or two workers a few milliseconds later, old or current generation.
# Between steps: reloads that change the servers (sent without waiting, so
# that kills land during them), DNS answers that change, Lua upstreams
# declared again with other servers. Full: at least 300 kills; --quick: 40.
#
# --crash-points: with the crash-points build (scripts/build.sh
# --crash-points; t/crash_points.t explains the request files), every step
# also asks the next worker to start to die at the n-th pass (1 to 3) of a
# crash point picked at random (the master's sweep excepted), so that deaths
# land inside the zone's locked sections too, not only where a SIGKILL from
# outside happens to fall.
#
# At rest it checks: the master is the one that started, alive; every
# count 0; the keys exactly those configured; zone `used` back to its
# baseline; the zone's records exactly the live workers; no [alert] or
# [crit] but nginx's own lines about killed workers. Prints one line per
# check and the storm's figures, and exits non-zero on a failure.

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use POSIX ();
use Time::HiRes qw/time sleep/;
use Test::Nginx;
use Test::Nginx::Backend;
use Test::Nginx::DNS;
use Test::Nginx::Status;
use Test::Nginx::WebSocket;

$SIG{PIPE} = 'IGNORE';
my $quick = grep { $_ eq '--quick' } @ARGV;
my $crash_points = grep { $_ eq '--crash-points' } @ARGV;
my $target_kills = $quick ? 40 : 300;
if ($crash_points) {
	# The crash-points build beside the module (target/crash-points/release/).
	$Test::Nginx::MODULE = $ENV{TEST_NGINX_CRASH_MODULE}
		// ($Test::Nginx::MODULE =~ s{/release/([^/]+)$}{/crash-points/release/$1}r);
	-f $Test::Nginx::MODULE
		or die "no crash-points build at $Test::Nginx::MODULE: run scripts/build.sh --crash-points\n";
}
my $workers = 8;
my $clients = 4;
my $max_held = 30;             # WebSockets per client
my ($reload_every, $dns_every, $lua_every) = (8, 5, 3);    # steps

my $t = Test::Nginx->new();
$t->has(qw/nginx module/);
$t->alerts_allowed(qr/worker process \d+ exited on signal 9/,
	qr/shared memory zone "\w+" was locked by \d+/);

my @backends = (8081 .. 8084);
sub key { "conn_count:$_[0]:$_[1]" }

# `resolve` (nginx 1.27.3+): d.test's addresses, each a backend on one port.
my $resolve = Test::Nginx::version_at_least(Test::Nginx::nginx_version(), '1.27.3');
my @dns_ips = map { "127.0.0.$_" } 2 .. 5;
my @dns_rest = @dns_ips[0, 2];
my $dns_port = port(8085);
my $dns_file = $t->testdir . '/dns';
sub answer { Test::Nginx::DNS::set_answers($dns_file, 'd.test' => [@_]) }

# Lua (Debian's nginx, with Debian's Lua module): upstream `lw` declared by
# its balancer with the servers of servers.lua, and again by /redeclare.
my $lua = $Test::Nginx::NGINX eq '/usr/sbin/nginx' && -f $Test::Nginx::LUA_MODULE
	&& -f '/usr/share/lua/5.1/resty/core.lua';
sub lua_servers {
	my (@ports) = @_;
	$t->write_file('servers.lua', 'return { '
		. join(', ', map { '{ addr = "' . addr($_) . '" }' } @ports) . " }\n");
}

sub subset {
	my @s = grep { rand() < 0.6 } @_;
	return @s ? @s : ($_[int(rand(@_))]);
}

# The configuration with upstreams ws and ka over @up; returns its keys
# (those of d.test and lw are added by the caller).
sub conf {
	my (@up) = @_;
	my $list = join '', map { "        server 127.0.0.1:$_;\n" } @up;
	my ($top, $http, $upstreams, $locations) = ('', '', '', '');
	if ($resolve) {
		$http .= "    resolver 127.0.0.1:%%PORT_8053%% valid=1s ipv6=off;\n    resolver_timeout 1s;\n";
		$upstreams .= "    upstream dns {\n        zone dns 64k;\n        least_conn_persistent index=1;\n"
			. "        server d.test:$dns_port resolve;\n    }\n";
		$locations .= "        location /dns { proxy_pass http://dns; }\n";
	}
	if ($lua) {
		$top = "%%LUA_MODULES%%\n";
		$http .= <<'EOF';
    lua_package_path "%%LUA_LIB%%/?.lua;%%TESTDIR%%/?.lua;;";
EOF
		$http .= Test::Nginx::lua_recipe();
		$upstreams .= "    upstream lw {\n        server 0.0.0.1;\n"
			. "        balancer_by_lua_block { balance(\"lw\", require(\"servers\")) }\n    }\n";
		$locations .= <<'EOF';
        location /lw { proxy_pass http://lw; log_by_lua_block { release() } }
        location /redeclare {
            content_by_lua_block {
                local list = {}
                for p in ngx.var.arg_ports:gmatch("%d+") do
                    list[#list + 1] = { addr = "127.0.0.1:" .. p }
                end
                local up, err = lcp.declare("lw", list)
                ngx.say(up and "declared" or err)
            }
        }
EOF
	}
	$t->write_file_expand('nginx.conf', <<"EOF");
$top%%TEST_GLOBALS%%
worker_processes $workers;
events {
    worker_connections 4096;
}
http {
    %%TEST_GLOBALS_HTTP%%
    least_conn_persistent_zone lcp 1m;
$http    upstream ws {
        least_conn_persistent index=1;
$list    }
    upstream ka {
        least_conn_persistent;
$list        keepalive 8;
    }
$upstreams    server {
        listen 127.0.0.1:8080 reuseport;
        proxy_http_version 1.1;
        proxy_read_timeout 1h;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        location /ws { proxy_pass http://ws; }
        location /ka {
            proxy_set_header Connection "";
            proxy_pass http://ka;
        }
$locations        location /status { least_conn_persistent_status; }
    }
}
EOF
	return map { (key('ws', addr($_)), key('ka', addr($_))) } @up;
}

# The keys at rest: every backend in ws and ka, d.test's resting
# addresses, every backend in lw.
sub resting_keys {
	return sort((map { (key('ws', addr($_)), key('ka', addr($_))) } @backends),
		$resolve ? (map { key('dns', "$_:$dns_port") } @dns_rest) : (),
		$lua ? (map { key('lw', addr($_)) } @backends) : ());
}

sub keys_now { join ',', sort map { $_->{key} } entries() }

my @checks;
sub check {
	my ($ok, $what) = @_;
	push @checks, [$ok ? 1 : 0, $what];
	printf "%s %s\n", $ok ? 'ok  ' : 'FAIL', $what;
}

# A client: holds WebSockets and sends keepalive requests until TERM;
# closes half of what it holds at once on USR1. Prints what it did.
sub client {
	my ($out) = @_;
	srand($$ ^ time());
	my ($burst, $stop) = (0, 0);
	local $SIG{USR1} = sub { $burst = 1 };
	local $SIG{TERM} = sub { $stop = 1 };
	my @paths = ('/ws', $resolve ? '/dns' : (), $lua ? '/lw' : ());
	my %n = (opened => 0, closed => 0, requests => 0);
	my @held;
	until ($stop) {
		if ($burst) {
			$burst = 0;
			my @c = splice(@held, 0, int((@held + 1) / 2));
			ws_close(@c);
			$n{closed} += @c;
			next;
		}
		my $r = rand();
		if ($r < 0.6 && @held < $max_held) {
			my $ws = eval { ws_open($paths[int(rand(@paths))]) };
			if ($ws) { push @held, $ws; $n{opened}++ }
		} elsif ($r < 0.7 && @held) {
			ws_close(splice(@held, int(rand(@held)), 1));
			$n{closed}++;
		} else {
			$n{requests}++ if eval { http_get('/ka', timeout => 2) };
		}
		sleep 0.002;
	}
	$n{closed} += @held;
	ws_close(@held);
	print $out "$n{opened} $n{closed} $n{requests}\n";
	close $out;
}

###############################################################################

$t->run_daemon(\&Test::Nginx::Backend::serve, port($_), "b$_") for @backends;
$t->waitforsocket(addr($_)) for @backends;
if ($resolve) {
	answer(@dns_rest);
	Test::Nginx::DNS::start($t, port(8053), $dns_file, 'd.test')
		or die "the DNS responder does not answer\n";
	$t->run_daemon(\&Test::Nginx::Backend::serve, $dns_port, "d$_", $dns_ips[$_]) for 0 .. $#dns_ips;
	$t->waitforsocket("$_:$dns_port") for @dns_ips;
}
lua_servers(@backends) if $lua;
conf(@backends);
$t->run();
my $master = $t->master_pid();
my $want = join ',', resting_keys();
http_get('/redeclare?ports=' . join(',', map { port($_) } @backends)) if $lua;
wait_until(sub { keys_now() eq $want }, 10)
	or die "the keys did not appear at the start:\n" . keys_now() . "\n";
at_rest() or die "not at rest at the start\n";
my $baseline = status()->{zone}{used};

pipe(my $from_clients, my $to_parent) or die "pipe: $!\n";
my @kids;
for (1 .. $clients) {
	my $pid = fork() // die "fork: $!\n";
	if ($pid == 0) {
		close $from_clients;
		client($to_parent);
		POSIX::_exit(0);
	}
	push @kids, $pid;
}
close $to_parent;
sleep 1;    # connections held before the first kill

my %did = (kills => 0, steps => 0, reloads => 0, dns => 0, lua => 0, old => 0, fresh => 0);

# --crash-points: the points a worker may die at, and the request files.
my @points = $crash_points ? grep { $_ ne 'sweep.marked' } listed_points() : ();
my $requests = $t->testdir . '/crash-points';
if ($crash_points) {
	mkdir $requests;
	chmod 0777, $requests;    # workers run as nobody under a root master
}
my %killed;    # pids this script killed itself

sub listed_points {
	open my $f, '<', "$FindBin::Bin/../src/core/crash.rs" or die "src/core/crash.rs: $!\n";
	my ($list) = do { local $/; <$f> } =~ /pub const POINTS: &\[&str\] = &\[(.*?)\];/s
		or die "no POINTS in src/core/crash.rs\n";
	$list =~ s{//[^\n]*}{}g;
	return $list =~ /"([^"]+)"/g;
}

# A request for the next worker to start, unless one is still waiting.
sub request_crash {
	return if -e "$requests/http";
	my $point = $points[int(rand(@points))];
	open my $f, '>', "$requests/http.new" or die "$requests/http.new: $!\n";
	print $f "$point ", 1 + int(rand(3)), "\n";
	close $f;
	rename "$requests/http.new", "$requests/http";
}

# { point => deaths }: workers that took a request and died of SIGKILL
# without this script killing them.
sub crash_point_deaths {
	my $log = $t->read_file('error.log');
	my %died = map { ($_ => 1) } $log =~ /worker process (\d+) exited on signal 9/g;
	my %at;
	for my $file (glob "$requests/http.*") {
		my ($pid) = $file =~ /\.(\d+)$/ or next;
		next if $killed{$pid} || !$died{$pid};
		open my $f, '<', $file or next;
		my ($point) = split ' ', <$f> // '';
		$at{$point}++;
	}
	return \%at;
}

# The master's children, read the fast way where Linux offers it.
sub children_now {
	open my $f, '<', "/proc/$master/task/$master/children" or return $t->children();
	return split ' ', (<$f> // '');
}
# Each worker's generation (the reloads before it was first seen).
my %generation = map { ($_ => 0) } $t->children();
my $started = time();
# With crash points the storm goes on past its kills (up to a minute) until
# a worker has died at one: the points are drawn at random and a quick storm
# can miss them all.
sub more_steps {
	return 1 if $did{kills} < $target_kills;
	return 0 unless $crash_points && time() - $started < 60;
	return $did{steps} % 5 == 0 ? !%{crash_point_deaths()} : 1;
}
while (more_steps()) {
	my $step = ++$did{steps};
	if ($step % $reload_every == 0) {
		# A reload that changes the servers, not waited for: the kills of
		# this step land while it runs.
		conf(subset(@backends));
		lua_servers(subset(@backends)) if $lua;
		$did{reloads}++;
		kill 'HUP', $master;
	}
	if ($resolve && $step % $dns_every == 0) {
		answer(subset(@dns_ips));
		$did{dns}++;
	}
	if ($lua && $step % $lua_every == 0) {
		for (1 .. 3) {
			my $ports = join ',', map { port($_) } subset(@backends);
			$did{lua}++ if (eval { http_get("/redeclare?ports=$ports", timeout => 2) } // '') =~ /declared/;
		}
	}
	request_crash() if $crash_points;
	# A burst of closes, then the kills a few milliseconds into it.
	kill 'USR1', @kids;
	sleep rand(0.015);
	my @w = $t->children();
	for (1 .. 1 + int(rand(2))) {
		my $victim = splice(@w, int(rand(@w)), 1) // last;
		next unless kill('KILL', $victim);
		$killed{$victim} = 1;
		$did{kills}++;
		$did{old}++ if ($generation{$victim} // $did{reloads}) < $did{reloads};
	}
	# Half the time, the replacement the master starts is killed too, a
	# millisecond or two into its start: it takes the zone's mutex at
	# once, to give back what the dead held and to register.
	if (rand() < 0.5) {
		my %before = map { ($_ => 1) } @w;
		my $fresh;
		wait_until(sub { ($fresh) = grep { !$before{$_} } children_now(); $fresh }, 0.05);
		if ($fresh) {
			sleep rand(0.002);
			if (kill('KILL', $fresh)) { $killed{$fresh} = 1; $did{kills}++; $did{fresh}++ }
		}
	}
	sleep 0.05 + rand(0.05);
	$generation{$_} //= $did{reloads} for $t->children();
	last unless kill 0, $master;
}
my $storm = time() - $started;
kill 'TERM', @kids;
my @n = (0, 0, 0);
for (<$from_clients>) {
	my @c = split;
	$n[$_] += $c[$_] for 0 .. 2;
}
waitpid($_, 0) for @kids;

# At rest: every server configured again, d.test at its resting addresses,
# lw declared with every server; the old workers gone. No worker of the
# last generation is asked to die.
unlink "$requests/http" if $crash_points;
conf(@backends);
lua_servers(@backends) if $lua;
answer(@dns_rest) if $resolve;
check($did{kills} >= $target_kills, sprintf('%d workers killed with SIGKILL in %.1f s, right after bursts '
	. 'of closes (%d of an older generation, %d just started)', $did{kills}, $storm, $did{old}, $did{fresh}));
if ($crash_points) {
	my $at = crash_point_deaths();
	my $n = 0;
	$n += $_ for values %$at;
	check($n > 0, "$n workers died at crash points: "
		. join(', ', map { "$_ $at->{$_}" } sort keys %$at));
}
check($did{reloads} > 0, "$did{reloads} reloads changing the servers during the storm");
check($did{dns} > 0, "$did{dns} DNS changes of a resolve upstream") if $resolve;
check($did{lua} > 0, "$did{lua} Lua redeclarations") if $lua;
check($n[0] > 0, "$n[0] WebSockets opened, $n[1] closed, $n[2] requests over upstream keepalive");
my $reloaded = eval { $t->reload(); 1 };
# Why it did not, in CI's output (the reload's own message).
my $why = $reloaded ? '' : ': ' . ($@ =~ s/\s+$//r =~ s/\n/; /gr);
check($reloaded && ($t->master_pid() // 0) == $master, "the master ($master) is alive and reloads$why");
finish() unless $reloaded;
wait_until(sub { !$t->old_worker_pids() }, 30);
eval { http_get('/redeclare?ports=' . join(',', map { port($_) } @backends), timeout => 3) } if $lua;

eval { at_rest_checks(); 1 } or check(0, "nginx answers the status page: $@");
finish();

# What must hold at rest.
sub at_rest_checks {
	check(at_rest(10), 'at rest, every counter is 0');
	my $keys_ok = wait_until(sub { keys_now() eq $want }, 10);
	check($keys_ok, "the keys are exactly those configured (" . (() = resting_keys()) . ")");
	print "  keys: ", keys_now(), "\n  want: $want\n" unless $keys_ok;
	my $records = sub { join ' ', sort { $a <=> $b } map { $_->{pid} } @{status()->{zone}{workers}} };
	my $live = sub { join ' ', sort { $a <=> $b } $t->worker_pids() };
	check(wait_until(sub { $records->() eq $live->() }, 3), "the zone records exactly the $workers live workers");
	my $zone = status()->{zone};
	my $listed = () = entries();
	check($zone->{keys} == $listed, "the zone counts $zone->{keys} keys and lists $listed");
	check($zone->{used} == $baseline, "zone used $zone->{used} bytes, baseline $baseline");
	my $log = $t->read_file('error.log');
	my $underflows = () = $log =~ /already 0/g;
	my $in_mutex = () = $log =~ /shared memory zone "lcp" was locked by/g;
	my @alerts = $t->alerts();
	check(!@alerts, 'no [alert] or [crit] but the killed workers\' lines');
	print "  $_\n" for @alerts[0 .. ($#alerts < 9 ? $#alerts : 9)];
	printf "  %d workers died holding the zone's mutex; %d connections given back "
		. "for dead workers; %d releases found a count at 0 (a worker killed between its share's "
		. "update and the count's gives back one too many)\n", $in_mutex, $zone->{reclaimed}, $underflows;
}

# Stops nginx and what a master that died left behind (orphaned workers
# still listening), prints the tally and exits.
sub finish {
	$t->stop();
	my @pids = $t->read_file('error.log') =~ /^\S+ \S+ \[\w+\] (\d+)#/mg;
	my @left = grep { nginx_process($_) } keys %{{ map { ($_ => 1) } @pids }};
	kill 'KILL', @left;
	$t->stop_daemons();
	my $failed = grep { !$_->[0] } @checks;
	printf "kill storm: %d passed, %d failed\n", @checks - $failed, $failed;
	exit($failed ? 1 : 0);
}

sub nginx_process {
	my ($pid) = @_;
	open my $c, '<', "/proc/$pid/cmdline" or return 0;
	return (<$c> // '') =~ /^nginx: (master|worker)/;
}
