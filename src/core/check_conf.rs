//! `least_conn_persistent_check`'s parameters: what a check of
//! an upstream's servers sends, how often, and what counts as a pass.
//!
//! ```text
//! least_conn_persistent_check [type=tcp|http] [uri=/path] [port=N]
//!     [interval=5s] [timeout=2s] [rise=2] [fall=3] [status=200-399]
//!     [capacity=X-LCP-Capacity] [load=<header name>];
//! ```
//!
//! - `type`: `tcp` (a connection that opens passes) or `http` (a `GET` of
//!   `uri` whose status is one of `status`). `uri`, `status`, `capacity`
//!   and `load` imply `http`; with an explicit `type=tcp` they are errors.
//! - `port`: checks go to this port instead of each server's (1 to 65535).
//! - `interval`: from one check's start to the next, 100ms to 1h (a
//!   shorter one only loads the servers; a longer one is no check).
//! - `timeout`: connect and answer within this, more than 0 and at most
//!   `interval` (a check ends before the next starts); default 2s, or the
//!   interval when that is shorter.
//! - `rise`/`fall`: consecutive passes that bring a down server up, and
//!   consecutive fails that take a server down, 1 to 255.
//! - `status`: the codes that pass, a comma list of codes and ranges
//!   (`200,204,300-399`), each 100 to 599.
//! - `capacity`: the response header whose value is the capacity line
//!   (`core::check_answer`); `load`: the header carrying the backend's own
//!   count of connections (none by default).

use core::fmt;

/// What a check does to see whether a server is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The connection opens.
    Tcp,
    /// An HTTP/1.0 `GET` answers an expected status.
    Http,
}

/// The shortest and longest `interval`, in milliseconds.
pub const MIN_INTERVAL_MS: u32 = 100;
pub const MAX_INTERVAL_MS: u32 = 3_600_000;
/// The longest `uri=` and header name accepted.
const MAX_URI: usize = 1024;
const MAX_HEADER_NAME: usize = 128;
/// The capacity header when `capacity=` is not given.
pub const DEFAULT_CAPACITY_HEADER: &[u8] = b"X-LCP-Capacity";

/// A set of HTTP status codes 100..=599, one bit each.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Statuses([u64; 8]);

impl Statuses {
    const EMPTY: Statuses = Statuses([0; 8]);

    fn range(lo: u16, hi: u16) -> Statuses {
        let mut s = Statuses::EMPTY;
        s.add(lo, hi);
        s
    }

    /// Adds `lo..=hi` (both within 100..=599).
    fn add(&mut self, lo: u16, hi: u16) {
        for code in lo..=hi {
            let bit = usize::from(code - 100);
            self.0[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, code: u16) -> bool {
        let Some(bit) = code.checked_sub(100).map(usize::from) else {
            return false;
        };
        bit < 500 && self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

impl fmt::Debug for Statuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<u16> = (100..600).filter(|&c| self.contains(c)).collect();
        f.debug_tuple("Statuses").field(&codes).finish()
    }
}

/// `least_conn_persistent_check`'s parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckParams {
    pub kind: Kind,
    /// The path an http check asks for ("/" unless given).
    pub uri: Vec<u8>,
    /// The port checks go to; `None`: each server's own.
    pub port: Option<u16>,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u8,
    pub fall: u8,
    /// The statuses an http check passes on.
    pub statuses: Statuses,
    /// The header holding the capacity line (http).
    pub capacity: Vec<u8>,
    /// The header holding the backend's own count of connections (http).
    pub load: Option<Vec<u8>>,
}

impl Default for CheckParams {
    fn default() -> CheckParams {
        CheckParams {
            kind: Kind::Tcp,
            uri: b"/".to_vec(),
            port: None,
            interval_ms: 5_000,
            timeout_ms: 2_000,
            rise: 2,
            fall: 3,
            statuses: Statuses::range(200, 399),
            capacity: DEFAULT_CAPACITY_HEADER.to_vec(),
            load: None,
        }
    }
}

/// A parameter `CheckParams::parse` refuses, as `[emerg]` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    Unknown(String),
    Invalid(&'static str, String),
    Repeated(&'static str),
    /// An http parameter with an explicit `type=tcp`.
    NeedsHttp(&'static str),
    /// `timeout` longer than `interval` (the texts as given, or the
    /// defaults').
    TimeoutOverInterval {
        timeout: String,
        interval: String,
    },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Unknown(p) => write!(f, "has an invalid parameter \"{p}\""),
            ParamError::Invalid(name, v) => {
                write!(f, "has an invalid {name} \"{v}\" ({})", hint(name))
            }
            ParamError::Repeated(name) => write!(f, "has the parameter \"{name}\" twice"),
            ParamError::NeedsHttp(name) => {
                write!(f, "has the parameter \"{name}\", which needs type=http")
            }
            ParamError::TimeoutOverInterval { timeout, interval } => write!(
                f,
                "has an invalid timeout \"{timeout}\" (longer than the interval \"{interval}\": \
                 a check must end before the next one starts)"
            ),
        }
    }
}

fn hint(name: &str) -> &'static str {
    match name {
        "type" => "tcp or http",
        "uri" => "a path such as /health, starting with /, no spaces",
        "port" => "1 to 65535",
        "interval" => "a time such as 5s or 300ms, 100ms to 1h",
        "timeout" => "a time such as 2s or 500ms, more than 0",
        "rise" | "fall" => "a count of checks, 1 to 255",
        "status" => "codes and ranges such as 200,204,300-399, each 100 to 599",
        "load" => "a header name such as X-Connections, not the capacity header",
        _ => "a header name such as X-LCP-Capacity",
    }
}

