//! What every front-end module (http's, stream's) does the same way, written
//! once over the `FrontEnd` trait: the upstream's `init_upstream`, the check
//! once a block is parsed, and the process hooks (committing a configuration
//! once it cannot fail any more, each worker's start, housekeeping and
//! exit). Their directives are `directives.rs`'s. A front-end says only
//! where nginx keeps its configuration and how a request starts
//! (`init_peer`).

use nginx_sys::{ngx_conf_t, ngx_cycle, ngx_cycle_t, ngx_int_t, ngx_module_t, ngx_terminate};
use ngx::core::Status;

use crate::ngx::conf::{callback_result, log_warning, text, ConfError, ConfWarning};
use crate::ngx::log::Log;
use crate::ngx::peers::{now, now_ms};
use crate::ngx::process;
use crate::ngx::subsystem::{init_round_robin, InitPeer, UpstreamSrvConf};
use crate::ngx::timer;

use super::balance;
use super::checks;
use super::module_conf::{MainConf, SrvConf};
use super::rebalance;
use super::workers;

/// Where a front-end's configuration is, and how its requests start.
pub trait FrontEnd {
    /// The module's static, whose indices nginx sets at load time.
    fn module() -> &'static ngx_module_t;
    /// The module's main configuration, while `cf` is parsed.
    fn main_conf(cf: &ngx_conf_t) -> Option<&'static mut MainConf>;
    /// The module's main configuration in a cycle, if it has the block.
    fn cycle_main_conf(cycle: &ngx_cycle_t) -> Option<&'static mut MainConf>;
    /// The module's configuration of an upstream.
    fn srv_conf(us: &UpstreamSrvConf) -> Option<&'static mut SrvConf>;
    /// The `upstream {}` block being parsed.
    fn upstream_being_parsed(cf: &ngx_conf_t) -> Option<&'static mut UpstreamSrvConf>;
    /// The upstreams of the configuration being parsed.
    fn upstreams(cf: &ngx_conf_t) -> Vec<&UpstreamSrvConf>;
    /// The upstreams of a cycle, walked without allocating (timers walk
    /// them on every tick).
    fn cycle_upstreams(cycle: &ngx_cycle_t) -> impl Iterator<Item = &UpstreamSrvConf>;
    /// `peer.init`, per request (or session).
    fn init_peer() -> InitPeer;
}

