//! Error-log lines that say where they come from: every line of ours starts
//! with `least_conn_persistent: ` or `least_conn_persistent_zone "<name>"`,
//! so that `grep least_conn_persistent error.log` finds them all.

use core::fmt;
use core::ptr::NonNull;

use nginx_sys::ngx_log_t;
use ngx::ngx_log_error;

/// A live nginx log.
#[derive(Clone, Copy, Debug)]
pub struct Log(NonNull<ngx_log_t>);

impl Log {
    /// The running cycle's log (the worker's, or the master's).
    pub fn cycle() -> Log {
        Log(ngx::log::ngx_cycle_log())
    }

    /// A log nginx passed us (a connection's, a zone's); the cycle's if null.
    ///
    /// # Safety
    /// `log` is null or a log that outlives every use of the result.
    pub unsafe fn from_ptr(log: *mut ngx_log_t) -> Log {
        NonNull::new(log).map_or_else(Log::cycle, Log)
    }

    pub fn as_ptr(self) -> *mut ngx_log_t {
        self.0.as_ptr()
    }

    /// `least_conn_persistent: <message>`.
    pub fn module(self, level: u32, message: fmt::Arguments<'_>) {
        ngx_log_error!(level, self.as_ptr(), "least_conn_persistent: {}", message);
    }

    /// `least_conn_persistent_zone "<zone>"<message>`: the message starts with
    /// a space or a colon.
    pub fn zone(self, level: u32, zone: &[u8], message: fmt::Arguments<'_>) {
        ngx_log_error!(
            level,
            self.as_ptr(),
            "least_conn_persistent_zone \"{}\"{}",
            String::from_utf8_lossy(zone),
            message
        );
    }
}
