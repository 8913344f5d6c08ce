//! Active health checks: what one check found, and how checks
//! move a server between up and down (rise and fall). Pure logic; the
//! probe is the nginx edge's (`src/ngx/probe.rs`), the state lives in the zone
//! (`table/checks.rs`).

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

/// What checks have made of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not checked (yet): the pick treats it as up.
    #[default]
    Unchecked = 0,
    /// Checked, no verdict yet (failing, fewer than `fall` times): up too.
    Checking = 1,
    Up = 2,
    Down = 3,
}

/// A server's state and its consecutive passes and fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub state: State,
    pub passes: u8,
    pub fails: u8,
}

/// The counters after one check that ended for `why` (rise and fall): a
/// pass clears the fails and brings a server that has no verdict up at
/// once, a down one after `rise` passes in a row; a fail clears the passes
/// and takes a server down after `fall` fails in a row. `NoConnection` is
/// this worker's trouble, not the server's: it changes nothing.
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
                State::Unchecked | State::Checking => State::Checking,
                kept => kept,
            };
            Counters {
                state,
                passes: 0,
                fails,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::State::{Checking, Down, Unchecked, Up};
    use super::*;

    fn c(state: State, passes: u8, fails: u8) -> Counters {
        Counters {
            state,
            passes,
            fails,
        }
    }

    const FAILS: [Why; 6] = [
        Why::Refused,
        Why::Reset,
        Why::ClosedEarly,
        Why::Timeout,
        Why::BadStatus,
        Why::BadResponse,
    ];

    #[test]
    fn one_step() {
        // (before, check, rise, fall, after)
        let table = [
            // A pass: up at once without a verdict; down needs `rise`.
            (c(Unchecked, 0, 0), Why::Ok, 2, 3, c(Up, 1, 0)),
            (c(Checking, 0, 2), Why::Ok, 2, 3, c(Up, 1, 0)),
            (c(Up, 7, 0), Why::Ok, 2, 3, c(Up, 8, 0)),
            (c(Down, 0, 9), Why::Ok, 2, 3, c(Down, 1, 0)),
            (c(Down, 1, 0), Why::Ok, 2, 3, c(Up, 2, 0)),
            (c(Down, 0, 3), Why::Ok, 1, 3, c(Up, 1, 0)),
            (c(Down, 3, 0), Why::Ok, 5, 3, c(Down, 4, 0)),
            (c(Up, 255, 0), Why::Ok, 2, 3, c(Up, 255, 0)),
            (c(Down, 254, 0), Why::Ok, 255, 3, c(Up, 255, 0)),
            // A fail: down after `fall` in a row; without a verdict it is
            // checking until then.
            (c(Unchecked, 0, 0), Why::Timeout, 2, 3, c(Checking, 0, 1)),
            (c(Unchecked, 0, 0), Why::Timeout, 2, 1, c(Down, 0, 1)),
            (c(Checking, 0, 1), Why::Refused, 2, 3, c(Checking, 0, 2)),
            (c(Checking, 0, 2), Why::Refused, 2, 3, c(Down, 0, 3)),
            (c(Up, 5, 0), Why::BadStatus, 2, 3, c(Up, 0, 1)),
            (c(Up, 0, 2), Why::BadStatus, 2, 3, c(Down, 0, 3)),
            (c(Up, 0, 0), Why::Reset, 2, 1, c(Down, 0, 1)),
            (c(Down, 1, 0), Why::ClosedEarly, 2, 3, c(Down, 0, 1)),
            (c(Down, 0, 255), Why::BadResponse, 2, 3, c(Down, 0, 255)),
            // Ours, not the server's: nothing counts.
            (c(Up, 0, 2), Why::NoConnection, 2, 3, c(Up, 0, 2)),
            (c(Down, 1, 0), Why::NoConnection, 2, 3, c(Down, 1, 0)),
            (
                c(Unchecked, 0, 0),
                Why::NoConnection,
                2,
                3,
                c(Unchecked, 0, 0),
            ),
        ];
        for (before, why, rise, fall, after) in table {
            assert_eq!(
                next(before, why, rise, fall),
                after,
                "{before:?} {why:?} rise={rise} fall={fall}"
            );
        }
    }

    #[test]
    fn every_failure_counts_alike() {
        for why in FAILS {
            assert_eq!(next(c(Up, 3, 2), why, 2, 3), c(Down, 0, 3), "{why:?}");
        }
    }

    /// Runs of checks: the state changes exactly at `fall` fails and at
    /// `rise` passes, and a pass or fail in between restarts the other run.
    #[test]
    fn runs_of_checks() {
        let run = |start: Counters, checks: &str, rise: u8, fall: u8| -> Vec<State> {
            let mut c = start;
            checks
                .chars()
                .map(|ch| {
                    c = next(
                        c,
                        if ch == '+' { Why::Ok } else { Why::Timeout },
                        rise,
                        fall,
                    );
                    c.state
                })
                .collect()
        };
        assert_eq!(
            run(Counters::default(), "--+---++", 2, 3),
            [Checking, Checking, Up, Up, Up, Down, Down, Up]
        );
        assert_eq!(
            run(Counters::default(), "---+-++", 2, 3),
            [Checking, Checking, Down, Down, Down, Down, Up]
        );
        assert_eq!(run(c(Up, 0, 0), "--+--+", 2, 3), [Up, Up, Up, Up, Up, Up]);
        assert_eq!(run(c(Down, 0, 0), "+-+-++", 3, 3), [Down; 6]);
        assert_eq!(run(c(Down, 0, 0), "+++", 3, 3), [Down, Down, Up]);
    }

    #[test]
    fn states_are_two_bits() {
        let bits: Vec<u8> = [Unchecked, Checking, Up, Down]
            .iter()
            .map(|&s| s as u8)
            .collect();
        assert_eq!(bits, [0, 1, 2, 3]);
    }
}
