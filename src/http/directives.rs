//! The directives, and the checks once the http block is parsed.

use core::ffi::{c_char, c_void};
use core::ptr;

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_int_t};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleServerConf};
use ngx::http::{NgxHttpCoreModule, NgxHttpUpstreamModule};

use crate::ngx::conf::{callback_result, directive_result, http_upstreams, text, ConfError};

use super::{balancer, status, MainConf, Module, SrvConf};

/// `least_conn_persistent_zone <name> <size>;`
pub extern "C" fn cmd_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, this command, and
    // our main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let (cf, cmd, mcf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<MainConf>()) };
    let r = add_zone(cf, mcf);
    directive_result(cf, cmd.name.as_bytes(), r)
}

fn add_zone(cf: &mut ngx_conf_t, mcf: &mut MainConf) -> Result<(), ConfError> {
    let tag = ptr::from_ref(Module::module()).cast();
    mcf.registry.zone_directive(cf, tag)
}

/// `least_conn_persistent;` in an `upstream {}` block.
pub extern "C" fn cmd_method(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cf, cmd, scf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<SrvConf>()) };
    let r = set_method(cf, scf);
    directive_result(cf, cmd.name.as_bytes(), r)
}

fn set_method(cf: &mut ngx_conf_t, scf: &mut SrvConf) -> Result<(), ConfError> {
    let uscf = NgxHttpUpstreamModule::server_conf_mut(cf).ok_or(ConfError::NoMemory)?;
    scf.claim(uscf, Some(balancer::init_upstream))
}

/// `least_conn_persistent_status;` in a location.
pub extern "C" fn cmd_status(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone.
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

/// Every upstream that asked for our method must still have it (`hash` or
/// `least_conn` after ours would have replaced it).
fn check_upstreams(cf: &ngx_conf_t) -> Result<(), ConfError> {
    let replaced = http_upstreams(cf).find(|us| {
        Module::server_conf(*us).is_some_and(|scf| scf.enabled && scf.registered.is_none())
    });
    match replaced {
        Some(us) => Err(ConfError::Replaced(text(&us.host))),
        None => Ok(()),
    }
}

/// After the http block is parsed.
pub fn postconfiguration(cf: &mut ngx_conf_t) -> ngx_int_t {
    let r = check_upstreams(cf);
    callback_result(cf, b"least_conn_persistent", r)
}
