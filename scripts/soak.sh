#!/usr/bin/env bash
# A bounded soak against real nginx (loopback only): 30 reloads in 30 s with
# servers added and removed, at least 300 connections opening and closing at
# random (WebSockets, upstream keepalive, retries past a refusing server),
# and 3 workers killed with SIGKILL; then checks that every counter is back
# to 0, the keys are exactly those configured, the zone's `used` is back to
# its baseline and the error log is clean. `--quick`: a fifth of the size
# (scripts/test.sh runs it). `--nginx=1.28`: against nginx 1.28 from
# scripts/build.sh --nginx=1.28, where DNS also changes a `resolve`
# upstream's addresses throughout.
#
# `--kill-storm` (scripts/kill_storm.pl): at least 300 workers of 8 killed
# with SIGKILL right after bursts of closes, during reloads that change the
# servers, DNS changes (nginx 1.28) and Lua redeclarations (Debian's nginx);
# then every count at 0, the keys exactly those configured, `used` at its
# baseline. With --quick: 40 kills (scripts/test.sh runs it). With
# --crash-points (the crash-points build): workers also die at crash points
# picked at random, inside the zone's locked sections.
#
#   scripts/soak.sh [--quick] [--kill-storm [--crash-points]] [--nginx=debian|1.28]
. "$(dirname "$0")/env.sh"

args=()
build=()
nginx=debian
script=soak.pl
for a in "$@"; do
    case "$a" in
        --nginx=1.28) nginx=1.28 ;;
        --nginx=debian) ;;
        --quick) args+=("$a") ;;
        --kill-storm) script=kill_storm.pl ;;
        --crash-points) args+=("$a"); build+=("$a") ;;
        *) echo "usage: scripts/soak.sh [--quick] [--kill-storm [--crash-points]] [--nginx=debian|1.28]" >&2; exit 2 ;;
    esac
done
if [ ${#build[@]} -gt 0 ] && [ "$script" != kill_storm.pl ]; then
    echo "usage: scripts/soak.sh [--quick] [--kill-storm [--crash-points]] [--nginx=debian|1.28]" >&2
    exit 2
fi
ensure_packages perl
if [ "$nginx" = 1.28 ]; then
    "$ROOT/scripts/build.sh" --nginx=1.28 "${build[@]+"${build[@]}"}" >&2
    export TEST_NGINX_BINARY="$NGINX_128_BIN" TEST_NGINX_MODULE="$MODULE_128_SO"
else
    "$ROOT/scripts/build.sh" "${build[@]+"${build[@]}"}" >&2
fi
exec perl "$ROOT/scripts/$script" "${args[@]+"${args[@]}"}"
