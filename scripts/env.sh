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
