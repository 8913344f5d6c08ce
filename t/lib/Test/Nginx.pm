package Test::Nginx;

# A small Test::Nginx in the style of nginx's own test suite (nginx-tests):
# the same object methods and file templates, written for this module.
# Test::Nginx is not packaged for Debian, so this one uses core Perl only.
#
#   my $t = Test::Nginx->new()->plan(3);
#   $t->write_file_expand('nginx.conf', $conf);   # %%TEST_GLOBALS%% etc.
#   $t->run_daemon(\&Test::Nginx::Backend::serve, port(8081), 'a');
#   $t->run();
#   like(http_get('/'), qr/200 OK/, 'request');
#
# Every test file gets one extra test at the end: its error.log must hold no
# [alert], [crit] or [emerg] line (and none of the patterns passed to
# `alerts_allowed`). A test file that fails prints the last lines at [warn]
# and above of its nginx error logs (diag, on STDERR): CI's output says why.
#
# nginx's workers run as `nobody` when the tests run as root, and the
# checkout may lie under a directory only root may enter (`mktemp -d`): what
# a worker reads is in the test's own directory, readable by all (its
# files, and a copy of our Lua library: %%LUA_LIB%%).

use warnings;
use strict;

use Exporter qw/import/;
our @EXPORT = qw/port addr http_get http http_read wait_until/;

use File::Copy ();
use File::Path qw/mkpath rmtree/;
use File::Spec;
use File::Temp qw/tempdir/;
use IO::Socket::INET;
use Fcntl qw/O_WRONLY O_CREAT O_EXCL/;
use IO::Select;
use POSIX qw/:sys_wait_h/;
use Scalar::Util ();
use Test::More ();
use Time::HiRes qw/sleep time/;

our $NGINX = $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx';
# Every wait and timeout is multiplied by this: nginx under valgrind
# (scripts/memcheck.sh) runs many times slower.
our $SLOW = $ENV{TEST_NGINX_SLOW} // 1;
# Debian's Lua module (libnginx-mod-http-lua) and the Lua library of ours
# (the checkout's lib/; nginx's workers read the copy `lua_lib` makes).
our $LUA_MODULE = '/usr/lib/nginx/modules/ngx_http_lua_module.so';
our $LUA_LIB = (File::Spec->rel2abs(__FILE__) =~ s{t/lib/Test/Nginx\.pm$}{}r) . 'lib';
our $MODULE = $ENV{TEST_NGINX_MODULE}
	// (File::Spec->rel2abs(__FILE__) =~ s{t/lib/Test/Nginx\.pm$}{}r)
		. 'target/release/libngx_http_least_conn_persistent_module.so';
# Our stream module (scripts/build.sh puts it beside the http one), and
# nginx's own stream module, which must be loaded before it: Debian's, or
# the one in the modules/ directory beside another nginx's sbin/.
our $STREAM_MODULE = $ENV{TEST_NGINX_STREAM_MODULE}
	// ($MODULE =~ s{libngx_http_least_conn_persistent_module\.so$}{libngx_stream_least_conn_persistent_module.so}r);
our $NGINX_STREAM_MODULE = $ENV{TEST_NGINX_NGINX_STREAM_MODULE}
	// ($NGINX eq '/usr/sbin/nginx' ? '/usr/lib/nginx/modules/ngx_stream_module.so'
		: ($NGINX =~ s{/sbin/nginx$}{/modules/ngx_stream_module.so}r));

my %ports;
my @instances;
my $parent = $$;
# Every instance's directory: at the end, a failed file prints the errors of
# their logs (an instance may be gone by then: a file that dies frees its
# lexicals before END blocks run). File::Temp removes them in its END
# block, which runs after ours (it was loaded first).
my @testdirs;

# Teardown must run before Test::More checks the plan in its own END block
# (ours runs first: Test::More is loaded before this file). A test object
# captured by a closure would otherwise live until global destruction.
# A forked child (a daemon, a helper) never tears down its parent's nginx,
# and never releases its parent's ports.
END {
	if ($$ == $parent) {
		my $exit = $?;
		$_ && $_->DESTROY() for @instances;
		if (!$ENV{TEST_NGINX_CATLOG} && test_failed($exit)) {
			diag_log_errors($_) for @testdirs;
		}
		release_ports();
	}
}

