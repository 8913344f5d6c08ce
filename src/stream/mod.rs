//! The stream front-end (`stream {}` upstreams): the same upstream
//! directives and balancer as http, for long-lived TCP (MQTT, databases, game servers, TLS
//! passthrough). Built as its own module file,
//! `ngx_stream_least_conn_persistent_module.so`, by the `stream` feature:
//! an http-only user then never needs nginx's stream module. This is where
//! nginx keeps the stream module's configuration and how a session starts
//! (`balancer`); its directives are `shared::directives`'s, the rest
//! `shared::front_end`'s.

pub mod balancer;
pub mod module;

use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_module_t, ngx_stream_session_t, ngx_stream_upstream_srv_conf_t,
};

use crate::ngx::stream;
use crate::ngx::subsystem::InitPeer;
use crate::shared::front_end::FrontEnd;

pub use crate::shared::module_conf::{MainConf, SrvConf};

/// The stream module (its statics are in `module.rs`).
pub struct Stream;

/// This module's main configuration, for a session.
fn session_main_conf<'a>(s: &ngx_stream_session_t) -> Option<&'a MainConf> {
    // SAFETY: create_main_conf allocates this type for this module.
    unsafe { stream::session_main_conf(s, Stream::module()) }.map(|m| &*m)
}

// SAFETY (the unsafe blocks below): create_main_conf and create_srv_conf
// allocate these types for this module.
impl FrontEnd for Stream {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the module's indices once, at load time.
        unsafe { &*core::ptr::addr_of!(module::ngx_stream_least_conn_persistent_module) }
    }

    fn main_conf(cf: &ngx_conf_t) -> Option<&'static mut MainConf> {
        unsafe { stream::main_conf(cf, Self::module()) }
    }

    fn cycle_main_conf(cycle: &ngx_cycle_t) -> Option<&'static mut MainConf> {
        unsafe { stream::cycle_main_conf(cycle, Self::module()) }
    }

    fn srv_conf(us: &ngx_stream_upstream_srv_conf_t) -> Option<&'static mut SrvConf> {
        unsafe { stream::upstream_srv_conf(us, Self::module()) }
    }

    fn upstream_being_parsed(
        cf: &ngx_conf_t,
    ) -> Option<&'static mut ngx_stream_upstream_srv_conf_t> {
        stream::current_upstream(cf)
    }

    fn upstreams(cf: &ngx_conf_t) -> Vec<&ngx_stream_upstream_srv_conf_t> {
        stream::upstreams(cf).collect()
    }

    fn cycle_upstreams(
        cycle: &ngx_cycle_t,
    ) -> impl Iterator<Item = &ngx_stream_upstream_srv_conf_t> {
        stream::cycle_upstreams(cycle)
    }

    fn init_peer() -> InitPeer {
        Some(balancer::init_peer)
    }
}
