//! This worker's record in the zone, and giving back what dead workers held.
//!
//! A worker registers when it starts, after giving back the counts of
//! workers that died (the master starts a replacement for a crashed worker).
//! The workers also take turns at housekeeping, one every
//! `HOUSEKEEPING_INTERVAL_MS` (see `housekeeping`), which looks for dead
//! workers: an old-generation worker that dies while draining is not
//! replaced. A worker that exits
//! gives back what it still holds; holding anything then is a bug, except
//! in a fast shutdown (`nginx -s stop`), which drops connections unreleased.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN};

use crate::core::crash;
use crate::core::liveness::{is_alive, parse_stat, ProcessId, Signal};
use crate::core::ramp;
use crate::core::table::{stop_counting, Reclaimed};
use crate::ngx::log::Log;
use crate::ngx::process::{proc_stat, signal};
use crate::ngx::subsystem;

use super::registry::Registry;
use super::zone::ZoneLink;

/// How often one of the workers looks for dead workers' records: they take
/// turns (`timer::in_turn`), so each ticks every `worker_processes` periods.
pub const HOUSEKEEPING_INTERVAL_MS: usize = 500;

/// Lua keys idle and neither declared nor picked for this long are removed.
pub const LUA_KEY_TTL_SECS: u32 = 600;

/// How often the Lua keys are looked at for expiry.
const LUA_EXPIRY_INTERVAL_MS: u64 = 60_000;

/// A live worker's start time (`/proc/<pid>/stat`, to tell a reused pid
/// apart) is read every this many looks for dead workers, each record in
/// its turn: in
/// between, `kill(pid, 0)` alone says whether the pid is gone. A pid is
/// reused only after the kernel has gone round its whole pid space.
const STAT_EVERY: usize = 20;

/// This worker's registry (its cycle's), for front-ends that have no
/// request or configuration to find it through (the Lua C ABI).
static CURRENT: AtomicPtr<Registry> = AtomicPtr::new(ptr::null_mut());

/// Commits a configuration load (`Registry::commit`), and warns when its
/// upstreams have no zone to count in.
pub fn commit(registry: &mut Registry, log: Log) {
    registry.commit(log);
    let upstreams = registry.upstreams().count();
    if upstreams > 0 && !registry.has_zone() {
        log.module(
            NGX_LOG_WARN,
            format_args!(
                "no \"least_conn_persistent_zone\" is configured: \
                 {upstreams} {} upstream(s) balance on per-worker counts, which reloads reset",
                subsystem::NAME
            ),
        );
        let slow = registry.upstreams().filter(|up| up.slow_start != 0).count();
        if slow > 0 {
            log.module(
                NGX_LOG_WARN,
                format_args!(
                    "slow_start of {slow} {} upstream(s) is ignored: it needs \
                     \"least_conn_persistent_zone\"",
                    subsystem::NAME
                ),
            );
        }
        let rebalance = registry
            .upstreams()
            .filter(|up| up.rebalance.is_some())
            .count();
        if rebalance > 0 {
            log.module(
                NGX_LOG_WARN,
                format_args!(
                    "least_conn_persistent_rebalance of {rebalance} {} upstream(s) is ignored: \
                     it needs \"least_conn_persistent_zone\"",
                    subsystem::NAME
                ),
            );
        }
    }
}

/// This worker's registry, once the worker has started.
pub fn registry() -> Option<&'static Registry> {
    // SAFETY: null, or the registry of this worker's cycle, which lives as
    // long as the worker; set once in `start`.
    unsafe { CURRENT.load(Ordering::Acquire).as_ref() }
}

/// Whether the worker `id` still runs. The stat file (start time, zombie)
/// is read only when the pid exists and `read_stat` says it is this
/// record's turn.
fn alive(id: ProcessId, read_stat: bool) -> bool {
    match signal(id.pid) {
        Signal::Gone => false,
        Signal::Ours if !read_stat => true,
        s => is_alive(id, s, proc_stat(id.pid).as_deref(), euid()),
    }
}

fn euid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// This process, as its record names it.
fn current() -> Option<ProcessId> {
    let pid = i32::try_from(std::process::id()).ok()?;
    let (_, start_time) = parse_stat(&proc_stat(pid)?)?;
    Some(ProcessId {
        pid,
        start_time,
        uid: euid(),
    })
}

fn keys_text(r: &Reclaimed) -> String {
    let mut text = String::from_utf8_lossy(r.keys.as_bytes()).into_owned();
    if r.keys.more > 0 {
        text.push_str(&format!(" and {} more", r.keys.more));
    }
    text
}

