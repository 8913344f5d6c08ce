//! How long the zone mutex is held and waited for: the cargo feature
//! `lock-stats`, for the benchmark (`scripts/bench/scale.pl`) only, never in
//! packages.
//!
//! The zone's guard (`shared::zone::Locked`) is made through `Taken::wait_for`,
//! which times the wait for the mutex and remembers where the guard was
//! asked for; the guard's `drop` calls `Taken::release` while the mutex is
//! still held, which records the hold. The clock is `CLOCK_MONOTONIC`
//! (`Instant`), a vDSO call rather than a system call; recording is a few
//! relaxed atomic adds. That is still work under the mutex, so it is done
//! in this feature's builds only. The holder's CPU time is read (a system
//! call) before it asks for the mutex and after it released it: a system
//! call under the mutex would give the scheduler a point to switch the
//! holder out that production builds do not have.
//!
//! Each process keeps its own figures (a worker is single-threaded; a forked
//! worker forgets the master's, `forked`) and writes them once, as it exits,
//! in `[notice]` lines that the benchmark merges across processes:
//!
//! ```text
//! least_conn_persistent: lock-stats hold: pid <pid>, <role>, <summary> end
//! least_conn_persistent: lock-stats wait: pid <pid>, <role>, <summary> end
//! least_conn_persistent: lock-stats sites: pid <pid>, <role>: <file>:<line> n <n> sum <ns> max <ns>; ... end
//! ```
//!
//! `<summary>` is `core::histogram::Histogram::summary`; `end` tells a whole
//! line from one nginx cut at its line length limit.

use core::panic::Location;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::fmt::Write;
use std::time::Instant;

use nginx_sys::{ngx_cycle_t, NGX_LOG_NOTICE};

use crate::core::histogram::Histogram;

use super::log::Log;

static HOLD: Histogram = Histogram::new();
static WAIT: Histogram = Histogram::new();
/// The holder's own CPU time from asking for the mutex to releasing it
/// (spinning while it waited included): unlike the hold's wall clock, not
/// the time the scheduler ran other processes (more workers than cores).
static CPU: Histogram = Histogram::new();

/// This thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Holds per place in the code that asked for the mutex (the caller of
/// `ZoneLink::lock()` or `Locked::new`): the first `SITES` places seen.
const SITES: usize = 32;

struct Site {
    at: AtomicPtr<Location<'static>>,
    n: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

static SITE_TABLE: [Site; SITES] = [const {
    Site {
        at: AtomicPtr::new(ptr::null_mut()),
        n: AtomicU64::new(0),
        sum: AtomicU64::new(0),
        max: AtomicU64::new(0),
    }
}; SITES];

/// The mutex was taken at `at`, by the code at `site`. Dropped after the
/// mutex is released (the guard's last field): records the CPU time.
#[derive(Debug)]
pub struct Taken {
    at: Instant,
    cpu_asked: u64,
    site: &'static Location<'static>,
}

impl Taken {
    /// Takes the mutex with `lock`, timing how long that waited. No system
    /// call while the mutex is held (`Instant` reads the vDSO clock): one
    /// there would be a point where the scheduler switches the holder out,
    /// which code in production does not have; the CPU clock (a system
    /// call) is read before asking and after releasing.
    #[track_caller]
    pub fn wait_for<T>(lock: impl FnOnce() -> T) -> (T, Taken) {
        let site = Location::caller();
        let cpu_asked = thread_cpu_ns();
        let asked = Instant::now();
        let guard = lock();
        let at = Instant::now();
        WAIT.record(nanos(at - asked));
        (
            guard,
            Taken {
                at,
                cpu_asked,
                site,
            },
        )
    }

    /// Records the hold; called with the mutex still held, just before the
    /// guard releases it.
    pub fn release(&self) {
        let held = nanos(self.at.elapsed());
        HOLD.record(held);
        record_site(self.site, held);
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        CPU.record(thread_cpu_ns().saturating_sub(self.cpu_asked));
    }
}

fn nanos(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn record_site(site: &'static Location<'static>, held: u64) {
    let wanted = ptr::from_ref(site).cast_mut();
    for s in &SITE_TABLE {
        let at = s.at.load(Ordering::Relaxed);
        let mine = at == wanted
            || (at.is_null()
                && s.at
                    .compare_exchange(at, wanted, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok());
        if mine {
            s.n.fetch_add(1, Ordering::Relaxed);
            s.sum.fetch_add(held, Ordering::Relaxed);
            s.max.fetch_max(held, Ordering::Relaxed);
            return;
        }
    }
}

/// In a process nginx just forked (`init_process`): the figures it
/// inherited are the master's, not its own.
pub fn forked() {
    HOLD.reset();
    WAIT.reset();
    CPU.reset();
    for s in &SITE_TABLE {
        s.at.store(ptr::null_mut(), Ordering::Relaxed);
        s.n.store(0, Ordering::Relaxed);
        s.sum.store(0, Ordering::Relaxed);
        s.max.store(0, Ordering::Relaxed);
    }
}

/// Writes this process's figures to the cycle's error log (at exit).
pub fn dump(role: &str) {
    let pid = std::process::id();
    let log = Log::cycle();
    for (what, h) in [("hold", &HOLD), ("wait", &WAIT), ("cpu", &CPU)] {
        log.module(
            NGX_LOG_NOTICE,
            format_args!("lock-stats {what}: pid {pid}, {role}, {} end", h.summary()),
        );
    }
    let mut sites = String::new();
    for s in &SITE_TABLE {
        // SAFETY: null, or a `Location` the compiler made ('static).
        let Some(at) = (unsafe { s.at.load(Ordering::Relaxed).as_ref() }) else {
            break;
        };
        let _ = write!(
            sites,
            " {}:{} n {} sum {} max {};",
            at.file(),
            at.line(),
            s.n.load(Ordering::Relaxed),
            s.sum.load(Ordering::Relaxed),
            s.max.load(Ordering::Relaxed)
        );
    }
    log.module(
        NGX_LOG_NOTICE,
        format_args!("lock-stats sites: pid {pid}, {role}:{sites} end"),
    );
}

/// `exit_master`: the master's own holds (configuration loads).
pub extern "C" fn exit_master(_cycle: *mut ngx_cycle_t) {
    dump("master");
}
