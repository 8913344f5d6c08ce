#!/usr/bin/env bash
# Makes docs/status-page.png, the README's picture of the HTML status page,
# from a real run: scripts/demo.sh (its output goes to docs/demo-output.txt),
# then headless Chromium on the status page while the demo holds its
# connections, then the demo is stopped.
. "$(dirname "$0")/env.sh"

ensure_packages chromium curl
PORT=${LCP_DEMO_PORT:-8080}
mkdir -p "$ROOT/docs"
out="$BUILD_DIR/screenshot"
rm -rf "$out"
mkdir -p "$out"

LCP_DEMO_PORT=$PORT "$ROOT/scripts/demo.sh" >"$out/demo.log" 2>/dev/null &
demo=$!
# A background job ignores SIGINT: stop the demo with TERM (it traps both).
trap 'kill -TERM "$demo" 2>/dev/null; wait "$demo" 2>/dev/null' EXIT
for _ in $(seq 600); do
    grep -q 'Status page:' "$out/demo.log" 2>/dev/null && break
    kill -0 "$demo" 2>/dev/null || { cat "$out/demo.log" >&2; exit 1; }
    sleep 0.1
done
grep -q 'Status page:' "$out/demo.log" || { echo "the demo did not start" >&2; exit 1; }

chromium --headless=new --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
    --user-data-dir="$out/profile" --window-size=980,560 \
    --screenshot="$ROOT/docs/status-page.png" \
    "http://127.0.0.1:$PORT/lcp-status?format=html&refresh=0" >"$out/chromium.log" 2>&1
sed -n '/^>> stock/,/^>> Ctrl-C/p' "$out/demo.log" >"$ROOT/docs/demo-output.txt"
echo ">> wrote docs/status-page.png and docs/demo-output.txt" >&2
