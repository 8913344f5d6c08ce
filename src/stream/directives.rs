//! The stream directives, and the checks once the stream block is parsed.

use core::ffi::{c_char, c_void};
use core::ptr;

use nginx_sys::{ngx_command_t, ngx_conf_t, ngx_int_t};

use crate::ngx::conf::{callback_result, directive_result, text, ConfError};
use crate::ngx::stream;

use super::{balancer, module, srv_conf, MainConf, SrvConf};

/// `least_conn_persistent_zone <name> <size>;` in `stream {}`.
pub extern "C" fn cmd_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, this command, and
    // our main configuration (MAIN_CONF_OFFSET).
    let (cf, cmd, mcf) = unsafe { (&mut *cf, &*cmd, &mut *conf.cast::<MainConf>()) };
    let tag = ptr::from_ref(module()).cast();
    let r = mcf.registry.zone_directive(cf, tag);
    directive_result(cf, cmd.name.as_bytes(), r)
}

/// `least_conn_persistent;` in a stream `upstream {}` block.
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
    let uscf = stream::current_upstream(cf).ok_or(ConfError::NoMemory)?;
    scf.claim(uscf, Some(balancer::init_upstream))
}

/// Every upstream that asked for our method must still have it.
fn check_upstreams(cf: &ngx_conf_t) -> Result<(), ConfError> {
    let replaced = stream::upstreams(cf)
        .find(|us| srv_conf(us).is_some_and(|scf| scf.enabled && scf.registered.is_none()));
    match replaced {
        Some(us) => Err(ConfError::Replaced(text(&us.host))),
        None => Ok(()),
    }
}

/// After the stream block is parsed.
pub fn postconfiguration(cf: &mut ngx_conf_t) -> ngx_int_t {
    let r = check_upstreams(cf);
    callback_result(cf, b"least_conn_persistent", r)
}
