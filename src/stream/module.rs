//! The stream module's statics: its context, directives and hooks, and the
//! `ngx_modules` table of this `.so`.

use core::ffi::c_void;
use core::ptr;

use ::ngx::core::Pool;
use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_module_t, ngx_stream_module_t, ngx_uint_t,
    NGX_STREAM_MAIN_CONF, NGX_STREAM_MODULE, NGX_STREAM_UPS_CONF,
};

use crate::ngx::stream::{MAIN_CONF_OFFSET, SRV_CONF_OFFSET};
use crate::shared::directives::{command_table, directives, Place, Subsystem};
use crate::shared::front_end;

use super::{MainConf, SrvConf, Stream};

/// Allocates a `T` in the configuration's pool (dropped with it).
///
/// # Safety
/// `cf` is the configuration nginx passes to a create hook.
unsafe fn create<T: Default>(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: the function's contract.
    let pool = unsafe { Pool::from_ngx_pool((*cf).pool) };
    pool.allocate(T::default()).cast()
}

extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx calls this with the configuration being parsed.
    unsafe { create::<MainConf>(cf) }
}

extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: as above.
    unsafe { create::<SrvConf>(cf) }
}

static CTX: ngx_stream_module_t = ngx_stream_module_t {
    preconfiguration: None,
    postconfiguration: Some(front_end::postconfiguration::<Stream>),
    create_main_conf: Some(create_main_conf),
    init_main_conf: None,
    create_srv_conf: Some(create_srv_conf),
    merge_srv_conf: None,
};

/// stream's blocks, as a directive names them.
const STREAM: Subsystem = Subsystem {
    main: Place {
        flag: NGX_STREAM_MAIN_CONF,
        conf: MAIN_CONF_OFFSET,
    },
    upstream: Place {
        flag: NGX_STREAM_UPS_CONF,
        conf: SRV_CONF_OFFSET,
    },
    location: None,
};

/// Every front-end's directives (stream has none of its own).
static mut COMMANDS: [ngx_command_t; 5] = command_table(&STREAM, &directives::<Stream>(), &[]);

// The `ngx_modules` table a cdylib built outside nginx's build needs.
#[cfg(feature = "export-modules")]
::ngx::ngx_modules!(ngx_stream_least_conn_persistent_module);

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_stream_least_conn_persistent_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(CTX) as *mut c_void,
    commands: unsafe { ptr::addr_of_mut!(COMMANDS[0]) },
    type_: NGX_STREAM_MODULE as ngx_uint_t,
    init_module: Some(front_end::init_module::<Stream>),
    init_process: Some(front_end::init_process::<Stream>),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// `exit_process`: the worker gives back what it still holds (stream has
/// no Lua picks).
extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
    // SAFETY: nginx passes this process's cycle.
    front_end::finish_process::<Stream>(unsafe { &*cycle }, 0);
}
