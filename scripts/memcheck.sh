#!/usr/bin/env bash
# Memory safety: runs the balancing, reload, crash and status tests with
# nginx (master and workers) under valgrind memcheck, then reads every
# process's report and counts the errors whose stack passes through this
# module. Exits non-zero if there is any, or if the tests fail under
# valgrind. Errors in nginx's or libc's own code are counted and listed
# apart, not judged.
#
#   scripts/memcheck.sh [t/some.t ...]    (default: balance, reload, crash, status)
#
# Slow: waits in the tests are stretched (TEST_NGINX_SLOW) for valgrind.
. "$(dirname "$0")/env.sh"

"$ROOT/scripts/build.sh" >&2
ensure_packages valgrind perl

out="$BUILD_DIR/memcheck"
rm -rf "$out"
mkdir -p "$out"
cat >"$out/nginx" <<WRAP
#!/bin/sh
exec valgrind --tool=memcheck --error-limit=no --num-callers=40 \\
    --log-file="$out/vg.%p.log" "$NGINX_BIN" "\$@"
WRAP
chmod +x "$out/nginx"

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(t/balance.t t/reload.t t/crash.t t/status.t t/stream.t)
cd "$ROOT"
prove_rc=0
TEST_NGINX_NGINX_STREAM_MODULE="$NGINX_STREAM_SO" TEST_NGINX_BINARY="$out/nginx" TEST_NGINX_SLOW=${TEST_NGINX_SLOW:-8} prove "${tests[@]}" || prove_rc=$?

rc=0
perl "$ROOT/scripts/memcheck-report.pl" "$out"/vg.*.log || rc=$?
if [ "$prove_rc" != 0 ]; then
    echo "memcheck: the tests failed under valgrind (prove exited $prove_rc)" >&2
    rc=1
fi
exit $rc
