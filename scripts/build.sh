#!/usr/bin/env bash
# Builds the modules (http, and stream as its own file) against the nginx
# that will load them.
#
# By default that is Debian's /usr/sbin/nginx: its nginx-dev package ships the
# headers and `configure` with the flags Debian used, so configuring a copy of
# that tree gives the objs/ directory (ngx_auto_config.h) the module must be
# compiled against to be binary compatible.
#
# nginx 1.28 from source: scripts/build.sh --nginx=1.28 builds it from the
# nginx-src crate into build/nginx-1.28/ and the module against it, into
# target/nginx-1.28/.
#
# Another nginx, configured and built from source (e.g. mainline, see
# scripts/mainline.sh): scripts/build.sh --nginx=/path/to/nginx-source builds
# the modules against that tree (its objs/ must exist) into
# target/nginx-<version>/release/ (both .so files there).
#
# Or set everything yourself: NGINX_SOURCE_DIR=/path/to/nginx
# NGINX_BUILD_DIR=/path/to/nginx/objs scripts/build.sh
#
# --lock-stats (after any --nginx=): the http module only, with the
# `lock-stats` feature (zone mutex hold times in the error log, for
# scripts/bench/scale.pl; never for packages), into a target directory of
# its own (target/lock-stats/, or target/nginx-<version>/lock-stats/): the
# normal build outputs are left as they are.
#
# --crash-points (with any of the above): the crash tests' build (cargo
# feature `crash-points`, src/core/crash.rs), both .so files in a target
# directory of their own, `crash-points/` inside the usual one
# (target/crash-points/release/, target/nginx-1.28/crash-points/release/;
# scripts/env.sh names them CRASH_MODULE_SO etc.), so the normal modules are
# left as they are. Never for packages.
. "$(dirname "$0")/env.sh"

# --crash-points may come anywhere; everything else goes on as before.
crash_points=
args=()
for a in "$@"; do
    if [ "$a" = --crash-points ]; then crash_points=1; else args+=("$a"); fi
done
set -- "${args[@]+"${args[@]}"}"

so="$MODULE_SO"
stream_so="$STREAM_MODULE_SO"
if [ "${1:-}" = "--nginx=1.28" ]; then
    shift
    nginx_128_env
    so="$MODULE_128_SO"
    stream_so="$STREAM_MODULE_128_SO"
elif [ "${1:-}" = "--nginx=debian" ]; then
    shift
    nginx_build_env
elif [[ "${1:-}" == --nginx=?* ]]; then
    # Any other value: a configured nginx source tree.
    nginx_source_env "${1#--nginx=}"
    shift
    so="$CARGO_TARGET_DIR/release/libngx_http_least_conn_persistent_module.so"
    stream_so="$CARGO_TARGET_DIR/release/libngx_stream_least_conn_persistent_module.so"
else
    nginx_build_env
fi
cd "$ROOT"
if [ "${1:-}" = "--lock-stats" ]; then
    shift
    target="${CARGO_TARGET_DIR:-$ROOT/target}/lock-stats"
    CARGO_TARGET_DIR="$target" cargo build --release --features lock-stats "$@"
    echo ">> built $target/release/libngx_http_least_conn_persistent_module.so (lock-stats)" >&2
    exit 0
fi
features=()
if [ -n "$crash_points" ]; then
    # The same names, one directory down: target/.../crash-points/release/.
    target="${CARGO_TARGET_DIR:-$ROOT/target}/crash-points"
    export CARGO_TARGET_DIR="$target"
    so="${so%/release/*}/crash-points/release/${so##*/}"
    stream_so="${stream_so%/release/*}/crash-points/release/${stream_so##*/}"
    features=(--features crash-points)
fi
cargo build --release "${features[@]+"${features[@]}"}" "$@"
echo ">> built $so" >&2
# The stream module: the same crate with the `stream` feature, in its own
# target directory (the two builds differ in every file).
target="${CARGO_TARGET_DIR:-$ROOT/target}"
stream_features=stream${crash_points:+,crash-points}
CARGO_TARGET_DIR="$target/stream" cargo build --release --features "$stream_features" "$@"
cp "$target/stream/release/libngx_http_least_conn_persistent_module.so" "$stream_so.tmp"
mv "$stream_so.tmp" "$stream_so"
echo ">> built $stream_so" >&2
