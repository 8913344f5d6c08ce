//! The http module's own directive: the status page (listed in lib.rs's
//! command table). Every front-end's directives are `shared::directives`'s.

use core::ffi::{c_char, c_void};

use nginx_sys::{ngx_command_t, ngx_conf_t};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::ngx::conf::{directive_result, ConfError};

use super::status;

/// `least_conn_persistent_status;` in a location.
pub extern "C" fn cmd_status(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in `shared::directives::cmd_zone`.
    let (cf, cmd) = unsafe { (&mut *cf, &*cmd) };
    let r = match NgxHttpCoreModule::location_conf_mut(cf) {
        Some(clcf) if clcf.handler.is_some() => Err(ConfError::Duplicate),
        Some(clcf) => {
            clcf.handler = Some(status::handler);
            Ok(())
        }
        None => Err(ConfError::NoMemory),
    };
    directive_result(cf, cmd.name.as_bytes(), r)
}
