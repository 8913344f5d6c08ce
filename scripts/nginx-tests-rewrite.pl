#!/usr/bin/perl
# Rewrites one nginx-tests file (its nginx.conf heredocs) for
# scripts/nginx-tests.sh:
#
#   nginx-tests-rewrite.pl least_conn IN.t OUT.t
#       `least_conn;` put in every upstream block that has no balancing
#       method (blocks with a method keep theirs).
#   nginx-tests-rewrite.pl ours IN.t OUT.t HTTP_SO STREAM_SO
#       `least_conn_persistent;` in place of `least_conn;` and in every
#       upstream block with no method; a least_conn_persistent_zone in every
#       http {} and stream {}; load_module lines for both modules after
#       %%TEST_GLOBALS%% (so after the harness' own load_module lines, as
#       ours needs nginx's stream module loaded first).
#
# NGINX_TESTS_OURS_PARAMS (ours): parameters for every least_conn_persistent
# line, e.g. `index=1` (every list picks through a pick index).
#
# The method goes first in the block, on the line of its `{`, so that it
# comes before `keepalive` and the line numbers nginx reports stay those of
# the original file. Prints one summary line on stdout:
#   upstreams=N added=N replaced=N other=N zones=N load_module=N

use warnings;
use strict;

my ($mode, $in, $out, $http_so, $stream_so) = @ARGV;
die "usage: nginx-tests-rewrite.pl least_conn|ours IN.t OUT.t [HTTP_SO STREAM_SO]\n"
    unless defined $out && ($mode eq 'least_conn' || ($mode eq 'ours' && defined $stream_so));

my $params = $mode eq 'ours' && $ENV{NGINX_TESTS_OURS_PARAMS} ? " $ENV{NGINX_TESTS_OURS_PARAMS}" : '';
my $method = $mode eq 'ours' ? "least_conn_persistent$params" : 'least_conn';
# Balancing methods of nginx (least_time: 1.31+ and nginx plus): a block
# with one of these keeps it (least_conn becomes ours in `ours` mode).
# `sticky` (1.29.6+) is none: it wraps the block's method, which goes before
# it, so a block with sticky alone gets one like any other.
my %methods = map { $_ => 1 } qw/least_conn hash ip_hash random least_time/;
my %count = (upstreams => 0, added => 0, replaced => 0, other => 0, zones => 0, load_module => 0);

open my $fh, '<', $in or die "$in: $!\n";
my $text = do { local $/; <$fh> };
close $fh;

# Heredocs: `<<'EOF'`, `<<EOF`, `<< "EOF"` ... up to a line holding only
# the terminator. Only those that look like an nginx configuration change.
$text =~ s{(<<\s*(['"]?)(\w+)\2[^\n]*\n)(.*?\n)(\3\n)}{$1 . conf($4) . $5}gse;

open $fh, '>', $out or die "$out: $!\n";
print $fh $text;
close $fh or die "$out: $!\n";
print join(' ', map { "$_=$count{$_}" } qw/upstreams added replaced other zones load_module/), "\n";

sub conf {
    my ($c) = @_;
    return $c unless $c =~ /%%TEST_GLOBALS|^\s*(?:http|stream|upstream\s+\S+)\s*\{/m;

    $c = upstreams($c);
    return $c unless $mode eq 'ours';

    $count{load_module} += $c =~ s{^(\s*%%TEST_GLOBALS%%)[ \t]*$}
        {$1 load_module $stream_so; load_module $http_so;}gm;
    $c =~ s{^(\s*(http|stream)\s*\{)}
        {$count{zones}++; "$1 least_conn_persistent_zone lcp_nginx_tests_$2 1m;"}gme;
    return $c;
}

# Every `upstream NAME {` at the start of a statement, up to its closing
# brace (upstream blocks hold no nested blocks; comments are skipped).
sub upstreams {
    my ($c) = @_;
    my $res = '';
    while ($c =~ /(?:^|(?<=[\s;{]))upstream\s+[^\s{;]+\s*\{/gm) {
        my $open = $+[0];
        my $close = closing_brace($c, $open);
        die "$in: upstream block with no closing brace\n" unless defined $close;
        $res .= substr($c, 0, $open) . block(substr($c, $open, $close - $open));
        $c = substr($c, $close);
        pos($c) = 0;
    }
    return $res . $c;
}

sub closing_brace {
    my ($c, $i) = @_;
    my $depth = 1;
    pos($c) = $i;
    while ($c =~ /\G(#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^{}#"']+|[{}]|["'])/gc) {
        my $tok = $1;
        $depth++ if $tok eq '{';
        $depth-- if $tok eq '}';
        return pos($c) - 1 if $depth == 0;
    }
    return undef;
}

# The block's body (after `{`, up to its `}`): the first word of each
# statement tells whether it has a method.
sub block {
    my ($body) = @_;
    $count{upstreams}++;
    (my $code = $body) =~ s/#[^\n]*//g;
    my @found = grep { $methods{$_} } map { /^\s*(\S+)/ ? $1 : () } split /;/, $code;
    if (!@found) {
        $count{added}++;
        return " $method;$body";
    }
    if ($mode eq 'ours' && grep { $_ eq 'least_conn' } @found) {
        $count{replaced} += $body =~ s/(^|[\s;{])least_conn(\s*;)/$1$method$2/g;
        return $body;
    }
    $count{other}++;
    return $body;
}
