# Sourced by the other scripts: where things live and how to install them.
# shellcheck shell=bash
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR="$ROOT/build"
NGINX_TREE="$BUILD_DIR/nginx-src"
MODULE_SO="$ROOT/target/release/libngx_http_least_conn_persistent_module.so"
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
export ROOT BUILD_DIR NGINX_TREE MODULE_SO NGINX_BIN

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
    ensure_packages nginx nginx-dev libclang-dev clang pkg-config build-essential \
        libpcre2-dev libssl-dev zlib1g-dev
    ensure_rust
    [ -n "${NGINX_SOURCE_DIR:-}" ] && return 0
    local stamp
    stamp="$NGINX_TREE/.configured-$(dpkg-query -W -f='${Version}' nginx-dev)"
    if [ ! -f "$stamp" ]; then
        echo ">> configuring a copy of /usr/share/nginx/src" >&2
        rm -rf "$NGINX_TREE"
        mkdir -p "$BUILD_DIR"
        cp -a /usr/share/nginx/src "$NGINX_TREE"
        (
            cd "$NGINX_TREE"
            # shellcheck disable=SC1091
            . ./conf_flags
            ./configure "${NGX_CONF_FLAGS[@]}" >"$BUILD_DIR/configure.log" 2>&1
        ) || { tail -20 "$BUILD_DIR/configure.log" >&2; exit 1; }
        touch "$stamp"
    fi
    export NGINX_SOURCE_DIR="$NGINX_TREE"
    export NGINX_BUILD_DIR="$NGINX_TREE/objs"
}
