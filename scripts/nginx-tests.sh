#!/usr/bin/env bash
# Runs nginx's own test suite (nginx-tests), the upstream part of it, three
# ways on the same nginx, and writes docs/nginx-tests.md:
#   (a) the test files as written;
#   (b) stock `least_conn;` in every upstream block that has no balancing
#       method (blocks with one keep it: least_conn, hash, ip_hash, random,
#       least_time; `sticky` is no method: it wraps the one put before it);
#   (c) ours: `least_conn_persistent;` in place of `least_conn;` and in every
#       upstream block with no method, a least_conn_persistent_zone in every
#       http {} and stream {}, and the load_module lines.
# The rewriting (scripts/nginx-tests-rewrite.pl) is done on copies in a
# temporary directory; the checkout is only read. Each file runs alone
# (`prove -v`, one after another), and the doc has one table per nginx.
#
#   scripts/nginx-tests.sh [--nginx=NGINX[,NGINX...]] [--only=GLOB] [--doc=FILE] [--keep]
#                          [--ours-params=PARAMS] [NGINX_TESTS_DIR]
#
# NGINX, one or more, comma-separated, run in that order (default: both):
#   debian  Debian's /usr/sbin/nginx (1.22.1);
#   1.28    nginx 1.28 from the nginx-src crate (scripts/build.sh --nginx=1.28);
#   both    debian,1.28: what CI-less users run;
#   DIR     an nginx built from source (mainline, say: by hand only, CI cannot
#           reach it): scripts/mainline.sh's --dir (DIR/src, installed in
#           DIR/nginx), or a source tree configured and built in place (its
#           objs/nginx and objs/*.so). The modules are built against it
#           (scripts/build.sh --nginx=SOURCE_DIR, into target/nginx-<version>/);
#           nginx itself is not built here: scripts/mainline.sh --no-test does.
# So the doc with all three: scripts/nginx-tests.sh --nginx=both,/path/to/mainline-dir NGINX_TESTS_DIR
#
# NGINX_TESTS_DIR (or the NGINX_TESTS environment variable): a checkout of
# nginx-tests. With none, the script says how to get one and exits 0 (a skip:
# CI has no copy). --only restricts the files (a shell glob, e.g.
# 'upstream_keepalive*'); --ours-params gives (c)'s method parameters
# (`--ours-params=index=1`: every list, however short, picks through a pick
# index; the doc then says so); --keep leaves the temporary directory (the
# rewritten files, each run's output and nginx's test directories).
. "$(dirname "$0")/env.sh"

# The usage line, then what was wrong (if said).
usage() {
    echo "usage: scripts/nginx-tests.sh [--nginx=debian|1.28|both|NGINX_BUILD_DIR[,...]] [--only=GLOB] [--doc=FILE] [--keep] [--ours-params=PARAMS] [NGINX_TESTS_DIR]" >&2
    [ $# -eq 0 ] || echo "scripts/nginx-tests.sh: $*" >&2
    exit 2
}

nginx=both only='' doc="$ROOT/docs/nginx-tests.md" keep='' dir="${NGINX_TESTS:-}"
command_line="scripts/nginx-tests.sh $*"
for a in "$@"; do
    case "$a" in
        --nginx=?*) nginx=${a#--nginx=} ;;
        --only=?*) only=${a#--only=} ;;
        --doc=?*) doc=${a#--doc=} ;;
        --keep) keep=1 ;;
        --ours-params=?*) export NGINX_TESTS_OURS_PARAMS=${a#--ours-params=} ;;
        -*) usage ;;
        *) [ -z "${dir_arg:-}" ] || usage; dir_arg=$a; dir=$a ;;
    esac
done

# The nginx versions: a label each (a directory name under the work
# directory: debian, 1.28, or nginx-<version> for a build directory), and
# for a build directory its source tree, binary and modules directory.
# Checked before anything is built.
versions=()
declare -A src_of bin_of mods_of
add_version() {
    local v
    for v in "${versions[@]}"; do [ "$v" = "$1" ] && return 0; done
    versions+=("$1")
}
# A build directory: scripts/mainline.sh's DIR (DIR/src, DIR/nginx) or a
# source tree built in place (objs/nginx).
add_build_dir() {
    local d=$1 src bin mods version
    [ -d "$d" ] || usage "--nginx: no directory $d (debian, 1.28, both, or an nginx build directory)"
    d=$(cd "$d" && pwd)
    if [ -f "$d/src/src/core/nginx.h" ]; then
        src="$d/src" bin="$d/nginx/sbin/nginx" mods="$d/nginx/modules"
    elif [ -f "$d/src/core/nginx.h" ]; then
        src="$d" bin="$d/objs/nginx" mods="$d/objs"
    else
        usage "--nginx: $d is neither scripts/mainline.sh's --dir (src/, nginx/) nor an nginx source tree"
    fi
    [ -f "$src/objs/ngx_auto_config.h" ] && [ -x "$bin" ] || {
        echo "nginx-tests: no nginx built in $d (no $bin): build it first, e.g." \
            "scripts/mainline.sh --no-test --dir=$d /path/to/nginx.git" >&2
        exit 1
    }
    version=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"$/\1/p' "$src/src/core/nginx.h")
    add_version "nginx-$version"
    src_of[nginx-$version]=$src bin_of[nginx-$version]=$bin mods_of[nginx-$version]=$mods
}
IFS=, read -ra specs <<<"$nginx"
[ ${#specs[@]} -gt 0 ] || usage "--nginx: nothing given"
for spec in "${specs[@]}"; do
    case "$spec" in
        debian | 1.28) add_version "$spec" ;;
        both) add_version debian; add_version 1.28 ;;
        '') usage "--nginx: an empty item in $nginx" ;;
        *) add_build_dir "$spec" ;;
    esac
