//! The text of a counter's key: `conn_count:<upstream>:<server>`.
//!
//! The format is the one Apache APISIX settled on for the same problem, so
//! operators who know one know the other. `<server>` is the peer address as
//! nginx prints it (`127.0.0.1:8081`, `[::1]:8081`), one key per address.

pub const KEY_PREFIX: &[u8] = b"conn_count:";

/// Bytes needed for the key of `server` in `upstream`.
pub fn key_len(upstream: &[u8], server: &[u8]) -> usize {
    KEY_PREFIX.len() + upstream.len() + 1 + server.len()
}

/// Writes the key into `dst`, which must hold exactly `key_len` bytes.
pub fn write_key(dst: &mut [u8], upstream: &[u8], server: &[u8]) {
    assert_eq!(dst.len(), key_len(upstream, server));
    let (prefix, rest) = dst.split_at_mut(KEY_PREFIX.len());
    prefix.copy_from_slice(KEY_PREFIX);
    let (up, rest) = rest.split_at_mut(upstream.len());
    up.copy_from_slice(upstream);
    rest[0] = b':';
    rest[1..].copy_from_slice(server);
}

/// Splits a key back into upstream and server. Upstream names may not contain
/// ':' in nginx, but IPv6 servers do, so the first ':' after the prefix is the
/// separator.
pub fn split_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let colon = rest.iter().position(|&b| b == b':')?;
    Some((&rest[..colon], &rest[colon + 1..]))
}

/// FNV-1a: cheap, stable across processes (a randomly seeded hasher would
/// give each worker a different bucket for the same key).
pub fn hash(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(up: &str, server: &str) -> String {
        let mut buf = vec![0; key_len(up.as_bytes(), server.as_bytes())];
        write_key(&mut buf, up.as_bytes(), server.as_bytes());
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn key_text_matches_apisix_format() {
        assert_eq!(
            key("backend", "127.0.0.1:8081"),
            "conn_count:backend:127.0.0.1:8081"
        );
        assert_eq!(key("ws", "[::1]:8081"), "conn_count:ws:[::1]:8081");
    }

    #[test]
    fn same_address_in_two_upstreams_gives_two_keys() {
        assert_ne!(key("a", "127.0.0.1:1"), key("b", "127.0.0.1:1"));
    }

    #[test]
    fn split_handles_ipv6_servers() {
        let k = key("ws", "[::1]:8081");
        assert_eq!(
            split_key(k.as_bytes()),
            Some((&b"ws"[..], &b"[::1]:8081"[..]))
        );
        assert_eq!(split_key(b"other:ws:1"), None);
        assert_eq!(split_key(b"conn_count:nocolon"), None);
    }

    #[test]
    fn hash_is_fnv1a() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(hash(b""), 0x811c_9dc5);
        assert_eq!(hash(b"a"), 0xe40c_292c);
        assert_eq!(hash(b"foobar"), 0xbf9c_f968);
    }
}
