#!/usr/bin/env bash
# Builds the module against the nginx that will load it.
#
# By default that is Debian's /usr/sbin/nginx: its nginx-dev package ships the
# headers and `configure` with the flags Debian used, so configuring a copy of
# that tree gives the objs/ directory (ngx_auto_config.h) the module must be
# compiled against to be binary compatible.
#
# Another nginx: NGINX_SOURCE_DIR=/path/to/nginx NGINX_BUILD_DIR=/path/to/nginx/objs scripts/build.sh
. "$(dirname "$0")/env.sh"

nginx_build_env
cd "$ROOT"
cargo build --release "$@"
echo ">> built $MODULE_SO" >&2
