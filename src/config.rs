//! Directives, configuration structs, and the one place where their errors
//! become `[emerg]` lines and `NGX_CONF_ERROR`.

use core::ffi::{c_char, c_void};
use core::fmt;
use core::ptr::{self, NonNull};

use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_pagesize,
    ngx_parse_size, ngx_shared_memory_add, ngx_shm_zone_t, ngx_str_t, NGX_ERROR,
    NGX_HTTP_UPSTREAM_BACKUP, NGX_HTTP_UPSTREAM_CREATE, NGX_HTTP_UPSTREAM_DOWN,
    NGX_HTTP_UPSTREAM_FAIL_TIMEOUT, NGX_HTTP_UPSTREAM_MAX_CONNS, NGX_HTTP_UPSTREAM_MAX_FAILS,
    NGX_HTTP_UPSTREAM_WEIGHT, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};
use ngx::http::{NgxHttpCoreModule, NgxHttpUpstreamModule};
use ngx::{ngx_conf_log_error, ngx_log_error};

use crate::counters::UpstreamCounters;
use crate::zone::{self, str_bytes};
use crate::Module;

#[derive(Debug, Default)]
pub struct MainConf {
    zone: Option<NonNull<ngx_shm_zone_t>>,
    /// Boxed so that each upstream's `SrvConf` can point at its entry
    /// while the Vec grows.
    #[allow(clippy::vec_box)]
    upstreams: Vec<Box<UpstreamCounters>>,
}

#[derive(Debug)]
pub struct SrvConf {
    pub enabled: bool,
    /// Set by our `init_upstream`; still null after configuration means a
    /// later method replaced ours.
    pub counters: *mut UpstreamCounters,
}

impl Default for SrvConf {
    fn default() -> Self {
        SrvConf {
            enabled: false,
            counters: ptr::null_mut(),
        }
    }
}

impl MainConf {
    pub fn zone(&self) -> Option<zone::Zone> {
        // SAFETY: the zone belongs to this configuration's cycle.
        self.zone.map(|z| unsafe { zone::Zone::new(z) })
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &UpstreamCounters> {
        self.upstreams.iter().map(|b| &**b)
    }

    pub fn upstreams_mut(&mut self) -> impl Iterator<Item = &mut UpstreamCounters> {
        self.upstreams.iter_mut().map(|b| &mut **b)
    }

    pub fn register(&mut self, counters: UpstreamCounters) -> *mut UpstreamCounters {
        let mut b = Box::new(counters);
        let p: *mut UpstreamCounters = &mut *b;
        self.upstreams.push(b);
        p
    }

    pub fn uses(&self) -> usize {
        self.upstreams.len()
    }
}

#[derive(Debug)]
pub enum ConfError {
    Duplicate,
    InvalidSize(String),
    TooSmall { name: String, min: usize },
    MethodRedefined(String),
    Replaced(String),
    NoMemory,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfError::Duplicate => write!(f, "is duplicate"),
            ConfError::InvalidSize(s) => write!(f, "has an invalid zone size \"{s}\""),
            ConfError::TooSmall { name, min } => {
                write!(
                    f,
                    "zone \"{name}\" is too small, the minimum is {min} bytes (8 pages)"
                )
            }
            ConfError::MethodRedefined(up) => write!(
                f,
                "in upstream \"{up}\": load balancing method redefined \
                 (use one method, and put \"keepalive\" after it)"
            ),
            ConfError::Replaced(up) => write!(
                f,
                "in upstream \"{up}\" is overridden by a load balancing method declared after it"
            ),
            ConfError::NoMemory => write!(f, "could not allocate memory"),
        }
    }
}

/// Turns a directive handler's result into what nginx expects, logging the
/// error with the directive's name.
fn finish(cf: *mut ngx_conf_t, name: &[u8], r: Result<(), ConfError>) -> *mut c_char {
    match r {
        Ok(()) => NGX_CONF_OK,
        Err(e) => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "\"{}\" {}",
                String::from_utf8_lossy(name),
                e
            );
            NGX_CONF_ERROR
        }
    }
}

/// The arguments of the directive being parsed, after its name.
///
/// # Safety
/// `cf` is the configuration being parsed inside a directive handler.
unsafe fn args<'a>(cf: &ngx_conf_t) -> &'a mut [ngx_str_t] {
    &mut (*cf.args).as_slice_mut()[1..]
}

/// `least_conn_persistent_zone <name> <size>;`
pub extern "C" fn cmd_zone(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, this command, and
    // our main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let (cfr, name, mcf) = unsafe {
        (
            &mut *cf,
            str_bytes(&(*cmd).name),
            &mut *conf.cast::<MainConf>(),
        )
    };
    finish(cf, name, add_zone(cfr, mcf))
}

