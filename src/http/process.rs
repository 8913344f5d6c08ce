//! Where the process hooks (`shared::lifecycle`) find the http module's
//! registry and upstreams.

use nginx_sys::ngx_cycle_t;
use ngx::http::HttpModuleMainConf;

use crate::shared::lifecycle::FrontEnd;
use crate::shared::module_conf::MainConf;
use crate::shared::registry::Registry;

use super::{balancer, Module};

impl FrontEnd for Module {
    fn main_conf(cycle: &ngx_cycle_t) -> Option<&'static mut MainConf> {
        <Module as HttpModuleMainConf>::main_conf_mut(cycle)
    }

    fn follow_resolved_peers(cycle: &ngx_cycle_t, registry: &Registry) {
        balancer::follow_resolved_peers(cycle, registry);
    }
}
