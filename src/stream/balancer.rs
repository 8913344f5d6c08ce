//! How a stream session starts on the balancer (`peer.init`): round-robin's
//! per-session data, wrapped by `shared::balance`, whose pick and release
//! every front-end shares.

use nginx_sys::{
    ngx_int_t, ngx_stream_session_t, ngx_stream_upstream_init_round_robin_peer,
    ngx_stream_upstream_srv_conf_t, NGX_LOG_WARN,
};
use ngx::core::{Pool, Status};

use core::ptr::NonNull;

use crate::ngx::live::Conn;
use crate::ngx::log::Log;
use crate::shared::balance;
use crate::shared::front_end::FrontEnd;
use crate::shared::registry::UpstreamCounters;

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
    if u.peer.type_ == libc::SOCK_DGRAM {
        // SAFETY: nginx sets the peer's log to the session's connection's
        // before peer.init; it lives as long as the session.
        warn_udp_checked(upstream, unsafe { Log::from_ptr(u.peer.log) });
    }
    // SAFETY: the session's connection and its pool, for the session's
    // lifetime.
    let pool = unsafe { Pool::from_ngx_pool((*s.connection).pool) };
    let conn = Conn::Stream(NonNull::new(s.upstream)?);
    balance::install(&pool, &mut u.peer, upstream, conn)
}

/// A UDP session (`listen ... udp`) through an upstream with health checks:
/// the checks connect over TCP, so a server that answers only UDP (syslog,
/// DNS, QUIC) fails them and is marked down. That can be right (DNS also
/// serves TCP), so it is allowed, but said: once per upstream in each
/// worker, at its first UDP session. A check sent to a port of its own
/// (`port=`, a TCP health port) is what the operator chose: nothing to say.
fn warn_udp_checked(upstream: &UpstreamCounters, log: Log) {
    let Some(check) = &upstream.check else {
        return;
    };
    if check.port.is_some() || upstream.udp_warned.replace(true) {
        return;
    }
    log.module(
        NGX_LOG_WARN,
        format_args!(
            "upstream \"{}\" is checked over TCP (least_conn_persistent_check) \
             but proxies UDP: a server that answers only UDP is marked down; \
             give the check a port= of a TCP service, or remove it",
            String::from_utf8_lossy(&upstream.name)
        ),
    );
}