done

if [ -z "$dir" ]; then
    cat <<'MSG'
nginx-tests: skipped, no nginx-tests checkout given. Get one and pass its path:
    git clone https://github.com/nginx/nginx-tests.git /some/where/nginx-tests
    scripts/nginx-tests.sh /some/where/nginx-tests     (or NGINX_TESTS=/some/where/nginx-tests)
MSG
    exit 0
fi
[ -f "$dir/lib/Test/Nginx.pm" ] || { echo "nginx-tests: $dir is not an nginx-tests checkout (no lib/Test/Nginx.pm)" >&2; exit 1; }
dir=$(cd "$dir" && pwd)

# Perl modules and daemons the selected files ask for (the others skip).
ensure_packages perl libcache-memcached-perl libcache-memcached-fast-perl memcached

# The files: every upstream test, by name; and any other file whose name
# says max_conns, zone, resolve or service and that has an upstream block.
select_files() {
    local f
    (
        cd "$dir"
        for f in upstream*.t proxy_next_upstream*.t stream_upstream*.t stream_udp_upstream*.t; do
            [ -f "$f" ] && echo "$f"
        done
        for f in *max_conns*.t *zone*.t *resolve*.t *service*.t; do
            [ -f "$f" ] && grep -qE '^[[:space:]]*upstream[[:space:]]+[^[:space:]{]+[[:space:]]*\{' "$f" && echo "$f"
        done
    ) | sort -u | while read -r f; do
        # shellcheck disable=SC2254
        case "$f" in ${only:-*}) echo "$f" ;; esac
    done
}
mapfile -t files < <(select_files)
[ ${#files[@]} -gt 0 ] || { echo "nginx-tests: no file matches" >&2; exit 1; }

# The modules, built against each nginx (nginx itself too, for 1.28).
for v in "${versions[@]}"; do
    case "$v" in
        debian) "$ROOT/scripts/build.sh" >&2 ;;
        1.28) "$ROOT/scripts/build.sh" --nginx=1.28 >&2 ;;
        *) "$ROOT/scripts/build.sh" --nginx="${src_of[$v]}" >&2 ;;
    esac
done

work=$(mktemp -d /tmp/ntr.XXXXXX)
[ -n "$keep" ] || trap 'rm -rf "$work"' EXIT
echo ">> nginx-tests: ${#files[@]} files, in $work" >&2

globals=''
if [ "$(id -u)" -eq 0 ]; then
    globals='user root;'   # workers must read the test directories
    # memcached (upstream_hash_memcached.t) will not run as root without -u.
    mkdir -p "$work/path"
    printf '#!/bin/sh\nexec %s -u root "$@"\n' "$(command -v memcached)" >"$work/path/memcached"
    chmod +x "$work/path/memcached"
    export PATH="$work/path:$PATH"
fi