fn add_zone(cf: &mut ngx_conf_t, mcf: &mut MainConf) -> Result<(), ConfError> {
    if mcf.zone.is_some() {
        return Err(ConfError::Duplicate);
    }
    // SAFETY: NGX_CONF_TAKE2 guarantees two arguments.
    let args = unsafe { args(cf) };
    let name_bytes = unsafe { str_bytes(&args[0]) };
    let name = String::from_utf8_lossy(name_bytes).into_owned();
    let size_text = String::from_utf8_lossy(unsafe { str_bytes(&args[1]) }).into_owned();
    if name_bytes.is_empty() {
        return Err(ConfError::InvalidSize(size_text));
    }
    // SAFETY: a valid ngx_str_t from the parser.
    let size = unsafe { ngx_parse_size(&mut args[1]) };
    if size == NGX_ERROR as ngx_int_t {
        return Err(ConfError::InvalidSize(size_text));
    }
    let min = 8 * unsafe { ngx_pagesize };
    if (size as usize) < min {
        return Err(ConfError::TooSmall { name, min });
    }
    // SAFETY: the name's bytes live in the configuration pool.
    let shm = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut args[0],
            size as usize,
            ptr::from_ref(Module::module()).cast_mut().cast(),
        )
    };
    // nginx has logged why (e.g. the name is used by another module).
    let mut shm = NonNull::new(shm).ok_or(ConfError::NoMemory)?;
    let shm_ref = unsafe { shm.as_mut() };
    if !shm_ref.data.is_null() {
        return Err(ConfError::Duplicate);
    }
    shm_ref.init = Some(zone::init);
    shm_ref.data = ptr::from_mut(mcf).cast();
    mcf.zone = Some(shm);
    Ok(())
}

/// `least_conn_persistent;` in an `upstream {}` block.
pub extern "C" fn cmd_method(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone; `conf` is our srv conf of this upstream.
    let (cfr, name, scf) = unsafe {
        (
            &mut *cf,
            str_bytes(&(*cmd).name),
            &mut *conf.cast::<SrvConf>(),
        )
    };
    finish(cf, name, set_method(cfr, scf))
}

fn set_method(cf: &mut ngx_conf_t, scf: &mut SrvConf) -> Result<(), ConfError> {
    let uscf = NgxHttpUpstreamModule::server_conf_mut(cf).ok_or(ConfError::NoMemory)?;
    if scf.enabled {
        return Err(ConfError::Duplicate);
    }
    if uscf.peer.init_upstream.is_some() {
        return Err(ConfError::MethodRedefined(upstream_name(uscf)));
    }
    scf.enabled = true;
    uscf.peer.init_upstream = Some(crate::balancer::init_upstream);
    // The server parameters stock least_conn accepts.
    uscf.flags = (NGX_HTTP_UPSTREAM_CREATE
        | NGX_HTTP_UPSTREAM_WEIGHT
        | NGX_HTTP_UPSTREAM_MAX_CONNS
        | NGX_HTTP_UPSTREAM_MAX_FAILS
        | NGX_HTTP_UPSTREAM_FAIL_TIMEOUT
        | NGX_HTTP_UPSTREAM_DOWN
        | NGX_HTTP_UPSTREAM_BACKUP) as _;
    Ok(())
}

pub fn upstream_name(uscf: &ngx_http_upstream_srv_conf_t) -> String {
    // SAFETY: the host name lives in the configuration pool.
    String::from_utf8_lossy(unsafe { str_bytes(&uscf.host) }).into_owned()
}

/// `least_conn_persistent_status;` in a location.
pub extern "C" fn cmd_status(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in cmd_zone.
    let (cfr, name) = unsafe { (&mut *cf, str_bytes(&(*cmd).name)) };
    let r = match NgxHttpCoreModule::location_conf_mut(cfr) {
        Some(clcf) if clcf.handler.is_some() => Err(ConfError::Duplicate),
        Some(clcf) => {
            clcf.handler = Some(crate::status_handler::handler);
            Ok(())
        }
        None => Err(ConfError::NoMemory),
    };
    finish(cf, name, r)
}

/// After the http block is parsed: every upstream that asked for our method
/// must still have it (`hash` or `least_conn` after ours would replace it).
pub fn check_upstreams(cf: &mut ngx_conf_t) -> Result<(), ConfError> {
    let Some(umcf) = NgxHttpUpstreamModule::main_conf(cf) else {
        return Ok(());
    };
    // SAFETY: the upstream module's array of srv conf pointers.
    let upstreams = unsafe {
        core::slice::from_raw_parts(
            umcf.upstreams
                .elts
                .cast::<*mut ngx_http_upstream_srv_conf_t>(),
            umcf.upstreams.nelts,
        )
    };
    for &us in upstreams {
        // SAFETY: nginx's own upstream entries.
        let us = unsafe { &*us };
        if let Some(scf) = Module::server_conf(us) {
            if scf.enabled && scf.counters.is_null() {
                return Err(ConfError::Replaced(upstream_name(us)));
            }
        }
    }
    Ok(())
}

pub fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx passes the configuration being loaded.
    let r = check_upstreams(unsafe { &mut *cf });
    match finish(cf, b"least_conn_persistent", r) {
        p if p == NGX_CONF_OK => Status::NGX_OK.into(),
        _ => Status::NGX_ERROR.into(),
    }
}

/// `init_module`: runs once per configuration load, after the error log of
/// the new configuration is open, so the warning lands there.
pub fn warn_without_zone(cycle: &ngx_cycle_t) {
    let Some(mcf) = Module::main_conf(cycle) else {
        return;
    };
    if mcf.uses() > 0 && mcf.zone.is_none() {
        ngx_log_error!(
            NGX_LOG_WARN,
            cycle.log,
            "least_conn_persistent: no \"least_conn_persistent_zone\" is configured: \
             {} upstream(s) balance on per-worker counts, which reloads reset",
            mcf.uses()
        );
    }
}
