//! How a stream session starts on the balancer (`peer.init`): round-robin's
//! per-session data, wrapped by `shared::balance`, whose pick and release
//! every front-end shares.

use nginx_sys::{
    ngx_int_t, ngx_stream_session_t, ngx_stream_upstream_init_round_robin_peer,
    ngx_stream_upstream_srv_conf_t,
};
use ngx::core::{Pool, Status};

use core::ptr::NonNull;

use crate::ngx::live::Conn;
use crate::shared::balance;
use crate::shared::front_end::FrontEnd;

use super::{session_main_conf, Stream};

/// `peer.init`, per session.
pub extern "C" fn init_peer(
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
    let index = Stream::srv_conf(us)?.registered?;
    let upstream = session_main_conf(s)?.registry.upstream(index)?;
    // SAFETY: set before peer.init; the session's.
    let u = unsafe { s.upstream.as_mut() }?;
    // SAFETY: the session's connection and its pool, for the session's
    // lifetime.
    let pool = unsafe { Pool::from_ngx_pool((*s.connection).pool) };
    let conn = Conn::Stream(NonNull::from(&u.peer));
    balance::install(&pool, &mut u.peer, upstream, conn)
}
