#!/usr/bin/env bash
# The demo: builds the module, starts three local backends, and runs the
# headline scenario on Debian's nginx for stock `least_conn; zone` and then
# for least_conn_persistent (100 WebSockets over two servers, a reload
# adding a third, 60 more), printing each backend's live connections side by
# side (scripts/demo.pl). Then the module's nginx keeps running with a few
# WebSockets held, and the status page's address is printed; Ctrl-C stops
# everything. `--check` runs the same, fast and without waiting, and fails
# unless least_conn_persistent ends within one connection, stock does worse,
# and the HTML status page shows the backends (scripts/test.sh runs it).
. "$(dirname "$0")/env.sh"

check=()
case "$#:${1:-}" in
    0:) ;;
    1:--check) check=(--check) ;;
    *) echo "usage: scripts/demo.sh [--check]" >&2; exit 2 ;;
esac
PORT=${LCP_DEMO_PORT:-8080}

"$ROOT/scripts/build.sh" >&2
ensure_packages curl perl

PREFIX="$BUILD_DIR/demo"
rm -rf "$PREFIX"
mkdir -p "$PREFIX"

pids=()
cleanup() {
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    if [ -f "$PREFIX/nginx.pid" ]; then
        "$NGINX_BIN" -p "$PREFIX/" -c "$PREFIX/nginx.conf" -s stop 2>/dev/null || true
    fi
    wait 2>/dev/null
    echo ">> stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for i in 1 2 3; do
    perl -I"$ROOT/t/lib" -MTest::Nginx::Backend \
        -e "Test::Nginx::Backend::serve(900$i, 'backend$i')" &
    pids+=($!)
done
# The first connection must not race the backends' start (a refused connect
# would mark the server failed).
for i in 1 2 3; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/900$i") 2>/dev/null && break
        sleep 0.1
    done
done

perl "$ROOT/scripts/demo.pl" --nginx "$NGINX_BIN" --module "$MODULE_SO" --prefix "$PREFIX" \
    --port "$PORT" "${check[@]}" &
pids+=($!)
wait "${pids[-1]}"
