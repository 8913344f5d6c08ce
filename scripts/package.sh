#!/usr/bin/env bash
# Builds a Debian package of the module for the system's nginx, shaped like
# Debian's own module packages (libnginx-mod-*): the .so in
# /usr/lib/nginx/modules, its load_module snippet in
# /usr/share/nginx/modules-available, enabled on install through
# /etc/nginx/modules-enabled, and a dependency on the exact nginx ABI it was
# built for (nginx-abi-1.22.1-7 on Debian 12), all by dh_nginx from
# nginx-dev. Writes build/deb/libnginx-mod-http-least-conn-persistent_<version>_<arch>.deb,
# and the stream module's package, libnginx-mod-stream-least-conn-persistent
# (needs libnginx-mod-stream, loads after it), printing both paths.
#
#   scripts/package.sh
#   dpkg -i build/deb/libnginx-mod-http-least-conn-persistent_*.deb
#   dpkg -i build/deb/libnginx-mod-stream-least-conn-persistent_*.deb    # stream users
. "$(dirname "$0")/env.sh"

ensure_packages debhelper dpkg-dev fakeroot nginx-dev
"$ROOT/scripts/build.sh" >&2

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
out="$BUILD_DIR/deb"
stage="$out/ngx-least-conn-persistent-$version"
rm -rf "$out"
mkdir -p "$stage/debian" "$stage/build"
cp "$ROOT/scripts/debian/control" "$ROOT/scripts/debian/rules" "$ROOT/scripts/debian/copyright" "$stage/debian/"
cp "$MODULE_SO" "$stage/build/ngx_http_least_conn_persistent_module.so"
cp "$STREAM_MODULE_SO" "$stage/build/ngx_stream_least_conn_persistent_module.so"
# The stream module loads after nginx's own (Debian's 50-mod-stream.conf).
cat >"$stage/debian/libnginx-mod-stream-least-conn-persistent.nginx" <<'LOAD'
mod debian/mod-stream-least-conn-persistent.conf 60
LOAD
echo 'load_module modules/ngx_stream_least_conn_persistent_module.so;' \
    >"$stage/debian/mod-stream-least-conn-persistent.conf"
cat >"$stage/debian/changelog" <<CHANGES
ngx-least-conn-persistent ($version-1) unstable; urgency=medium

  * Built from commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown).

 -- ngx-least-conn-persistent developers <noreply@localhost>  $(date -R)
CHANGES

(cd "$stage" && DEB_BUILD_OPTIONS=noautodbgsym dpkg-buildpackage -b -us -uc) >"$out/build.log" 2>&1 \
    || { tail -30 "$out/build.log" >&2; exit 1; }
arch=$(dpkg --print-architecture)
for kind in http stream; do
    deb="$out/libnginx-mod-$kind-least-conn-persistent_${version}-1_$arch.deb"
    [ -f "$deb" ] || { echo "no $deb" >&2; exit 1; }
    echo ">> built $deb" >&2
    echo "$deb"
done
