#!/usr/bin/env bash
# Checks that dependencies in src/ point one way:
#   http (front-ends) -> shared -> core, with ngx (the nginx edge) used by
#   front-ends and shared; core uses no nginx type at all; that no two
#   source files import each other; and that CONTRIBUTING.md's layout lists
#   every source file.
set -euo pipefail
cd "$(dirname "$0")/../src"
fail=0
forbid() {
    local dir=$1 pattern=$2 why=$3 hits
    hits=$(grep -rnE "$pattern" "$dir" || true)
    if [ -n "$hits" ]; then
        echo "layout: $why:" >&2
        echo "$hits" >&2
        fail=1
    fi
}
forbid core '\bnginx_sys\b|(^|[^:])\bngx::|crate::(ngx|shared|http|stream|lua)\b' "src/core must not use nginx or the layers above it"
forbid ngx 'crate::(shared|http|stream|lua)\b' "src/ngx must not use shared state or front-ends"
forbid shared 'crate::(http|stream|lua)\b' "src/shared must not use a front-end"
forbid http 'crate::(stream|lua)\b' "front-ends must not use each other"
forbid stream 'crate::(http|lua)\b' "front-ends must not use each other"

# No two source files import each other: a circle means what both need
# belongs in a third file they both import. Imports are `use` paths and
# paths in code (`crate::`, `super::`, `self::`) resolved to the file of the
# longest module path that exists.
circles=$(perl -e '
    use strict; use warnings; use File::Find;
    my (%file, %edges);
    find({ no_chdir => 1, wanted => sub {
        return unless /\.rs$/;
        my $m = $File::Find::name; $m =~ s{^\./}{}; $m =~ s{\.rs$}{};
        my @p = split m{/}, $m;
        pop @p if $p[-1] eq "mod";
        @p = () if "@p" eq "lib";
        $file{join "/", @p} = $File::Find::name;
    } }, ".");
    sub resolve { my @p = @_; while (@p) { my $k = join "/", @p; return $k if exists $file{$k}; pop @p } undef }
    for my $mod (keys %file) {
        my $f = $file{$mod};
        open my $fh, "<", $f or die "$f: $!";
        my $src = do { local $/; <$fh> };
        $src =~ s{//[^\n]*}{}g;
        my @mod = length $mod ? split(m{/}, $mod) : ();
        my $is_mod = $f =~ m{(?:/mod|^\./lib)\.rs$};
        my @parent = $is_mod ? @mod : @mod[0 .. $#mod - 1];
        while ($src =~ /\b(crate|super|self)((?:::\w+)+)(::\{([^}]*)\})?/g) {
            my ($kind, $path, $brace) = ($1, $2, $4);
            my @base = $kind eq "crate" ? () : $kind eq "super" ? @parent[0 .. $#parent - 1] : @mod;
            $kind eq "super" and not $is_mod and @base = @parent;
            my @segs = grep { length } split /::/, $path;
            my @targets = ([@base, @segs]);
            if (defined $brace) {
                push @targets, [@base, @segs, grep { length && $_ ne "self" } map { s/\s//gr } split /::/]
                    for split /,/, $brace;
            }
            for my $t (@targets) {
                my $r = resolve(@$t);
                $edges{$mod}{$r} = 1 if defined $r && length $r && $r ne $mod;
            }
        }
    }
    for my $a (sort keys %edges) {
        for my $b (sort keys %{ $edges{$a} }) {
            print "src/$a <-> src/$b\n" if $a lt $b && $edges{$b}{$a};
        }
    }
')
if [ -n "$circles" ]; then
    echo "layout: source files that import each other:" >&2
    echo "$circles" >&2
    fail=1
fi

# CONTRIBUTING.md's layout lists every source file, and nothing else.
listed=$(grep -oE '^- `src/[^`]+\.rs`' ../CONTRIBUTING.md | sed 's/^- `//; s/`$//' | sort)
present=$(cd .. && find src -name '*.rs' | sort)
if [ "$listed" != "$present" ]; then
    echo "layout: CONTRIBUTING.md's layout and the tree differ (< listed only, > present only):" >&2
    diff <(echo "$listed") <(echo "$present") | grep '^[<>]' >&2
    fail=1
fi
[ "$fail" = 0 ] && echo "layout: core <- shared <- http, stream, lua; ngx beside; no circle; CONTRIBUTING.md lists every file: ok"
exit "$fail"
