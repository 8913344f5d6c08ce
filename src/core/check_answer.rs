//! What an http check's answer says (issue 19): the status, and the two
//! headers a backend may add, its capacity and its own count of
//! connections. Pure parsing of the response head the probe read.
//!
//! **The head.** At most `MAX_HEAD` bytes are read, up to the blank line
//! that ends the head, or the end of the connection. The status line is
//! `HTTP/1.x NNN [reason]` (NNN 100 to 599); lines end in CRLF or LF; each
//! header line is `name: value` (a name of token characters; no line
//! folding). A head cut short by the end of the connection is accepted
//! when its status line is complete: its complete lines count, a last line
//! without its line end is ignored (it may be cut). A head that fills
//! `MAX_HEAD` without its blank line is too long.
//!
//! **The capacity line** (`capacity=` header, `X-LCP-Capacity` unless
//! configured; its name case-insensitive), in the spirit of HAProxy's agent
//! check: tokens split by spaces, tabs or commas, case-insensitive:
//!
//! - `up`: takes connections, no override (the same as no header);
//! - `drain`: takes no new connections; the ones it has stay, counted;
//! - `maxconn=N`: the server's `max_conns` becomes N, 0 to 4294967294 (0:
//!   no limit, as nginx's `max_conns=0`);
//! - `weight=N`: the server's weight becomes N, 1 to 1000000.
//!
//! `up` and `drain` exclude each other; each token at most once; the whole
//! value at most 256 bytes. Anything else makes the line malformed: it
//! changes nothing, and the check still passes on its status. Every
//! passing answer is a complete statement: what it does not override is
//! the configured value again. Examples: `X-LCP-Capacity: up`,
//! `X-LCP-Capacity: drain`, `X-LCP-Capacity: weight=5, maxconn=100`.
//!
//! **The load** (`load=` header): the backend's own count of live
//! connections, a decimal number 0 to 4294967294.
//!
//! A capacity or load header given twice is malformed.

use super::check_conf::token;

/// The most of a response head a check reads.
pub const MAX_HEAD: usize = 4096;
/// The longest capacity line.
pub const MAX_CAPACITY_LINE: usize = 256;
/// The largest `weight=`.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// How much of a malformed value the warning quotes.
const QUOTED: usize = 64;

/// What a capacity line says. The default: up, nothing overridden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub drain: bool,
    pub weight: Option<u32>,
    /// `maxconn=`; `Some(0)`: no limit.
    pub max_conns: Option<u32>,
}

/// A capacity or load header the check ignores, with what to warn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// FNV-1a of the raw value, never 0: one warning per server per change.
    pub hash: u32,
    pub reason: &'static str,
    /// The value's first 64 bytes, for the warning.
    pub text: String,
}

/// A response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// `None`: no capacity header.
    pub capacity: Option<Result<Capacity, Malformed>>,
    /// `None`: no load header (or none configured).
    pub load: Option<Result<u32, Malformed>>,
}

impl Head {
    /// The capacity the answer states: no header is `up`; `Err` for a
    /// malformed line (which changes nothing).
    pub fn stated_capacity(&self) -> Result<Capacity, &Malformed> {
        match &self.capacity {
            None => Ok(Capacity::default()),
            Some(r) => r.as_ref().copied(),
        }
    }
}

/// Not an HTTP response head: the check fails (`Why::BadResponse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadResponse {
    /// Nothing, or no complete first line.
    NoStatusLine,
    /// A first line that is not `HTTP/1.x NNN ...`.
    StatusLine,
    /// A header line that is not `name: value`.
    HeaderLine,
    /// `MAX_HEAD` bytes without the end of the head.
    TooLong,
}

impl BadResponse {
    pub fn reason(self) -> &'static str {
        match self {
            BadResponse::NoStatusLine => "no status line",
            BadResponse::StatusLine => "not an HTTP/1.x status line",
            BadResponse::HeaderLine => "a malformed header line",
            BadResponse::TooLong => "a response head over 4096 bytes",
        }
    }
}

/// Parses the head in `buf` (what the probe read: up to the blank line,
/// or all it got before the connection ended, at most `MAX_HEAD` bytes),
/// with the names of the capacity and load headers.
pub fn parse_head(
    buf: &[u8],
    capacity_name: &[u8],
    load_name: Option<&[u8]>,
) -> Result<Head, BadResponse> {
    let lines = head_lines(buf)?;
    let (first, headers) = lines.split_first().ok_or(BadResponse::NoStatusLine)?;
    let status = status_line(first)?;
    let mut capacity = Found::default();
    let mut load = Found::default();
    for &line in headers {
        let (name, value) = header_line(line)?;
        if name.eq_ignore_ascii_case(capacity_name) {
            capacity.add(value);
        }
        if load_name.is_some_and(|l| name.eq_ignore_ascii_case(l)) {
            load.add(value);
        }
    }
    Ok(Head {
        status,
        capacity: capacity.parse(capacity_line),
        load: load.parse(load_value),
    })
}

