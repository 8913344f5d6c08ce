//! Which kind of nginx process this is.

use nginx_sys::{
    ngx_core_conf_t, ngx_core_module, ngx_cycle, ngx_process, ngx_worker, NGX_PROCESS_MASTER,
    NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};

use crate::core::liveness::Signal;

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

/// `/proc/<pid>/stat`, if it can be read.
pub fn proc_stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// What `kill(pid, 0)` says of `pid`.
pub fn signal(pid: i32) -> Signal {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return Signal::Ours;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Signal::Gone,
        Some(libc::EPERM) => Signal::Foreign,
        _ => Signal::Ours,
    }
}

/// Whether this process is the master of worker processes.
pub fn is_master() -> bool {
    // SAFETY: as in `serves_connections`.
    unsafe { ngx_process == NGX_PROCESS_MASTER as usize }
}

/// This worker's number among its generation's workers, and how many there
/// are (`worker_processes`): (0, 1) for a single process.
pub fn worker_slot() -> (usize, usize) {
    // SAFETY: set by nginx before `init_process`; read only.
    let (kind, index) = unsafe { (ngx_process, ngx_worker) };
    if kind != NGX_PROCESS_WORKER as usize {
        return (0, 1);
    }
    // SAFETY: in a worker, `ngx_cycle` is its cycle, whose core module
    // configuration nginx created before forking it.
    let count = unsafe {
        let ctx = (*ngx_cycle).conf_ctx;
        let ccf = (*ctx.add(ngx_core_module.index)).cast::<ngx_core_conf_t>();
        ccf.as_ref()
            .map_or(1, |c| c.worker_processes.max(1) as usize)
    };
    (index.min(count - 1), count)
}

/// Whether this worker is shutting down gracefully (a newer configuration
/// took over): it serves the connections it has, and makes no new ones.
pub fn exiting() -> bool {
    // SAFETY: nginx's flag, set by its signal handling in this process.
    unsafe { nginx_sys::ngx_exiting != 0 }
}