/// Gives back the counts of every recorded worker that is gone, one
/// `[warn]` each. Two short holds of the zone lock: one copies the records
/// (into room reserved before it), the other gives back those found dead;
/// the probing (`kill`, `/proc`) and the logging happen outside both.
fn reclaim_dead(link: &ZoneLink, log: Log, period: usize) {
    let mut seen = Vec::with_capacity(link.table.nrecords() + 8);
    {
        let locked = link.lock();
        link.table.records_into(&locked, &mut seen);
        crash::point("reclaim.locked");
    }
    let mut index = 0;
    seen.retain(|s| {
        index += 1;
        !alive(s.worker, (period + index).is_multiple_of(STAT_EVERY))
    });
    if seen.is_empty() {
        return;
    }
    let mut gone: Vec<Reclaimed> = Vec::with_capacity(seen.len());
    {
        let locked = link.lock();
        gone.extend(
            seen.iter()
                .filter_map(|s| link.table.reclaim_seen(&locked, *s)),
        );
    }
    for r in &gone {
        // A dead worker's health checks: another takes them at its next
        // tick, without waiting for the lease to expire.
        link.table.release_checker(r.worker.pid as u32);
        log.zone(
            NGX_LOG_WARN,
            link.shm.name(),
            format_args!(
                ": worker process {} is gone: {} connection(s) it held given back{}{}",
                r.worker.pid,
                r.connections,
                if r.keys.is_empty() { "" } else { ": " },
                keys_text(r)
            ),
        );
    }
}

/// `init_process`: gives back what dead workers held and registers this
/// worker (its cells come as it first counts on each list).
pub fn start(registry: &'static Registry, log: Log) {
    CURRENT.store(ptr::from_ref(registry).cast_mut(), Ordering::Release);
    let Some(link) = registry.zone() else {
        return;
    };
    // A replacement for a crashed worker gives back what it held at once.
    reclaim_dead(link, log, 0);
    let me = current();
    let record = me.and_then(|me| link.table.register_worker(&link.lock(), me));
    let unattributed = registry.attach_worker(record);
    if unattributed > 0 {
        log.zone(
            NGX_LOG_ERR,
            link.shm.name(),
            format_args!(
                " has no room to record what this worker holds on {unattributed} server(s): \
                 they are counted, but not given back if the worker dies; make the zone larger"
            ),
        );
    }
}

/// Housekeeping, in the worker whose turn it is; `now` in seconds,
/// `now_ms` on nginx's monotonic clock. The turns give one tick a period
/// per generation; of those, only the one that claims the period
/// (`Table::claim_reclaim`, one compare-and-swap; a little short of a period,
/// so that a tick a few ms early still claims it) looks for dead workers:
/// the work per period does not grow with the workers.
/// About once a minute that one also removes expired Lua keys.
pub fn housekeeping(registry: &Registry, now: u32, now_ms: u64) {
    let Some(link) = registry.zone() else {
        return;
    };
    let interval = HOUSEKEEPING_INTERVAL_MS as u64;
    if !link.table.claim_reclaim(now_ms, interval * 3 / 4) {
        return;
    }
    reclaim_dead(link, Log::cycle(), (now_ms / interval) as usize);
    // Slow start: the pick indexes follow the ramps as they go on, and
    // once more after the last one ended.
    let now_ds = ramp::now_ds(now_ms);
    if link.table.ramping(now_ds.saturating_sub(RAMP_LOOK_PAST_DS)) {
        link.table
            .refresh_ramping_pick_indexes(&link.lock(), now_ds);
    }
    if link.table.claim_lua_expiry(now_ms, LUA_EXPIRY_INTERVAL_MS) {
        let expired = link.table.expire_lua(&link.lock(), now, LUA_KEY_TTL_SECS);
        if expired > 0 {
            Log::cycle().zone(
                NGX_LOG_NOTICE,
                link.shm.name(),
                format_args!(
                    ": {expired} Lua key(s) idle and unused for {LUA_KEY_TTL_SECS} s removed"
                ),
            );
        }
    }
}

/// How long (deciseconds) the pick indexes' look at ramps goes on after
/// the last ramp ended: two housekeeping periods at least.
const RAMP_LOOK_PAST_DS: u32 = 2 * (HOUSEKEEPING_INTERVAL_MS / 100) as u32;

/// `exit_process`: gives back what this worker still holds. `fast`: a fast
/// shutdown, where connections end without being released; `lua`: picks
/// the worker's Lua code took and never released. Counting stops first: a
/// later module's exit hook that releases then changes nothing, and writes
/// no cell freed here.
pub fn finish(registry: &Registry, fast: bool, lua: usize, log: Log) {
    let (Some(link), Some(record)) = (registry.zone(), registry.record()) else {
        return;
    };
    stop_counting();
    let r = link.table.reclaim(&link.lock(), record);
    if r.connections == 0 {
        return;
    }
    let (level, why) = if fast {
        (NGX_LOG_NOTICE, "fast shutdown".to_owned())
    } else if lua > 0 {
        (
            NGX_LOG_ERR,
            format!(
                "its Lua code never released {lua} pick(s): release every token, \
                 before a retry and in log_by_lua*"
            ),
        )
    } else {
        (
            NGX_LOG_ERR,
            "a bug: every connection should have been released".to_owned(),
        )
    };
    log.zone(
        level,
        link.shm.name(),
        format_args!(
            ": worker process {} exits holding {} connection(s) ({why}), given back: {}",
            r.worker.pid,
            r.connections,
            keys_text(&r)
        ),
    );
}
