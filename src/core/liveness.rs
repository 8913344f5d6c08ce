//! Whether a worker process recorded in the zone still runs: told apart
//! from a later process that reuses its pid, from what `kill(pid, 0)` and
//! `/proc/<pid>/stat` say.

/// A worker process, told apart from a later process that reuses its pid
/// by the time it started (`/proc/<pid>/stat`, field 22); and the user it
/// runs as (its effective uid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
    pub uid: u32,
}

/// State (field 3) and start time (field 22) of a `/proc/<pid>/stat` line.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last ')'.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// What `kill(pid, 0)` said of a pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// No such process (ESRCH).
    Gone,
    /// A process this one may signal: of the same user, as every worker is.
    Ours,
    /// A process of another user (EPERM).
    Foreign,
}

/// Whether the process recorded as `id` still runs, given what `kill(pid,
/// 0)` said, what `/proc/<pid>/stat` says (`None`: unreadable) and the uid
/// of the asking process. A zombie is gone (it waits for the master to reap
/// it); a different start time means the pid now belongs to another
/// process. When the stat file cannot be read (`hidepid`), the signal and
/// the users decide: a process the asker may signal is taken for the
/// worker; one it may not signal is not the worker if the worker ran as the
/// asker's user (the pid went to another user's process), and is taken for
/// it otherwise (a reload that changed `user`: nothing better is known, and
/// giving back a live worker's counts would be worse).
pub fn is_alive(id: ProcessId, signal: Signal, stat: Option<&str>, my_uid: u32) -> bool {
    if signal == Signal::Gone {
        return false;
    }
    match stat.and_then(parse_stat) {
        Some((state, start_time)) => state != 'Z' && state != 'X' && start_time == id.start_time,
        None => signal == Signal::Ours || id.uid != my_uid,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A worker of pid `pid` (its start time made from it), uid 33.
    pub(crate) fn worker(pid: i32) -> ProcessId {
        ProcessId {
            pid,
            start_time: 1000 + pid as u64,
            uid: 33,
        }
    }

    fn stat(pid: i32, comm: &str, state: char, start: u64) -> String {
        format!(
            "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 200"
        )
    }

    #[test]
    fn stat_lines_are_read_past_odd_command_names() {
        assert_eq!(parse_stat(&stat(7, "nginx", 'S', 4242)), Some(('S', 4242)));
        assert_eq!(parse_stat(&stat(7, "a) b (c", 'R', 17)), Some(('R', 17)));
        assert_eq!(parse_stat("7 (nginx) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn liveness_tells_dead_zombie_and_reused_pids_apart() {
        let w = worker(7);
        let me = stat(7, "nginx", 'S', w.start_time);
        assert!(is_alive(w, Signal::Ours, Some(&me), 33));
        assert!(!is_alive(w, Signal::Gone, None, 33), "no such pid");
        assert!(
            !is_alive(w, Signal::Gone, Some(&me), 33),
            "kill(0) decides first"
        );
        let zombie = stat(7, "nginx", 'Z', w.start_time);
        assert!(
            !is_alive(w, Signal::Ours, Some(&zombie), 33),
            "a zombie is gone"
        );
        let reused = stat(7, "bash", 'S', w.start_time + 1);
        assert!(
            !is_alive(w, Signal::Ours, Some(&reused), 33),
            "a reused pid is not the worker"
        );
        assert!(
            is_alive(w, Signal::Ours, None, 33),
            "unreadable stat (hidepid), a process of ours: alive"
        );
        assert!(
            !is_alive(w, Signal::Foreign, None, 33),
            "unreadable stat, a process of another user than the worker's: not it"
        );
        assert!(
            is_alive(w, Signal::Foreign, None, 0),
            "unreadable stat, the worker ran as another user than the asker: alive"
        );
        assert!(
            is_alive(w, Signal::Ours, Some("garbage"), 33),
            "unparsable stat: the signal decides"
        );
    }
}
