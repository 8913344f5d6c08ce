//! What one health check found, from what its probe got: the
//! verdict (`Why`), and for an http check that passed, the capacity line
//! and the load the server reported, as the zone's record takes them
//! (`table::CheckReport`).
//!
//! - A failed check (refused, reset, a timeout, a status the check does not
//!   expect, no HTTP head) changes no capacity; it forgets a reported load
//!   (the server may be gone: its load no longer tells anything). No
//!   connection of ours to probe with (`NoConnection`) changes nothing.
//! - A passing answer is a complete statement: no capacity header means
//!   `up` with no override; no load header forgets the last one, and so
//!   does a check that reads none (`type=tcp`, or no `load=`).
//! - A malformed capacity or load value changes nothing of its own and is
//!   warned about once per server per text (`Warning::hash`). A head over
//!   `check_answer::MAX_HEAD` (64 KiB) is judged on its status; its capacity
//!   and load (when configured) are malformed, so kept as they were, with
//!   one warning.

use super::check_answer::{parse_head, Capacity, Malformed};
use super::check_conf::{CheckParams, Kind};
use super::health::Why;

/// A malformed header of a passing answer, for one `[warn]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// `capacity` or `load`.
    pub header: &'static str,
    /// Of the value(s): 0 never (a well-formed answer has no warning).
    pub hash: u32,
    pub text: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub why: Why,
    /// The answer's status (0: none, or a tcp check).
    pub http_status: u16,
    /// `None`: keep what the zone has.
    pub capacity: Option<Capacity>,
    /// `None`: keep; `Some(None)`: forget; `Some(Some(n))`: `n` reported.
    pub reported: Option<Option<u32>>,
    pub malformed: Option<Warning>,
}

impl Judged {
    fn failed(why: Why, http_status: u16) -> Judged {
        Judged {
            why,
            http_status,
            capacity: None,
            reported: Some(None),
            malformed: None,
        }
    }
}

/// Judges `answer`: the head bytes the probe read (empty for a tcp check
/// that connected), or why it got none.
pub fn judge(params: &CheckParams, answer: Result<&[u8], Why>) -> Judged {
    let bytes = match answer {
        Ok(bytes) => bytes,
        // Ours, not the server's: nothing is known, nothing changes.
        Err(Why::NoConnection) => {
            return Judged {
                reported: None,
                ..Judged::failed(Why::NoConnection, 0)
            }
        }
        Err(why) => return Judged::failed(why, 0),
    };
    // A check that reads no load (a tcp check, or no `load=`: a reload may
    // have dropped it) forgets the load the zone has: it would otherwise
    // weigh in the picks for as long as the zone lives.
    if params.kind == Kind::Tcp {
        return Judged {
            why: Why::Ok,
            http_status: 0,
            capacity: Some(Capacity::default()),
            reported: Some(None),
            malformed: None,
        };
    }
    let head = match parse_head(bytes, &params.capacity, params.load.as_deref()) {
        Ok(head) => head,
        Err(_) => return Judged::failed(Why::BadResponse, 0),
    };
    if !params.expects(head.status) {
        return Judged::failed(Why::BadStatus, head.status);
    }
    let (capacity, bad_capacity) = match head.capacity {
        None => (Some(Capacity::default()), None),
        Some(Ok(c)) => (Some(c), None),
        Some(Err(m)) => (None, Some(m)),
    };
    let (reported, bad_load) = match (params.load.is_some(), head.load) {
        (false, _) => (Some(None), None),
        (true, None) => (Some(None), None),
        (true, Some(Ok(n))) => (Some(Some(n)), None),
        (true, Some(Err(m))) => (None, Some(m)),
    };
    Judged {
        why: Why::Ok,
        http_status: head.status,
        capacity,
        reported,
        malformed: warning(bad_capacity, bad_load),
    }
}

