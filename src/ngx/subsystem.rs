//! The nginx subsystem this build balances: http, or stream with the cargo
//! feature `stream`. One crate builds two modules (two `.so` files, as
//! Debian ships each subsystem's modules separately): their round-robin
//! structures and functions have the same shape under different names, so
//! the code above this file is written once against these names.

#[cfg(all(not(feature = "stream"), ngx_resolve))]
pub use nginx_sys::NGX_HTTP_UPSTREAM_MODIFY as UPSTREAM_MODIFY;
#[cfg(not(feature = "stream"))]
pub use nginx_sys::{
    ngx_http_upstream_free_round_robin_peer as free_round_robin_peer,
    ngx_http_upstream_rr_peer_data_t as RrPeerData, ngx_http_upstream_rr_peer_t as RrPeer,
    ngx_http_upstream_rr_peers_t as RrPeers, ngx_http_upstream_srv_conf_t as UpstreamSrvConf,
};
#[cfg(not(feature = "stream"))]
pub use nginx_sys::{
    ngx_http_upstream_init_peer_pt as InitPeer, ngx_http_upstream_init_pt as InitUpstream,
    ngx_http_upstream_init_round_robin as init_round_robin,
    NGX_HTTP_UPSTREAM_BACKUP as UPSTREAM_BACKUP, NGX_HTTP_UPSTREAM_CREATE as UPSTREAM_CREATE,
    NGX_HTTP_UPSTREAM_DOWN as UPSTREAM_DOWN,
    NGX_HTTP_UPSTREAM_FAIL_TIMEOUT as UPSTREAM_FAIL_TIMEOUT,
    NGX_HTTP_UPSTREAM_MAX_CONNS as UPSTREAM_MAX_CONNS,
    NGX_HTTP_UPSTREAM_MAX_FAILS as UPSTREAM_MAX_FAILS, NGX_HTTP_UPSTREAM_WEIGHT as UPSTREAM_WEIGHT,
};

#[cfg(all(feature = "stream", ngx_resolve))]
pub use nginx_sys::NGX_STREAM_UPSTREAM_MODIFY as UPSTREAM_MODIFY;
#[cfg(feature = "stream")]
pub use nginx_sys::{
    ngx_stream_upstream_free_round_robin_peer as free_round_robin_peer,
    ngx_stream_upstream_rr_peer_data_t as RrPeerData, ngx_stream_upstream_rr_peer_t as RrPeer,
    ngx_stream_upstream_rr_peers_t as RrPeers, ngx_stream_upstream_srv_conf_t as UpstreamSrvConf,
};
#[cfg(feature = "stream")]
pub use nginx_sys::{
    ngx_stream_upstream_init_peer_pt as InitPeer, ngx_stream_upstream_init_pt as InitUpstream,
    ngx_stream_upstream_init_round_robin as init_round_robin,
    NGX_STREAM_UPSTREAM_BACKUP as UPSTREAM_BACKUP, NGX_STREAM_UPSTREAM_CREATE as UPSTREAM_CREATE,
    NGX_STREAM_UPSTREAM_DOWN as UPSTREAM_DOWN,
    NGX_STREAM_UPSTREAM_FAIL_TIMEOUT as UPSTREAM_FAIL_TIMEOUT,
    NGX_STREAM_UPSTREAM_MAX_CONNS as UPSTREAM_MAX_CONNS,
    NGX_STREAM_UPSTREAM_MAX_FAILS as UPSTREAM_MAX_FAILS,
    NGX_STREAM_UPSTREAM_WEIGHT as UPSTREAM_WEIGHT,
};

/// The subsystem's name, for messages that must say which module speaks.
#[cfg(not(feature = "stream"))]
pub const NAME: &str = "http";
#[cfg(feature = "stream")]
pub const NAME: &str = "stream";

/// The debug mask of the subsystem's lines: `error_log ... debug_http` (or
/// `debug_stream`) shows them, as it shows nginx's own for that subsystem.
#[cfg(not(feature = "stream"))]
pub const DEBUG_MASK: ngx::log::DebugMask = ngx::log::DebugMask::Http;
#[cfg(feature = "stream")]
pub const DEBUG_MASK: ngx::log::DebugMask = ngx::log::DebugMask::Stream;
