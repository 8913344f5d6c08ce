//! The stream subsystem's configuration, as ngx 0.5.1 has no helpers for
//! it: nginx's `ngx_stream_conf_get_module_*_conf` macros, written once.
//! Only the stream build (`stream` feature) compiles this file: its
//! symbols (`ngx_stream_module`, ...) exist only once nginx's stream module
//! is loaded.

use core::mem::offset_of;

use super::conf::upstream_confs;
use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_module_t, ngx_stream_conf_ctx_t, ngx_stream_module,
    ngx_stream_session_t, ngx_stream_upstream_main_conf_t, ngx_stream_upstream_module,
    ngx_stream_upstream_srv_conf_t, ngx_uint_t,
};

/// `NGX_STREAM_MAIN_CONF_OFFSET` and `NGX_STREAM_SRV_CONF_OFFSET`.
pub const MAIN_CONF_OFFSET: ngx_uint_t = offset_of!(ngx_stream_conf_ctx_t, main_conf);
pub const SRV_CONF_OFFSET: ngx_uint_t = offset_of!(ngx_stream_conf_ctx_t, srv_conf);

/// `confs[module.ctx_index]` as a `T`.
///
/// # Safety
/// `confs` is null or an array of the stream modules' configurations, and
/// `module`'s is a `T`.
unsafe fn at<'a, T>(
    confs: *mut *mut core::ffi::c_void,
    module: &ngx_module_t,
) -> Option<&'a mut T> {
    if confs.is_null() {
        return None;
    }
    // SAFETY: the function's contract; ctx_index is below the array's length.
    unsafe { (*confs.add(module.ctx_index)).cast::<T>().as_mut() }
}

/// The stream block's context, while its configuration is parsed.
fn conf_ctx(cf: &ngx_conf_t) -> Option<&ngx_stream_conf_ctx_t> {
    // SAFETY: inside `stream {}` nginx's `cf.ctx` is a stream context.
    unsafe { cf.ctx.cast::<ngx_stream_conf_ctx_t>().as_ref() }
}

/// The stream block's context of a cycle, if it has a `stream {}`.
fn cycle_ctx(cycle: &ngx_cycle_t) -> Option<&ngx_stream_conf_ctx_t> {
    // SAFETY: `conf_ctx` has a slot per core module; the stream module's
    // holds its context, or null without a stream block.
    unsafe {
        let index = (*core::ptr::addr_of!(ngx_stream_module)).index;
        (*cycle.conf_ctx.add(index))
            .cast::<ngx_stream_conf_ctx_t>()
            .as_ref()
    }
}

/// A stream module's main configuration, while parsing.
///
/// # Safety
/// `module`'s main configuration is a `T`.
pub unsafe fn main_conf<'a, T>(cf: &ngx_conf_t, module: &ngx_module_t) -> Option<&'a mut T> {
    // SAFETY: the function's contract.
    unsafe { at(conf_ctx(cf)?.main_conf, module) }
}

/// A stream module's main configuration in a cycle.
///
/// # Safety
/// As `main_conf`.
pub unsafe fn cycle_main_conf<'a, T>(
    cycle: &ngx_cycle_t,
    module: &ngx_module_t,
) -> Option<&'a mut T> {
    // SAFETY: the function's contract.
    unsafe { at(cycle_ctx(cycle)?.main_conf, module) }
}

/// A stream module's main configuration, for a session.
///
/// # Safety
/// As `main_conf`.
pub unsafe fn session_main_conf<'a, T>(
    s: &ngx_stream_session_t,
    module: &ngx_module_t,
) -> Option<&'a mut T> {
    // SAFETY: the function's contract.
    unsafe { at(s.main_conf, module) }
}

/// A stream module's server configuration of an upstream.
///
/// # Safety
/// `module`'s server configuration is a `T`.
pub unsafe fn upstream_srv_conf<'a, T>(
    us: &ngx_stream_upstream_srv_conf_t,
    module: &ngx_module_t,
) -> Option<&'a mut T> {
    // SAFETY: the function's contract.
    unsafe { at(us.srv_conf, module) }
}

/// The `upstream {}` block being parsed.
pub fn current_upstream<'a>(cf: &ngx_conf_t) -> Option<&'a mut ngx_stream_upstream_srv_conf_t> {
    // SAFETY: inside `upstream {}` the upstream module's server
    // configuration is the upstream's; the module static is nginx's.
    unsafe {
        let module = &*core::ptr::addr_of!(ngx_stream_upstream_module);
        at(conf_ctx(cf)?.srv_conf, module)
    }
}

fn upstream_list(
    umcf: Option<&mut ngx_stream_upstream_main_conf_t>,
) -> impl Iterator<Item = &ngx_stream_upstream_srv_conf_t> {
    upstream_confs(umcf.map(|umcf| &umcf.upstreams))
}

/// The stream upstreams of the configuration being parsed.
pub fn upstreams<'a>(cf: &ngx_conf_t) -> impl Iterator<Item = &'a ngx_stream_upstream_srv_conf_t> {
    // SAFETY: the upstream module's main configuration is this type.
    upstream_list(unsafe { main_conf(cf, &*core::ptr::addr_of!(ngx_stream_upstream_module)) })
}

/// The stream upstreams of a cycle.
pub fn cycle_upstreams(
    cycle: &ngx_cycle_t,
) -> impl Iterator<Item = &ngx_stream_upstream_srv_conf_t> {
    // SAFETY: as in `upstreams`.
    upstream_list(unsafe {
        cycle_main_conf(cycle, &*core::ptr::addr_of!(ngx_stream_upstream_module))
    })
}
