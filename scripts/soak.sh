#!/usr/bin/env bash
# A bounded soak against real nginx (loopback only): 30 reloads in 30 s with
# servers added and removed, at least 300 connections opening and closing at
# random (WebSockets, upstream keepalive, retries past a refusing server),
# and 3 workers killed with SIGKILL; then checks that every counter is back
# to 0, the keys are exactly those configured, the zone's `used` is back to
# its baseline and the error log is clean. `--quick`: a fifth of the size
# (scripts/test.sh runs it).
. "$(dirname "$0")/env.sh"

"$ROOT/scripts/build.sh" >&2
ensure_packages perl
exec perl "$ROOT/scripts/soak.pl" "$@"
