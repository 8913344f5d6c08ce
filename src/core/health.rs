//! Active health checks (issue 19): what one check found, and how checks
//! move a server between up and down (rise and fall). Pure logic; the
//! probe is `src/ngx/probe.rs`, the state lives in the zone (`table.rs`).

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
