//! How an http request starts on the balancer (`peer.init`): round-robin's
//! per-request data, wrapped by `shared::balance`, whose pick and release
//! every front-end shares.

use nginx_sys::{
    ngx_http_request_t, ngx_http_upstream_init_round_robin_peer, ngx_http_upstream_srv_conf_t,
    ngx_int_t,
};
use ngx::core::{Pool, Status};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};

use core::ptr::NonNull;

use crate::ngx::live::Conn;
use crate::shared::balance;

use super::Module;

/// `peer.init`, per request.
pub extern "C" fn init_peer(
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
    let conn = Conn::Http(NonNull::from(&*u));
    balance::install(&pool, &mut u.peer, upstream, conn)
}