/// `peer.init_upstream`: round-robin's lists, plus our keys for them (set
/// by `least_conn_persistent`, `directives::cmd_method`).
pub extern "C" fn init_upstream<F: FrontEnd>(
    cf: *mut ngx_conf_t,
    us: *mut UpstreamSrvConf,
) -> ngx_int_t {
    // SAFETY: nginx passes the configuration and the upstream being set up.
    if unsafe { init_round_robin(cf, us) } != Status::NGX_OK.0 {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: as above.
    let (cf, us) = unsafe { (&mut *cf, &mut *us) };
    us.peer.init = F::init_peer();
    let r = match (F::main_conf(cf), F::srv_conf(us)) {
        (Some(mcf), Some(scf)) => {
            let (index, warnings) = balance::register(
                &mut mcf.registry,
                us,
                scf.slow_start,
                scf.index_from,
                scf.rebalance,
                scf.check.clone(),
            );
            for w in &warnings {
                log_warning(cf, b"least_conn_persistent", w);
            }
            scf.registered = Some(index);
            Ok(())
        }
        _ => Err(ConfError::NoMemory),
    };
    callback_result(cf, b"least_conn_persistent", r)
}

/// After the block is parsed: an upstream that asked for our method and
/// lost it to a method declared after it (`hash` or `least_conn` after ours)
/// is balanced by that method, as stock nginx does; a warning says so.
/// Checks without a zone fail the configuration (`checks_need_a_zone`).
pub extern "C" fn postconfiguration<F: FrontEnd>(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx passes the configuration being loaded.
    let cf = unsafe { &mut *cf };
    let r = checks_need_a_zone::<F>(cf);
    if r.is_err() {
        return callback_result(cf, b"least_conn_persistent_check", r);
    }
    let replaced: Vec<String> = F::upstreams(cf)
        .into_iter()
        .filter(|us| F::srv_conf(us).is_some_and(|scf| scf.enabled && scf.registered.is_none()))
        .map(|us| text(&us.host))
        .collect();
    for upstream in replaced {
        log_warning(
            cf,
            b"least_conn_persistent",
            &ConfWarning::Replaced(upstream),
        );
    }
    Status::NGX_OK.into()
}

/// `least_conn_persistent_check` keeps each server's state (up or down,
/// the lease of the one process that checks it) in the zone: without one
/// the checks could not be shared, and a silently unchecked upstream would
/// send connections to dead servers, so `nginx -t` fails. Known only once
/// the block is parsed: the zone may be declared after the upstream.
fn checks_need_a_zone<F: FrontEnd>(cf: &ngx_conf_t) -> Result<(), ConfError> {
    if F::main_conf(cf).is_some_and(|mcf| mcf.registry.has_zone()) {
        return Ok(());
    }
    match F::upstreams(cf)
        .into_iter()
        .find(|us| F::srv_conf(us).is_some_and(|scf| scf.check.is_some()))
    {
        Some(us) => Err(ConfError::CheckWithoutZone(text(&us.host))),
        None => Ok(()),
    }
}

/// `balance::follow_resolved_peers` over the upstreams that use the method.
fn follow_resolved_peers<F: FrontEnd>(cycle: &ngx_cycle_t, mcf: &MainConf) {
    // Peer lists change at run time only through `resolve` (nginx 1.27.3+):
    // before that there is nothing to follow, and housekeeping need
    // not walk the upstreams.
    if !cfg!(ngx_resolve) {
        return;
    }
    let ours = F::cycle_upstreams(cycle).filter_map(|us| Some((us, F::srv_conf(us)?.registered?)));
    balance::follow_resolved_peers(&mcf.registry, ours);
}

/// `init_module`: once per configuration load, after nginx has bound the
/// new configuration's listening sockets (nothing can fail it after this),
/// with the new error log open.
pub extern "C" fn init_module<F: FrontEnd>(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the cycle being initialised.
    let cycle = unsafe { &*cycle };
    #[cfg(feature = "crash-points")]
    crate::ngx::crash::arm(cycle, crate::ngx::crash::Role::Master);
    if let Some(mcf) = F::cycle_main_conf(cycle) {
        // SAFETY: the cycle's log.
        let log = unsafe { Log::from_ptr(cycle.log) };
        follow_resolved_peers::<F>(cycle, mcf);
        workers::commit(&mut mcf.registry, log);
    }
    Status::NGX_OK.into()
}

/// `init_process`: every worker (or the single process). nginx calls it in
/// its cache manager and loader too: they balance nothing, so they take no
/// worker record (a helper's record would be reclaimed with a spurious
/// "is gone" warning once it exits) and run no housekeeping.
pub extern "C" fn init_process<F: FrontEnd>(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    #[cfg(feature = "lock-stats")]
    crate::ngx::lock_stats::forked();
    // SAFETY: nginx passes this process's cycle.
    let cycle = unsafe { &*cycle };
    #[cfg(feature = "crash-points")]
    crate::ngx::crash::arm(cycle, crash_role());
    if !process::serves_connections() {
        return Status::NGX_OK.into();
    }
    if let Some(mcf) = F::cycle_main_conf(cycle) {
        let registry = &mcf.registry;
        // SAFETY: the cycle's log.
        workers::start(registry, unsafe { Log::from_ptr(cycle.log) });
        if registry.zone().is_some() {
            let (slot, count) = process::worker_slot();
            timer::in_turn(
                workers::HOUSEKEEPING_INTERVAL_MS,
                slot,
                count,
                housekeeping::<F>,
            );
            if registry.upstreams().any(|up| up.rebalance.is_some()) {
                timer::every(rebalance::PERIOD_MS, rebalance_tick::<F>);
            }
            if let Some(tick) = checks::start(registry) {
                timer::checks(tick as usize, checks_tick::<F>);
            }
        }
    }
    Status::NGX_OK.into()
}

/// Which crash point request this process takes (tests only).
#[cfg(feature = "crash-points")]
fn crash_role() -> crate::ngx::crash::Role {
    if process::serves_connections() {
        crate::ngx::crash::Role::Worker
    } else {
        crate::ngx::crash::Role::Helper
    }
}

fn rebalance_tick<F: FrontEnd>() {
    // SAFETY: in a worker, `ngx_cycle` is its cycle (an exiting worker's
    // too: the old configuration, whose connections it still holds).
    let cycle = unsafe { &*ngx_cycle };
    let Some(mcf) = F::cycle_main_conf(cycle) else {
        return;
    };
    for us in F::cycle_upstreams(cycle) {
        let Some(scf) = F::srv_conf(us) else {
            continue;
        };
        let up = scf.registered.and_then(|i| mcf.registry.upstream(i));
        if let Some((up, params)) = up.and_then(|up| Some((up, up.rebalance.as_ref()?))) {
            rebalance::tick(up, &scf.rebalancer, params, Log::cycle());
        }
    }
}

fn checks_tick<F: FrontEnd>() {
    // SAFETY: in a worker, `ngx_cycle` is its cycle.
    let cycle = unsafe { &*ngx_cycle };
    if let (Some(_), Some(registry)) = (F::cycle_main_conf(cycle), workers::registry()) {
        checks::tick(registry, || {
            F::cycle_upstreams(cycle)
                .filter_map(|us| Some((us, F::srv_conf(us)?.registered?)))
                .collect()
        });
    }
}

fn housekeeping<F: FrontEnd>() {
    // SAFETY: in a worker, `ngx_cycle` is its cycle.
    let cycle = unsafe { &*ngx_cycle };
    if let Some(mcf) = F::cycle_main_conf(cycle) {
        workers::housekeeping(&mcf.registry, now() as u32, now_ms());
        follow_resolved_peers::<F>(cycle, mcf);
    }
}

/// What a module's `exit_process` does: the worker gives back what it still
/// holds. `lua_unreleased`: picks its Lua code took and never released
/// (the log line then says so).
pub fn finish_process<F: FrontEnd>(cycle: &ngx_cycle_t, lua_unreleased: usize) {
    if let Some(mcf) = F::cycle_main_conf(cycle) {
        // SAFETY: nginx's flag, set by its signal handler before the exit.
        let fast = unsafe { ngx_terminate } != 0;
        // SAFETY: the cycle's log.
        let log = unsafe { Log::from_ptr(cycle.log) };
        checks::stop(&mcf.registry);
        workers::finish(&mcf.registry, fast, lua_unreleased, log);
    }
    #[cfg(feature = "lock-stats")]
    crate::ngx::lock_stats::dump("worker");
}
