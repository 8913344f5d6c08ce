//! Configuration parsing helpers and the one place where configuration
//! errors become `[emerg]` lines.

use core::ffi::c_char;
use core::fmt;

use nginx_sys::{
    ngx_array_t, ngx_conf_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_pagesize, ngx_parse_size,
    ngx_parse_time, ngx_str_t, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::core::{Status, NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::http::{HttpModuleConfExt, HttpModuleMainConf, NgxHttpUpstreamModule};
use ngx::ngx_conf_log_error;

/// Everything that makes `nginx -t` fail because of us.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfError {
    Duplicate,
    InvalidName(String),
    InvalidSize(String),
    TooSmall {
        name: String,
        min: usize,
    },
    /// Another module declared a shared memory zone of this name.
    NameTaken(String),
    NoMemory,
    /// A parameter the directive does not know.
    InvalidParameter(String),
    /// `slow_start=` with a value that is not a time in seconds.
    InvalidSlowStart(String),
    /// `index=` with a value that is neither a number of servers nor `off`.
    InvalidIndex(String),
    /// A parameter given twice.
    Repeated(&'static str),
    /// A parameter of `least_conn_persistent_rebalance`.
    Rebalance(crate::core::rebalance::ParamError),
    /// `least_conn_persistent_rebalance` before (or without)
    /// `least_conn_persistent` in the upstream.
    RebalanceWithoutMethod,
    /// A parameter of `least_conn_persistent_check`.
    Check(crate::core::check_conf::ParamError),
    /// `least_conn_persistent_check` before (or without)
    /// `least_conn_persistent` in the upstream.
    CheckWithoutMethod,
    /// `least_conn_persistent_check` in this upstream, and no
    /// `least_conn_persistent_zone` (the checks' state lives in it).
    CheckWithoutZone(String),
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfError::Duplicate => write!(f, "is duplicate"),
            ConfError::InvalidName(s) => write!(f, "has an invalid zone name \"{s}\""),
            ConfError::InvalidSize(s) => write!(f, "has an invalid zone size \"{s}\""),
            ConfError::TooSmall { name, min } => write!(
                f,
                "zone \"{name}\" is too small, the minimum is {min} bytes (8 pages)"
            ),
            ConfError::NameTaken(name) => write!(
                f,
                "shared memory zone \"{name}\" is already declared for a different use"
            ),
            ConfError::NoMemory => write!(f, "could not allocate memory"),
            ConfError::InvalidParameter(p) => write!(f, "has an invalid parameter \"{p}\""),
            ConfError::Rebalance(e) => write!(f, "{e}"),
            ConfError::RebalanceWithoutMethod => write!(
                f,
                "needs \"least_conn_persistent\" before it in the upstream (it rebalances \
                 the connections that method counts)"
            ),
            ConfError::Check(e) => write!(f, "{e}"),
            ConfError::CheckWithoutMethod => write!(
                f,
                "needs \"least_conn_persistent\" before it in the upstream (it checks the \
                 servers that method balances)"
            ),
            ConfError::CheckWithoutZone(up) => write!(
                f,
                "in upstream \"{up}\" needs \"least_conn_persistent_zone\" (checks keep \
                 their state in the zone, shared by every worker)"
            ),
            ConfError::InvalidSlowStart(v) => write!(
                f,
                "has an invalid slow_start \"{v}\" (a time such as 30s or 2m, 0 for none)"
            ),
            ConfError::Repeated(name) => write!(f, "has the parameter \"{name}\" twice"),
            ConfError::InvalidIndex(v) => write!(
                f,
                "has an invalid index \"{v}\" (a number of servers, 1 or more, or off)"
            ),
        }
    }
}

/// What `nginx -t` warns about and accepts, as stock nginx accepts it.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfWarning {
    /// Another method, or a directive that wraps one, came before ours in
    /// the upstream: ours replaces it, as a stock method does.
    MethodRedefined(String),
    /// A method declared after ours replaced it.
    Replaced(String),
    /// `least_conn_persistent;` given twice in one upstream.
    Repeated(String),
    /// A `weight` or `max_conns` past what the pick compares (32 bits).
    Saturated {
        parameter: &'static str,
        value: usize,
        server: String,
        upstream: String,
    },
}

impl fmt::Display for ConfWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfWarning::MethodRedefined(up) => write!(
                f,
                "in upstream \"{up}\": load balancing method redefined; what was declared \
                 before it is dropped, as stock nginx drops it (use one method{WRAPPERS_AFTER})"
            ),
            ConfWarning::Replaced(up) => write!(
                f,
                "in upstream \"{up}\" is overridden by a load balancing method declared after \
                 it, which balances that upstream, as stock nginx does; its connections are \
                 not counted in the zone"
            ),
            ConfWarning::Repeated(up) => write!(
                f,
                "in upstream \"{up}\": load balancing method redefined (given twice)"
            ),
            ConfWarning::Saturated {
                parameter,
                value,
                server,
                upstream,
            } => write!(
                f,
                "{parameter} {value} of server \"{server}\" in upstream \"{upstream}\" is \
                 compared as {}, the largest 32-bit value",
                u32::MAX
            ),
        }
    }
}

/// Logs `[warn] "<directive>" <warning>` at the line being parsed.
pub fn log_warning(cf: &mut ngx_conf_t, directive: &[u8], w: &ConfWarning) {
    ngx_conf_log_error!(
        NGX_LOG_WARN,
        cf,
        "\"{}\" {}",
        String::from_utf8_lossy(directive),
        w
    );
}

