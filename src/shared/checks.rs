//! Active health checks: one process checks every server of the
//! zone's checked upstreams, and what it finds goes into the zone
//! (`core::table`), where every worker's picks (http, stream, Lua)
//! see it and a reload keeps it.
//!
//! - **The lease.** Each worker of the newest configuration ticks
//!   (`tick`, every `timing().0` ms); the one holding the zone's lease (or
//!   taking it, free or expired) runs the checks, the others only read the
//!   lease word. The holder renews it every tick, for the smallest check
//!   interval: a holder that dies or hangs loses it within two intervals
//!   less two ticks (`timing`; sooner when the look for dead workers sees
//!   it gone), and another worker takes over at its next tick.
//! - **The checks.** One task per checked server, on nginx's event loop
//!   (ngx's `async`): sleep until due, probe (`ngx::probe`), judge
//!   (`core::check_judge`), record under the zone lock, log what changed
//!   after it. A new holder keeps the cadence the records show.
//! - **Reloads.** Workers of an older configuration, or exiting ones, drop
//!   their tasks and give the lease up at their next tick; the new
//!   configuration's workers take it with their own parameters.

use core::time::Duration;
use std::cell::RefCell;
use std::collections::HashSet;

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN};
use ngx::async_::{sleep, spawn, Task};

use crate::core::check_conf::{CheckParams, Kind};
use crate::core::check_judge::{judge, Judged};
use crate::core::health::{State, Why};
use crate::core::key;
use crate::core::ramp;
use crate::core::table::{CheckReport, Claim, Recorded, SlotRef};
use crate::ngx::log::Log;
use crate::ngx::peers::{self, now_ms};
use crate::ngx::probe::{self, probe, Target};
use crate::ngx::process;
use crate::ngx::subsystem::UpstreamSrvConf;

use super::balance::follow_resolved_peers;
use super::registry::{List, Registry, UpstreamCounters};
use super::zone::ZoneLink;

/// The longest tick: a lease change is seen at least this often.
const MAX_TICK_MS: u32 = 500;
/// The holder looks at the upstreams' servers again (DNS may have changed
/// them) every this many ticks.
const RESCAN_TICKS: u32 = 8;

/// The tick and the lease for checks whose smallest interval is
/// `interval_ms`: a dead holder's lease expires within two intervals less
/// two ticks, and the next tick takes it over, within two intervals. A
/// live holder renews it every tick: only a holder stalled for more than
/// the lease less a tick (1.25 intervals at least) loses it.
pub fn timing(interval_ms: u32) -> (u32, u32) {
    let tick = (interval_ms / 4).clamp(25, MAX_TICK_MS);
    (
        tick,
        (2 * interval_ms).saturating_sub(2 * tick).max(2 * tick),
    )
}

/// The smallest check interval of `registry`'s upstreams, if any checks.
fn smallest_interval(registry: &Registry) -> Option<u32> {
    registry
        .upstreams()
        .filter_map(|up| up.check.as_ref())
        .map(|c| c.interval_ms)
        .min()
}

/// One server to check.
struct Job {
    up: &'static UpstreamCounters,
    params: &'static CheckParams,
    slot: SlotRef,
    server: String,
    /// The configured weight and max_conns (the log compares overrides).
    weight: u32,
    max_conns: u32,
    target: Target,
}

struct Running {
    slot: SlotRef,
    /// The address its task probes: a key whose address changed (DNS)
    /// gets a new task.
    target: Target,
    task: Task<()>,
}

#[derive(Default)]
struct Checker {
    /// Holds the lease and runs the checks.
    holding: bool,
    /// Holds the lease paused (no connection to spare), since when (ms).
    paused: Option<u64>,
    /// When this process last paused, kept when another takes the lease
    /// over: for a lease after it, it neither resumes nor takes a lease
    /// to check (workers at the line would pass the checks back and forth
    /// at every tick, each cancelling the other's probes).
    last_pause: Option<u64>,
    /// The checks ran here since when (ms), and whether "no worker can
    /// check" was warned: once, until they ran here for a whole lease.
    checking_since: Option<u64>,
    warned: bool,
    ticks: u32,
    running: Vec<Running>,
    /// Servers left unchecked for want of zone memory, or for having no
    /// port to replace, as last logged.
    unrecorded: usize,
    portless: usize,
}

