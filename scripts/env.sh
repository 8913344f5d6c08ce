# Sourced by the other scripts: where things live and how to install them.
# shellcheck shell=bash
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR="$ROOT/build"
NGINX_TREE="$BUILD_DIR/nginx-src"
MODULE_SO="$ROOT/target/release/libngx_http_least_conn_persistent_module.so"
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
# nginx 1.28 built from the nginx-src crate (scripts/build.sh --nginx=1.28).
NGINX_128_PREFIX="$BUILD_DIR/nginx-1.28"
NGINX_128_TREE="$BUILD_DIR/nginx-1.28-src"
NGINX_128_BIN="$NGINX_128_PREFIX/sbin/nginx"
MODULE_128_SO="$ROOT/target/nginx-1.28/release/libngx_http_least_conn_persistent_module.so"
# The stream module: the same crate built with the `stream` feature, in a
# target directory of its own, copied to this name beside the http one.
STREAM_MODULE_SO="$ROOT/target/release/libngx_stream_least_conn_persistent_module.so"
STREAM_MODULE_128_SO="$ROOT/target/nginx-1.28/release/libngx_stream_least_conn_persistent_module.so"
# The http module with the `lock-stats` feature (scripts/build.sh --lock-stats),
# for the benchmark's zone mutex hold times.
LOCK_STATS_SO="$ROOT/target/lock-stats/release/libngx_http_least_conn_persistent_module.so"
LOCK_STATS_128_SO="$ROOT/target/nginx-1.28/lock-stats/release/libngx_http_least_conn_persistent_module.so"
# nginx's own stream module, which must be loaded before ours.
NGINX_STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so
NGINX_128_STREAM_SO="$NGINX_128_PREFIX/modules/ngx_stream_module.so"
export ROOT BUILD_DIR NGINX_TREE MODULE_SO NGINX_BIN NGINX_128_PREFIX NGINX_128_TREE NGINX_128_BIN MODULE_128_SO
export STREAM_MODULE_SO STREAM_MODULE_128_SO NGINX_STREAM_SO NGINX_128_STREAM_SO
export LOCK_STATS_SO LOCK_STATS_128_SO
# The crash tests' build (scripts/build.sh [--nginx=1.28] --crash-points):
# the same two modules with the `crash-points` feature, one directory down.
CRASH_MODULE_SO="$ROOT/target/crash-points/release/libngx_http_least_conn_persistent_module.so"
CRASH_STREAM_MODULE_SO="$ROOT/target/crash-points/release/libngx_stream_least_conn_persistent_module.so"
CRASH_MODULE_128_SO="$ROOT/target/nginx-1.28/crash-points/release/libngx_http_least_conn_persistent_module.so"
CRASH_STREAM_MODULE_128_SO="$ROOT/target/nginx-1.28/crash-points/release/libngx_stream_least_conn_persistent_module.so"
export CRASH_MODULE_SO CRASH_STREAM_MODULE_SO CRASH_MODULE_128_SO CRASH_STREAM_MODULE_128_SO

# Installs Debian packages that are missing; does nothing when all are there.
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo ">> installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 && return 0
    [ -x "$HOME/.cargo/bin/cargo" ] && { export PATH="$HOME/.cargo/bin:$PATH"; return 0; }
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
}

# Configures a copy of Debian's nginx-dev tree (once per nginx-dev version)
# and exports NGINX_SOURCE_DIR/NGINX_BUILD_DIR for nginx-sys. Skipped when
# the caller already points them at another nginx.
nginx_build_env() {
    ensure_packages nginx nginx-dev libnginx-mod-stream libclang-dev clang pkg-config \
        build-essential libpcre2-dev libssl-dev zlib1g-dev
    ensure_rust
    [ -n "${NGINX_SOURCE_DIR:-}" ] && return 0
    local stamp
    stamp="$NGINX_TREE/.configured-$(dpkg-query -W -f='${Version}' nginx-dev)-stream"
    if [ ! -f "$stamp" ]; then
        echo ">> configuring a copy of /usr/share/nginx/src" >&2
        rm -rf "$NGINX_TREE"
        mkdir -p "$BUILD_DIR"
        cp -a /usr/share/nginx/src "$NGINX_TREE"
        (
            cd "$NGINX_TREE"
            # shellcheck disable=SC1091
            . ./conf_flags
            # Debian's flags leave stream out; its nginx has it as a dynamic
            # module (libnginx-mod-stream), built with these: the stream
            # module of ours needs the bindings, and the same structures.
            ./configure "${NGX_CONF_FLAGS[@]}" --with-stream=dynamic --with-stream_ssl_module \
                --with-stream_ssl_preread_module --with-stream_realip_module \
                >"$BUILD_DIR/configure.log" 2>&1
        ) || { tail -20 "$BUILD_DIR/configure.log" >&2; exit 1; }
        touch "$stamp"
    fi
    export NGINX_SOURCE_DIR="$NGINX_TREE"
    export NGINX_BUILD_DIR="$NGINX_TREE/objs"
}

