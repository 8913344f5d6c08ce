//! The server addresses a Lua balancer may declare: `host:port` or
//! `[IPv6]:port`, with a port in 1..65535.
//!
//! An address becomes the server part of its key (`conn_count:<id>:<addr>`)
//! and is what the Lua library splits into the host and port it connects
//! to, so anything else is refused rather than stored: a port 0 or above
//! 65535 cannot be connected to, a missing port leaves nothing to connect
//! to, and a `#` could collide with the key nginx upstreams give a server
//! listed twice (`<address>#2`). Leading zeros in the port are refused too:
//! `host:080` and `host:80` would count one server under two keys.
//! `lib/resty/least_conn_persistent.lua` checks the same rules, to say
//! which one failed.

use core::fmt;

/// A checked address, split.
#[derive(Debug, PartialEq, Eq)]
pub struct Address<'a> {
    /// The host as connected to: a name or IPv4 address, or an IPv6 address
    /// without its brackets.
    pub host: &'a [u8],
    pub port: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AddressError {
    /// No `:port` after the host.
    NoPort,
    /// A port that is not a number in 1..65535 (written without leading
    /// zeros).
    BadPort,
    /// An empty host, or one with `#`, `:` outside brackets, `[` or `]`
    /// out of place, spaces, control or non-ASCII bytes.
    BadHost,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::NoPort => "addr must be host:port or [IPv6]:port",
            AddressError::BadPort => "port must be a number in 1..65535",
            AddressError::BadHost => {
                "host must be a name or an IPv4 address, or an IPv6 address in brackets \
                 (no '#', spaces or control characters)"
            }
        })
    }
}

/// Checks `addr` and splits it into host and port.
pub fn parse(addr: &[u8]) -> Result<Address<'_>, AddressError> {
    let (host, port) = match addr.strip_prefix(b"[") {
        Some(rest) => split_bracketed(rest)?,
        None => split_plain(addr)?,
    };
    Ok(Address {
        host,
        port: parse_port(port)?,
    })
}

/// `v6]:port` (after the `[`): the IPv6 address and the port text.
fn split_bracketed(rest: &[u8]) -> Result<(&[u8], &[u8]), AddressError> {
    let close = rest
        .iter()
        .position(|&b| b == b']')
        .ok_or(AddressError::BadHost)?;
    let (host, after) = (&rest[..close], &rest[close + 1..]);
    let is_v6 = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
    if !host.contains(&b':') || !host.iter().all(is_v6) {
        return Err(AddressError::BadHost);
    }
    let port = after.strip_prefix(b":").ok_or(AddressError::NoPort)?;
    Ok((host, port))
}

/// `host:port`: the host (one `:` in all) and the port text.
fn split_plain(addr: &[u8]) -> Result<(&[u8], &[u8]), AddressError> {
    let colon = addr
        .iter()
        .rposition(|&b| b == b':')
        .ok_or(AddressError::NoPort)?;
    let (host, port) = (&addr[..colon], &addr[colon + 1..]);
    let allowed = |b: &u8| b.is_ascii_graphic() && !matches!(b, b'#' | b':' | b'[' | b']');
    if host.is_empty() || !host.iter().all(allowed) {
        return Err(AddressError::BadHost);
    }
    Ok((host, port))
}

fn parse_port(text: &[u8]) -> Result<u16, AddressError> {
    if text.is_empty() {
        return Err(AddressError::NoPort);
    }
    // At most five digits, the first not 0: then the value fits in u32.
    if text.len() > 5 || text[0] == b'0' || !text.iter().all(u8::is_ascii_digit) {
        return Err(AddressError::BadPort);
    }
    let value = text.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| AddressError::BadPort)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(addr: &str) -> (String, u16) {
        let a = parse(addr.as_bytes()).unwrap_or_else(|e| panic!("{addr}: {e}"));
        (String::from_utf8(a.host.to_vec()).unwrap(), a.port)
    }

    fn err(addr: &str) -> AddressError {
        parse(addr.as_bytes()).expect_err(addr)
    }

    #[test]
    fn accepts_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(ok("127.0.0.1:8080"), ("127.0.0.1".into(), 8080));
        assert_eq!(
            ok("backend-1.example.com:1"),
            ("backend-1.example.com".into(), 1)
        );
        assert_eq!(ok("[::1]:65535"), ("::1".into(), 65535));
        assert_eq!(ok("[::ffff:10.0.0.1]:443"), ("::ffff:10.0.0.1".into(), 443));
    }

    #[test]
    fn refuses_a_missing_port() {
        assert_eq!(err("nowhere"), AddressError::NoPort);
        assert_eq!(err("nowhere:"), AddressError::NoPort);
        assert_eq!(err("[::1]"), AddressError::NoPort);
        assert_eq!(err("[::1]:"), AddressError::NoPort);
        assert_eq!(err("[::1]80"), AddressError::NoPort);
    }

    #[test]
    fn refuses_ports_out_of_range_or_not_plain_numbers() {
        for a in [
            "h:0",
            "h:65536",
            "h:99999",
            "h:100000",
            "h:080",
            "h:00",
            "h:-1",
            "h:+80",
            "h:8 ",
            "h:8a",
            "[::1]:0",
            "[::1]:70000",
        ] {
            assert_eq!(err(a), AddressError::BadPort, "{a}");
        }
    }

    #[test]
    fn refuses_hosts_that_could_collide_or_are_not_hosts() {
        for a in [
            ":80",
            "a#2:80",
            "127.0.0.1#2:80",
            "::1:80",
            "a b:80",
            " a:80",
            "a\t:80",
            "a\n:80",
            "[]:80",
            "[::1:80",
            "[a#b::1]:80",
            "[1.2.3.4]:80",
            "a]:80",
            "a[b:80",
            "h\u{e9}:80",
            "h\0:80",
        ] {
            assert_eq!(err(a), AddressError::BadHost, "{a:?}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(AddressError::BadPort.to_string().contains("1..65535"));
        assert!(AddressError::NoPort.to_string().contains("host:port"));
        assert!(AddressError::BadHost.to_string().contains('#'));
    }
}
