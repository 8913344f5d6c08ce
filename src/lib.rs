//! ngx_http_least_conn_persistent_module: `least_conn` over connection counts
//! kept in a shared zone that outlives reloads.
//!
//! One counter core, several front-ends; dependencies point one way:
//! - `core`: pure logic, no nginx types, all under `cargo test`;
//! - `ngx`: the thin unsafe edge to nginx (configuration, logs, zones,
//!   round-robin lists);
//! - `shared`: the zone and the registry of what each load declares;
//! - `http`: the http front-end (directives, balancer, status page);
//! - `stream`: the stream front-end, built instead of http and Lua by the
//!   `stream` feature, as its own module file;
//! - `lua`: the C ABI for Lua balancers (`include/least_conn_persistent.h`).
//!
//! This file holds the http module's statics only. `cargo test` builds `core`,
//! `ngx` and `shared`, not the front-ends: its binary links no nginx, so a
//! test may reach only code that names no nginx symbol (the linker keeps
//! what tests reach; a test that reaches nginx fails to link, naming the
//! symbol, in a debug build at least: an optimized one may drop a branch
//! the test never takes).

// The stream build leaves out what only http uses (status page, Lua ABI).
#![cfg_attr(feature = "stream", allow(dead_code))]

pub mod core;

#[cfg(all(not(test), not(feature = "stream")))]
mod http;
#[cfg(all(not(test), not(feature = "stream")))]
mod lua;
// Under test, what only the front-ends use is unused.
#[cfg_attr(test, allow(dead_code))]
mod ngx;
#[cfg_attr(test, allow(dead_code))]
mod shared;
// The `stream` feature builds the stream module instead (its statics are in
// stream/module.rs): an http-only nginx never needs nginx's stream module.
#[cfg(all(not(test), feature = "stream"))]
mod stream;

#[cfg(all(not(test), not(feature = "stream")))]
pub use module::*;
#[cfg(all(not(test), feature = "stream"))]
pub use stream::module::*;

#[cfg(all(not(test), not(feature = "stream")))]
mod module {
    use ::core::ffi::c_void;
    use ::core::ptr;

    use ::ngx::http::HttpModule;
    use ::ngx::ngx_string;
    use nginx_sys::{
        ngx_command_t, ngx_cycle_t, ngx_http_module_t, ngx_module_t, ngx_uint_t, NGX_CONF_NOARGS,
        NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
        NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF_OFFSET, NGX_HTTP_UPS_CONF,
    };

    use crate::http::{self, Module};
    use crate::shared::directives::{
        command_table, directives, Block, Directive, Place, Subsystem,
    };
    use crate::shared::front_end;

    impl HttpModule for Module {
        fn module() -> &'static ngx_module_t {
            // SAFETY: nginx writes the module's indices once, at load time.
            unsafe { &*ptr::addr_of!(ngx_http_least_conn_persistent_module) }
        }
    }

    static CTX: ngx_http_module_t = ngx_http_module_t {
        preconfiguration: None,
        postconfiguration: Some(front_end::postconfiguration::<Module>),
        create_main_conf: Some(Module::create_main_conf),
        init_main_conf: None,
        create_srv_conf: Some(Module::create_srv_conf),
        merge_srv_conf: None,
        create_loc_conf: None,
        merge_loc_conf: None,
    };

    /// http's blocks, as a directive names them.
    const HTTP: Subsystem = Subsystem {
        main: Place {
            flag: NGX_HTTP_MAIN_CONF,
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
        },
        upstream: Place {
            flag: NGX_HTTP_UPS_CONF,
            conf: NGX_HTTP_SRV_CONF_OFFSET,
        },
        location: Some(Place {
            flag: NGX_HTTP_LOC_CONF,
            conf: NGX_HTTP_LOC_CONF_OFFSET,
        }),
    };

    /// Every front-end's directives, and http's own: the status page.
    static mut COMMANDS: [ngx_command_t; 6] = command_table(
        &HTTP,
        &directives::<Module>(),
        &[Directive {
            name: ngx_string!("least_conn_persistent_status"),
            block: Block::Location,
            args: NGX_CONF_NOARGS,
            set: http::directives::cmd_status,
        }],
    );

    // The `ngx_modules` table a cdylib built outside nginx's build needs.
    #[cfg(feature = "export-modules")]
    ::ngx::ngx_modules!(ngx_http_least_conn_persistent_module);

    #[used]
    #[allow(non_upper_case_globals)]
    #[cfg_attr(not(feature = "export-modules"), no_mangle)]
    pub static mut ngx_http_least_conn_persistent_module: ngx_module_t = ngx_module_t {
        ctx: ptr::addr_of!(CTX) as *mut c_void,
        commands: unsafe { ptr::addr_of_mut!(COMMANDS[0]) },
        type_: NGX_HTTP_MODULE as ngx_uint_t,
        init_module: Some(front_end::init_module::<Module>),
        init_process: Some(front_end::init_process::<Module>),
        exit_process: Some(exit_process),
        #[cfg(feature = "lock-stats")]
        exit_master: Some(crate::ngx::lock_stats::exit_master),
        ..ngx_module_t::default()
    };

    /// `exit_process`: as every front-end's, and naming the picks this
    /// worker's Lua code never released, if it holds counts at exit.
    extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
        // SAFETY: nginx passes this process's cycle.
        let cycle = unsafe { &*cycle };
        front_end::finish_process::<Module>(cycle, crate::lua::unreleased_picks());
    }
}