# The harness loads every module that `nginx -V` lists as `=dynamic` from
# TEST_NGINX_MODULES (nginx's stream module among them, after
# TEST_NGINX_GLOBALS: hence our load_module lines go into the configs, after
# %%TEST_GLOBALS%%). Debian's nginx lists modules whose packages may not be
# installed (geoip, perl, xslt, mail...): a wrapper that runs the same binary
# answers -V without those whose .so is absent, so that the harness does not
# try to load them.
make_wrapper() {
    local v=$1 bin=$2 mods=$3 out="$work/$1/bin"
    mkdir -p "$out"
    "$bin" -V 2>&1 | MODS="$mods" perl -pe '
        BEGIN {
            %so = (http_geoip_module => "ngx_http_geoip_module",
                http_image_filter_module => "ngx_http_image_filter_module",
                http_perl_module => "ngx_http_perl_module", http_xslt_module => "ngx_http_xslt_filter_module",
                mail => "ngx_mail_module", stream => "ngx_stream_module",
                stream_geoip_module => "ngx_stream_geoip_module");
        }
        s{ --with-(\w+)=dynamic}{ (!$so{$1} || -f "$ENV{MODS}/$so{$1}.so") ? $& : "" }ge' >"$out/V.txt"
    cat >"$out/nginx" <<WRAP
#!/bin/sh
[ "\$1" = -V ] && [ \$# -eq 1 ] && { cat "$out/V.txt" >&2; exit 0; }
exec "$bin" "\$@"
WRAP
    chmod +x "$out/nginx"
}

# Copies of the files for one way: as written (a), stock least_conn (b), ours (c).
prepare_way() {
    local v=$1 way=$2 http_so=$3 stream_so=$4 out="$work/$1/$2" f summary
    mkdir -p "$out"
    cp -a "$dir/lib" "$out/lib"
    for f in "${files[@]}"; do
        case "$way" in
            a) cp "$dir/$f" "$out/$f"; summary='' ;;
            b) summary=$(perl "$ROOT/scripts/nginx-tests-rewrite.pl" least_conn "$dir/$f" "$out/$f") ;;
            c) summary=$(perl "$ROOT/scripts/nginx-tests-rewrite.pl" ours "$dir/$f" "$out/$f" "$http_so" "$stream_so") ;;
        esac
        printf '%s\t%s\t%s\t%s\n' "$v" "$f" "$way" "$summary" >>"$work/rewrites.tsv"
    done
}

# One file, one way: prove's output in logs/, the [emerg]/[alert]/[crit]
# lines of every nginx it started and the count of our picks (their
# directories are kept for that, under a TMPDIR of the run's own).
run_one() {
    local v=$1 way=$2 f=$3 bin=$4 mods=$5
    local log="$work/logs/$v/$way/$f" tmp="$work/tmp/$v/$way/${f%.t}" rc=0
    mkdir -p "$(dirname "$log")" "$tmp"
    (
        cd "$work/$v/$way"
        TMPDIR="$tmp" TEST_NGINX_LEAVE=1 TEST_NGINX_BINARY="$bin" TEST_NGINX_MODULES="$mods" \
            TEST_NGINX_GLOBALS="$globals" timeout 600 prove -v "$f"
    ) >"$log.out" 2>&1 || rc=$?
    echo "$rc" >"$log.rc"
    cat "$tmp"/*/error.log 2>/dev/null | grep -E '\[(emerg|alert|crit)\]' | sort | uniq -c | sort -rn >"$log.errors" || true
    # Our debug line for each pick: proof that (c) ran through our balancer.
    cat "$tmp"/*/error.log 2>/dev/null | grep -c 'least_conn_persistent: get peer' >"$log.picks" || true
    [ -n "$keep" ] || rm -rf "$tmp"
}

: >"$work/rewrites.tsv"
: >"$work/versions.tsv"
for v in "${versions[@]}"; do
    case "$v" in
        debian)
            bin=$NGINX_BIN http_so=$MODULE_SO stream_so=$STREAM_MODULE_SO
            mods=$(dirname "$NGINX_STREAM_SO")
            ;;
        1.28)
            bin=$NGINX_128_BIN http_so=$MODULE_128_SO stream_so=$STREAM_MODULE_128_SO
            mods=$(dirname "$NGINX_128_STREAM_SO")
            ;;
        *)
            bin=${bin_of[$v]} mods=${mods_of[$v]}
            http_so="$ROOT/target/$v/release/libngx_http_least_conn_persistent_module.so"
            stream_so="$ROOT/target/$v/release/libngx_stream_least_conn_persistent_module.so"
            ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$v" "$bin" "$("$bin" -v 2>&1 | sed 's/^nginx version: //')" \
        "$http_so" "$stream_so" >>"$work/versions.tsv"
    make_wrapper "$v" "$bin" "$mods"
    for way in a b c; do prepare_way "$v" "$way" "$http_so" "$stream_so"; done
    for f in "${files[@]}"; do
        for way in a b c; do
            run_one "$v" "$way" "$f" "$work/$v/bin/nginx" "$mods"
            printf '>> %-12s %-36s %s: %s\n' "$v" "$f" "$way" "$(tail -1 "$work/logs/$v/$way/$f.out")" >&2
        done
    done
done

commit=$(git -C "$dir" rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")
mkdir -p "$(dirname "$doc")"
perl "$ROOT/scripts/nginx-tests-report.pl" "$work" \
    "$commit" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$command_line" "${files[@]}" >"$doc.tmp"
mv "$doc.tmp" "$doc"
echo ">> wrote $doc" >&2
perl -ne 'print if /^\| (nginx|total)/' "$doc" >&2
