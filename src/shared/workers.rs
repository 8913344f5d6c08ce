//! This worker's record in the zone, and giving back what dead workers held.
//!
//! A worker registers when it starts, after giving back the counts of
//! workers that died (the master starts a replacement for a crashed worker).
//! Every worker also checks every `CHECK_INTERVAL_MS`: an old-generation
//! worker that dies while draining is not replaced. A worker that exits
//! gives back what it still holds; holding anything then is a bug, except
//! in a fast shutdown (`nginx -s stop`), which drops connections unreleased.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN};

use crate::core::record::{is_alive, parse_stat, ProcessId, Reclaimed};
use crate::ngx::log::Log;
use crate::ngx::subsystem;

use super::registry::Registry;
use super::zone::{Locked, ZoneLink};

/// How often every worker looks for dead workers' records.
pub const CHECK_INTERVAL_MS: usize = 500;

/// Lua keys idle and neither declared nor picked for this long are removed.
pub const LUA_KEY_TTL_SECS: u32 = 600;

/// How many checks between two looks for expired Lua keys (about a minute).
const LUA_EXPIRY_EVERY: u32 = 120;

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
    }
}

/// This worker's registry, once the worker has started.
pub fn registry() -> Option<&'static Registry> {
    // SAFETY: null, or the registry of this worker's cycle, which lives as
    // long as the worker; set once in `start`.
    unsafe { CURRENT.load(Ordering::Acquire).as_ref() }
}

fn proc_stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Whether a process with this pid exists (zombies included).
fn exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// This process, as its record names it.
fn current() -> Option<ProcessId> {
    let pid = i32::try_from(std::process::id()).ok()?;
    let (_, start_time) = parse_stat(&proc_stat(pid)?)?;
    Some(ProcessId { pid, start_time })
}

fn keys_text(r: &Reclaimed) -> String {
    r.keys
        .iter()
        .map(|(k, n)| format!("{} ({n})", String::from_utf8_lossy(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives back the counts of every recorded worker that is gone, one
/// `[warn]` each.
fn reclaim_dead(link: &ZoneLink, locked: &Locked, log: Log) {
    for r in link.table.reclaim_dead(locked, |id| {
        is_alive(id, exists(id.pid), proc_stat(id.pid).as_deref())
    }) {
        log.zone(
            NGX_LOG_WARN,
            link.shm.name(),
            format_args!(
                ": worker process {} is gone: {} connection(s) it held given back{}{}",
                r.worker.pid,
                r.connections,
                if r.keys.is_empty() { "" } else { ": " },
                keys_text(&r)
            ),
        );
    }
}

/// `init_process`: gives back what dead workers held, registers this
/// worker and points every counter of its configuration at its cells.
pub fn start(registry: &'static Registry, log: Log) {
    CURRENT.store(ptr::from_ref(registry).cast_mut(), Ordering::Release);
    let Some(link) = registry.zone() else {
        return;
    };
    let locked = link.lock();
    reclaim_dead(link, &locked, log);
    let record = current().and_then(|me| link.table.register_worker(&locked, me));
    let unattributed = registry.attach_worker(&locked, record);
    drop(locked);
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

/// The periodic check, in every worker; `now` in seconds. About once a
/// minute it also removes expired Lua keys.
pub fn check(registry: &Registry, tick: u32, now: u32) {
    let Some(link) = registry.zone() else {
        return;
    };
    let locked = link.lock();
    reclaim_dead(link, &locked, Log::cycle());
    if tick.is_multiple_of(LUA_EXPIRY_EVERY) {
        let expired = link.table.expire_lua(&locked, now, LUA_KEY_TTL_SECS);
        drop(locked);
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

/// `exit_process`: gives back what this worker still holds. `fast`: a fast
/// shutdown, where connections end without being released; `lua`: picks
/// the worker's Lua code took and never released.
pub fn finish(registry: &Registry, fast: bool, lua: usize, log: Log) {
    let (Some(link), Some(record)) = (registry.zone(), registry.record()) else {
        return;
    };
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