sub new {
	my ($class) = @_;
	my $self = bless { _pid => $$ }, $class;
	# Workers (user nobody when run as root) read files here too (Lua): in
	# a temporary directory they may enter, /tmp if $TMPDIR is not one.
	my $tmp = File::Spec->tmpdir();
	$tmp = '/tmp' if $> == 0 && !searchable_by_all($tmp) && searchable_by_all('/tmp');
	$self->{_testdir} = tempdir('lcp-test-XXXXXX', DIR => $tmp,
		CLEANUP => !$ENV{TEST_NGINX_LEAVE});
	chmod 0755, $self->{_testdir};
	mkpath("$self->{_testdir}/logs");
	$self->{_daemons} = [];
	$self->{_allowed} = [];
	push @instances, $self;
	push @testdirs, $self->{_testdir};
	Scalar::Util::weaken($instances[-1]);
	return $self;
}

sub testdir { $_[0]{_testdir} }

# Whether every directory from / down to $dir lets others in (o+x).
sub searchable_by_all {
	my ($dir) = @_;
	my $path = File::Spec->rel2abs($dir);
	while (1) {
		my @st = stat $path or return 0;
		return 0 unless $st[2] & 0001;
		last if $path eq '/';
		$path =~ s{/[^/]*/?$}{};
		$path = '/' if $path eq '';
	}
	return 1;
}

# Our Lua library as nginx's workers read it (%%LUA_LIB%%): a copy of the
# checkout's lib/ in the test's directory, readable by all, made once. A
# `require` in a worker (not only in init_by_lua, which the master runs as
# root) then works wherever the checkout lives.
sub lua_lib {
	my ($self) = @_;
	my $dst = "$self->{_testdir}/lua-lib";
	copy_readable($LUA_LIB, $dst) unless -d $dst;
	return $dst;
}

# Copies a directory tree: directories 0755, files 0644 (whatever the
# umask, whatever the modes of the original).
sub copy_readable {
	my ($from, $to) = @_;
	mkdir $to or die "mkdir $to: $!\n";
	chmod 0755, $to;
	opendir my $dh, $from or die "$from: $!\n";
	for my $name (grep { !/^\.\.?$/ } readdir $dh) {
		if (-d "$from/$name") {
			copy_readable("$from/$name", "$to/$name");
		} else {
			File::Copy::copy("$from/$name", "$to/$name") or die "copy $from/$name: $!\n";
			chmod 0644, "$to/$name";
		}
	}
	closedir $dh;
}

