#!/usr/bin/env bash
# Checks that dependencies in src/ point one way:
#   http (front-ends) -> shared -> core, with ngx (the nginx edge) used by
#   front-ends and shared; core uses no nginx type at all.
set -euo pipefail
cd "$(dirname "$0")/../src"
fail=0
forbid() {
    local dir=$1 pattern=$2 why=$3 hits
    hits=$(grep -rnE "$pattern" "$dir" || true)
    if [ -n "$hits" ]; then
        echo "layout: $why:" >&2
        echo "$hits" >&2
        fail=1
    fi
}
forbid core '\bnginx_sys\b|(^|[^:])\bngx::|crate::(ngx|shared|http|stream|lua)\b' "src/core must not use nginx or the layers above it"
forbid ngx 'crate::(shared|http|stream|lua)\b' "src/ngx must not use shared state or front-ends"
forbid shared 'crate::(http|stream|lua)\b' "src/shared must not use a front-end"
forbid http 'crate::(stream|lua)\b' "front-ends must not use each other"
forbid stream 'crate::(http|lua)\b' "front-ends must not use each other"
[ "$fail" = 0 ] && echo "layout: core <- shared <- http, stream, lua; ngx beside: ok"
exit "$fail"
