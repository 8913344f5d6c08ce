#!/usr/bin/env bash
# Builds an nginx from its sources (mainline, say: CI cannot reach it, so
# this is run by hand, never by scripts/test.sh), the modules against it, and
# runs the test suite against the two.
#
#   scripts/mainline.sh [--tag=TAG] [--dir=DIR] [--no-test] SOURCE [t/FILE.t ...]
#
# SOURCE: an nginx git repository (bare or not; the newest release-* tag is
# built unless --tag names another), or an nginx source tree (configured in
# place). nginx is built outside the project, in DIR
# (${TMPDIR:-/tmp}/lcp-nginx-<version> unless given): DIR/src, installed in
# DIR/nginx; once per version (a stamp records the configure flags, the
# same as scripts/build.sh --nginx=1.28 uses). The modules go to
# target/nginx-<version>/release/ (scripts/build.sh --nginx=<source dir>).
#
# The suite: the given test files, else all of t/ but status_html.t when
# chromium is missing (it would stop the run). The Lua tests, package.t and
# bench_quick.t skip themselves there (they are for Debian's nginx).
. "$(dirname "$0")/env.sh"

# The usage line, then what was wrong (if said).
usage() {
    echo "usage: scripts/mainline.sh [--tag=TAG] [--dir=DIR] [--no-test] NGINX_GIT_OR_SOURCE_DIR [t/FILE.t ...]" >&2
    [ $# -eq 0 ] || echo "scripts/mainline.sh: $*" >&2
    exit 2
}

tag="" dir="" test=1 source=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag=?*) tag=${1#--tag=} ;;
        --dir=?*) dir=${1#--dir=} ;;
        --no-test) test=0 ;;
        -*) usage ;;
        *) if [ -z "$source" ]; then source=$1; else break; fi ;;
    esac
    shift
done
[ -n "$source" ] || usage
[ -d "$source" ] || usage "no directory $source"
files=("$@")
for f in "${files[@]}"; do
    [ -f "$ROOT/$f" ] || [ -f "$f" ] || usage "no test file $f"
done

ensure_packages libclang-dev clang pkg-config build-essential libpcre2-dev libssl-dev zlib1g-dev perl openssl
ensure_rust

# The nginx version of a source tree.
version_of() {
    sed -n 's/^#define NGINX_VERSION *"\(.*\)"$/\1/p' "$1/src/core/nginx.h"
}

# Where the sources come from: a tree, or a tag of a repository.
if [ -f "$source/auto/configure" ] && [ -f "$source/src/core/nginx.h" ]; then
    [ -z "$tag" ] || usage "--tag is for a git repository, not a source tree"
    src=$(cd "$source" && pwd)
    version=$(version_of "$src")
    dir=${dir:-${TMPDIR:-/tmp}/lcp-nginx-$version}
elif git --git-dir="$source" rev-parse --git-dir >/dev/null 2>&1 \
    || git -C "$source" rev-parse --git-dir >/dev/null 2>&1; then
    gitdir=$(git --git-dir="$source" rev-parse --absolute-git-dir 2>/dev/null \
        || git -C "$source" rev-parse --absolute-git-dir)
    tag=${tag:-$(git --git-dir="$gitdir" tag -l 'release-*' | sort -V | tail -1)}
    [ -n "$tag" ] || { echo "scripts/mainline.sh: no release-* tag in $source" >&2; exit 1; }
    version=${tag#release-}
    dir=${dir:-${TMPDIR:-/tmp}/lcp-nginx-$version}
    src="$dir/src"
    if [ ! -f "$src/src/core/nginx.h" ]; then
        echo ">> nginx $tag from $gitdir into $src" >&2
        mkdir -p "$src"
        git --git-dir="$gitdir" archive "$tag" | tar -x -C "$src"
    fi
else
    usage "$source is neither an nginx source tree nor a git repository"
fi

prefix="$dir/nginx"
flags=(--prefix="$prefix" --with-compat --with-debug --with-threads
    --with-http_ssl_module --with-http_v2_module --with-http_realip_module
    --with-http_stub_status_module --with-stream=dynamic --with-stream_ssl_module)
stamp="$src/objs/.lcp-built-$(echo "${flags[*]}" | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ] || [ ! -x "$prefix/sbin/nginx" ]; then
    echo ">> building nginx $version in $src, installing in $prefix (log: $dir/build.log)" >&2
    mkdir -p "$dir"
    (
        cd "$src"
        ./auto/configure "${flags[@]}" && make -j"$(nproc)" && make install
    ) >"$dir/build.log" 2>&1 || { tail -30 "$dir/build.log" >&2; exit 1; }
    touch "$stamp"
fi
"$prefix/sbin/nginx" -v

"$ROOT/scripts/build.sh" --nginx="$src"
[ "$test" = 1 ] || exit 0

so="$ROOT/target/nginx-$version/release/libngx_http_least_conn_persistent_module.so"
cd "$ROOT"
if [ ${#files[@]} -eq 0 ]; then
    mapfile -t files < <(find t -name '*.t' | sort)
    if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
        echo ">> chromium is missing: t/status_html.t left out" >&2
        mapfile -t files < <(printf '%s\n' "${files[@]}" | grep -v '^t/status_html\.t$')
    fi
fi
echo ">> prove against nginx $version: ${files[*]}" >&2
TEST_NGINX_BINARY="$prefix/sbin/nginx" TEST_NGINX_MODULE="$so" prove "${files[@]}"