# What a test file needs, said once at its top: `has(qw/nginx module stream/)`.
# The module and nginx are what every test is about: without them the run
# stops (a skip would pass in silence). Other needs skip the file, saying
# why, when the nginx under test (or the machine) does not meet them.
sub has {
	my ($self, @what) = @_;
	for my $w (@what) {
		if ($w eq 'module' || $w eq 'nginx') {
			my $f = $w eq 'module' ? $MODULE : $NGINX;
			Test::More::BAIL_OUT("$f is missing: run scripts/build.sh") unless -e $f;
		} elsif ($w eq 'lua') {
			# Debian's Lua module loads only into Debian's nginx: against
			# another one (nginx 1.28 from source) the Lua tests do not apply.
			Test::More::plan(skip_all => "Debian's Lua module is built for Debian's nginx, not $NGINX")
				unless debian_nginx();
			# Installed by scripts/test.sh: a missing one must not pass as a skip.
			Test::More::BAIL_OUT("$LUA_MODULE is missing: apt-get install libnginx-mod-http-lua lua-resty-core")
				unless -f $LUA_MODULE && -f '/usr/share/lua/5.1/resty/core.lua';
		} elsif ($w eq 'stream') {
			# Built by scripts/build.sh with the http module: a missing one
			# must not pass as a skip.
			-f $_ or Test::More::BAIL_OUT("$_ is missing: run scripts/build.sh")
				for $STREAM_MODULE, $NGINX_STREAM_MODULE;
		} elsif ($w eq 'resolve') {
			# `server ... resolve` in open-source nginx: 1.27.3 and later.
			# scripts/test.sh runs the suite against nginx 1.28 too.
			my $v = nginx_version();
			Test::More::plan(skip_all => "nginx $v has no \"resolve\" (1.27.3+)")
				unless version_at_least($v, '1.27.3');
		} elsif ($w eq 'sticky') {
			# `sticky` and `drain` in open-source nginx: 1.29.6 and later.
			my $v = nginx_version();
			Test::More::plan(skip_all => "nginx $v has no sticky nor drain (1.29.6+)")
				unless version_at_least($v, '1.29.6');
		} elsif ($w eq 'debug') {
			# Debug lines (`error_log ... debug`) need nginx --with-debug.
			Test::More::plan(skip_all => 'nginx built without --with-debug')
				unless `$NGINX -V 2>&1` =~ /--with-debug/;
		} elsif ($w eq 'root') {
			Test::More::plan(skip_all => 'needs root') unless $> == 0;
		} elsif ($w eq 'debian_nginx') {
			# What drives or installs into /usr/sbin/nginx whatever nginx
			# the suite runs against (scripts/bench.sh, the Debian package).
			Test::More::plan(skip_all => "for Debian's nginx (/usr/sbin/nginx), not $NGINX")
				unless debian_nginx();
		} elsif ($w eq 'nginx_independent') {
			# A file whose code does not differ from one nginx to another
			# (pure logic, or nginx's fields read through the bindings
			# generated from each nginx's own headers). scripts/test.sh
			# runs the suite against Debian's nginx, then against nginx 1.28
			# with TEST_NGINX_DEPENDENT_ONLY=1: such a file runs in the
			# first pass only, for CI's time. By hand, or in
			# scripts/mainline.sh, it runs against any nginx.
			Test::More::plan(skip_all => "the same code as against Debian's nginx (TEST_NGINX_DEPENDENT_ONLY)")
				if $ENV{TEST_NGINX_DEPENDENT_ONLY} && !debian_nginx();
		} else {
			die "has(): unknown requirement \"$w\"\n";
		}
	}
	return $self;
}

# Whether the nginx under test is Debian's.
sub debian_nginx { $NGINX eq '/usr/sbin/nginx' }

# The version of the nginx under test, e.g. "1.28.3".
sub nginx_version {
	my $out = `$NGINX -v 2>&1`;
	my ($v) = $out =~ m{nginx/(\d+\.\d+\.\d+)};
	Test::More::BAIL_OUT("cannot tell the version of $NGINX: $out") unless $v;
	return $v;
}

sub version_at_least {
	my ($v, $min) = @_;
	my @v = split /\./, $v;
	my @m = split /\./, $min;
	for (0 .. 2) {
		return $v[$_] > $m[$_] if $v[$_] != $m[$_];
	}
	return 1;
}

sub plan {
	my ($self, $n) = @_;
	Test::More::plan(tests => $n + 1);
	$self->{_planned} = 1;
	return $self;
}

# A free loopback port for each symbolic port number, stable within a file.
# Ports come from 20000-29999 (below the kernel's ephemeral range, so no
# client socket takes one), and each is claimed with a lock file that only
# one process can create: two tests running at once never share a port, even
# between choosing it and starting nginx on it. Locks left by a process that
# died are taken over.
our $PORT_LOCKS = File::Spec->catdir(File::Spec->tmpdir(), 'lcp-test-ports');
my @port_locks;

sub port {
	my ($n) = @_;
	return $ports{$n} //= claim_port();
}

# "127.0.0.1:port" of a symbolic port number: a backend's address as
# nginx's configuration and status page write it.
sub addr { '127.0.0.1:' . port($_[0]) }

sub claim_port {
	mkpath($PORT_LOCKS);
	for (1 .. 1000) {
		my $p = 20000 + int(rand(10000));
		my $lock = "$PORT_LOCKS/$p";
		my $fh;
		if (!sysopen($fh, $lock, O_WRONLY | O_CREAT | O_EXCL)) {
			next unless stale_lock($lock);
			unlink $lock;
			sysopen($fh, $lock, O_WRONLY | O_CREAT | O_EXCL) or next;
		}
		print $fh $$;
		close $fh;
		push @port_locks, $lock;
		my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
			LocalPort => $p, Proto => 'tcp', ReuseAddr => 1);
		if ($s) {
			close $s;
			return $p;
		}
	}
	die "no free port in 20000-29999\n";
}

