//! What an http check's answer says: the status, and the two
//! headers a backend may add, its capacity and its own count of
//! connections. Pure parsing of the response head the probe read.
//!
//! **The head.** At most [`MAX_HEAD`] bytes (64 KiB) are read, up to the
//! blank line that ends the head ([`head_end`]: the probe stops there), or
//! the end of the connection. The status line is `HTTP/1.x NNN [reason]`
//! (NNN 100 to 599); lines end in CRLF or LF; each header line is
//! `name: value` (a name of token characters; no line folding). A head cut
//! short by the end of the connection is accepted when its status line is
//! complete: its complete lines count, a last line without its line end is
//! ignored (it may be cut).
//!
//! **A head over the bound** (`MAX_HEAD` bytes without its blank line) is
//! judged on its status line (a bad or missing one is still a bad
//! response; so is a malformed complete header line), but its capacity and
//! load headers are not read: both count as malformed ("response head over
//! 65536 bytes"; the load only when configured), even one found complete
//! within the bound, as a second copy of it could come later, unread.
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

/// The most of a response head a check reads (the probe's bound, its
/// buffer growing to it as the head comes): 64 KiB, far over what
/// frameworks send, cookies and CSP headers included.
pub const MAX_HEAD: usize = 64 * 1024;
/// Why the capacity and load headers of a head over [`MAX_HEAD`] are not
/// read.
pub const OVER_MAX_HEAD: &str = "response head over 65536 bytes";
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
    /// FNV-1a of the raw value (of the header and reason for a head over
    /// the bound, which has no value read), never 0: one warning per server
    /// per change.
    pub hash: u32,
    pub reason: &'static str,
    /// The value's first 64 bytes, escaped for the log ([`escape`]: so at
    /// most 256 characters); empty for a head over the bound.
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
}

impl BadResponse {
    pub fn reason(self) -> &'static str {
        match self {
            BadResponse::NoStatusLine => "no status line",
            BadResponse::StatusLine => "not an HTTP/1.x status line",
            BadResponse::HeaderLine => "a malformed header line",
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
    let (lines, complete) = head_lines(buf);
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
    if !complete && buf.len() >= MAX_HEAD {
        // Over the bound: what the unread rest says is unknown.
        return Ok(Head {
            status,
            capacity: Some(Err(over_max_head("capacity"))),
            load: load_name.map(|_| Err(over_max_head("load"))),
        });
    }
    Ok(Head {
        status,
        capacity: capacity.parse(capacity_line),
        load: load.parse(load_value),
    })
}

/// Where the head in `buf` ends: the length up to and with its blank line
/// (a line that is empty or only `\r`, after a line end of `\n` or
/// `\r\n`, or at the very start), as [`parse_head`] reads it. `searched`
/// bytes were looked at before without finding it (the length before the
/// last read): only a blank line whose `\n` comes after them is looked
/// for, the 2 bytes before it being looked at again.
pub fn head_end(buf: &[u8], searched: usize) -> Option<usize> {
    (searched..buf.len())
        .find(|&i| {
            buf[i] == b'\n'
                && match i {
                    0 => true,
                    _ if buf[i - 1] == b'\n' => true,
                    1 => buf[0] == b'\r',
                    _ => buf[i - 1] == b'\r' && buf[i - 2] == b'\n',
                }
        })
        .map(|i| i + 1)
}

/// The head's lines, without their line ends, up to the blank line (or
/// the last complete line when there is none: a partial last line is left
/// out), and whether the blank line came.
fn head_lines(buf: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut lines = Vec::new();
    let mut rest = buf;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        if line.is_empty() {
            return (lines, true);
        }
        lines.push(line);
    }
    (lines, false)
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
        text: escape(&raw[..raw.len().min(QUOTED)]),
    }
}

/// The capacity or load header (`which`) of a head over the bound: the same
/// hash at every check (so it warns once), the two apart.
fn over_max_head(which: &str) -> Malformed {
    Malformed {
        hash: fnv1a(format!("{which}: {OVER_MAX_HEAD}").as_bytes()),
        reason: OVER_MAX_HEAD,
        text: String::new(),
    }
}