const NAMES: [&str; 10] = [
    "type", "uri", "port", "interval", "timeout", "rise", "fall", "status", "capacity", "load",
];

/// Parameters that only an http check has.
const HTTP_ONLY: [usize; 4] = [1, 7, 8, 9];

impl CheckParams {
    /// `type=http uri=/health interval=300ms ...`, each optional, in any
    /// order. `ms`: nginx's time parser in milliseconds (`ngx_parse_time`
    /// with `is_sec` 0: "300ms", "5s", "1m").
    pub fn parse(
        args: &[&[u8]],
        ms: impl Fn(&[u8]) -> Option<u64>,
    ) -> Result<CheckParams, ParamError> {
        let mut p = CheckParams::default();
        let mut given: [Option<&[u8]>; 10] = [None; 10];
        for &arg in args {
            let text = || String::from_utf8_lossy(arg).into_owned();
            let (name, value) = match arg.iter().position(|&b| b == b'=') {
                Some(at) => (&arg[..at], &arg[at + 1..]),
                None => return Err(ParamError::Unknown(text())),
            };
            let Some(i) = NAMES.iter().position(|n| n.as_bytes() == name) else {
                return Err(ParamError::Unknown(text()));
            };
            if given[i].replace(value).is_some() {
                return Err(ParamError::Repeated(NAMES[i]));
            }
            p.set(i, value, &ms)?;
        }
        p.settle(&given)?;
        Ok(p)
    }

    /// Sets parameter `NAMES[i]` from its value.
    fn set(
        &mut self,
        i: usize,
        value: &[u8],
        ms: &impl Fn(&[u8]) -> Option<u64>,
    ) -> Result<(), ParamError> {
        let name = NAMES[i];
        let bad = || ParamError::Invalid(name, String::from_utf8_lossy(value).into_owned());
        match i {
            0 => {
                self.kind = match value {
                    b"tcp" => Kind::Tcp,
                    b"http" => Kind::Http,
                    _ => return Err(bad()),
                }
            }
            1 => self.uri = uri(value).ok_or_else(bad)?,
            2 => self.port = Some(number(value, 1, 65_535).ok_or_else(bad)? as u16),
            3 => self.interval_ms = time(value, ms, MIN_INTERVAL_MS).ok_or_else(bad)?,
            4 => self.timeout_ms = time(value, ms, 1).ok_or_else(bad)?,
            5 => self.rise = number(value, 1, 255).ok_or_else(bad)? as u8,
            6 => self.fall = number(value, 1, 255).ok_or_else(bad)? as u8,
            7 => self.statuses = statuses(value).ok_or_else(bad)?,
            8 => self.capacity = header_name(value).ok_or_else(bad)?,
            _ => self.load = Some(header_name(value).ok_or_else(bad)?),
        }
        Ok(())
    }

