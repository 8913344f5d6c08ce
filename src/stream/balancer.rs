//! The stream side of the balancer: `init_upstream` per upstream, and
//! `init_peer` per session; the pick and release are `shared::balance`'s.

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_stream_session_t, ngx_stream_upstream_init_round_robin,
    ngx_stream_upstream_init_round_robin_peer, ngx_stream_upstream_srv_conf_t,
};
use ngx::core::{Pool, Status};

use crate::ngx::conf::{callback_result, ConfError};
use crate::ngx::stream;
use crate::shared::balance;
use crate::shared::registry::Registry;

use super::{main_conf, session_main_conf, srv_conf};

/// `peer.init_upstream`: round-robin's lists, plus our keys for them.
pub extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes the configuration and the upstream being set up.
    let (cf, us) = unsafe { (&mut *cf, &mut *us) };
    // SAFETY: as above.
    if unsafe { ngx_stream_upstream_init_round_robin(cf, us) } != Status::NGX_OK.0 {
        return Status::NGX_ERROR.into();
    }
    us.peer.init = Some(init_peer);
    let r = register(cf, us);
    callback_result(cf, b"least_conn_persistent", r)
}

fn register(cf: &ngx_conf_t, us: &ngx_stream_upstream_srv_conf_t) -> Result<(), ConfError> {
    let (Some(mcf), Some(scf)) = (main_conf(cf), srv_conf(us)) else {
        return Err(ConfError::NoMemory);
    };
    scf.registered = Some(balance::register(&mut mcf.registry, us)?);
    Ok(())
}

/// The upstreams that use the method, with their place in the registry.
fn ours(cycle: &ngx_cycle_t) -> impl Iterator<Item = (&ngx_stream_upstream_srv_conf_t, usize)> {
    stream::cycle_upstreams(cycle)
        .filter_map(|us| Some((us, srv_conf(us).and_then(|scf| scf.registered)?)))
}

/// See `balance::follow_resolved_peers`.
pub fn follow_resolved_peers(cycle: &ngx_cycle_t, registry: &Registry) {
    balance::follow_resolved_peers(registry, ours(cycle));
}

/// `peer.init`, per session.
extern "C" fn init_peer(
    s: *mut ngx_stream_session_t,
    us: *mut ngx_stream_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes a live session and the upstream whose
    // init_upstream set us up.
    if unsafe { ngx_stream_upstream_init_round_robin_peer(s, us) } != Status::NGX_OK.0 {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: as above; `s.upstream` is set before peer.init.
    let (s, us) = unsafe { (&*s, &*us) };
    match install(s, us) {
        Some(()) => Status::NGX_OK.into(),
        None => Status::NGX_ERROR.into(),
    }
}

fn install(s: &ngx_stream_session_t, us: &ngx_stream_upstream_srv_conf_t) -> Option<()> {
    let index = srv_conf(us)?.registered?;
    let upstream = session_main_conf(s)?.registry.upstream(index)?;
    // SAFETY: set before peer.init; the session's.
    let u = unsafe { s.upstream.as_mut() }?;
    // SAFETY: the session's connection and its pool, for the session's
    // lifetime.
    let pool = unsafe { Pool::from_ngx_pool((*s.connection).pool) };
    balance::install(&pool, &mut u.peer, upstream)
}
