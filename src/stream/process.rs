//! Where the process hooks (`shared::lifecycle`) find the stream module's
//! registry and upstreams.

use nginx_sys::ngx_cycle_t;

use crate::shared::lifecycle::FrontEnd;
use crate::shared::module_conf::MainConf;
use crate::shared::registry::Registry;

use super::{balancer, cycle_main_conf};

/// The stream front-end, for the process hooks.
pub struct Stream;

impl FrontEnd for Stream {
    fn main_conf(cycle: &ngx_cycle_t) -> Option<&'static mut MainConf> {
        cycle_main_conf(cycle)
    }

    fn follow_resolved_peers(cycle: &ngx_cycle_t, registry: &Registry) {
        balancer::follow_resolved_peers(cycle, registry);
    }
}
