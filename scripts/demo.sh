#!/usr/bin/env bash
# Builds the module, starts Debian's nginx with nginx/demo.conf and three
# local backends on 127.0.0.1, and shows least_conn_persistent at work:
# held WebSockets steer new connections, and the counts survive a reload.
# Ctrl-C stops everything. `--check` runs the same steps and exits.
. "$(dirname "$0")/env.sh"

check=0
[ "${1:-}" = "--check" ] && check=1
PORT=${LCP_DEMO_PORT:-8080}

"$ROOT/scripts/build.sh" >&2
ensure_packages curl perl

PREFIX="$BUILD_DIR/demo"
rm -rf "$PREFIX"
mkdir -p "$PREFIX"
sed -e "s|@MODULE@|$MODULE_SO|" -e "s|@PREFIX@|$PREFIX|g" -e "s|@PORT@|$PORT|" \
    "$ROOT/nginx/demo.conf" >"$PREFIX/nginx.conf"

pids=()
cleanup() {
    "$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf" -s stop 2>/dev/null || true
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
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
# The first request must not race the backends' start (a refused connect
# would mark the server failed and make the demo's first answers 502s).
for i in 1 2 3; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/900$i") 2>/dev/null && break
        sleep 0.1
    done
done
"$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf"

status() { curl -fsS "http://127.0.0.1:$PORT/lcp-status"; }
for _ in $(seq 50); do status >/dev/null 2>&1 && break; sleep 0.1; done

echo ">> six requests: with nothing held, they spread over the three backends"
seen=""
for _ in 1 2 3 4 5 6; do
    r=$(curl -fsS "http://127.0.0.1:$PORT/")
    echo "   $r"
    seen="$seen ${r%% *}"
done

echo ">> holding 4 WebSockets, then reloading nginx"
perl "$ROOT/scripts/demo-client.pl" "$PORT" 4 &
pids+=($!)
sleep 1
"$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf" -s reload
sleep 1
echo ">> counters after the reload (old workers still hold the WebSockets):"
status | tee "$PREFIX/status.json"

held=$(grep -o '"count":[0-9]*' "$PREFIX/status.json" | awk -F: '{s+=$2} END {print s}')
if [ "$check" = 1 ]; then
    n=$(echo "$seen" | tr ' ' '\n' | sort -u | grep -c id=)
    [ "$n" = 3 ] || { echo "demo check: requests reached $n backends, not 3" >&2; exit 1; }
    [ "$held" = 4 ] || { echo "demo check: counters sum to $held after reload, not 4" >&2; exit 1; }
    echo ">> demo check passed"
    exit 0
fi
echo ">> nginx runs on http://127.0.0.1:$PORT/ (status: /lcp-status). Ctrl-C to stop."
while true; do sleep 1; done