impl Checker {
    /// Drops every task: each closes its probe's connection, if any. The
    /// probes waiting for a turn are forgotten first: a turn freed by a
    /// dropped task would start one of them, to be dropped right after.
    fn stop(&mut self) {
        self.holding = false;
        self.checking_since = None;
        probe::forget_waiting();
        self.running.clear();
    }
}

thread_local! {
    static CHECKER: RefCell<Checker> = RefCell::default();
    /// The smallest interval of this process's configuration (`start`).
    static INTERVAL: core::cell::Cell<Option<u32>> = const { core::cell::Cell::new(None) };
}

/// `init_process`: the tick's period, if this configuration checks; the
/// timer is armed with it and each tick reads the lease's length from here
/// (not from every upstream, every tick).
pub fn start(registry: &Registry) -> Option<u32> {
    let interval = smallest_interval(registry);
    INTERVAL.set(interval);
    interval.map(|i| timing(i).0)
}

fn pid() -> u32 {
    std::process::id()
}

/// The periodic tick of every worker (exiting ones too): takes, renews or
/// gives up the lease, and starts or stops the checks. `upstreams`: the
/// front-end's upstreams that use the method, with their registry index.
pub fn tick<'a>(
    registry: &'static Registry,
    upstreams: impl FnOnce() -> Vec<(&'a UpstreamSrvConf, usize)>,
) {
    let Some(link) = registry.zone() else {
        return;
    };
    let Some(interval) = INTERVAL.get() else {
        return;
    };
    let current = !process::exiting() && link.table.epoch() == link.epoch;
    let now = now_ms();
    CHECKER.with(|c| {
        let mut c = c.borrow_mut();
        if !current {
            if c.holding || c.paused.is_some() {
                c.stop();
                c.paused = None;
                link.table.release_checker(pid());
            }
            return;
        }
        let (_, lease) = timing(interval);
        let room = probe::room();
        // A worker that paused claims no more for a lease at least (any
        // worker that can check takes the lease over meanwhile); one that
        // has room meanwhile takes no lease just to say it is paused.
        let hold_off = c
            .last_pause
            .is_some_and(|at| now.saturating_sub(at) < u64::from(lease));
        if hold_off && c.paused.is_none() && room != Claim::Paused {
            return;
        }
        let claim = if hold_off { Claim::Paused } else { room };
        if !link.table.take_checker(pid(), now, lease, claim) {
            if c.holding || c.paused.is_some() {
                c.stop();
                c.paused = None;
                Log::cycle().zone(
                    NGX_LOG_NOTICE,
                    link.shm.name(),
                    format_args!(": health checks taken over by another worker"),
                );
            }
            return;
        }
        if claim == Claim::Paused {
            pause(&mut c, link, now, lease);
            return;
        }
        resume(&mut c, link);
        let first = !c.holding;
        c.holding = true;
        let since = *c.checking_since.get_or_insert(now);
        if now.saturating_sub(since) >= u64::from(lease) {
            c.warned = false;
        }
        c.ticks = c.ticks.wrapping_add(1);
        // A task that ended (its key gone, or the lease lapsed under it
        // while this worker stalled) is started again at once if needed.
        let ended = c.running.iter().any(|r| r.task.is_finished());
        if first || ended || c.ticks.is_multiple_of(RESCAN_TICKS) {
            let Jobs {
                jobs,
                portless,
                partial,
            } = jobs(registry, upstreams());
            if portless != c.portless && portless > 0 {
                Log::cycle().zone(
                    NGX_LOG_WARN,
                    link.shm.name(),
                    format_args!(
                        ": {portless} unix socket server(s) go unchecked: \
                         least_conn_persistent_check's port= has no meaning for them"
                    ),
                );
            }
            c.portless = portless;
            reconcile(&mut c, link, jobs, partial, now);
        }
        probe::wake_waiting();
        if first {
            Log::cycle().zone(
                NGX_LOG_NOTICE,
                link.shm.name(),
                format_args!(
                    ": health checks run in this worker now ({} servers)",
                    c.running.len()
                ),
            );
        }
    });
}

