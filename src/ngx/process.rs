//! Which kind of nginx process this is.

use nginx_sys::{ngx_process, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER};

/// Whether this process serves connections: a worker, or the only process
/// (`master_process off`). nginx also runs every module's `init_process` in
/// its cache manager and cache loader, which serve nothing and exit without
/// `exit_process`.
pub fn serves_connections() -> bool {
    // SAFETY: nginx sets `ngx_process` before forking, and before any
    // module's `init_process`; this process only reads it.
    let kind = unsafe { ngx_process };
    kind == NGX_PROCESS_WORKER as usize || kind == NGX_PROCESS_SINGLE as usize
}
