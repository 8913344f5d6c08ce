#!/usr/bin/env bash
# Memory safety: runs some of the tests (below) with nginx (master and
# workers) under valgrind memcheck, then reads every process's report and
# counts the errors whose stack passes through this module. Exits non-zero
# if there is any, or if the tests fail under valgrind. Errors in nginx's
# or libc's own code are counted and listed apart, not judged.
#
#   scripts/memcheck.sh [t/some.t ...]    (default: balance, reload, crash, status, stream,
#                                          and the quick part of the health checks)
#   scripts/memcheck.sh --nginx=1.28 [t/some.t ...]
#                                         (nginx 1.28 from scripts/build.sh --nginx=1.28;
#                                          default: the resolve tests, which only it runs)
#
# Slow: waits in the tests are stretched (TEST_NGINX_SLOW) for valgrind.
. "$(dirname "$0")/env.sh"

nginx=debian
case "${1:-}" in
    --nginx=1.28) nginx=1.28; shift ;;
    --nginx=debian) shift ;;
    --nginx=*) echo "usage: scripts/memcheck.sh [--nginx=debian|1.28] [t/some.t ...]" >&2; exit 2 ;;
esac
tests=("$@")
if [ "$nginx" = 1.28 ]; then
    "$ROOT/scripts/build.sh" --nginx=1.28 >&2
    bin=$NGINX_128_BIN module=$MODULE_128_SO nginx_stream=$NGINX_128_STREAM_SO
    out="$BUILD_DIR/memcheck-1.28"
    [ ${#tests[@]} -gt 0 ] || tests=(t/resolve.t t/resolve_shared.t t/stream_resolve.t)
else
    "$ROOT/scripts/build.sh" >&2
    bin=$NGINX_BIN module=$MODULE_SO nginx_stream=$NGINX_STREAM_SO
    out="$BUILD_DIR/memcheck"
    [ ${#tests[@]} -gt 0 ] || tests=(t/balance.t t/reload.t t/crash.t t/status.t t/stream.t t/check.t)
fi
ensure_packages valgrind perl

rm -rf "$out"
mkdir -p "$out"
cat >"$out/nginx" <<WRAP
#!/bin/sh
exec valgrind --tool=memcheck --error-limit=no --num-callers=40 \\
    --log-file="$out/vg.%p.log" "$bin" "\$@"
WRAP
chmod +x "$out/nginx"

cd "$ROOT"
prove_rc=0
# The health checks' waits are their intervals and timeouts, which the
# test scales itself: 3 is enough under valgrind (their I/O is a few
# syscalls); the other tests' waits need 8.
for test in "${tests[@]}"; do
    slow=${TEST_NGINX_SLOW:-8}
    [ "$test" = t/check.t ] && slow=${TEST_NGINX_SLOW:-3}
    TEST_CHECK_QUICK=1 TEST_NGINX_NGINX_STREAM_MODULE="$nginx_stream" TEST_NGINX_MODULE="$module" \
        TEST_NGINX_BINARY="$out/nginx" TEST_NGINX_SLOW=$slow prove "$test" || prove_rc=$?
done

rc=0
perl "$ROOT/scripts/memcheck-report.pl" "$out"/vg.*.log || rc=$?
if [ "$prove_rc" != 0 ]; then
    echo "memcheck: the tests failed under valgrind (prove exited $prove_rc)" >&2
    rc=1
fi
exit $rc