/// Backend bytes as they may go into a log line: printable ASCII as it is,
/// any other byte, `"` and `\` as `\xHH` (as nginx escapes its access
/// log's variables): no control byte, line end or invalid UTF-8 reaches
/// the log, and a quoted text cannot be closed early.
pub fn escape(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out
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
    }

    /// `status` and `lines` padded with `X-Pad` lines to `len` bytes, cut
    /// there (no blank line).
    fn padded(status: &str, lines: &str, len: usize) -> Vec<u8> {
        let mut b = format!("{status}\r\n{lines}").into_bytes();
        while b.len() < len {
            b.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        b.truncate(len);
        b
    }

    #[test]
    fn heads_over_the_bound() {
        assert_eq!(MAX_HEAD, 65536);
        assert!(OVER_MAX_HEAD.contains(&MAX_HEAD.to_string()));
        let over = padded(
            "HTTP/1.1 200 OK",
            "X-LCP-Capacity: drain\r\nX-Conns: 5\r\n",
            MAX_HEAD,
        );
        let h = parse_head(&over, CAP, LOAD).unwrap();
        assert_eq!(h.status, 200, "judged on its status line");
        // Complete within the bound, yet not taken: a second one may follow.
        let c = h.capacity.clone().unwrap().unwrap_err();
        let l = h.load.clone().unwrap().unwrap_err();
        assert_eq!((c.reason, c.text.as_str()), (OVER_MAX_HEAD, ""));
        assert_eq!((l.reason, l.text.as_str()), (OVER_MAX_HEAD, ""));
        assert_ne!(c.hash, l.hash, "the two told apart");
        // The same at every check (one warning), whatever the head holds.
        let other = padded("HTTP/1.1 204 x", "", MAX_HEAD);
        let h2 = parse_head(&other, CAP, LOAD).unwrap();
        assert_eq!(h2.status, 204);
        assert_eq!(h2.capacity, h.capacity, "no capacity header: the same");
        assert_eq!(h2.load, h.load);
        // No load= configured: only the capacity.
        let h3 = parse_head(&over, CAP, None).unwrap();
        assert_eq!((h3.capacity.is_some(), h3.load), (true, None));
        // A bad status line, or none, is still a bad response.
        let bad = padded("HTTP/1.1 20 OK", "", MAX_HEAD);
        assert_eq!(parse_head(&bad, CAP, LOAD), Err(BadResponse::StatusLine));
        let none = vec![b'a'; MAX_HEAD];
        assert_eq!(parse_head(&none, CAP, LOAD), Err(BadResponse::NoStatusLine));
        let garbage = padded("HTTP/1.1 200 OK", "not a header\r\n", MAX_HEAD);
        assert_eq!(
            parse_head(&garbage, CAP, LOAD),
            Err(BadResponse::HeaderLine)
        );
        // One byte short, cut by the end of the connection: read as it is.
        let short = padded("HTTP/1.1 200 OK", "X-LCP-Capacity: drain\r\n", MAX_HEAD - 1);
        let h = parse_head(&short, CAP, LOAD).unwrap();
        assert_eq!(h.stated_capacity(), Ok(cap(true, None, None)));
        // Ending within the bound, at its last byte: read as it is.
        let mut full = b"HTTP/1.1 200 OK\r\nX-LCP-Capacity: drain\r\nX-Pad: ".to_vec();
        full.resize(MAX_HEAD - 4, b'a');
        full.extend_from_slice(b"\r\n\r\n");
        assert_eq!(full.len(), MAX_HEAD);
        assert_eq!(head_end(&full, 0), Some(MAX_HEAD));
        let h = parse_head(&full, CAP, LOAD).unwrap();
        assert_eq!(h.stated_capacity(), Ok(cap(true, None, None)));
        assert_eq!(h.load, None);
    }

    #[test]
    fn a_6k_capacity_value_is_malformed_not_fatal() {
        let value = "up,".repeat(2000);
        let h = head(&format!(
            "HTTP/1.1 200 OK\r\nX-LCP-Capacity: {value}\r\n\r\n"
        ))
        .unwrap();
        assert_eq!(h.status, 200);
        let m = h.capacity.unwrap().unwrap_err();
        assert_eq!(m.reason, "longer than 256 bytes");
        assert_eq!(m.hash, fnv1a(value.as_bytes()));
    }

    #[test]
    fn the_end_of_the_head() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody", 0), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nbody", 0), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\n", 0), Some(18));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\r\n", 0), None);
        assert_eq!(head_end(b"\n", 0), Some(1));
        assert_eq!(head_end(b"\r\n", 0), Some(2));
        assert_eq!(head_end(b"", 0), None);
        // The blank line completed by a later read, in every split.
        let buf = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        for split in 0..buf.len() {
            assert_eq!(head_end(&buf[..split], 0), None);
            assert_eq!(head_end(buf, split), Some(buf.len()), "{split}");
        }
    }

    /// Every buffer of up to 8 bytes of `\r`, `\n` and `a`, read in two
    /// parts at every split: the probe's end is where the parser's head
    /// ends (the parser takes the lines before it and nothing after).
    #[test]
    fn the_probe_and_the_parser_agree() {
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len)
                    .scan(n, |n, _| {
                        let b = alphabet[*n % 3];
                        *n /= 3;
                        Some(b)
                    })
                    .collect();
                let end = head_end(&buf, 0);
                let (lines, complete) = head_lines(&buf);
                assert_eq!(end.is_some(), complete, "{buf:?}");
                if let Some(end) = end {
                    let (before, _) = head_lines(&buf[..end]);
                    assert_eq!(before, lines, "{buf:?}");
                    assert!(!head_lines(&buf[..end - 1]).1, "{buf:?}");
                }
                for split in 0..=buf.len() {
                    if head_end(&buf[..split], 0).is_none() {
                        assert_eq!(head_end(&buf, split), end, "{buf:?} at {split}");
                    }
                }
            }
        }
    }

    #[test]
    fn backend_text_is_escaped_for_the_log() {
        assert_eq!(escape(b"maxconn=abc, weight=5"), "maxconn=abc, weight=5");
        assert_eq!(
            escape(b"a\x1b[31m\r\n\x07\x00\x7f\x80\xff\"\\ ~"),
            "a\\x1B[31m\\x0D\\x0A\\x07\\x00\\x7F\\x80\\xFF\\x22\\x5C ~"
        );
        assert_eq!(escape("é".as_bytes()), "\\xC3\\xA9");
        // The quote: the first 64 raw bytes, then escaped.
        let raw = format!("{}\u{1b}", "x".repeat(63));
        let h = head(&format!(
            "HTTP/1.1 200 OK\r\nX-LCP-Capacity: {raw}yz\r\n\r\n"
        ))
        .unwrap();
        let m = h.capacity.unwrap().unwrap_err();
        assert_eq!(m.text, format!("{}\\x1B", "x".repeat(63)));
        assert_eq!(
            m.hash,
            fnv1a(format!("{raw}yz").as_bytes()),
            "of the raw value"
        );
        let twice = head("HTTP/1.1 200 OK\r\nX-Conns: \"1\"\r\nX-Conns: 2\x7f\r\n\r\n").unwrap();
        assert_eq!(twice.load.unwrap().unwrap_err().text, "\\x221\\x22, 2\\x7F");
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