/// The directives that wrap an upstream's method and so must follow it: one
/// before the method sets the upstream's init, which the method then
/// replaces (as every stock method does), losing what that directive set up.
/// http before nginx 1.29.6: `keepalive`.
#[cfg(all(not(feature = "stream"), not(ngx_sticky)))]
const WRAPPERS_AFTER: &str = ", and put \"keepalive\" after it";
/// nginx 1.29.6: `sticky` too (http).
#[cfg(all(not(feature = "stream"), ngx_sticky, not(ngx_keepalive_any_order)))]
const WRAPPERS_AFTER: &str = ", and put \"keepalive\" and \"sticky\" after it";
/// nginx 1.29.7+: `keepalive` hooks in after every method, wherever it
/// stands; only `sticky` must follow.
#[cfg(all(not(feature = "stream"), ngx_keepalive_any_order))]
const WRAPPERS_AFTER: &str = ", and put \"sticky\" after it";
/// stream has neither.
#[cfg(feature = "stream")]
const WRAPPERS_AFTER: &str = "";

fn log_emerg(cf: &mut ngx_conf_t, directive: &[u8], e: &ConfError) {
    ngx_conf_log_error!(
        NGX_LOG_EMERG,
        cf,
        "\"{}\" {}",
        String::from_utf8_lossy(directive),
        e
    );
}

/// A directive handler's result as nginx wants it; an error is logged as
/// `[emerg] "<directive>" <error>`.
pub fn directive_result(
    cf: &mut ngx_conf_t,
    directive: &[u8],
    r: Result<(), ConfError>,
) -> *mut c_char {
    match r {
        Ok(()) => NGX_CONF_OK,
        Err(e) => {
            log_emerg(cf, directive, &e);
            NGX_CONF_ERROR
        }
    }
}

/// The same for the callbacks that return `NGX_OK`/`NGX_ERROR`
/// (postconfiguration, an upstream's init).
pub fn callback_result(
    cf: &mut ngx_conf_t,
    directive: &[u8],
    r: Result<(), ConfError>,
) -> ngx_int_t {
    match r {
        Ok(()) => Status::NGX_OK.into(),
        Err(e) => {
            log_emerg(cf, directive, &e);
            Status::NGX_ERROR.into()
        }
    }
}

/// The arguments of the directive being parsed, after its name.
///
/// Not tied to the borrow of `cf`: the array lives in the configuration's
/// temporary pool until the directive's handler returns, and the handler
/// still needs `cf` to declare what the arguments name.
pub fn args<'a>(cf: &ngx_conf_t) -> &'a mut [ngx_str_t] {
    // SAFETY: inside a directive handler `cf.args` is the parser's array of
    // ngx_str_t, the directive's name first; nothing else touches it until
    // the handler returns.
    let all = unsafe { (*cf.args).as_slice_mut::<ngx_str_t>() };
    &mut all[1..]
}

/// The http upstreams this configuration declares (`upstream {}` blocks
/// and implicit ones from `proxy_pass`).
pub fn http_upstreams(
    conf: &impl HttpModuleConfExt,
) -> impl Iterator<Item = &ngx_http_upstream_srv_conf_t> {
    upstream_confs(NgxHttpUpstreamModule::main_conf(conf).map(|umcf| &umcf.upstreams))
}

/// The entries of an upstream module's `upstreams` array (http's or
/// stream's): pointers to each upstream's configuration.
pub fn upstream_confs<'a, T: 'a>(
    upstreams: Option<&'a ngx_array_t>,
) -> impl Iterator<Item = &'a T> {
    // SAFETY: the upstream module's array of srv conf pointers.
    let list = upstreams.map_or(&[][..], |a| unsafe { a.as_slice::<*mut T>() });
    // SAFETY: the array holds nginx's live upstream entries.
    list.iter().map(|&us| unsafe { &*us })
}

/// `ngx_parse_size`: "64k", "1m", ...; `None` if invalid.
pub fn parse_size(text: &mut ngx_str_t) -> Option<usize> {
    // SAFETY: a valid ngx_str_t; ngx_parse_size only reads it.
    let size = unsafe { ngx_parse_size(text) };
    usize::try_from(size).ok()
}

/// `ngx_parse_time` in seconds: "30s", "2m", "1h30m", "45"; `None` if
/// invalid (milliseconds included).
pub fn parse_seconds(text: &[u8]) -> Option<u64> {
    let mut line = ngx_str_t {
        len: text.len(),
        data: text.as_ptr().cast_mut(),
    };
    // SAFETY: `line` describes `text`, which ngx_parse_time only reads.
    let secs = unsafe { ngx_parse_time(&mut line, 1) };
    u64::try_from(secs).ok()
}

/// `ngx_parse_time` in milliseconds: "300ms", "5s", "1m"; `None` if
/// invalid.
pub fn parse_ms(text: &[u8]) -> Option<u64> {
    let mut line = ngx_str_t {
        len: text.len(),
        data: text.as_ptr().cast_mut(),
    };
    // SAFETY: `line` describes `text`, which ngx_parse_time only reads.
    let ms = unsafe { ngx_parse_time(&mut line, 0) };
    u64::try_from(ms).ok()
}

pub fn page_size() -> usize {
    // SAFETY: set once by nginx at startup, before any configuration.
    unsafe { ngx_pagesize }
}

/// Lossy UTF-8 text of an nginx string, for messages.
pub fn text(s: &ngx_str_t) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}
