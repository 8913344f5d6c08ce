//! The http front-end: where nginx keeps the http module's configuration,
//! how a request starts (`balancer`), and the status page with its
//! directive; the directives every front-end has are `shared::directives`'s,
//! the upstream's init and the process hooks `shared::front_end`'s.

pub mod balancer;
pub mod directives;
pub mod status;

use nginx_sys::{ngx_conf_t, ngx_cycle_t, ngx_http_upstream_srv_conf_t, ngx_module_t};
use ngx::http::{HttpModule, HttpModuleMainConf, HttpModuleServerConf, NgxHttpUpstreamModule};

use crate::ngx::conf::http_upstreams;
use crate::ngx::subsystem::InitPeer;
use crate::shared::front_end::FrontEnd;

pub use crate::shared::module_conf::{MainConf, SrvConf};

/// The http module. Its `HttpModule` impl (which names the module's static)
/// is in lib.rs, with the other module statics.
pub struct Module;

// SAFETY: the types match what create_main_conf/create_srv_conf allocate
// (ngx's default constructors for these associated types).
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = SrvConf;
}

impl FrontEnd for Module {
    fn module() -> &'static ngx_module_t {
        <Module as HttpModule>::module()
    }

    fn main_conf(cf: &ngx_conf_t) -> Option<&'static mut MainConf> {
        <Module as HttpModuleMainConf>::main_conf_mut(cf)
    }

    fn cycle_main_conf(cycle: &ngx_cycle_t) -> Option<&'static mut MainConf> {
        <Module as HttpModuleMainConf>::main_conf_mut(cycle)
    }

    fn srv_conf(us: &ngx_http_upstream_srv_conf_t) -> Option<&'static mut SrvConf> {
        <Module as HttpModuleServerConf>::server_conf_mut(us)
    }

    fn upstream_being_parsed(cf: &ngx_conf_t) -> Option<&'static mut ngx_http_upstream_srv_conf_t> {
        NgxHttpUpstreamModule::server_conf_mut(cf)
    }

    fn upstreams(cf: &ngx_conf_t) -> Vec<&ngx_http_upstream_srv_conf_t> {
        http_upstreams(cf).collect()
    }

    fn cycle_upstreams(cycle: &ngx_cycle_t) -> impl Iterator<Item = &ngx_http_upstream_srv_conf_t> {
        http_upstreams(cycle)
    }

    fn init_peer() -> InitPeer {
        Some(balancer::init_peer)
    }
}
