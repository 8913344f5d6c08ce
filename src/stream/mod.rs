//! The stream front-end (`stream {}` upstreams): the same directives and
//! balancer as http, for long-lived TCP (MQTT, databases, game servers, TLS
//! passthrough). Built as its own module file,
//! `ngx_stream_least_conn_persistent_module.so`, by the `stream` feature:
//! an http-only user then never needs nginx's stream module.

pub mod balancer;
pub mod directives;
pub mod module;
pub mod process;

use nginx_sys::ngx_stream_upstream_srv_conf_t;
use nginx_sys::{ngx_conf_t, ngx_cycle_t, ngx_module_t, ngx_stream_session_t};

use crate::ngx::stream;

pub use crate::shared::module_conf::{MainConf, SrvConf};

fn module() -> &'static ngx_module_t {
    // SAFETY: nginx writes the module's indices once, at load time.
    unsafe { &*core::ptr::addr_of!(module::ngx_stream_least_conn_persistent_module) }
}

// SAFETY (all four): create_main_conf/create_srv_conf allocate these types
// for this module.
fn main_conf<'a>(cf: &ngx_conf_t) -> Option<&'a mut MainConf> {
    unsafe { stream::main_conf(cf, module()) }
}

fn cycle_main_conf<'a>(cycle: &ngx_cycle_t) -> Option<&'a mut MainConf> {
    unsafe { stream::cycle_main_conf(cycle, module()) }
}

fn session_main_conf<'a>(s: &ngx_stream_session_t) -> Option<&'a MainConf> {
    unsafe { stream::session_main_conf(s, module()) }.map(|m| &*m)
}

fn srv_conf<'a>(us: &ngx_stream_upstream_srv_conf_t) -> Option<&'a mut SrvConf> {
    unsafe { stream::upstream_srv_conf(us, module()) }
}
