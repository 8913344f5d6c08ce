//! The nginx side of crash points (`core::crash`), compiled only with the
//! `crash-points` feature (the crash tests' build, never a package): a
//! process that finds a request file in nginx's prefix (`-p`) when it starts
//! dies with SIGKILL at the n-th pass of the point the file names.
//!
//! Request files live in `<prefix>/crash-points/`, a directory the test
//! makes writable for the workers' user (workers run as `nobody` under a
//! root master). A file holds one line, `<point> <n>` (n from 1), and is
//! named after the subsystem (`<point> <n> stop`: the process stops itself
//! with SIGSTOP instead, for a test to kill it when it chooses), so that
//! the http and the stream module,
//! loaded together, each take only their own:
//! - `http`, `stream`: for a worker. The first worker to start once the
//!   file is there takes it by renaming it to `<name>.<pid>`: one worker is
//!   armed, the replacement the master starts after the death is not, and
//!   the test learns the victim's pid from the new name.
//! - `http-master`, `stream-master`: taken the same way by the master when
//!   it loads a configuration (`init_module`, before the load is committed).
//!
//! Each process arms at most one point. Workers inherit the master's memory
//! when it forks them, so every worker first disarms whatever the master had.
//! The hook itself does nothing but count and kill: no logging, no
//! allocation, as it runs under the zone's mutex.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nginx_sys::{ngx_cycle_t, NGX_LOG_ALERT, NGX_LOG_NOTICE};

use crate::core::crash::{set_hook, POINTS};

use super::log::Log;
use super::subsystem;

/// No point armed.
const NONE: usize = usize::MAX;

/// The armed point, as its index in `POINTS`.
static TARGET: AtomicUsize = AtomicUsize::new(NONE);
/// Whether the armed process stops (SIGSTOP) there instead of dying.
static STOP: AtomicBool = AtomicBool::new(false);

/// Passes of the armed point left before the one that dies.
static LEFT: AtomicU32 = AtomicU32::new(0);

/// Which process reads which request file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Worker,
    Master,
    /// A cache manager or loader: serves nothing, is never armed.
    Helper,
}

/// `init_process` (workers and helpers) or `init_module` (the master):
/// disarms, then arms the point this process's request file names, if
/// there is one.
pub fn arm(cycle: &ngx_cycle_t, role: Role) {
    TARGET.store(NONE, Ordering::Relaxed);
    let Some(request) = request_file(cycle, role).and_then(|file| claim(&file)) else {
        return;
    };
    let log = Log::cycle();
    match parse(&request) {
        Some((index, nth, stop)) => {
            STOP.store(stop, Ordering::Relaxed);
            LEFT.store(nth, Ordering::Relaxed);
            TARGET.store(index, Ordering::Relaxed);
            set_hook(hook);
            log.module(
                NGX_LOG_NOTICE,
                format_args!(
                    "crash point \"{}\" armed: this process {} at pass {nth}",
                    POINTS[index],
                    if stop { "stops" } else { "dies" }
                ),
            );
        }
        None => log.module(
            NGX_LOG_ALERT,
            format_args!(
                "crash point request \"{}\" names no known point and pass (\"<point> <n> [stop]\")",
                request.trim()
            ),
        ),
    }
}

/// The hook `core::crash::point` calls: counts passes of the armed point
/// and kills this process at the chosen one.
fn hook(name: &'static str) {
    let Some(&target) = POINTS.get(TARGET.load(Ordering::Relaxed)) else {
        return;
    };
    if target == name && LEFT.fetch_sub(1, Ordering::Relaxed) == 1 {
        let signal = if STOP.load(Ordering::Relaxed) {
            libc::SIGSTOP
        } else {
            libc::SIGKILL
        };
        // SAFETY: plain syscalls on this process; SIGKILL does not return,
        // SIGSTOP returns if the process is ever continued.
        unsafe { libc::kill(libc::getpid(), signal) };
    }
}

/// `<prefix>/crash-points/<subsystem>[-master]`; none for a helper.
fn request_file(cycle: &ngx_cycle_t, role: Role) -> Option<PathBuf> {
    let prefix = Path::new(OsStr::from_bytes(cycle.prefix.as_bytes()));
    let suffix = match role {
        Role::Worker => "",
        Role::Master => "-master",
        Role::Helper => return None,
    };
    Some(prefix.join(format!("crash-points/{}{suffix}", subsystem::NAME)))
}

/// Takes the request file (renamed to `<file>.<pid>`, which only one
/// process can do) and returns what it says; `None`: no request.
fn claim(file: &Path) -> Option<String> {
    let mut taken = file.as_os_str().to_owned();
    taken.push(format!(".{}", std::process::id()));
    std::fs::rename(file, &taken).ok()?;
    std::fs::read_to_string(&taken).ok()
}

/// `<point> <n>`: the point's index in `POINTS` and n (1 or more).
fn parse(request: &str) -> Option<(usize, u32, bool)> {
    let mut words = request.split_ascii_whitespace();
    let name = words.next()?;
    let nth: u32 = words.next()?.parse().ok().filter(|&n| n >= 1)?;
    let index = POINTS.iter().position(|&p| p == name)?;
    let stop = match words.next() {
        None => false,
        Some("stop") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((index, nth, stop))
}
