#!/usr/bin/env bash
# Benchmarks least_conn_persistent against stock `least_conn; zone` on the
# same nginx and machine, and writes BENCHMARKS.md (Debian's nginx) or, with
# --nginx=1.28, BENCHMARKS-nginx-1.28.md (nginx 1.28 built from the
# nginx-src crate):
#   1. balance quality with held WebSockets across reloads,
#   2. throughput with wrk at 2, 100 and 1,000 servers,
#   3. instructions per pick under callgrind,
#   4. zone capacity and reload cost,
#   5. balance quality in stream {} with held TCP connections,
#   6. requests/s through balancer_by_lua (Debian's nginx only: its Lua
#      module),
#   7. at 64 workers: idle CPU with two generations, zone mutex hold times
#      (a build with the `lock-stats` feature, full runs only), zone memory
#      per key and per worker,
#   8. slow start (quick runs: Debian's nginx only),
#   9. rebalancing long-lived connections (full runs only),
#  10. health checks: CPU of the checker at 1,000 servers, cost per pick
#      (full runs only).
# Loopback only. `--quick` runs every scenario small, as a smoke test, and
# writes build/bench-quick/BENCHMARKS.md instead. `--sections=3,7` runs only
# those sections.
. "$(dirname "$0")/env.sh"

quick=()
nginx=debian
sections=1,2,3,4,5,6,7,8,9,10
usage="usage: scripts/bench.sh [--quick] [--nginx=debian|1.28] [--sections=N,N,...]"
for arg in "$@"; do
    case "$arg" in
    --quick) quick=(--quick) ;;
    --nginx=1.28) nginx=1.28 ;;
    --nginx=debian) nginx=debian ;;
    --sections=*)
        sections=${arg#--sections=}
        [[ "$sections" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "$usage" >&2; exit 2; }
        ;;
    *) echo "$usage" >&2; exit 2 ;;
    esac
done
# The lock-stats build is for section 7's full run only.
lock_stats=no
[ ${#quick[@]} -eq 0 ] && [[ ",$sections," == *,7,* ]] && lock_stats=yes
name=BENCHMARKS.md
[ "$nginx" = 1.28 ] && name=BENCHMARKS-nginx-1.28.md
out="$ROOT/$name"
[ ${#quick[@]} -gt 0 ] && out="$BUILD_DIR/bench-quick/$name"
mkdir -p "$(dirname "$out")"

ensure_packages wrk valgrind perl libnginx-mod-http-lua lua-resty-core
if [ "$nginx" = 1.28 ]; then
    "$ROOT/scripts/build.sh" --nginx=1.28 >&2
    [ "$lock_stats" = no ] || "$ROOT/scripts/build.sh" --nginx=1.28 --lock-stats >&2
    # The scripts take nginx and the module from the harness' variables.
    export TEST_NGINX_BINARY="$NGINX_128_BIN" TEST_NGINX_MODULE="$MODULE_128_SO"
    export TEST_NGINX_LOCK_STATS_MODULE="$LOCK_STATS_128_SO"
    nginx_label="$("$NGINX_128_BIN" -v 2>&1 | sed 's/.*: //') (built from the nginx-src crate)"
else
    "$ROOT/scripts/build.sh" >&2
    [ "$lock_stats" = no ] || "$ROOT/scripts/build.sh" --lock-stats >&2
    export TEST_NGINX_LOCK_STATS_MODULE="$LOCK_STATS_SO"
    nginx_label="$("$NGINX_BIN" -v 2>&1 | sed 's/.*: //') (Debian)"
fi

started=$(date +%s)
tmp="$out.tmp"
section() {
    local title=$1 script=$2 t0=$SECONDS
    # Its number, as --sections names it.
    [[ ",$sections," == *",${title%%.*},"* ]] || return 0
    echo ">> $title" >&2
    {
        echo
        echo "## $title"
        echo
        echo "Command: \`perl scripts/bench/$script ${quick[*]}\`"
        echo
        perl "$ROOT/scripts/bench/$script" "${quick[@]}"
    } >>"$tmp"
    echo ">> $title: $((SECONDS - t0)) s" >&2
}

{
    echo "# Benchmarks"
    echo
    echo "Written by \`scripts/bench.sh${quick:+ --quick}$([ "$nginx" = 1.28 ] && echo ' --nginx=1.28')\`; rerun it to reproduce every figure."
    echo "Both methods run on the same nginx, the same machine, back to back."
    echo
    echo "| machine | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| commit | $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) |"
    echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores |"
    echo "| memory | $(free -g | awk '/Mem:/ {print $2 " GiB"}') |"
    echo "| kernel | $(uname -r) |"
    echo "| nginx | $nginx_label |"
    echo "| rustc | $(rustc --version) |"
    echo "| wrk, valgrind | $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(valgrind --version) |"
    echo "| Lua module | libnginx-mod-http-lua $(dpkg-query -W -f='${Version}' libnginx-mod-http-lua), lua-resty-core $(dpkg-query -W -f='${Version}' lua-resty-core) |"
} >"$tmp"

section "1. Balance quality with held WebSockets" balance.pl
section "2. Throughput" throughput.pl
section "3. Cost per pick (callgrind)" callgrind.pl
section "4. Zone capacity and reload cost" capacity.pl
section "5. Balance quality in stream {} with held TCP connections" stream_balance.pl
# Debian's Lua module loads only into Debian's nginx.
if [ "$nginx" = debian ]; then
    section "6. Lua balancers (balancer_by_lua)" lua.pl
fi
section "7. At 64 workers: idle CPU, zone mutex holds, zone memory" scale.pl
# Slow start is the same code on both; the quick smoke test (CI time) runs
# it on Debian's nginx only.
if [ "$nginx" = debian ] || [ ${#quick[@]} -eq 0 ]; then
    section "8. Slow start" slow_start.pl
fi
# Rebalancing (3,000 WebSockets) in full runs only: t/rebalance.t runs the
# same scenario at 1,000 in the test suite, and CI's time is short.
if [ ${#quick[@]} -eq 0 ]; then
    section "9. Rebalancing long-lived connections after a scale-up" rebalance.pl
fi
# Health checks: minutes of measuring (CPU over 60 s per configuration,
# callgrind with the checker running), full runs only.
if [ ${#quick[@]} -eq 0 ]; then
    section "10. Health checks: CPU of the checker, cost per pick" checks.pl
fi

if [ -f "$ROOT/scripts/bench/notes.md" ]; then
    { echo; cat "$ROOT/scripts/bench/notes.md"; } >>"$tmp"
fi
echo >>"$tmp"
echo "Whole run: $(( $(date +%s) - started )) s." >>"$tmp"
mv "$tmp" "$out"
echo ">> wrote $out" >&2
# BENCHMARKS.md ends with both nginx versions' ratios side by side (copied
# from the two files, whichever run was the latest).
if [ ${#quick[@]} -eq 0 ]; then
    perl "$ROOT/scripts/bench/beside.pl" "$ROOT"
fi
