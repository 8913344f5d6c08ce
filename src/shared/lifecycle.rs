//! The process hooks every front-end module registers (`init_module`,
//! `init_process`, `exit_process`): committing a configuration once it
//! cannot fail any more, each worker's start and periodic check, and its
//! exit. A front-end says only where its registry and upstreams are.

use core::sync::atomic::{AtomicU32, Ordering};

use nginx_sys::{ngx_cycle, ngx_cycle_t, ngx_int_t, ngx_terminate};
use ngx::core::Status;

use crate::ngx::log::Log;
use crate::ngx::peers::now;
use crate::ngx::timer;

use super::module_conf::MainConf;
use super::registry::Registry;
use super::workers;

/// What the hooks need from a front-end.
pub trait FrontEnd {
    /// The module's main configuration in `cycle`, if it has one.
    fn main_conf(cycle: &ngx_cycle_t) -> Option<&'static mut MainConf>;
    /// `balance::follow_resolved_peers` over the front-end's upstreams.
    fn follow_resolved_peers(cycle: &ngx_cycle_t, registry: &Registry);
}

/// `init_module`: once per configuration load, after nginx has bound the
/// new configuration's listening sockets (nothing can fail it after this),
/// with the new error log open.
pub extern "C" fn init_module<F: FrontEnd>(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the cycle being initialised.
    let cycle = unsafe { &*cycle };
    if let Some(mcf) = F::main_conf(cycle) {
        // SAFETY: the cycle's log.
        let log = unsafe { Log::from_ptr(cycle.log) };
        F::follow_resolved_peers(cycle, &mcf.registry);
        workers::commit(&mut mcf.registry, log);
    }
    Status::NGX_OK.into()
}

/// `init_process`: every worker (or the single process).
pub extern "C" fn init_process<F: FrontEnd>(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes this process's cycle.
    let cycle = unsafe { &*cycle };
    if let Some(mcf) = F::main_conf(cycle) {
        let registry = &mcf.registry;
        // SAFETY: the cycle's log.
        workers::start(registry, unsafe { Log::from_ptr(cycle.log) });
        if registry.zone().is_some() {
            timer::every(workers::CHECK_INTERVAL_MS, check::<F>);
        }
    }
    Status::NGX_OK.into()
}

fn check<F: FrontEnd>() {
    static TICKS: AtomicU32 = AtomicU32::new(0);
    let tick = TICKS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: in a worker, `ngx_cycle` is its cycle.
    let cycle = unsafe { &*ngx_cycle };
    if let Some(mcf) = F::main_conf(cycle) {
        workers::check(&mcf.registry, tick, now() as u32);
        F::follow_resolved_peers(cycle, &mcf.registry);
    }
}

/// `exit_process`: the worker gives back what it still holds.
pub extern "C" fn exit_process<F: FrontEnd>(cycle: *mut ngx_cycle_t) {
    // SAFETY: nginx passes this process's cycle.
    let cycle = unsafe { &*cycle };
    if let Some(mcf) = F::main_conf(cycle) {
        // SAFETY: nginx's flag, set by its signal handler before the exit.
        let fast = unsafe { ngx_terminate } != 0;
        // SAFETY: the cycle's log.
        workers::finish(&mcf.registry, fast, unsafe { Log::from_ptr(cycle.log) });
    }
}
