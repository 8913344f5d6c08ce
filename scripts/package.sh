#!/usr/bin/env bash
# Builds a Debian package of the module for the system's nginx, shaped like
# Debian's own module packages (libnginx-mod-*): the .so in
# /usr/lib/nginx/modules, its load_module snippet in
# /usr/share/nginx/modules-available, enabled on install through
# /etc/nginx/modules-enabled, and a dependency on the exact nginx ABI it was
# built for (nginx-abi-1.22.1-7 on Debian 12), all by dh_nginx from
# nginx-dev. Writes build/deb/libnginx-mod-http-least-conn-persistent_<version>_<arch>.deb.
#
#   scripts/package.sh
#   dpkg -i build/deb/libnginx-mod-http-least-conn-persistent_*.deb
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
cat >"$stage/debian/changelog" <<CHANGES
ngx-least-conn-persistent ($version-1) unstable; urgency=medium

  * Built from commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown).

 -- ngx-least-conn-persistent developers <noreply@localhost>  $(date -R)
CHANGES

(cd "$stage" && DEB_BUILD_OPTIONS=noautodbgsym dpkg-buildpackage -b -us -uc) >"$out/build.log" 2>&1 \
    || { tail -30 "$out/build.log" >&2; exit 1; }
deb="$out/libnginx-mod-http-least-conn-persistent_${version}-1_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || { echo "no $deb" >&2; exit 1; }
echo ">> built $deb" >&2
echo "$deb"
