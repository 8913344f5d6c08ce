//! The text of a counter's key: `conn_count:<upstream>:<server>`.
//!
//! The format is the one Apache APISIX settled on for the same problem, so
//! operators who know one know the other. `<server>` is the peer address as
//! nginx prints it (`127.0.0.1:8081`, `[::1]:8081`). Each peer has its own
//! key, as stock `least_conn` counts each peer on its own: an address an
//! upstream lists again (a second `server` line, the same address as primary
//! and as `backup`, a name resolving to an address another line gives) is
//! `<address>#2` the second time, `#3` the third (see `server_names`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

pub const KEY_PREFIX: &[u8] = b"conn_count:";

/// What follows an address listed again, before its occurrence number.
pub const OCCURRENCE_MARK: u8 = b'#';

/// One peer as naming sees it: its address, and the `server` line (as
/// written) that gave it.
#[derive(Clone, Copy, Debug)]
pub struct Occurrence<'a> {
    pub address: &'a [u8],
    pub line: &'a [u8],
}

/// The `<server>` part of each key of one peer list, in the list's order.
///
/// An address's first occurrence is the address itself, later ones
/// `<address>#<n>` (n = 2, 3, ...). Occurrences of one address are ranked by
/// the `server` line that gave them, then by position: two names resolving
/// to one address are told apart by name, whatever order DNS added them in,
/// and identical lines by their order. A name that is some peer's own
/// address (a unix socket path may hold '#'), or that `taken` holds (the
/// names of the upstream's primary list, when naming its backup list), is
/// skipped, so no two peers of an upstream share a key and an address always
/// keeps its own name when it is listed once.
pub fn server_names<'a>(
    peers: &[Occurrence<'a>],
    taken: impl Fn(&[u8]) -> bool,
) -> Vec<Cow<'a, [u8]>> {
    let mut ranked: Vec<usize> = (0..peers.len()).collect();
    ranked.sort_by_key(|&i| (peers[i].address, peers[i].line));
    let addresses: HashSet<&[u8]> = peers.iter().map(|p| p.address).collect();
    let mut next: HashMap<&[u8], usize> = HashMap::new();
    let mut given: HashSet<Cow<'a, [u8]>> = HashSet::new();
    let mut names = vec![Cow::Borrowed(&b""[..]); peers.len()];
    for i in ranked {
        let address = peers[i].address;
        let n = next.entry(address).or_insert(1);
        let name = loop {
            let name = occurrence(address, *n);
            *n += 1;
            let own = *n == 2;
            let free = !taken(&name) && !given.contains(&name);
            if free && (own || !addresses.contains(&name[..])) {
                break name;
            }
        };
        given.insert(name.clone());
        names[i] = name;
    }
    names
}

/// The name of an address' `n`th occurrence (1-based).
fn occurrence(address: &[u8], n: usize) -> Cow<'_, [u8]> {
    if n == 1 {
        return Cow::Borrowed(address);
    }
    let mut name = address.to_vec();
    name.push(OCCURRENCE_MARK);
    name.extend_from_slice(n.to_string().as_bytes());
    Cow::Owned(name)
}

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

