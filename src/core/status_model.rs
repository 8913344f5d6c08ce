//! What the status page shows (`status.rs` renders it as JSON and
//! Prometheus text, `status_html.rs` as HTML): a zone's figures and one
//! entry per key.

use super::health::{State as Health, Why};
use super::key::split_key;
use super::table::HealthView;
use super::table::{FLAG_BACKUP, FLAG_DOWN, FLAG_DRAINING};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Backup,
    Draining,
    /// Not in the zone (none configured, or it was full): counted per worker.
    Fallback,
}

impl State {
    pub fn from_flags(flags: u32) -> State {
        if flags & FLAG_DRAINING != 0 {
            State::Draining
        } else if flags & FLAG_DOWN != 0 {
            State::Down
        } else if flags & FLAG_BACKUP != 0 {
            State::Backup
        } else {
            State::Up
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Backup => "backup",
            State::Draining => "draining",
            State::Fallback => "fallback",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneInfo {
    pub name: String,
    pub size: usize,
    pub used: usize,
    pub keys: u32,
    /// Connections given back on behalf of workers that died holding them.
    pub reclaimed: u64,
    /// The worker processes recorded in the zone: (pid, connections held).
    pub workers: Vec<(i32, u64)>,
    /// The process running the health checks (0: none).
    pub checker: u32,
    /// It holds them paused: no worker has a connection to spare.
    pub checks_paused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub count: u64,
    pub weight: u32,
    pub max_conns: u32,
    pub state: State,
    /// Declared from Lua (the C ABI), not by an nginx `upstream {}` block.
    pub lua: bool,
    /// Slow start: how far its ramp up is, in percent, while it ramps.
    pub ramping: Option<u8>,
    /// For an upstream with `least_conn_persistent_rebalance`: the
    /// connections rebalancing closed, and whether the upstream sheds now.
    pub rebalance: Option<Rebalance>,
    /// For an upstream with `least_conn_persistent_check`: what the checks
    /// found, and how long ago (ms) the last check ended.
    pub health: Option<Checked>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub view: HealthView,
    /// Since the last check ended (None: never checked).
    pub last_ms_ago: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebalance {
    pub shed: u32,
    pub shedding: bool,
}

impl Entry {
    /// (upstream, server) from the key.
    pub(crate) fn parts(&self) -> (&str, &str) {
        match split_key(self.key.as_bytes()) {
            // Both halves are slices of a &str cut at ASCII bytes.
            Some((u, s)) => (
                std::str::from_utf8(u).unwrap_or(""),
                std::str::from_utf8(s).unwrap_or(""),
            ),
            None => ("", self.key.as_str()),
        }
    }
}

/// What the checks make of a server, in one word: `down` first (a stale
/// `drain` of a server that then failed says nothing), then `drain`; no
/// verdict yet is `checking` (picks treat it as up).
pub(crate) fn health_word(v: &HealthView) -> &'static str {
    match v.state {
        Health::Down => "down",
        _ if v.drain => "drain",
        Health::Up => "up",
        Health::Unchecked | Health::Checking => "checking",
    }
}

/// How the last check ended, as the status page says it.
pub(crate) fn why_str(why: Why) -> &'static str {
    match why {
        Why::Ok => "ok",
        Why::Refused => "refused",
        Why::Reset => "reset",
        Why::ClosedEarly => "closed early",
        Why::Timeout => "timeout",
        Why::BadStatus => "bad status",
        Why::BadResponse => "bad response",
        Why::NoConnection => "no connection",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn entry(key: &str, count: u64, state: State) -> Entry {
        Entry {
            key: key.into(),
            count,
            weight: 2,
            max_conns: 0,
            state,
            lua: false,
            ramping: None,
            rebalance: None,
            health: None,
        }
    }

    /// A checked server's view: up after 3 passes, its last check 800 ms
    /// ago, http 200 in 3 ms, nothing overridden or reported.
    pub(crate) fn view() -> HealthView {
        HealthView {
            state: Health::Up,
            drain: false,
            passes: 3,
            fails: 0,
            why: Why::Ok,
            http_status: 200,
            duration_ms: 3,
            last_ms: 5000,
            weight: None,
            max_conns: None,
            reported: None,
            excess: 0,
            out: false,
            tuned: false,
        }
    }

    pub(crate) fn checked(key: &str, view: HealthView, last_ms_ago: Option<u64>) -> Entry {
        Entry {
            health: Some(Checked { view, last_ms_ago }),
            ..entry(key, 9, State::Up)
        }
    }
}