/// This worker holds the lease with no connection to spare for a probe
/// (its own probes' connections counted as free): its checks stop, the
/// lease says paused, and any worker that can check takes it over at its
/// next tick. Still paused after a whole lease with no room (every worker
/// had its turn), it is warned: no worker can check.
fn pause(c: &mut Checker, link: &ZoneLink, now: u64, lease: u32) {
    let since = match c.paused {
        Some(since) => since,
        None => {
            c.stop();
            c.paused = Some(now);
            c.last_pause = Some(now);
            let (free, all) = probe::connections();
            Log::cycle().zone(
                NGX_LOG_NOTICE,
                link.shm.name(),
                format_args!(
                    ": health checks paused in this worker: {free} of {all} connections free \
                     (checks leave the last 1/16 to clients); a worker with room takes them over"
                ),
            );
            now
        }
    };
    if !c.warned && now.saturating_sub(since) >= u64::from(lease) {
        c.warned = true;
        Log::cycle().zone(
            NGX_LOG_WARN,
            link.shm.name(),
            format_args!(
                ": health checks paused: no worker has a connection to spare for them \
                 (the last 1/16 of worker_connections is left to clients); servers are \
                 not checked until one has: make worker_connections larger"
            ),
        );
    }
}

/// The lease is this worker's with room to check again.
fn resume(c: &mut Checker, link: &ZoneLink) {
    if c.paused.take().is_some() {
        Log::cycle().zone(
            NGX_LOG_NOTICE,
            link.shm.name(),
            format_args!(": health checks resume: this worker has connections to spare"),
        );
    }
}

/// `exit_process`: the lease goes at once (the next holder need not wait
/// for it to expire).
pub fn stop(registry: &Registry) {
    CHECKER.with(|c| {
        let mut c = c.borrow_mut();
        if c.holding || c.paused.is_some() {
            c.stop();
            c.paused = None;
            if let Some(link) = registry.zone() {
                link.table.release_checker(pid());
            }
        }
    });
}

/// The servers to check: each checked upstream's servers stored in the
/// zone, not configured `down`, with an address to probe.
/// Also says how many servers were left out for having no port to
/// replace (unix sockets, with `port=`).
///
/// A key is paired with the address nginx has at its position, so the
/// counters follow DNS (`resolve`) first; a list DNS changed again since
/// (its version is not the counters') is left for the next rescan: paired
/// by position, one server's key would be checked at another's address.
/// A handle whose key another worker removed and stored again meanwhile
/// (DNS took the address away and gave it back before this worker looked)
/// is looked up again: its checks would record nothing.
fn jobs(registry: &'static Registry, upstreams: Vec<(&UpstreamSrvConf, usize)>) -> Jobs {
    follow_resolved_peers(registry, upstreams.iter().copied());
    let mut jobs = Vec::new();
    let mut portless = 0;
    let mut partial = false;
    for (us, index) in upstreams {
        let Some(up) = registry.upstream(index) else {
            continue;
        };
        let Some(params) = up.check.as_ref() else {
            continue;
        };
        refresh_gone_keys(up);
        // SAFETY: round-robin init filled peer.data (the upstream zone's
        // copy, with one).
        let (primary, backup) = unsafe { peers::lists(us.peer.data) };
        for (list, rr) in [(List::Primary, primary), (List::Backup, backup)] {
            let Some(rr) = rr else { continue };
            let lock = peers::lock(rr);
            let counters = up.list(list);
            let followed = peers::version(rr).is_none_or(|v| up.version(list) == Some(v));
            if !followed || counters.len() != rr.number {
                partial = true;
                continue;
            }
            for (peer, pc) in peers::each_peer(rr).zip(counters.iter()) {
                let (Some(slot), false) = (pc.slot(), peers::is_down(peer)) else {
                    continue;
                };
                let Some(target) = Target::of_peer(peer, params.port) else {
                    portless += 1;
                    continue;
                };
                jobs.push(Job {
                    up,
                    params,
                    slot,
                    server: String::from_utf8_lossy(pc.server()).into_owned(),
                    weight: pc.meta.weight,
                    max_conns: pc.meta.max_conns,
                    target,
                });
            }
            drop(lock);
        }
    }
    Jobs {
        jobs,
        portless,
        partial,
    }
}