# Builds nginx 1.28 from the nginx-src crate's vendored tree (once: a stamp
# records the crate version) into build/nginx-1.28/ (sbin/nginx, and
# modules/ngx_stream_module.so: stream is dynamic), then exports what
# nginx-sys needs to build the module against that tree, into its own
# target directory.
nginx_128_env() {
    ensure_packages libclang-dev clang pkg-config build-essential libpcre2-dev libssl-dev zlib1g-dev
    ensure_rust
    local manifest="$ROOT/scripts/nginx-1.28/Cargo.toml"
    local stamp="$NGINX_128_TREE/.built-nginx-src-1.28.5"
    if [ ! -f "$stamp" ] || [ ! -x "$NGINX_128_BIN" ]; then
        echo ">> building nginx 1.28 from the nginx-src crate" >&2
        cargo fetch --manifest-path "$manifest" -q
        local src
        src=$(cargo metadata --format-version 1 --manifest-path "$manifest" | perl -MJSON::PP -0ne '
            for (@{decode_json($_)->{packages}}) {
                next unless $_->{name} eq "nginx-src";
                (my $d = $_->{manifest_path}) =~ s{/Cargo\.toml$}{/nginx};
                print $d;
            }')
        [ -d "$src" ] || { echo "nginx-src not found" >&2; exit 1; }
        rm -rf "$NGINX_128_TREE" "$NGINX_128_PREFIX"
        mkdir -p "$BUILD_DIR"
        cp -a "$src" "$NGINX_128_TREE"
        (
            cd "$NGINX_128_TREE"
            ./auto/configure --prefix="$NGINX_128_PREFIX" --with-compat --with-debug --with-threads \
                --with-http_ssl_module --with-http_v2_module --with-http_realip_module \
                --with-http_stub_status_module --with-stream=dynamic --with-stream_ssl_module \
                && make -j"$(nproc)" && make install
        ) >"$BUILD_DIR/nginx-1.28-build.log" 2>&1 || { tail -30 "$BUILD_DIR/nginx-1.28-build.log" >&2; exit 1; }
        touch "$stamp"
    fi
    export NGINX_SOURCE_DIR="$NGINX_128_TREE"
    export NGINX_BUILD_DIR="$NGINX_128_TREE/objs"
    export CARGO_TARGET_DIR="$ROOT/target/nginx-1.28"
}

# An nginx configured and built from a source tree of its own (mainline, say:
# scripts/mainline.sh): the module is built against that tree's objs/, into
# target/nginx-<version>/ (the version read from src/core/nginx.h).
nginx_source_env() {
    ensure_packages libclang-dev clang pkg-config build-essential libpcre2-dev libssl-dev zlib1g-dev
    ensure_rust
    local src
    src=$(cd "$1" && pwd) || { echo "no nginx source directory $1" >&2; exit 2; }
    [ -f "$src/src/core/nginx.h" ] && [ -f "$src/objs/ngx_auto_config.h" ] || {
        echo "$src is not a configured nginx source tree (src/core/nginx.h, objs/ngx_auto_config.h)" >&2
        exit 2
    }
    local version
    version=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"$/\1/p' "$src/src/core/nginx.h")
    export NGINX_SOURCE_DIR="$src"
    export NGINX_BUILD_DIR="$src/objs"
    export CARGO_TARGET_DIR="$ROOT/target/nginx-$version"
}
