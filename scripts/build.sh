#!/usr/bin/env bash
# Builds the module against the nginx that will load it.
#
# By default that is Debian's /usr/sbin/nginx: its nginx-dev package ships the
# headers and `configure` with the flags Debian used, so configuring a copy of
# that tree gives the objs/ directory (ngx_auto_config.h) the module must be
# compiled against to be binary compatible.
#
# Another nginx: NGINX_SOURCE_DIR=/path/to/nginx NGINX_BUILD_DIR=/path/to/objs scripts/build.sh
. "$(dirname "$0")/env.sh"

ensure_packages nginx nginx-dev libclang-dev clang pkg-config build-essential \
    libpcre2-dev libssl-dev zlib1g-dev
ensure_rust

if [ -z "${NGINX_SOURCE_DIR:-}" ]; then
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
fi

cd "$ROOT"
cargo build --release "$@"
echo ">> built $MODULE_SO" >&2
