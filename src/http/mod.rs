//! The http front-end: directives, the balancer nginx calls per request, and
//! the status page, all on the shared registry and zone.

pub mod balancer;
pub mod directives;
pub mod process;
pub mod status;

use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};

/// The http module. Its `HttpModule` impl (which names the module's static)
/// is in lib.rs, with the other module statics.
pub struct Module;

pub use crate::shared::module_conf::{MainConf, SrvConf};

// SAFETY: the types match what create_main_conf/create_srv_conf allocate
// (ngx's default constructors for these associated types).
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = SrvConf;
}