/// The head's lines, without their line ends, up to the blank line (or
/// the last complete line when the connection ended first).
fn head_lines(buf: &[u8]) -> Result<Vec<&[u8]>, BadResponse> {
    let mut lines = Vec::new();
    let mut rest = buf;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
    // No blank line: the connection ended (a partial last line is left
    // out), unless the buffer is full.
    if buf.len() >= MAX_HEAD {
        Err(BadResponse::TooLong)
    } else if lines.is_empty() {
        Err(BadResponse::NoStatusLine)
    } else {
        Ok(lines)
    }
}

/// `HTTP/1.x NNN[ reason]`: the status.
fn status_line(line: &[u8]) -> Result<u16, BadResponse> {
    let bad = BadResponse::StatusLine;
    let rest = line.strip_prefix(b"HTTP/1.").ok_or(bad)?;
    let (&minor, rest) = rest.split_first().ok_or(bad)?;
    let rest = rest
        .strip_prefix(b" ")
        .filter(|_| minor.is_ascii_digit())
        .ok_or(bad)?;
    let (code, after) = rest.split_at(rest.len().min(3));
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    if !after.is_empty() && after[0] != b' ' {
        return Err(bad);
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&status).then_some(status).ok_or(bad)
}

/// `name: value`: the name, and the value without surrounding blanks.
fn header_line(line: &[u8]) -> Result<(&[u8], &[u8]), BadResponse> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(BadResponse::HeaderLine)?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| token(b)) {
        return Err(BadResponse::HeaderLine);
    }
    Ok((name, line[colon + 1..].trim_ascii()))
}

/// The values of one header, as they came.
#[derive(Default)]
struct Found<'a> {
    values: Vec<&'a [u8]>,
}

impl<'a> Found<'a> {
    fn add(&mut self, value: &'a [u8]) {
        self.values.push(value);
    }

    /// `None` without the header; malformed when it came twice (the two
    /// values, joined as HTTP joins them, are what the warning quotes).
    fn parse<T>(
        &self,
        parse: impl Fn(&[u8]) -> Result<T, &'static str>,
    ) -> Option<Result<T, Malformed>> {
        match self.values.as_slice() {
            [] => None,
            [one] => Some(parse(one).map_err(|reason| malformed(one, reason))),
            many => Some(Err(malformed(
                &many.join(&b", "[..]),
                "given more than once",
            ))),
        }
    }
}

fn malformed(raw: &[u8], reason: &'static str) -> Malformed {
    Malformed {
        hash: fnv1a(raw),
        reason,
        text: String::from_utf8_lossy(&raw[..raw.len().min(QUOTED)]).into_owned(),
    }
}

/// FNV-1a, 32 bits, never 0 (0 means "nothing warned about").
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let h = bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h.max(1)
}

/// The capacity line (see the module's documentation).
fn capacity_line(value: &[u8]) -> Result<Capacity, &'static str> {
    if value.len() > MAX_CAPACITY_LINE {
        return Err("longer than 256 bytes");
    }
    let mut c = Capacity::default();
    let mut state: Option<bool> = None; // Some(drain) once up or drain came
    let mut any = false;
    for t in value
        .split(|&b| b == b' ' || b == b'\t' || b == b',')
        .filter(|t| !t.is_empty())
    {
        any = true;
        let (name, number) = match t.iter().position(|&b| b == b'=') {
            Some(at) => (&t[..at], Some(&t[at + 1..])),
            None => (t, None),
        };
        let lower = name.to_ascii_lowercase();
        match (lower.as_slice(), number) {
            (b"up" | b"drain", None) => {
                let drain = lower == b"drain";
                match state {
                    Some(d) if d == drain => return Err("a token twice"),
                    Some(_) => return Err("both up and drain"),
                    None => state = Some(drain),
                }
                c.drain = drain;
            }
            (b"maxconn", Some(n)) => {
                let n = decimal(n, 0, u32::MAX - 1).ok_or("maxconn not 0 to 4294967294")?;
                if c.max_conns.replace(n).is_some() {
                    return Err("a token twice");
                }
            }
            (b"weight", Some(n)) => {
                let n = decimal(n, 1, MAX_WEIGHT).ok_or("weight not 1 to 1000000")?;
                if c.weight.replace(n).is_some() {
                    return Err("a token twice");
                }
            }
            _ => return Err("an unknown token"),
        }
    }
    if any {
        Ok(c)
    } else {
        Err("empty")
    }
}