/// One warning for what was malformed (the capacity line first); its hash
/// covers both, so a change of either warns again.
fn warning(capacity: Option<Malformed>, load: Option<Malformed>) -> Option<Warning> {
    let hash = capacity.as_ref().map_or(0, |m| m.hash) ^ load.as_ref().map_or(0, |m| m.hash);
    let (header, m) = match (capacity, load) {
        (Some(m), _) => ("capacity", m),
        (None, Some(m)) => ("load", m),
        (None, None) => return None,
    };
    Some(Warning {
        header,
        // Two values whose hashes cancel out still warn.
        hash: if hash == 0 { 1 } else { hash },
        text: m.text,
        reason: m.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(args: &[&str]) -> CheckParams {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        CheckParams::parse(&args, |v| {
            let s = std::str::from_utf8(v).ok()?;
            match s.strip_suffix("ms") {
                Some(n) => n.parse().ok(),
                None => s.strip_suffix('s')?.parse::<u64>().ok().map(|n| n * 1000),
            }
        })
        .unwrap()
    }

    fn http() -> CheckParams {
        params(&["uri=/health", "load=X-Connections"])
    }

    #[test]
    fn a_tcp_check_passes_on_connecting() {
        let j = judge(&params(&[]), Ok(b""));
        assert_eq!(j.why, Why::Ok);
        assert_eq!(j.capacity, Some(Capacity::default()));
        assert_eq!(
            j.reported,
            Some(None),
            "a load reported before is forgotten"
        );
    }

    #[test]
    fn an_http_check_without_load_forgets_a_reported_load() {
        let j = judge(
            &params(&["uri=/health"]),
            Ok(b"HTTP/1.1 200 OK\r\nX-Connections: 50\r\n\r\n"),
        );
        assert_eq!(j.why, Why::Ok);
        assert_eq!(j.reported, Some(None));
    }

    #[test]
    fn a_failure_keeps_capacity_and_forgets_load() {
        for why in [Why::Refused, Why::Timeout, Why::ClosedEarly, Why::Reset] {
            let j = judge(&http(), Err(why));
            assert_eq!((j.why, j.capacity, j.reported), (why, None, Some(None)));
        }
        let none = judge(&http(), Err(Why::NoConnection));
        assert_eq!((none.capacity, none.reported), (None, None));
    }

    #[test]
    fn statuses_and_heads() {
        let bad = judge(&http(), Ok(b"HTTP/1.1 503 Busy\r\n\r\n"));
        assert_eq!((bad.why, bad.http_status), (Why::BadStatus, 503));
        let garbage = judge(&http(), Ok(b"not http\r\n\r\n"));
        assert_eq!(garbage.why, Why::BadResponse);
        let ok = judge(&http(), Ok(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert_eq!(ok.why, Why::Ok);
        assert_eq!(ok.capacity, Some(Capacity::default()), "no header: up");
        assert_eq!(ok.reported, Some(None), "no load header: forgotten");
    }

    #[test]
    fn capacity_and_load_of_a_passing_answer() {
        let j = judge(
            &http(),
            Ok(b"HTTP/1.1 200 OK\r\nX-LCP-Capacity: drain\r\nX-Connections: 50\r\n\r\n"),
        );
        assert!(j.capacity.unwrap().drain);
        assert_eq!(j.reported, Some(Some(50)));
        assert_eq!(j.malformed, None);
    }

    #[test]
    fn a_head_over_the_bound_is_judged_on_its_status() {
        use crate::core::check_answer::{MAX_HEAD, OVER_MAX_HEAD};
        let over = |status: &str| {
            let mut b =
                format!("HTTP/1.1 {status} x\r\nX-LCP-Capacity: drain\r\nX-Connections: 5\r\n")
                    .into_bytes();
            b.resize(MAX_HEAD, b'a');
            b
        };
        let j = judge(&http(), Ok(&over("200")));
        assert_eq!((j.why, j.http_status), (Why::Ok, 200));
        assert_eq!(j.capacity, None, "capacity kept, drain not taken");
        assert_eq!(j.reported, None, "reported load kept, 5 not taken");
        let w = j.malformed.clone().unwrap();
        assert_eq!(
            (w.header, w.reason, w.text.as_str()),
            ("capacity", OVER_MAX_HEAD, "")
        );
        // The same warning at the next check: warned once.
        assert_eq!(judge(&http(), Ok(&over("204"))).malformed, Some(w.clone()));
        // Without load=: the capacity alone (another hash).
        let no_load = judge(&params(&["uri=/health"]), Ok(&over("200")));
        assert_eq!(
            (no_load.why, no_load.reported),
            (Why::Ok, Some(None)),
            "no load= reads no load: forgotten"
        );
        assert_ne!(no_load.malformed.unwrap().hash, w.hash);
        let bad = judge(&http(), Ok(&over("503")));
        assert_eq!((bad.why, bad.http_status), (Why::BadStatus, 503));
        assert_eq!(judge(&http(), Ok(&[b'a'; MAX_HEAD])).why, Why::BadResponse);
    }

    #[test]
    fn malformed_values_change_nothing_and_warn_by_text() {
        let a = judge(
            &http(),
            Ok(b"HTTP/1.1 200 OK\r\nX-LCP-Capacity: maxconn=abc\r\n\r\n"),
        );
        assert_eq!(a.why, Why::Ok, "the check still passes");
        assert_eq!(a.capacity, None);
        let w = a.malformed.unwrap();
        assert_eq!(w.header, "capacity");
        assert_ne!(w.hash, 0);
        let b = judge(
            &http(),
            Ok(b"HTTP/1.1 200 OK\r\nX-LCP-Capacity: weight=x\r\n\r\n"),
        );
        assert_ne!(b.malformed.unwrap().hash, w.hash);
        let load = judge(
            &http(),
            Ok(b"HTTP/1.1 200 OK\r\nX-Connections: lots\r\n\r\n"),
        );
        assert_eq!(load.reported, None, "kept");
        assert_eq!(load.capacity, Some(Capacity::default()));
        assert_eq!(load.malformed.unwrap().header, "load");
    }
}