# A lock whose owner is gone (or unreadable for a minute: a writer that died
# between creating and writing it).
sub stale_lock {
	my ($lock) = @_;
	open my $fh, '<', $lock or return 0;
	my $pid = <$fh> // '';
	close $fh;
	return !kill(0, $pid) if $pid =~ /^\d+$/;
	return time() - (stat $lock)[9] > 60;
}

sub release_ports {
	unlink @port_locks;
	@port_locks = ();
}

sub write_file {
	my ($self, $name, $content) = @_;
	open my $fh, '>', "$self->{_testdir}/$name" or die "$name: $!\n";
	print $fh $content;
	close $fh;
	# Workers may read it (a Lua module of the test's): whatever the umask.
	chmod 0644, "$self->{_testdir}/$name";
	return $self;
}

# Dies when the file is missing: a test must not pass on an empty read.
# `has_file` asks first where absence is expected.
sub read_file {
	my ($self, $name) = @_;
	open my $fh, '<', "$self->{_testdir}/$name"
		or die "read_file: $self->{_testdir}/$name: $!\n";
	local $/;
	return <$fh> // '';
}

sub has_file {
	my ($self, $name) = @_;
	return -e "$self->{_testdir}/$name";
}

# Marks in error.log, to read what nginx logged after one:
#
#   my $mark = $t->log_mark();
#   ...;
#   like($t->log_since($mark), qr/.../);
#   my @lines = $t->log_lines($mark, qr/.../);
#
# A mark is the log's length (0 before nginx wrote it); reading after one
# dies when the log is missing.
sub log_mark {
	my ($self) = @_;
	return $self->has_file('error.log') ? length $self->read_file('error.log') : 0;
}

sub log_since {
	my ($self, $mark) = @_;
	return substr($self->read_file('error.log'), $mark);
}

# The lines after $mark matching $re, debug lines left out (the harness
# writes error.log at debug level).
sub log_lines {
	my ($self, $mark, $re) = @_;
	return grep { !/\[debug\]/ && /$re/ } split /\n/, $self->log_since($mark);
}

# load_module lines for Debian's Lua module (and the NDK it needs).
sub lua_modules {
	return "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
		. "load_module $LUA_MODULE;\n";
}

