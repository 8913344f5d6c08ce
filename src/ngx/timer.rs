//! One periodic timer per worker process, its phase staggered across the
//! workers of a generation.
//!
//! The timer is cancelable: it never keeps a worker that is shutting down
//! gracefully alive, and it stops re-arming once the worker is exiting.

use core::ptr::{self, addr_of_mut};

use nginx_sys::{
    ngx_add_timer, ngx_connection_t, ngx_event_t, ngx_exiting, ngx_msec_t, ngx_terminate,
};

use super::log::Log;

struct Periodic {
    event: ngx_event_t,
    /// What `event.data` points at. nginx's debug lines read a timer's
    /// `data` as a connection (`ngx_event_ident`: its `fd`), so a standalone
    /// event needs one: a connection of no socket, as nginx's cache manager
    /// gives its own timer.
    no_connection: ngx_connection_t,
    interval: ngx_msec_t,
    tick: Option<fn()>,
}

// The worker is single-threaded: only its event loop touches this.
static mut TIMER: Periodic = Periodic {
    // SAFETY: an all-zero ngx_event_t is how nginx starts every event.
    event: unsafe { core::mem::zeroed() },
    // SAFETY: as above; `every` sets its fd to -1.
    no_connection: unsafe { core::mem::zeroed() },
    interval: 0,
    tick: None,
};

/// Calls `tick` in this process, from its event loop, so that the `count`
/// workers of a generation, `slot` being this one's number, take turns: one
/// of them ticks every `period_ms` (each every `count` periods, the first
/// time `slot + 1` periods after it starts). Work done on the tick then
/// costs the same per period whatever the number of workers. A second call
/// replaces the first's function and timing.
pub fn in_turn(period_ms: usize, slot: usize, count: usize, tick: fn()) {
    let first = period_ms * (slot + 1);
    // SAFETY: single-threaded worker; nginx keeps a pointer to the static
    // event, which lives as long as the process.
    unsafe {
        let t = &mut *addr_of_mut!(TIMER);
        t.interval = (period_ms * count.max(1)) as ngx_msec_t;
        t.tick = Some(tick);
        if t.event.timer_set() != 0 {
            return;
        }
        t.event.handler = Some(on_timer);
        t.event.log = Log::cycle().as_ptr();
        t.no_connection.fd = -1;
        t.event.data = ptr::from_mut(&mut t.no_connection).cast();
        t.event.set_cancelable(1);
        ngx_add_timer(&mut t.event, first as ngx_msec_t);
    }
}

extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: nginx passes our static event; single-threaded worker.
    let (ev, t) = unsafe { (&mut *ev, &*addr_of_mut!(TIMER)) };
    if let Some(tick) = t.tick {
        tick();
    }
    // SAFETY: nginx's own flags, read in its event loop.
    let stopping = unsafe { ngx_exiting != 0 || ngx_terminate != 0 };
    if !stopping {
        // SAFETY: our static event, not in the timer tree now.
        unsafe { ngx_add_timer(ev, t.interval) };
    }
}
