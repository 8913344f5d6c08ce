//! Process hooks: committing a configuration once it cannot fail any more
//! (`init_module`), and each worker's start, periodic check and exit.

use nginx_sys::{ngx_cycle, ngx_cycle_t, ngx_terminate};
use ngx::http::HttpModuleMainConf;

use core::sync::atomic::{AtomicU32, Ordering};

use crate::ngx::log::Log;
use crate::ngx::peers::now;
use crate::ngx::timer;
use crate::shared::workers;

use super::{balancer, Module};

/// `init_module`: runs once per configuration load, after nginx has bound
/// the new configuration's listening sockets (nothing can fail it after
/// this), with the new error log open.
pub fn init_module(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf_mut(cycle) else {
        return;
    };
    // SAFETY: the cycle's log.
    let log = unsafe { Log::from_ptr(cycle.log) };
    balancer::follow_resolved_peers(cycle, &mcf.registry);
    workers::commit(&mut mcf.registry, log);
}

/// `init_process`: every worker (or the single process).
pub fn init_process(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf(cycle) else {
        return;
    };
    // SAFETY: the cycle's log.
    workers::start(&mcf.registry, unsafe { Log::from_ptr(cycle.log) });
    if mcf.registry.zone().is_some() {
        timer::every(workers::CHECK_INTERVAL_MS, check);
    }
}

fn check() {
    static TICKS: AtomicU32 = AtomicU32::new(0);
    let tick = TICKS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: in a worker, `ngx_cycle` is its cycle.
    let cycle = unsafe { &*ngx_cycle };
    if let Some(mcf) = Module::main_conf(cycle) {
        workers::check(&mcf.registry, tick, now() as u32);
        balancer::follow_resolved_peers(cycle, &mcf.registry);
    }
}

/// `exit_process`: the worker gives back what it still holds.
pub fn exit_process(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf(cycle) else {
        return;
    };
    // SAFETY: nginx's flag, set by its signal handler before the exit.
    let fast = unsafe { ngx_terminate } != 0;
    // SAFETY: the cycle's log.
    workers::finish(&mcf.registry, fast, unsafe { Log::from_ptr(cycle.log) });
}
