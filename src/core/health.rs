//! Active health checks (issue 19): what one check found, and how checks
//! move a server between up and down (rise and fall). Pure logic; the
//! probe is `ngx::probe`, the state lives in the zone (`table.rs`).

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Why {
    /// Passed: connected (tcp), or an expected status (http).
    Ok = 0,
    /// The connection was refused.
    Refused = 1,
    /// The connection failed or was reset (other than refused).
    Reset = 2,
    /// The server closed the connection before a complete response head.
    ClosedEarly = 3,
    /// No connection, or no complete response head, within `timeout`.
    Timeout = 4,
    /// A complete head with a status the check does not expect.
    BadStatus = 5,
    /// Not an HTTP response head (or one over the size the check reads).
    BadResponse = 6,
    /// This worker could not open a connection at all (no free connection,
    /// no socket): ours, not the server's; never counts as a failure.
    NoConnection = 7,
}

/// Where checks have a server (stored in the zone as 0..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Unchecked = 0,
    Checking = 1,
    Up = 2,
    Down = 3,
}

/// A server's state and its consecutive passed and failed checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub state: State,
    pub passes: u8,
    pub fails: u8,
}

/// One check's effect: `rise` passes bring a server that is down up,
/// `fall` fails take one that is up down; a server not judged yet is up on
/// its first pass. `NoConnection` (ours) counts for nothing.
pub fn next(c: Counters, why: Why, rise: u8, fall: u8) -> Counters {
    match why {
        Why::NoConnection => c,
        Why::Ok => {
            let passes = c.passes.saturating_add(1);
            let state = match c.state {
                State::Down if passes < rise => State::Down,
                _ => State::Up,
            };
            Counters {
                state,
                passes,
                fails: 0,
            }
        }
        _ => {
            let fails = c.fails.saturating_add(1);
            let state = match c.state {
                _ if fails >= fall => State::Down,
                State::Unchecked => State::Checking,
                s => s,
            };
            Counters {
                state,
                passes: 0,
                fails,
            }
        }
    }
}