/// The load header's value.
fn load_value(value: &[u8]) -> Result<u32, &'static str> {
    decimal(value, 0, u32::MAX - 1).ok_or("not a number from 0 to 4294967294")
}

/// A decimal number in `min..=max`, digits only.
fn decimal(text: &[u8], min: u32, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 10 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = text.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n).ok().filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: &[u8] = b"X-LCP-Capacity";
    const LOAD: Option<&[u8]> = Some(b"X-Conns");

    fn head(text: &str) -> Result<Head, BadResponse> {
        parse_head(text.as_bytes(), CAP, LOAD)
    }

    fn capacity(value: &str) -> Result<Capacity, Malformed> {
        let h = head(&format!(
            "HTTP/1.1 200 OK\r\nX-LCP-Capacity: {value}\r\n\r\n"
        ))
        .unwrap();
        h.capacity.expect("a capacity header")
    }

    fn reason(value: &str) -> &'static str {
        capacity(value).unwrap_err().reason
    }

    fn cap(drain: bool, weight: Option<u32>, max_conns: Option<u32>) -> Capacity {
        Capacity {
            drain,
            weight,
            max_conns,
        }
    }

    #[test]
    fn a_plain_answer() {
        let h = head("HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 204,
                capacity: None,
                load: None
            }
        );
        assert_eq!(h.stated_capacity(), Ok(Capacity::default()));
        assert_eq!(head("HTTP/1.0 503\r\n\r\n").unwrap().status, 503);
        assert_eq!(head("HTTP/1.1 200 OK\n\n").unwrap().status, 200, "bare LF");
        // What follows the blank line (a body) is not the head's.
        let h = head("HTTP/1.1 200 OK\r\n\r\nX-LCP-Capacity: drain\r\n").unwrap();
        assert_eq!(h.capacity, None);
    }

    #[test]
    fn status_lines() {
        for bad in [
            "HTTP/2 200 OK",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 abc OK",
            "HTTP/1.x 200 OK",
            "HTTP/1.1  200 OK",
            "HTTP/1.1 200OK",
            "HTTP/1.1 099 x",
            "HTTP/1.1 600 x",
            "http/1.1 200 OK",
            "SSH-2.0-OpenSSH_9.2",
            "\u{0}\u{1}garbage",
        ] {
            assert_eq!(
                head(&format!("{bad}\r\n\r\n")),
                Err(BadResponse::StatusLine),
                "{bad:?}"
            );
        }
        assert_eq!(head("HTTP/1.1 599 x\r\n\r\n").unwrap().status, 599);
        assert_eq!(head("HTTP/1.1 100 Continue\r\n\r\n").unwrap().status, 100);
    }

    #[test]
    fn heads_cut_short() {
        assert_eq!(head(""), Err(BadResponse::NoStatusLine));
        assert_eq!(head("HTTP/1.1 200 O"), Err(BadResponse::NoStatusLine));
        assert_eq!(head("\r\n\r\n"), Err(BadResponse::NoStatusLine));
        // The connection ended after the headers, without the blank line:
        // accepted, its complete lines count.
        let h = head("HTTP/1.1 200 OK\r\nX-LCP-Capacity: drain\r\n").unwrap();
        assert_eq!(h.stated_capacity(), Ok(cap(true, None, None)));
        let h = head("HTTP/1.1 200 OK\r\nX-LCP-Capacity: drain").unwrap();
        assert_eq!(h.capacity, None, "a last line without its end may be cut");
        // A full buffer without the blank line: too long.
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() < MAX_HEAD {
            long.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        long.truncate(MAX_HEAD);
        assert_eq!(parse_head(&long, CAP, LOAD), Err(BadResponse::TooLong));
    }

    #[test]
    fn header_lines() {
        for bad in [
            "no colon",
            ": empty name",
            "Bad Name: x",
            " folded: x",
            "\tX: y",
        ] {
            assert_eq!(
                head(&format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n")),
                Err(BadResponse::HeaderLine),
                "{bad:?}"
            );
        }
        let h = head("HTTP/1.1 200 OK\r\nx-lcp-capacity:drain  \r\nX-CONNS:\t7 \r\n\r\n").unwrap();
        assert_eq!(
            h.stated_capacity(),
            Ok(cap(true, None, None)),
            "names in any case"
        );
        assert_eq!(h.load, Some(Ok(7)));
    }

    #[test]
    fn capacity_tokens() {
        assert_eq!(capacity("up"), Ok(cap(false, None, None)));
        assert_eq!(capacity("drain"), Ok(cap(true, None, None)));
        assert_eq!(capacity("DRAIN"), Ok(cap(true, None, None)));
        assert_eq!(capacity("Up, Weight=5"), Ok(cap(false, Some(5), None)));
        assert_eq!(
            capacity("weight=5,maxconn=100"),
            Ok(cap(false, Some(5), Some(100)))
        );
        assert_eq!(
            capacity("maxconn=0 \t drain ,, weight=1"),
            Ok(cap(true, Some(1), Some(0)))
        );
        assert_eq!(
            capacity("MAXCONN=4294967294").unwrap().max_conns,
            Some(u32::MAX - 1)
        );
        assert_eq!(capacity("weight=1000000").unwrap().weight, Some(1_000_000));
    }

    #[test]
    fn malformed_capacity_lines() {
        for (value, why) in [
            ("up drain", "both up and drain"),
            ("drain,up", "both up and drain"),
            ("up up", "a token twice"),
            ("weight=2 weight=3", "a token twice"),
            ("maxconn=1,maxconn=1", "a token twice"),
            ("weight=0", "weight not 1 to 1000000"),
            ("weight=1000001", "weight not 1 to 1000000"),
            ("weight=", "weight not 1 to 1000000"),
            ("weight=-1", "weight not 1 to 1000000"),
            ("weight=5%", "weight not 1 to 1000000"),
            ("maxconn=4294967295", "maxconn not 0 to 4294967294"),
            ("maxconn=99999999999", "maxconn not 0 to 4294967294"),
            ("maxconn=abc", "maxconn not 0 to 4294967294"),
            ("maxconn:5", "an unknown token"),
            ("ready", "an unknown token"),
            ("up=1", "an unknown token"),
            ("drain=yes", "an unknown token"),
            ("weight", "an unknown token"),
            ("", "empty"),
            (" , ", "empty"),
        ] {
            assert_eq!(reason(value), why, "{value:?}");
        }
        let long = format!("up{}", " ".repeat(255));
        assert_eq!(long.len(), 257);
        let h = parse_head(
            format!("HTTP/1.1 200 OK\r\nX-LCP-Capacity: {long}x\r\n\r\n").as_bytes(),
            CAP,
            LOAD,
        );
        let m = h.unwrap().capacity.unwrap().unwrap_err();
        assert_eq!(m.reason, "longer than 256 bytes");
        assert_eq!(m.text.len(), 64, "quotes 64 bytes");
        let at_most = format!("weight=5{}up", " ".repeat(246));
        assert_eq!(at_most.len(), MAX_CAPACITY_LINE);
        assert_eq!(capacity(&at_most), Ok(cap(false, Some(5), None)));
    }

    #[test]
    fn a_header_twice_is_malformed() {
        let h = head("HTTP/1.1 200 OK\r\nX-LCP-Capacity: up\r\nx-lcp-capacity: drain\r\nX-Conns: 1\r\nX-Conns: 2\r\n\r\n")
            .unwrap();
        let m = h.capacity.clone().unwrap().unwrap_err();
        assert_eq!(
            (m.reason, m.text.as_str()),
            ("given more than once", "up, drain")
        );
        assert_eq!(h.stated_capacity(), Err(&m));
        let l = h.load.unwrap().unwrap_err();
        assert_eq!(
            (l.reason, l.text.as_str()),
            ("given more than once", "1, 2")
        );
    }

    #[test]
    fn load_values() {
        let load = |v: &str| {
            head(&format!("HTTP/1.1 200 OK\r\nX-Conns: {v}\r\n\r\n"))
                .unwrap()
                .load
                .unwrap()
        };
        assert_eq!(load("0"), Ok(0));
        assert_eq!(load("4294967294"), Ok(u32::MAX - 1));
        for bad in ["4294967295", "-1", "1.5", "12 conns", "", "0x10"] {
            assert_eq!(
                load(bad).unwrap_err().reason,
                "not a number from 0 to 4294967294",
                "{bad:?}"
            );
        }
        // Not configured: not read.
        let h = parse_head(b"HTTP/1.1 200 OK\r\nX-Conns: 5\r\n\r\n", CAP, None).unwrap();
        assert_eq!(h.load, None);
    }

    #[test]
    fn the_hash_tells_changes_apart_and_is_never_0() {
        let a = reason_hash("maxconn=abc");
        assert_eq!(a, reason_hash("maxconn=abc"));
        assert_ne!(a, reason_hash("maxconn=abd"));
        assert_eq!(a, fnv1a(b"maxconn=abc"));
        assert_ne!(fnv1a(b""), 0);
        // FNV-1a's published value for "a".
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    fn reason_hash(value: &str) -> u32 {
        capacity(value).unwrap_err().hash
    }
}