# The Lua balancer recipe of docs/lua.md, an `init_by_lua_block` for the
# http block (`%%LUA_RECIPE%%` in a configuration): `balance(id, servers,
# opts)` in balancer_by_lua (opts: lcp.declare's, optional), `release()` in
# log_by_lua.
sub lua_recipe {
	return <<'EOF';
    init_by_lua_block {
        lcp = require "resty.least_conn_persistent"
        balancer = require "ngx.balancer"
        function balance(id, servers, opts)
            local up = assert(lcp.declare(id, servers, opts))
            local ctx = ngx.ctx
            if ctx.lcp_token then
                lcp.release(ctx.lcp_token)
                ctx.lcp_token = nil
            else
                ctx.lcp_tried = {}
                balancer.set_more_tries(#up.servers - 1)
            end
            local server, token = up:pick(ctx.lcp_tried)
            if not server then
                ngx.log(ngx.ERR, "lcp pick: ", token)
                return ngx.exit(502)
            end
            ctx.lcp_token = token
            ctx.lcp_tried[server.index] = true
            assert(balancer.set_current_peer(server.host, server.port))
        end
        function release()
            local ctx = ngx.ctx
            if ctx.lcp_token then
                lcp.release(ctx.lcp_token)
                ctx.lcp_token = nil
            end
        end
    }
EOF
}

sub stream_modules {
	return "load_module $NGINX_STREAM_MODULE;\nload_module $STREAM_MODULE;\n";
}

# The main error log is written at `debug` (nginx here is built
# --with-debug), as in nginx's own test suite: every test runs every debug
# line nginx and the module write, so a debug path that crashes a worker
# ("[alert] ... exited on signal 11") fails the teardown check of any test.
# A check of what is logged at the usual levels gets its own error_log.
# TEST_NGINX_LOG_LEVEL sets another level: the benchmarks (scripts/bench/)
# log at `notice`, so that debug lines are not what they measure.
sub globals {
	my ($self) = @_;
	my $d = $self->{_testdir};
	my $level = $ENV{TEST_NGINX_LOG_LEVEL} // 'debug';
	return <<"EOF";
load_module $MODULE;
pid $d/nginx.pid;
error_log $d/error.log $level;
EOF
}

sub globals_http {
	my ($self) = @_;
	my $d = $self->{_testdir};
	return join('', map { "$_ $d/$_;\n    " } qw/client_body_temp_path
		proxy_temp_path fastcgi_temp_path uwsgi_temp_path scgi_temp_path/)
		. 'access_log off;';
}

sub expand {
	my ($self, $content) = @_;
	$content =~ s/%%TEST_GLOBALS%%/$self->globals()/ge;
	$content =~ s/%%LUA_MODULES%%/lua_modules()/ge;
	$content =~ s/%%STREAM_MODULES%%/stream_modules()/ge;
	$content =~ s/%%LUA_RECIPE%%/lua_recipe()/ge;
	$content =~ s/%%LUA_LIB%%/$self->lua_lib()/ge;
	$content =~ s/%%TEST_GLOBALS_HTTP%%/$self->globals_http()/ge;
	$content =~ s/%%TESTDIR%%/$self->{_testdir}/g;
	$content =~ s/127\.0\.0\.1:(8\d\d\d)/'127.0.0.1:' . port($1)/ge;
	$content =~ s/%%PORT_(\d+)%%/port($1)/ge;
	return $content;
}

sub write_file_expand {
	my ($self, $name, $content) = @_;
	return $self->write_file($name, $self->expand($content));
}

sub nginx_cmd {
	my ($self, @args) = @_;
	return ($NGINX, '-p', "$self->{_testdir}/", '-c',
		"$self->{_testdir}/nginx.conf", @args);
}

# `nginx -t`: (exit code, output).
sub test_config {
	my ($self) = @_;
	my @cmd = $self->nginx_cmd('-t');
	my $out = `@cmd 2>&1`;
	return ($? >> 8, $out);
}

sub run {
	my ($self) = @_;
	# No `nginx -t` first: it would load the configuration once more and
	# write that load's log lines too.
	my @cmd = $self->nginx_cmd();
	my $out = `@cmd 2>&1`;
	die "cannot start nginx:\n$out" if $?;
	$self->{_started} = 1;
	wait_until(sub { $self->master_pid() }, 5) or die "no nginx pid file\n";
	wait_until(sub { scalar $self->worker_pids() >= $self->workers() }, 5)
		or die "nginx workers did not start\n";
	# TCP listens only: a UDP one (`listen ... udp`) cannot be probed by a
	# connect; nginx has bound it before its workers start.
	for my $listen ($self->read_file('nginx.conf') =~ /listen\s+([\d.]+:\d+)(?![^;]*\budp\b)/g) {
		$self->waitforsocket($listen) or die "nginx does not listen on $listen\n";
	}
	return $self;
}

sub workers {
	my ($self) = @_;
	return $self->read_file('nginx.conf') =~ /worker_processes\s+(\d+)/ ? $1 : 1;
}

sub master_pid {
	my ($self) = @_;
	return undef unless $self->has_file('nginx.pid');
	my $pid = $self->read_file('nginx.pid');
	chomp $pid;
	return $pid =~ /^\d+$/ && kill(0, $pid) ? $pid : undef;
}

# Pids of the master's worker processes, old and new; of `$master` when
# given (the old master during a binary upgrade).
sub children {
	my ($self, $master) = @_;
	my %helper = map { ($_ => 1) } $self->cache_helpers($master);
	return grep { !$helper{$_} } $self->all_children($master);
}

# Pids of the master's cache manager and cache loader (`proxy_cache_path`).
# Their title says so, but not under valgrind (memcheck.sh), where every
# child's cmdline is valgrind's: the master's log names them too ("start
# cache manager process N", a [notice]).
sub cache_helpers {
	my ($self, $master) = @_;
	my @all = $self->all_children($master);
	my %logged;
	if ($self->read_file('nginx.conf') =~ /_cache_path\b/ && $self->has_file('error.log')) {
		%logged = map { ($_ => 1) }
			$self->read_file('error.log') =~ /start cache (?:manager|loader) process (\d+)/g;
	}
	return grep { $logged{$_} || titled_cache_helper($_) } @all;
}

sub titled_cache_helper {
	my ($pid) = @_;
	open my $c, '<', "/proc/$pid/cmdline" or return 0;
	return (<$c> // '') =~ /cache (manager|loader)/;
}

# Every child process of the master (or of `$master`).
sub all_children {
	my ($self, $master) = @_;
	$master //= $self->master_pid() or return ();
	my @c;
	for my $stat (glob '/proc/[0-9]*/stat') {
		open my $fh, '<', $stat or next;
		my $line = <$fh> // next;
		my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S (\d+)/ or next;
		push @c, $pid if $ppid == $master;
	}
	return @c;
}

# Workers of the running configuration. An old worker may not have retitled
# itself "shutting down" yet, so old ones are known by their pids instead.
sub worker_pids {
	my ($self) = @_;
	my $old = $self->{_old_workers} // {};
	return grep { !$old->{$_} } $self->children();
}

# Workers of earlier configurations that still run (draining connections).
sub old_worker_pids {
	my ($self) = @_;
	my $old = $self->{_old_workers} // {};
	return grep { $old->{$_} } $self->children();
}

# HUP, then wait until a full set of new workers runs. Dies at once if the
# master dies meanwhile.
sub reload {
	my ($self) = @_;
	my @old = $self->children();
	$self->{_old_workers}{$_} = 1 for @old;
	my $master = $self->master_pid() or die "reload: no master\n";
	kill 'HUP', $master;
	wait_until(sub { !kill(0, $master) || $self->worker_pids() >= $self->workers() }, 10);
	die "reload: the master ($master) died\n" unless kill 0, $master;
	$self->worker_pids() >= $self->workers()
		or die "reload: new workers did not start:\n" . join("\n",
			grep { /\[emerg\]/ } split /\n/, $self->read_file('error.log')) . "\n";
	# The master tells old workers to stop accepting ~100 ms after it starts
	# the new ones; until each has, it may still take new connections.
	wait_until(sub {
		my $log = $self->read_file('error.log');
		!grep { kill(0, $_) && $log !~ /\b$_#\d+: gracefully shutting down/ } @old;
	}, 10) or die "reload: old workers did not start shutting down\n";
	return $self;
}

# QUIT (graceful: workers finish their connections), then TERM, then KILL,
# each given a few seconds.
sub stop {
	my ($self) = @_;
	return $self unless $self->{_started};
	if (my $pid = $self->master_pid()) {
		for my $sig (qw/QUIT TERM KILL/) {
			kill $sig, $pid;
			last if wait_until(sub { !kill(0, $pid) }, $sig eq 'QUIT' ? 5 : 3);
		}
	}
	$self->{_started} = 0;
	return $self;
}

sub run_daemon {
	my ($self, $code, @args) = @_;
	my $pid = fork() // die "fork: $!\n";
	if ($pid == 0) {
		# _exit: a child never runs the parent's END blocks or destructors,
		# also when the daemon dies.
		$SIG{TERM} = 'DEFAULT';
		my $ok = eval { $code->(@args); 1 };
		print STDERR "daemon: $@" unless $ok;
		POSIX::_exit($ok ? 0 : 1);
	}
	push @{$self->{_daemons}}, $pid;
	return $self;
}

sub stop_daemons {
	my ($self) = @_;
	kill 'TERM', @{$self->{_daemons}};
	waitpid($_, 0) for @{$self->{_daemons}};
	$self->{_daemons} = [];
	return $self;
}

sub waitforsocket {
	my ($self, $peer) = @_;
	return wait_until(sub {
		IO::Socket::INET->new(Proto => 'tcp', PeerAddr => $peer);
	}, 5);
}

# Patterns of error.log lines the teardown check must not count.
sub alerts_allowed {
	my ($self, @re) = @_;
	push @{$self->{_allowed}}, @re;
	return $self;
}

sub alerts {
	my ($self) = @_;
	return () unless $self->has_file('error.log');
	my @lines = grep { /\[(alert|crit|emerg)\]/ } split /\n/,
		$self->read_file('error.log');
	for my $re (@{$self->{_allowed}}) {
		@lines = grep { !/$re/ } @lines;
	}
	return @lines;
}

sub DESTROY {
	my ($self) = @_;
	return if $$ != $self->{_pid};
	return if $self->{_destroyed}++;
	local $?;    # waitpid() below must not become the test's exit code
	$self->stop();
	$self->stop_daemons();
	if ($self->{_planned}) {
		my @a = $self->alerts();
		Test::More::is(join("\n", @a), '', 'no alerts in error.log');
	}
	if ($ENV{TEST_NGINX_CATLOG} && $self->has_file('error.log')) {
		print STDERR $self->read_file('error.log');
	}
}

# Whether the test file, at its end (exiting with $exit), has failed: a
# failed test, a death, or not as many tests as planned.
sub test_failed {
	my ($exit) = @_;
	my $tb = Test::More->builder;
	return 1 if !$tb->is_passing || $exit;
	my $planned = $tb->expected_tests;
	return $planned && $tb->current_test != $planned;
}

# The last $LOG_LINES entries at [warn] and above of each nginx error log in
# the test's directory (error.log, and those a test names itself), as diag:
# a failed file says why in CI's output. An entry is its line and the lines
# without a time stamp after it (a Lua error's "no file ..." list).
our $LOG_LINES = 50;

sub diag_log_errors {
	my ($dir) = @_;
	my $stamp = qr{^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\]};
	for my $f (sort glob "$dir/*.log") {
		open my $fh, '<', $f or next;
		my (@entries, $in);
		while (my $line = <$fh>) {
			if ($line =~ $stamp) {
				$in = $1 =~ /^(?:emerg|alert|crit|error|warn)$/;
				push @entries, [] if $in;
			}
			push @{$entries[-1]}, $line if $in && @{$entries[-1]} < 20;
		}
		close $fh;
		next unless @entries;
		my $all = @entries;
		splice @entries, 0, $all - $LOG_LINES if $all > $LOG_LINES;
		Test::More::diag("$f: " . ($all > @entries ? "the last " . @entries . " of $all" : $all)
			. ($all == 1 ? ' message' : ' messages') . " at [warn] and above:");
		for (map { @$_ } @entries) {
			chomp;
			# Bytes a backend sent may be in a line: printable ones only.
			s/([^\x20-\x7e\t])/sprintf('\\x%02x', ord $1)/ge;
			$_ = substr($_, 0, 2000) . '...' if length > 2000;
			Test::More::diag("  $_");
		}
	}
}

###############################################################################

# Polls `$cond` until it is true or `$timeout` seconds pass; returns its value.
sub wait_until {
	my ($cond, $timeout) = @_;
	my $end = time() + ($timeout // 5) * $SLOW;
	while (1) {
		my $v = $cond->();
		return $v if $v;
		return undef if time() > $end;
		sleep 0.05;
	}
}

# One HTTP/1.0 exchange with nginx on port(8080); returns the raw response.
# Options: port, addr (127.0.0.1 unless given), host, start (return the socket after sending), timeout
# (seconds for the connect and for the whole reply; 10 unless given).
sub http_get {
	my ($uri, %opts) = @_;
	my $host = $opts{host} // 'localhost';
	return http("GET $uri HTTP/1.0\r\nHost: $host\r\n\r\n", %opts);
}

sub http {
	my ($request, %opts) = @_;
	my $timeout = ($opts{timeout} // 10) * $SLOW;
	my $s = IO::Socket::INET->new(Proto => 'tcp', Timeout => $timeout,
		PeerAddr => ($opts{addr} // '127.0.0.1') . ':' . ($opts{port} // port(8080)))
		or die "connect: $!\n";
	$s->autoflush(1);
	print $s $request;
	return $s if $opts{start};
	my $reply = http_read($s, $timeout);
	close $s;
	return $reply;
}

# Reads until the peer closes; dies when that takes over $timeout seconds.
sub http_read {
	my ($s, $timeout) = @_;
	$timeout //= 10;
	my $end = time() + $timeout;
	my $sel = IO::Select->new($s);
	my $reply = '';
	while (1) {
		my $left = $end - time();
		die "http: no complete reply within $timeout s\n"
			if $left <= 0 || !$sel->can_read($left);
		my $got = sysread($s, $reply, 65536, length $reply);
		die "http: read: $!\n" unless defined $got;
		return $reply if $got == 0;
	}
}

1;
