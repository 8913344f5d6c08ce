//! The http side of the balancer: nginx calls `init_upstream` per upstream
//! at configuration time and `init_peer` per request; the pick and release
//! themselves are `shared::balance`'s, common to every front-end.

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_http_request_t, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_init_round_robin_peer, ngx_http_upstream_srv_conf_t, ngx_int_t,
};
use ngx::core::{Pool, Status};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};

use crate::ngx::conf::{callback_result, http_upstreams, ConfError};
use crate::shared::balance;
use crate::shared::registry::Registry;

use super::Module;

/// `peer.init_upstream`: round-robin's lists, plus our keys for them.
pub extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes the configuration and the upstream being set up.
    let (cf, us) = unsafe { (&mut *cf, &mut *us) };
    // SAFETY: as above.
    if unsafe { ngx_http_upstream_init_round_robin(cf, us) } != Status::NGX_OK.0 {
        return Status::NGX_ERROR.into();
    }
    us.peer.init = Some(init_peer);
    let r = register(cf, us);
    callback_result(cf, b"least_conn_persistent", r)
}

fn register(cf: &ngx_conf_t, us: &ngx_http_upstream_srv_conf_t) -> Result<(), ConfError> {
    let (Some(mcf), Some(scf)) = (Module::main_conf_mut(cf), Module::server_conf_mut(us)) else {
        return Err(ConfError::NoMemory);
    };
    scf.registered = Some(balance::register(&mut mcf.registry, us)?);
    Ok(())
}

/// The upstreams that use the method, with their place in the registry.
fn ours(cycle: &ngx_cycle_t) -> impl Iterator<Item = (&ngx_http_upstream_srv_conf_t, usize)> {
    http_upstreams(cycle)
        .filter_map(|us| Some((us, Module::server_conf(us).and_then(|scf| scf.registered)?)))
}

/// See `balance::follow_resolved_peers`.
pub fn follow_resolved_peers(cycle: &ngx_cycle_t, registry: &Registry) {
    balance::follow_resolved_peers(registry, ours(cycle));
}

/// `peer.init`, per request.
extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and the upstream whose
    // init_upstream set us up.
    if unsafe { ngx_http_upstream_init_round_robin_peer(r, us) } != Status::NGX_OK.0 {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: as above; `r.upstream` is set before peer.init.
    let (r, us) = unsafe { (&*r, &*us) };
    match install(r, us) {
        Some(()) => Status::NGX_OK.into(),
        None => Status::NGX_ERROR.into(),
    }
}

fn install(r: &ngx_http_request_t, us: &ngx_http_upstream_srv_conf_t) -> Option<()> {
    let index = Module::server_conf(us)?.registered?;
    let upstream = Module::main_conf(r)?.registry.upstream(index)?;
    // SAFETY: set before peer.init; the request's.
    let u = unsafe { r.upstream.as_mut() }?;
    // SAFETY: the request's pool, for the request's lifetime.
    let pool = unsafe { Pool::from_ngx_pool(r.pool) };
    balance::install(&pool, &mut u.peer, upstream)
}
