//! Periodic timers of a worker process: housekeeping (the look for dead
//! workers), its phase staggered across the workers of a generation
//! (`in_turn`), rebalancing's (`every`), and health checks' (`checks`).
//!
//! All three are cancelable: they never keep a worker that is shutting
//! down gracefully alive. Housekeeping stops re-arming once the worker is
//! exiting; rebalancing's and the checks' go on while such a worker still
//! has connections (an old generation's workers hold the connections a
//! reload left unbalanced).

use core::ptr::{self, addr_of_mut};

use nginx_sys::{
    ngx_add_timer, ngx_connection_t, ngx_event_t, ngx_exiting, ngx_msec_t, ngx_terminate,
};

use super::log::Log;

#[repr(C)]
struct Periodic {
    event: ngx_event_t,
    /// What `event.data` points at. nginx's debug lines read a timer's
    /// `data` as a connection (`ngx_event_ident`: its `fd`), so a standalone
    /// event needs one: a connection of no socket, as nginx's cache manager
    /// gives its own timer.
    no_connection: ngx_connection_t,
    interval: ngx_msec_t,
    tick: Option<fn()>,
    /// Re-armed while the worker exits gracefully.
    while_exiting: bool,
}

impl Periodic {
    /// A timer not armed yet.
    const fn new(while_exiting: bool) -> Periodic {
        Periodic {
            // SAFETY: an all-zero ngx_event_t is how nginx starts every event.
            event: unsafe { core::mem::zeroed() },
            // SAFETY: as above; `arm` sets its fd to -1.
            no_connection: unsafe { core::mem::zeroed() },
            interval: 0,
            tick: None,
            while_exiting,
        }
    }

    /// Calls `tick` every `interval` ms, the first time after `first` ms;
    /// a second call replaces the first's function and interval.
    fn arm(&mut self, first: ngx_msec_t, interval: ngx_msec_t, tick: fn()) {
        self.interval = interval;
        self.tick = Some(tick);
        if self.event.timer_set() != 0 {
            return;
        }
        self.event.handler = Some(on_timer);
        self.event.log = Log::cycle().as_ptr();
        self.no_connection.fd = -1;
        self.event.data = ptr::from_mut(&mut self.no_connection).cast();
        self.event.set_cancelable(1);
        // SAFETY: nginx keeps a pointer to the event, a static that lives
        // as long as the process.
        unsafe { ngx_add_timer(&mut self.event, first) };
    }
}

// The worker is single-threaded: only its event loop touches these.
static mut HOUSEKEEPING: Periodic = Periodic::new(false);
static mut REBALANCE: Periodic = Periodic::new(true);
static mut CHECKS: Periodic = Periodic::new(true);

/// Calls `tick` in this process, from its event loop, so that the `count`
/// workers of a generation, `slot` being this one's number, take turns: one
/// of them ticks every `period_ms` (each every `count` periods, the first
/// time `slot + 1` periods after it starts). Work done on the tick then
/// costs the same per period whatever the number of workers. A second call
/// replaces the first's function and timing.
pub fn in_turn(period_ms: usize, slot: usize, count: usize, tick: fn()) {
    let first = period_ms * (slot + 1);
    let interval = period_ms * count.max(1);
    // SAFETY: single-threaded worker.
    let t = unsafe { &mut *addr_of_mut!(HOUSEKEEPING) };
    t.arm(first as ngx_msec_t, interval as ngx_msec_t, tick);
}

/// Calls `tick` in this process every `period_ms`, also while it exits
/// gracefully (until it has no connection left).
pub fn every(period_ms: usize, tick: fn()) {
    // SAFETY: single-threaded worker.
    let t = unsafe { &mut *addr_of_mut!(REBALANCE) };
    t.arm(period_ms as ngx_msec_t, period_ms as ngx_msec_t, tick);
}

/// Calls `tick` in this process every `period_ms`, also while it exits
/// gracefully: health checks' lease (`shared::checks`).
pub fn checks(period_ms: usize, tick: fn()) {
    // SAFETY: single-threaded worker.
    let t = unsafe { &mut *addr_of_mut!(CHECKS) };
    t.arm(period_ms as ngx_msec_t, period_ms as ngx_msec_t, tick);
}

extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes one of our static events (the first field of
    // its `Periodic`); single-threaded worker.
    let t = unsafe { &mut *ev.cast::<Periodic>() };
    if let Some(tick) = t.tick {
        tick();
    }
    // SAFETY: nginx's own flags, read in its event loop.
    let stopping = unsafe { ngx_terminate != 0 || (ngx_exiting != 0 && !t.while_exiting) };
    if !stopping {
        // SAFETY: our static event, not in the timer tree now.
        unsafe { ngx_add_timer(&mut t.event, t.interval) };
    }
}