/// What a rescan found to check.
struct Jobs {
    jobs: Vec<Job>,
    /// Servers left out for having no port to replace (unix sockets).
    portless: usize,
    /// Some list was left for the next rescan (DNS changed it again): the
    /// tasks of its keys keep running meanwhile.
    partial: bool,
}

/// Looks up again the keys of `up` whose handles this worker holds are
/// gone from the zone (the zone lock, no peer lock held).
fn refresh_gone_keys(up: &UpstreamCounters) {
    for list in [List::Primary, List::Backup] {
        for pc in up.list(list).iter() {
            if pc.slot().is_some_and(|s| s.count().is_none()) {
                up.refresh(pc);
            }
        }
    }
}

/// Starts a task for each job not running yet, and stops the tasks of
/// servers no longer checked, or checked at another address now. After a
/// `partial` rescan the tasks of keys it did not see keep running.
fn reconcile(c: &mut Checker, link: &ZoneLink, jobs: Vec<Job>, partial: bool, now: u64) {
    // A task ends when its key is gone (`record`): started again if the
    // key came back.
    let wanted: HashSet<(SlotRef, &Target)> = jobs.iter().map(|j| (j.slot, &j.target)).collect();
    let seen: HashSet<SlotRef> = jobs.iter().map(|j| j.slot).collect();
    c.running.retain(|r| {
        let keep = if seen.contains(&r.slot) {
            wanted.contains(&(r.slot, &r.target))
        } else {
            partial
        };
        keep && !r.task.is_finished() && r.slot.count().is_some()
    });
    let running: HashSet<SlotRef> = c.running.iter().map(|r| r.slot).collect();
    let new: Vec<Job> = jobs
        .into_iter()
        .filter(|j| !running.contains(&j.slot))
        .collect();
    if new.is_empty() {
        return;
    }
    let mut recorded = vec![true; new.len()];
    {
        let locked = link.lock();
        for (ok, j) in recorded.iter_mut().zip(&new) {
            *ok = link.table.ensure_health(&locked, j.slot);
        }
    }
    let unrecorded = recorded.iter().filter(|ok| !**ok).count();
    // Said once per change, not at every rescan.
    if unrecorded != c.unrecorded && unrecorded > 0 {
        Log::cycle().zone(
            NGX_LOG_ERR,
            link.shm.name(),
            format_args!(" is full: {unrecorded} server(s) go unchecked; make the zone larger"),
        );
    }
    c.unrecorded = unrecorded;
    for (job, ok) in new.into_iter().zip(recorded) {
        if !ok {
            continue;
        }
        let first = first_delay(&job, now);
        let (slot, target) = (job.slot, job.target.clone());
        c.running.push(Running {
            slot,
            target,
            task: spawn(check_loop(job, first)),
        });
    }
}

/// When the first check of a server is due: one interval after the last
/// one recorded (a takeover or a reload keeps the cadence); a server never
/// checked, within the first half interval, spread by its key so that
/// many servers do not start at once.
fn first_delay(job: &Job, now: u64) -> u64 {
    let interval = u64::from(job.params.interval_ms);
    match job.slot.last_check_ms() {
        0 => u64::from(key::hash(job.server.as_bytes())) % (interval / 2).max(1),
        last => (last + interval).saturating_sub(now).min(interval),
    }
}

async fn check_loop(job: Job, first: u64) {
    let request = (job.params.kind == Kind::Http).then(|| job.params.request(job.target.name()));
    let interval = u64::from(job.params.interval_ms);
    let mut delay = first;
    loop {
        sleep(Duration::from_millis(delay)).await;
        // A holder that stalled past its lease (stopped, or a long hold of
        // the CPU) wakes with its sleeps expired before its tick has seen
        // the lease gone: another process checks now.
        if !holds_lease(&job) {
            return;
        }
        let due = now_ms();
        // Asked again once the probe's turn came: the worker may have
        // stalled while it waited.
        let (started, answer) = probe(
            &job.target,
            job.params.timeout_ms,
            request.as_deref(),
            || holds_lease(&job),
        )
        .await;
        let ended = now_ms();
        let judged = judge(job.params, answer.as_deref().map_err(|w| *w));
        if !record(&job, &judged, started, ended) {
            return;
        }
        // The cadence runs from when the check was due, not from when it
        // got a turn (at most 64 probes in flight per process).
        delay = (due + interval).saturating_sub(ended).max(1);
    }
}

