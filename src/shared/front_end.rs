//! What every front-end module (http's, stream's) does the same way, written
//! once over the `FrontEnd` trait: the two directives, the upstream's
//! `init_upstream`, the check once a block is parsed, and the process hooks
//! (committing a configuration once it cannot fail any more, each worker's
//! start, periodic check and exit). A front-end says only where nginx keeps
//! its configuration and how a request starts (`init_peer`).

use core::ffi::{c_char, c_void};
use core::ptr;

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle, ngx_cycle_t, ngx_int_t, ngx_module_t, ngx_str_t,
    ngx_terminate,
};
use ngx::core::Status;

use crate::core::check_conf::CheckParams;
use crate::core::rebalance::Params;
use crate::ngx::conf::{
    args, callback_result, directive_result, log_warning, parse_ms, parse_seconds, text, ConfError,
    ConfWarning,
};
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
    /// The upstreams of the configuration being parsed, or of a cycle.
    fn upstreams(cf: &ngx_conf_t) -> Vec<&UpstreamSrvConf>;
    fn cycle_upstreams(cycle: &ngx_cycle_t) -> Vec<&UpstreamSrvConf>;
    /// `peer.init`, per request (or session).
    fn init_peer() -> InitPeer;
}

/// `least_conn_persistent_zone <name> <size>;` in the main block.
pub extern "C" fn cmd_zone<F: FrontEnd>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, this command, and
    // our main configuration (the command's MAIN_CONF_OFFSET).
    let (cf, cmd, mcf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<MainConf>()) };
    let tag = ptr::from_ref(F::module()).cast();
    let r = mcf.registry.declared_zone().directive(cf, tag);
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// `least_conn_persistent;` in an `upstream {}` block.
pub extern "C" fn cmd_method<F: FrontEnd>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = method_params(args(cf)).and_then(|slow_start| {
        F::upstream_being_parsed(cf)
            .ok_or(ConfError::NoMemory)
            .map(|uscf| scf.claim(uscf, Some(init_upstream::<F>), slow_start))
    });
    if let Ok(Some(warning)) = &r {
        log_warning(cf, cmd.name.as_bytes(), warning);
    }
    directive_result(cf, cmd.name.as_bytes(), r.map(drop))
}

/// `least_conn_persistent_rebalance [rate=N/s] [tolerance=N%] [min_age=time]
/// [jitter=time];` in an `upstream {}` block, after `least_conn_persistent`.
pub extern "C" fn cmd_rebalance(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = once_after_method(
        cf,
        scf,
        |c| &mut c.rebalance,
        ConfError::RebalanceWithoutMethod,
        |a| Params::parse(a, parse_seconds).map_err(ConfError::Rebalance),
    );
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// What the directives of an upstream that come once, after the method,
/// do with their parameters: parse them into `field` of the upstream's
/// configuration, or say why not.
fn once_after_method<T>(
    cf: &ngx_conf_t,
    scf: &mut SrvConf,
    field: fn(&mut SrvConf) -> &mut Option<T>,
    without_method: ConfError,
    parse: impl FnOnce(&[&[u8]]) -> Result<T, ConfError>,
) -> Result<(), ConfError> {
    let args: Vec<&[u8]> = args(cf).iter().map(|a| a.as_bytes()).collect();
    if field(scf).is_some() {
        return Err(ConfError::Duplicate);
    }
    if !scf.enabled {
        return Err(without_method);
    }
    *field(scf) = Some(parse(&args)?);
    Ok(())
}

/// `least_conn_persistent_check [type=tcp|http] [uri=/path] [port=N]
/// [interval=time] [timeout=time] [rise=N] [fall=N] [status=codes]
/// [capacity=header] [load=header];` in an `upstream {}` block, after
/// `least_conn_persistent` (`core::check_conf`). That a zone is declared
/// is known only once the block is parsed (`postconfiguration`).
pub extern "C" fn cmd_check(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = once_after_method(
        cf,
        scf,
        |c| &mut c.check,
        ConfError::CheckWithoutMethod,
        |a| CheckParams::parse(a, parse_ms).map_err(ConfError::Check),
    );
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// The parameter of `least_conn_persistent` (nginx allows it one):
/// `slow_start=<time>`, the window in deciseconds; 0: none.
fn method_params(args: &[ngx_str_t]) -> Result<u32, ConfError> {
    let Some(arg) = args.first() else {
        return Ok(0);
    };
    let Some(value) = arg.as_bytes().strip_prefix(b"slow_start=") else {
        return Err(ConfError::InvalidParameter(text(arg)));
    };
    (!value.is_empty())
        .then(|| parse_seconds(value))
        .flatten()
        .and_then(|secs| u32::try_from(secs.checked_mul(10)?).ok())
        .ok_or_else(|| ConfError::InvalidSlowStart(String::from_utf8_lossy(value).into_owned()))
}

/// `peer.init_upstream`: round-robin's lists, plus our keys for them.
extern "C" fn init_upstream<F: FrontEnd>(
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
    // before that there is nothing to follow, and the periodic check need
    // not walk the upstreams.
    if !cfg!(ngx_resolve) {
        return;
    }
    let ours = F::cycle_upstreams(cycle)
        .into_iter()
        .filter_map(|us| Some((us, F::srv_conf(us)?.registered?)));
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
/// "is gone" warning once it exits) and run no periodic check.
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
            timer::in_turn(workers::CHECK_INTERVAL_MS, slot, count, check::<F>);
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
                .into_iter()
                .filter_map(|us| Some((us, F::srv_conf(us)?.registered?)))
                .collect()
        });
    }
}

fn check<F: FrontEnd>() {
    // SAFETY: in a worker, `ngx_cycle` is its cycle.
    let cycle = unsafe { &*ngx_cycle };
    if let Some(mcf) = F::cycle_main_conf(cycle) {
        workers::check(&mcf.registry, now() as u32, now_ms());
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
