#!/usr/bin/env bash
# Benchmarks least_conn_persistent against stock `least_conn; zone` on the
# same Debian nginx and machine, and writes BENCHMARKS.md:
#   1. balance quality with held WebSockets across reloads,
#   2. throughput with wrk at 2, 100 and 1,000 servers,
#   3. instructions per pick under callgrind,
#   4. zone capacity and reload cost,
#   5. requests/s through balancer_by_lua: our Lua library against pure-Lua
#      least-connections per worker and round-robin.
# Loopback only. `--quick` runs every scenario small, as a smoke test, and
# writes build/bench-quick/BENCHMARKS.md instead.
. "$(dirname "$0")/env.sh"

quick=()
out="$ROOT/BENCHMARKS.md"
if [ "${1:-}" = "--quick" ]; then
    quick=(--quick)
    out="$BUILD_DIR/bench-quick/BENCHMARKS.md"
fi
mkdir -p "$(dirname "$out")"

"$ROOT/scripts/build.sh" >&2
ensure_packages wrk valgrind perl libnginx-mod-http-lua lua-resty-core

started=$(date +%s)
tmp="$out.tmp"
section() {
    local title=$1 script=$2
    echo ">> $title" >&2
    {
        echo
        echo "## $title"
        echo
        echo "Command: \`perl scripts/bench/$script ${quick[*]}\`"
        echo
        perl "$ROOT/scripts/bench/$script" "${quick[@]}"
    } >>"$tmp"
}

{
    echo "# Benchmarks"
    echo
    echo "Written by \`scripts/bench.sh${quick:+ --quick}\`; rerun it to reproduce every figure."
    echo "Both methods run on the same nginx, the same machine, back to back."
    echo
    echo "| machine | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| commit | $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) |"
    echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores |"
    echo "| memory | $(free -g | awk '/Mem:/ {print $2 " GiB"}') |"
    echo "| kernel | $(uname -r) |"
    echo "| nginx | $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //') (Debian) |"
    echo "| rustc | $(rustc --version) |"
    echo "| wrk, valgrind | $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(valgrind --version) |"
    echo "| Lua module | libnginx-mod-http-lua $(dpkg-query -W -f='${Version}' libnginx-mod-http-lua), lua-resty-core $(dpkg-query -W -f='${Version}' lua-resty-core) |"
} >"$tmp"

section "1. Balance quality with held WebSockets" balance.pl
section "2. Throughput" throughput.pl
section "3. Cost per pick (callgrind)" callgrind.pl
section "4. Zone capacity and reload cost" capacity.pl
section "5. Lua balancers (balancer_by_lua)" lua.pl

if [ -f "$ROOT/scripts/bench/notes.md" ]; then
    { echo; cat "$ROOT/scripts/bench/notes.md"; } >>"$tmp"
fi
echo >>"$tmp"
echo "Whole run: $(( $(date +%s) - started )) s." >>"$tmp"
mv "$tmp" "$out"
echo ">> wrote $out" >&2
