package Test::Nginx::Browser;

# A real browser for tests: Debian's headless Chromium, driven over the
# Chrome DevTools Protocol (its WebSocket, with the frame helpers of
# Test::Nginx::Backend), so that a test reads the page as rendered and sees
# it change on its own (a page that refreshes itself is never reloaded by
# the test).
#
#   my $b = Test::Nginx::Browser->launch($url, port => port(8095), dir => $t->testdir);
#   my $rows = $b->js('JSON.stringify(...)');     # the value, decoded
#   $b->quit;

use warnings;
use strict;

use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64 qw/encode_base64 decode_base64/;
use POSIX qw/WNOHANG/;
use Time::HiRes qw/sleep time/;

use Test::Nginx::Backend;

our $CHROMIUM = $ENV{TEST_NGINX_CHROMIUM} // '/usr/bin/chromium';

sub available { -x $CHROMIUM }

# One GET to DevTools' HTTP endpoint; its body, or undef. DevTools keeps
# the connection open: the body is read by its Content-Length.
sub http_local {
	my ($port, $path) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 2) or return undef;
	syswrite $s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\n\r\n";
	my ($buf, $end) = ('', time() + 5);
	my $sel = IO::Select->new($s);
	while (time() < $end) {
		if ($buf =~ /\A(.*?)\r\n\r\n/s) {
			my $head = $1;
			my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
			my $body = substr($buf, length($head) + 4);
			return $body if defined $len && length $body >= $len;
		}
		$sel->can_read(0.5) or next;
		sysread($s, $buf, 65536, length $buf) or last;
	}
	return undef;
}

# Starts Chromium on $url; dies unless its DevTools answer within 30 s.
sub launch {
	my ($class, $url, %o) = @_;
	my $port = $o{port} or die "browser: a port for DevTools is needed\n";
	my $dir = "$o{dir}/chromium";
	mkdir $dir;
	my $pid = fork // die "fork: $!\n";
	if (!$pid) {
		# Its own process group: close() stops Chromium's helpers with it.
		setpgrp(0, 0);
		open STDOUT, '>', "$dir/out.log";
		open STDERR, '>&', \*STDOUT;
		exec $CHROMIUM, '--headless=new', '--no-sandbox', '--disable-gpu',
			'--no-first-run', '--disable-extensions', '--disable-background-networking',
			"--remote-debugging-port=$port", "--user-data-dir=$dir/profile",
			'--window-size=1100,800', $url;
		exit 127;
	}
	my $self = bless { pid => $pid, port => $port, id => 0 }, $class;
	my $end = time() + 30;
	my $ws;
	while (time() < $end) {
		my $list = http_local($port, '/json/list');
		my $pages = eval { decode_json($list // '') } // [];
		my ($page) = grep { $_->{type} eq 'page' } @$pages;
		if ($page && $page->{webSocketDebuggerUrl}) {
			($ws) = $page->{webSocketDebuggerUrl} =~ m{^ws://[^/]+(/.*)$};
			last;
		}
		sleep 0.2;
	}
	$ws or do { $self->quit; die "browser: no DevTools page on port $port\n" };
	$self->connect($ws);
	return $self;
}

sub connect {
	my ($self, $path) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$self->{port}", Timeout => 5)
		or die "browser: DevTools connect: $!\n";
	my $key = encode_base64(join('', map { chr(int(rand(256))) } 1 .. 16), '');
	syswrite $s, "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$self->{port}\r\nUpgrade: websocket\r\n"
		. "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n";
	my $buf = '';
	my $sel = IO::Select->new($s);
	while ($buf !~ /\r\n\r\n/) {
		$sel->can_read(5) or die "browser: no DevTools handshake\n";
		sysread($s, $buf, 4096, length $buf) or die "browser: DevTools closed\n";
	}
	$buf =~ m{^HTTP/1\.1 101 } or die "browser: DevTools refused the WebSocket: $buf\n";
	$self->{sock} = $s;
	$self->{buf} = $buf =~ s/^.*?\r\n\r\n//sr;
}

# Sends a DevTools command and returns its result (dies on an error).
sub command {
	my ($self, $method, %params) = @_;
	my $id = ++$self->{id};
	my $msg = encode_json({ id => $id, method => $method, params => \%params });
	syswrite $self->{sock}, Test::Nginx::Backend::encode_frame(0x1, $msg, 1);
	my $sel = IO::Select->new($self->{sock});
	my $end = time() + 15;
	while (time() < $end) {
		while (my ($op, $payload, $used) = Test::Nginx::Backend::decode_frame($self->{buf})) {
			substr($self->{buf}, 0, $used) = '';
			next unless $op == 0x1;
			my $m = decode_json($payload);
			next unless ($m->{id} // 0) == $id;
			die "browser: $method: $m->{error}{message}\n" if $m->{error};
			return $m->{result};
		}
		$sel->can_read(1) or next;
		sysread($self->{sock}, $self->{buf}, 65536, length $self->{buf})
			or die "browser: DevTools closed\n";
	}
	die "browser: no answer to $method\n";
}

# Evaluates a JavaScript expression in the page; returns its value.
sub js {
	my ($self, $expr) = @_;
	my $r = $self->command('Runtime.evaluate', expression => $expr, returnByValue => JSON::PP::true);
	die "browser: $r->{exceptionDetails}{text}\n" if $r->{exceptionDetails};
	return $r->{result}{value};
}

# A PNG of the page as rendered.
sub screenshot {
	my ($self, $file) = @_;
	my $r = $self->command('Page.captureScreenshot', format => 'png');
	open my $fh, '>:raw', $file or die "browser: $file: $!\n";
	print $fh decode_base64($r->{data});
	close $fh;
}

sub quit {
	my ($self) = @_;
	CORE::close($self->{sock}) if $self->{sock};
	if ($self->{pid}) {
		kill 'TERM', -$self->{pid};
		my $end = time() + 5;
		sleep 0.1 while time() < $end && waitpid($self->{pid}, WNOHANG) == 0;
		kill 'KILL', -$self->{pid};
		waitpid($self->{pid}, 0);
		delete $self->{pid};
	}
}

sub DESTROY { $_[0]->quit }

1;
