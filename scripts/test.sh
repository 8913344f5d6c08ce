#!/usr/bin/env bash
# Runs every check: the layout's dependency rule, formatting, clippy, the
# Rust unit tests, the demo in check mode, the soak and the kill storm in
# quick mode, the Test::Nginx suite under t/ against a real nginx (which
# includes t/tooling/bench_quick.t: scripts/bench.sh --quick, and
# t/crash_points.t on the crash-points build), six of its tests again with
# nginx under valgrind memcheck (the health checks' quick part among them),
# and the suite again against nginx 1.28 built from the nginx-src crate,
# with the quick soak and kill storm (DNS changing a resolve upstream
# throughout) and the resolve tests under memcheck.
# Exits non-zero on the first failure.
. "$(dirname "$0")/env.sh"

# Each step says when it starts (seconds since this script began): where
# CI's 20 minutes go.
step() { echo ">> $* (at ${SECONDS} s)"; }

nginx_build_env
ensure_packages perl curl openssl wrk valgrind libnginx-mod-http-lua lua-resty-core debhelper dpkg-dev fakeroot \
    chromium
# Other Debian nginx modules enabled beside ours, as nginx-full and
# nginx-extras have them: t/tooling/package.t must pass there too.
ensure_packages libnginx-mod-stream-geoip libnginx-mod-http-geoip libnginx-mod-mail
cd "$ROOT"

step "layout (dependencies point one way)"
scripts/check-layout.sh
step "cargo fmt --check"
cargo fmt --check
step "cargo clippy -D warnings"
# One target directory for the four: the dependencies (nginx-sys's
# bindings above all) are checked once, each feature set then rechecks
# only this crate (about 2 s against 40 s in a directory of its own).
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --features stream -- -D warnings
cargo clippy --release --features crash-points -- -D warnings
cargo clippy --release --features stream,crash-points -- -D warnings
step "scripts/build.sh (the http module and the stream module)"
scripts/build.sh
step "scripts/build.sh --crash-points (the same two modules with crash points, for t/crash_points.t)"
scripts/build.sh --crash-points
step "cargo test"
# --release: the dependencies are those the builds above compiled.
cargo test --release
# And a debug build: only it is sure to refuse a test that reaches an nginx
# symbol (an optimized build may drop the branch that names it).
cargo test
step "scripts/demo.sh --check"
scripts/demo.sh --check
step "scripts/soak.sh --quick"
scripts/soak.sh --quick
step "scripts/soak.sh --kill-storm --quick --crash-points (40 SIGKILLs, and deaths at crash points)"
scripts/soak.sh --kill-storm --quick --crash-points
step "prove -r t/"
prove --timer -r t/
step "scripts/memcheck.sh (the balancing, reload, crash, status, stream and health check tests under valgrind)"
scripts/memcheck.sh
step "nginx 1.28 (from the nginx-src crate): build, then prove t/ against it"
scripts/build.sh --nginx=1.28
scripts/build.sh --nginx=1.28 --crash-points
# Each file says what it needs (Test::Nginx's `has`). There the Lua tests,
# package.t and bench_quick.t skip themselves (they are for Debian's nginx),
# and with TEST_NGINX_DEPENDENT_ONLY=1 so do the files marked
# `nginx_independent`, whose code does not differ from one nginx to
# another (each says why), tested above: for CI's time. t/crash_points.t
# runs there only the points Debian's nginx cannot reach (following DNS
# needs `resolve`): the rest is the same code, tested above.
TEST_NGINX_BINARY="$NGINX_128_BIN" TEST_NGINX_MODULE="$MODULE_128_SO" TEST_NGINX_DEPENDENT_ONLY=1 \
    TEST_CRASH_POINTS='follow.*' prove --timer -r t/
step "scripts/soak.sh --quick --nginx=1.28 (with DNS changing a resolve upstream throughout)"
scripts/soak.sh --quick --nginx=1.28
step "scripts/soak.sh --kill-storm --quick --crash-points --nginx=1.28"
scripts/soak.sh --kill-storm --quick --crash-points --nginx=1.28
step "scripts/memcheck.sh --nginx=1.28 (the resolve tests, which only 1.28 runs, under valgrind)"
scripts/memcheck.sh --nginx=1.28