    /// What the parameters mean together: an http parameter makes the check
    /// http (an error with `type=tcp`); the timeout fits in the interval.
    fn settle(&mut self, given: &[Option<&[u8]>; 10]) -> Result<(), ParamError> {
        if let Some(&i) = HTTP_ONLY.iter().find(|&&i| given[i].is_some()) {
            if given[0] == Some(b"tcp") {
                return Err(ParamError::NeedsHttp(NAMES[i]));
            }
            self.kind = Kind::Http;
        }
        let load_is_capacity = self
            .load
            .as_ref()
            .is_some_and(|l| l.eq_ignore_ascii_case(&self.capacity));
        if load_is_capacity {
            let value = String::from_utf8_lossy(given[9].unwrap_or_default()).into_owned();
            return Err(ParamError::Invalid("load", value));
        }
        match given[4] {
            None => self.timeout_ms = self.timeout_ms.min(self.interval_ms),
            Some(timeout) if self.timeout_ms > self.interval_ms => {
                let interval = given[3].map_or_else(
                    || ms_text(self.interval_ms),
                    |i| String::from_utf8_lossy(i).into_owned(),
                );
                return Err(ParamError::TimeoutOverInterval {
                    timeout: String::from_utf8_lossy(timeout).into_owned(),
                    interval,
                });
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Whether an http answer with `status` passes.
    pub fn expects(&self, status: u16) -> bool {
        self.statuses.contains(status)
    }

    /// The http check's request to `host` (the server's address, or name).
    pub fn request(&self, host: &[u8]) -> Vec<u8> {
        let mut r = Vec::with_capacity(96 + self.uri.len() + host.len());
        r.extend_from_slice(b"GET ");
        r.extend_from_slice(&self.uri);
        r.extend_from_slice(b" HTTP/1.0\r\nHost: ");
        r.extend_from_slice(host);
        r.extend_from_slice(
            b"\r\nConnection: close\r\nUser-Agent: least_conn_persistent-check\r\n\r\n",
        );
        r
    }
}

/// A decimal number in `min..=max`, digits only.
fn number(text: &[u8], min: u32, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = text.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    (min..=max).contains(&n).then_some(n)
}

/// A time in milliseconds, `min..=MAX_INTERVAL_MS`.
fn time(text: &[u8], ms: &impl Fn(&[u8]) -> Option<u64>, min: u32) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    let v = u32::try_from(ms(text)?).ok()?;
    (min..=MAX_INTERVAL_MS).contains(&v).then_some(v)
}

/// A request path: starts with `/`, visible ASCII only (it goes into the
/// request line as it is: no space, no CR or LF).
fn uri(text: &[u8]) -> Option<Vec<u8>> {
    let ok = text.first() == Some(&b'/')
        && text.len() <= MAX_URI
        && text.iter().all(|&b| b.is_ascii_graphic());
    ok.then(|| text.to_vec())
}

/// An HTTP header name: RFC 9110's token characters.
fn header_name(text: &[u8]) -> Option<Vec<u8>> {
    let ok = !text.is_empty() && text.len() <= MAX_HEADER_NAME && text.iter().all(|&b| token(b));
    ok.then(|| text.to_vec())
}

pub fn token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `200,204,300-399`: codes and ranges, each 100..=599, a range low to high.
fn statuses(text: &[u8]) -> Option<Statuses> {
    let mut set = Statuses::EMPTY;
    for item in text.split(|&b| b == b',') {
        let (lo, hi) = match item.iter().position(|&b| b == b'-') {
            Some(at) => (&item[..at], &item[at + 1..]),
            None => (item, item),
        };
        let lo = number(lo, 100, 599)? as u16;
        let hi = number(hi, 100, 599)? as u16;
        if lo > hi {
            return None;
        }
        set.add(lo, hi);
    }
    Some(set)
}

/// Milliseconds as nginx writes a time: "5s", or "300ms".
fn ms_text(ms: u32) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times the way `ngx_parse_time(.., 0)` reads them, enough for the
    /// tests: "300ms", "5s", "2m", "1h", a bare number (seconds).
    fn ms(t: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(t).ok()?;
        let (n, unit) = if let Some(n) = s.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1000)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60_000)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3_600_000)
        } else {
            (s, 1000)
        };
        n.parse::<u64>().ok().map(|n| n * unit)
    }

    fn parse(args: &[&str]) -> Result<CheckParams, ParamError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        CheckParams::parse(&args, ms)
    }

    fn err(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_a_tcp_check_every_5s() {
        let p = parse(&[]).unwrap();
        assert_eq!(p, CheckParams::default());
        assert_eq!(p.kind, Kind::Tcp);
        assert_eq!(
            (p.interval_ms, p.timeout_ms, p.rise, p.fall),
            (5000, 2000, 2, 3)
        );
        assert_eq!(p.port, None);
        assert!(p.expects(200) && p.expects(399) && !p.expects(400) && !p.expects(199));
    }

    #[test]
    fn every_parameter_in_any_order() {
        let p = parse(&[
            "load=X-Conns",
            "fall=5",
            "type=http",
            "uri=/health?deep=1",
            "port=8443",
            "interval=300ms",
            "timeout=250ms",
            "rise=1",
            "status=200,204,300-302",
            "capacity=X-Cap",
        ])
        .unwrap();
        assert_eq!(p.kind, Kind::Http);
        assert_eq!(p.uri, b"/health?deep=1");
        assert_eq!(p.port, Some(8443));
        assert_eq!(
            (p.interval_ms, p.timeout_ms, p.rise, p.fall),
            (300, 250, 1, 5)
        );
        let codes: Vec<u16> = (100..600).filter(|&c| p.expects(c)).collect();
        assert_eq!(codes, [200, 204, 300, 301, 302]);
        assert_eq!(p.capacity, b"X-Cap");
        assert_eq!(p.load.as_deref(), Some(&b"X-Conns"[..]));
    }

    #[test]
    fn http_parameters_imply_http() {
        for arg in ["uri=/h", "status=200", "capacity=X-C", "load=X-L"] {
            assert_eq!(parse(&[arg]).unwrap().kind, Kind::Http, "{arg}");
            assert_eq!(
                err(&["type=tcp", arg]),
                format!(
                    "has the parameter \"{}\", which needs type=http",
                    arg.split('=').next().unwrap()
                )
            );
            // Wherever type=tcp stands.
            assert!(parse(&[arg, "type=tcp"]).is_err());
        }
        let p = parse(&["type=http"]).unwrap();
        assert_eq!(
            (p.uri.as_slice(), p.capacity.as_slice()),
            (&b"/"[..], DEFAULT_CAPACITY_HEADER)
        );
        assert_eq!(p.load, None);
    }

    #[test]
    fn the_default_timeout_fits_a_short_interval() {
        let p = parse(&["interval=300ms"]).unwrap();
        assert_eq!((p.interval_ms, p.timeout_ms), (300, 300));
        let p = parse(&["interval=1m"]).unwrap();
        assert_eq!((p.interval_ms, p.timeout_ms), (60_000, 2000));
        let p = parse(&["interval=1s", "timeout=1s"]).unwrap();
        assert_eq!((p.interval_ms, p.timeout_ms), (1000, 1000));
    }

    #[test]
    fn a_timeout_longer_than_the_interval_names_both() {
        assert_eq!(
            err(&["interval=1s", "timeout=1500ms"]),
            "has an invalid timeout \"1500ms\" (longer than the interval \"1s\": a check must \
             end before the next one starts)"
        );
        assert_eq!(
            err(&["timeout=10s"]),
            "has an invalid timeout \"10s\" (longer than the interval \"5s\": a check must end \
             before the next one starts)"
        );
        assert!(err(&["timeout=500ms", "interval=300ms"]).contains("\"300ms\""));
    }

    #[test]
    fn times_have_bounds() {
        let time = "(a time such as 5s or 300ms, 100ms to 1h)";
        assert_eq!(
            err(&["interval=99ms"]),
            format!("has an invalid interval \"99ms\" {time}")
        );
        assert_eq!(parse(&["interval=100ms"]).unwrap().interval_ms, 100);
        assert_eq!(parse(&["interval=1h"]).unwrap().interval_ms, 3_600_000);
        assert!(err(&["interval=2h"]).starts_with("has an invalid interval \"2h\""));
        assert!(err(&["interval="]).starts_with("has an invalid interval \"\""));
        assert!(err(&["interval=soon"]).starts_with("has an invalid interval \"soon\""));
        assert_eq!(
            err(&["timeout=0"]),
            "has an invalid timeout \"0\" (a time such as 2s or 500ms, more than 0)"
        );
        assert_eq!(parse(&["timeout=1ms"]).unwrap().timeout_ms, 1);
    }

    #[test]
    fn counts_and_ports_have_bounds() {
        for (arg, ok) in [
            ("rise=0", false),
            ("rise=1", true),
            ("rise=255", true),
            ("rise=256", false),
            ("fall=0", false),
            ("fall=255", true),
            ("fall=-1", false),
            ("fall=", false),
            ("port=0", false),
            ("port=1", true),
            ("port=65535", true),
            ("port=65536", false),
            ("port=80x", false),
        ] {
            assert_eq!(parse(&[arg]).is_ok(), ok, "{arg}");
        }
        assert_eq!(
            err(&["rise=0"]),
            "has an invalid rise \"0\" (a count of checks, 1 to 255)"
        );
        assert_eq!(err(&["port=0"]), "has an invalid port \"0\" (1 to 65535)");
    }

    #[test]
    fn statuses_are_codes_and_ranges() {
        let p = parse(&["status=204"]).unwrap();
        assert!(p.expects(204) && !p.expects(200));
        let p = parse(&["status=100-599"]).unwrap();
        assert!(p.expects(100) && p.expects(599) && !p.expects(600) && !p.expects(99));
        let p = parse(&["status=200,200-201,201"]).unwrap();
        assert!(p.expects(200) && p.expects(201) && !p.expects(202));
        let bad = "(codes and ranges such as 200,204,300-399, each 100 to 599)";
        for v in [
            "",
            "99",
            "600",
            "200,",
            ",200",
            "300-200",
            "200-",
            "2xx",
            "200-399-400",
            "200 204",
        ] {
            assert_eq!(
                err(&[&format!("status={v}")]),
                format!("has an invalid status \"{v}\" {bad}"),
                "{v}"
            );
        }
    }

    #[test]
    fn uris_and_header_names_are_checked() {
        for v in ["", "health", "/a b", "/a\r\nX: y", "/\t"] {
            assert!(
                err(&[&format!("uri={v}")]).starts_with("has an invalid uri"),
                "{v:?}"
            );
        }
        assert!(parse(&[&format!("uri=/{}", "a".repeat(1023))]).is_ok());
        assert!(parse(&[&format!("uri=/{}", "a".repeat(1024))]).is_err());
        assert_eq!(
            err(&["capacity=X Cap"]),
            "has an invalid capacity \"X Cap\" (a header name such as X-LCP-Capacity)"
        );
        assert!(err(&["capacity=X:Cap"]).starts_with("has an invalid capacity"));
        assert!(err(&["load="]).starts_with("has an invalid load \"\""));
        assert_eq!(
            err(&["load=x-lcp-capacity"]),
            "has an invalid load \"x-lcp-capacity\" (a header name such as X-Connections, not \
             the capacity header)"
        );
        assert!(parse(&["capacity=X-A", "load=X-LCP-Capacity"]).is_ok());
    }

    #[test]
    fn nginx_style_errors() {
        assert_eq!(err(&["on"]), "has an invalid parameter \"on\"");
        assert_eq!(err(&["speed=1"]), "has an invalid parameter \"speed=1\"");
        assert_eq!(
            err(&["type=udp"]),
            "has an invalid type \"udp\" (tcp or http)"
        );
        assert_eq!(
            err(&["rise=2", "rise=3"]),
            "has the parameter \"rise\" twice"
        );
        assert_eq!(
            err(&["type=http", "type=http"]),
            "has the parameter \"type\" twice"
        );
    }

    #[test]
    fn the_http_request() {
        let p = parse(&["uri=/health"]).unwrap();
        assert_eq!(
            p.request(b"10.0.0.1:8080"),
            b"GET /health HTTP/1.0\r\nHost: 10.0.0.1:8080\r\nConnection: close\r\n\
              User-Agent: least_conn_persistent-check\r\n\r\n"
        );
    }
}