/// Records one check in the zone, then logs what changed. False when the
/// key is gone (its task then ends; the next rescan starts what is needed).
fn record(job: &Job, judged: &Judged, started: u64, ended: u64) -> bool {
    let Some(link) = job.up.link() else {
        return false;
    };
    if !holds_lease(job) {
        return false;
    }
    let report = CheckReport {
        why: judged.why,
        http_status: judged.http_status,
        duration_ms: u32::try_from(ended.saturating_sub(started)).unwrap_or(u32::MAX),
        now_ms: ended,
        now_ds: ramp::now_ds(ended),
        rise: job.params.rise,
        fall: job.params.fall,
        capacity: judged.capacity,
        reported: judged.reported,
        malformed: judged.malformed.as_ref().map_or(0, |m| m.hash),
    };
    let recorded = link.table.record_check(&link.lock(), job.slot, &report);
    let Some(r) = recorded else {
        return false;
    };
    log_changes(job, &r, judged, &report);
    true
}

/// Whether this process still holds the checks' lease, unpaused: only the
/// holder probes and records (a check recorded twice would reach `fall`
/// early).
fn holds_lease(job: &Job) -> bool {
    job.up
        .link()
        .is_some_and(|link| link.table.checks_here(pid(), now_ms()))
}

fn log_changes(job: &Job, r: &Recorded, judged: &Judged, report: &CheckReport) {
    let log = Log::cycle();
    let up = String::from_utf8_lossy(&job.up.name);
    let s = &job.server;
    if r.before.state != r.after.state {
        match r.after.state {
            Some(State::Down) => log.module(
                NGX_LOG_WARN,
                format_args!(
                    "upstream \"{up}\": server {s} is down ({} failed checks, last: {})",
                    r.fails,
                    what(report)
                ),
            ),
            Some(State::Up) if r.before.state == Some(State::Down) => log.module(
                NGX_LOG_NOTICE,
                format_args!(
                    "upstream \"{up}\": server {s} is up ({} passed checks)",
                    r.passes
                ),
            ),
            Some(State::Up) => log.module(
                NGX_LOG_INFO,
                format_args!("upstream \"{up}\": server {s} is up (first check passed)"),
            ),
            _ => {}
        }
    }
    if r.before.drain != r.after.drain {
        let what = if r.after.drain {
            "drains"
        } else {
            "takes new connections again"
        };
        log.module(
            NGX_LOG_NOTICE,
            format_args!("upstream \"{up}\": server {s} {what} (capacity answer)"),
        );
    }
    let overrides = |v: &crate::core::table::Verdict| (v.weight, v.max_conns);
    if overrides(&r.before) != overrides(&r.after) {
        log.module(
            NGX_LOG_NOTICE,
            format_args!(
                "upstream \"{up}\": server {s}: {} (capacity answer)",
                override_text(r.after.weight, r.after.max_conns, job)
            ),
        );
    }
    if let (true, Some(m)) = (r.warn, &judged.malformed) {
        log.module(
            NGX_LOG_WARN,
            format_args!(
                "upstream \"{up}\": server {s}: {} answer \"{}\" ignored: {}",
                m.header, m.text, m.reason
            ),
        );
    }
}

fn override_text(weight: Option<u32>, max_conns: Option<u32>, job: &Job) -> String {
    let mut parts = Vec::new();
    if let Some(w) = weight {
        parts.push(format!("weight {w} (configured {})", job.weight));
    }
    if let Some(m) = max_conns {
        parts.push(format!("max_conns {m} (configured {})", job.max_conns));
    }
    if parts.is_empty() {
        "configured weight and max_conns again".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The last check's result in words, for the log.
fn what(r: &CheckReport) -> String {
    match r.why {
        Why::Ok => "passed".to_owned(),
        Why::Refused => "connection refused".to_owned(),
        Why::Reset => "connection failed".to_owned(),
        Why::ClosedEarly => "closed before a response".to_owned(),
        Why::Timeout => format!("timeout after {} ms", r.duration_ms),
        Why::BadStatus => format!("status {}", r.http_status),
        Why::BadResponse => "not an HTTP response".to_owned(),
        Why::NoConnection => "no connection available".to_owned(),
    }
}