/// The values of `previous` (key, value) whose key `declared` does not
/// hold, in `previous`' order: what declaring an upstream again leaves out.
/// Linear: one set of the declared keys, one pass over the previous ones.
pub fn undeclared<'k, T>(
    declared: impl Iterator<Item = &'k [u8]>,
    previous: impl Iterator<Item = (&'k [u8], T)>,
) -> Vec<T> {
    let declared: HashSet<&[u8]> = declared.collect();
    previous
        .filter(|(key, _)| !declared.contains(key))
        .map(|(_, value)| value)
        .collect()
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

    fn named(peers: &[(&str, &str)], taken: &[&str]) -> Vec<String> {
        let peers: Vec<Occurrence> = peers
            .iter()
            .map(|(a, l)| Occurrence {
                address: a.as_bytes(),
                line: l.as_bytes(),
            })
            .collect();
        server_names(&peers, |n| taken.iter().any(|t| t.as_bytes() == n))
            .into_iter()
            .map(|n| String::from_utf8(n.into_owned()).unwrap())
            .collect()
    }

    /// Peers each from a line that is its own address.
    fn names(addresses: &[&str], taken: &[&str]) -> Vec<String> {
        let peers: Vec<(&str, &str)> = addresses.iter().map(|a| (*a, *a)).collect();
        named(&peers, taken)
    }

    #[test]
    fn distinct_addresses_are_their_own_names() {
        assert_eq!(names(&["a:1", "b:1"], &[]), ["a:1", "b:1"]);
    }

    #[test]
    fn an_address_listed_again_is_numbered() {
        assert_eq!(
            names(&["a:1", "b:1", "a:1", "a:1", "b:1"], &[]),
            ["a:1", "b:1", "a:1#2", "a:1#3", "b:1#2"]
        );
    }

    #[test]
    fn names_the_other_list_holds_are_skipped() {
        // The backup list of `server a:1; server a:1 backup; server a:1 backup;`.
        assert_eq!(names(&["a:1", "a:1"], &["a:1"]), ["a:1#2", "a:1#3"]);
        assert_eq!(names(&["a:1", "a:1"], &["a:1#2"]), ["a:1", "a:1#3"]);
    }

    #[test]
    fn an_address_that_looks_numbered_keeps_its_own_name() {
        // A unix socket may have '#' in its path: wherever a second
        // `unix:/s` is listed, the socket `unix:/s#2` keeps its name.
        let n = names(&["unix:/s", "unix:/s#2", "unix:/s"], &[]);
        assert_eq!(n, ["unix:/s", "unix:/s#2", "unix:/s#3"]);
        let n = names(&["unix:/s", "unix:/s", "unix:/s#2"], &[]);
        assert_eq!(n, ["unix:/s", "unix:/s#3", "unix:/s#2"]);
    }

    #[test]
    fn names_resolving_to_one_address_are_told_apart_by_line() {
        let one = named(&[("a:1", "b.test"), ("a:1", "a.test")], &[]);
        let other = named(&[("a:1", "a.test"), ("a:1", "b.test")], &[]);
        assert_eq!(one, ["a:1#2", "a:1"]);
        assert_eq!(other, ["a:1", "a:1#2"]);
    }

    #[test]
    fn other_addresses_do_not_move_a_name() {
        let a = names(&["a:1", "a:1", "c:1"], &[]);
        let b = names(&["c:1", "x:1", "a:1", "a:1"], &[]);
        assert_eq!((&a[0], &a[1]), (&b[2], &b[3]));
    }

    #[test]
    fn hash_is_fnv1a() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(hash(b""), 0x811c_9dc5);
        assert_eq!(hash(b"a"), 0xe40c_292c);
        assert_eq!(hash(b"foobar"), 0xbf9c_f968);
    }

    fn byte_keys(names: &[&'static str]) -> Vec<&'static [u8]> {
        names.iter().map(|n| n.as_bytes()).collect()
    }

    #[test]
    fn undeclared_keys_are_exactly_the_previous_ones_not_listed() {
        let declared = byte_keys(&["b", "c", "d"]);
        let previous = byte_keys(&["a", "b", "c", "e"]);
        let gone = undeclared(declared.iter().copied(), previous.iter().copied().zip(0..));
        assert_eq!(gone, vec![0, 3], "a and e, in their order");
        let kept = undeclared(previous.iter().copied(), previous.iter().copied().zip(0..));
        assert!(kept.is_empty(), "the same list: nothing left out");
        let all = undeclared(std::iter::empty(), previous.iter().copied().zip(0..));
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn undeclared_among_a_thousand_servers_replaced_by_others() {
        let addr = |i: u32| format!("conn_count:lua:10.0.{}.{}:80", i / 256, i % 256).into_bytes();
        let old: Vec<Vec<u8>> = (0..1024).map(addr).collect();
        let new: Vec<Vec<u8>> = (512..1536).map(addr).collect();
        let gone = undeclared(
            new.iter().map(Vec::as_slice),
            old.iter().map(Vec::as_slice).zip(0..),
        );
        assert_eq!(gone, (0..512).collect::<Vec<_>>());
    }
}
