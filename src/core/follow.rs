//! Keys a worker stores at run time, outside a configuration load: the
//! addresses DNS gives a `resolve` server, and keys looked up again when a
//! handle went stale.
//!
//! Following DNS works in two steps so that round-robin's spin lock is never
//! held while the zone's mutex is waited for: `PeerListCopy` takes what it
//! needs of the peer list under round-robin's lock, and the zone is worked
//! on from the copy once that lock is released.

use core::ops::Range;

use super::key::Occurrence;
use super::table::{Meta, FLAG_DRAINING, FLAG_LUA};

/// A peer list as following needs it, owned: each peer's address and
/// `server` line, and its metadata, in list order, with the list's version.
#[derive(Debug, Default)]
pub struct PeerListCopy {
    pub version: usize,
    /// Every address and line, one after the other.
    bytes: Vec<u8>,
    peers: Vec<CopiedPeer>,
}

#[derive(Debug)]
struct CopiedPeer {
    address: Range<usize>,
    line: Range<usize>,
    meta: Meta,
}

impl PeerListCopy {
    /// Copies `peers` (walked twice: once to size the copy, so that it
    /// takes two allocations while the list's lock is held, then to fill it).
    pub fn new<'a>(
        version: usize,
        peers: impl Iterator<Item = (Occurrence<'a>, Meta)> + Clone,
    ) -> PeerListCopy {
        let (count, len) = peers.clone().fold((0, 0), |(n, len), (o, _)| {
            (n + 1, len + o.address.len() + o.line.len())
        });
        let mut copy = PeerListCopy {
            version,
            bytes: Vec::with_capacity(len),
            peers: Vec::with_capacity(count),
        };
        for (o, meta) in peers {
            let address = copy.push_bytes(o.address);
            let line = copy.push_bytes(o.line);
            copy.peers.push(CopiedPeer {
                address,
                line,
                meta,
            });
        }
        copy
    }

    fn push_bytes(&mut self, b: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        start..self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peers, as the list gave them.
    pub fn iter(&self) -> impl Iterator<Item = (Occurrence<'_>, Meta)> + '_ {
        self.peers.iter().map(|p| {
            let occurrence = Occurrence {
                address: &self.bytes[p.address.clone()],
                line: &self.bytes[p.line.clone()],
            };
            (occurrence, p.meta)
        })
    }
}

/// The metadata and the `epoch` field a key stored at run time gets, for a
/// server whose configured metadata is `meta`, declared by a configuration
/// stamped `declared_epoch` while the table is at `table_epoch`; `now` in
/// seconds.
///
/// A worker of an earlier configuration stores it draining: the running
/// configuration does not declare it, so it goes once that worker is done
/// with it. A Lua key's `epoch` field holds the second it was last declared
/// or picked (`Table::expire_lua`), so it gets `now`, not an epoch (which
/// would make it look unused for ages and expire at the next look).
pub fn runtime_stamp(meta: Meta, declared_epoch: u32, table_epoch: u32, now: u32) -> (Meta, u32) {
    let draining = if declared_epoch == table_epoch {
        0
    } else {
        FLAG_DRAINING
    };
    let stamp = if meta.flags & FLAG_LUA != 0 {
        now
    } else {
        declared_epoch
    };
    let meta = Meta {
        flags: meta.flags | draining,
        ..meta
    };
    (meta, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::tests::{HeapArena, M};
    use crate::core::table::Table;

    fn meta(weight: u32, flags: u32) -> Meta {
        Meta { weight, flags, ..M }
    }

    #[test]
    fn a_copy_owns_every_address_line_and_meta_in_order() {
        let source: Vec<(String, String, Meta)> = vec![
            ("10.0.0.1:80".into(), "b.test:80".into(), meta(1, 0)),
            ("10.0.0.2:80".into(), "b.test:80".into(), meta(3, 2)),
            ("10.0.0.1:80".into(), "c.test:80".into(), meta(2, 0)),
        ];
        let copy = {
            let peers = source.iter().map(|(a, l, m)| {
                let o = Occurrence {
                    address: a.as_bytes(),
                    line: l.as_bytes(),
                };
                (o, *m)
            });
            PeerListCopy::new(7, peers)
        };
        // The copy outlives the list it was taken from (round-robin's,
        // whose lock is released before the copy is used).
        let expected: Vec<_> = source
            .iter()
            .map(|(a, l, m)| (a.clone().into_bytes(), l.clone().into_bytes(), *m))
            .collect();
        drop(source);
        assert_eq!(copy.version, 7);
        assert_eq!(copy.len(), 3);
        let got: Vec<_> = copy
            .iter()
            .map(|(o, m)| (o.address.to_vec(), o.line.to_vec(), m))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_copy_of_an_empty_list_is_empty() {
        let copy = PeerListCopy::new(1, core::iter::empty());
        assert!(copy.is_empty());
        assert_eq!(copy.iter().count(), 0);
    }

    #[test]
    fn a_copy_names_keys_as_the_list_would() {
        let lines = [("10.0.0.1:80", "a:80"), ("10.0.0.1:80", "b:80")];
        let direct: Vec<Occurrence> = lines
            .iter()
            .map(|(a, l)| Occurrence {
                address: a.as_bytes(),
                line: l.as_bytes(),
            })
            .collect();
        let copy = PeerListCopy::new(1, direct.iter().map(|&o| (o, M)));
        let copied: Vec<Occurrence> = copy.iter().map(|(o, _)| o).collect();
        let names = |peers: &[Occurrence]| -> Vec<Vec<u8>> {
            crate::core::key::server_names(peers, |_| false)
                .into_iter()
                .map(|n| n.into_owned())
                .collect()
        };
        assert_eq!(names(&copied), names(&direct));
    }

    #[test]
    fn a_worker_of_the_running_configuration_stores_keys_as_declared() {
        assert_eq!(runtime_stamp(meta(2, 0), 5, 5, 1000), (meta(2, 0), 5));
    }

    #[test]
    fn a_worker_of_an_earlier_configuration_stores_keys_draining() {
        let (m, epoch) = runtime_stamp(meta(2, 0), 4, 5, 1000);
        assert_eq!(m, meta(2, FLAG_DRAINING));
        assert_eq!(epoch, 4);
    }

    #[test]
    fn a_lua_key_is_stamped_with_the_current_second() {
        let (m, stamp) = runtime_stamp(meta(1, FLAG_LUA), 3, 3, 50_000);
        assert_eq!(m, meta(1, FLAG_LUA));
        assert_eq!(stamp, 50_000);
    }

    /// A Lua key removed while a worker still used it (expired, or drained
    /// by a redeclaration) and re-added by that worker must live its full
    /// time-to-live again, as a fresh declaration does.
    #[test]
    fn a_lua_key_re_added_at_run_time_does_not_expire_early() {
        const TTL: u32 = 600;
        let a = HeapArena::new(1 << 20);
        // SAFETY (test): a table in heap memory that outlives the test.
        let t = unsafe { &*Table::create(&a, 64).unwrap().as_ptr() };
        let epoch = t.begin_epoch(&a);
        let key = b"conn_count:lua:10.0.0.1:80";
        let lua = meta(1, FLAG_LUA);
        let declared_at = 100_000;
        let slot = t.upsert(&a, key, 14, lua, declared_at).unwrap();
        assert!(t.remove_idle(&a, slot), "removed while a worker holds it");
        let readded_at = declared_at + 2 * TTL;
        let (m, stamp) = runtime_stamp(lua, epoch, t.epoch(), readded_at);
        t.upsert(&a, key, 14, m, stamp).unwrap();
        assert_eq!(t.expire_lua(&a, readded_at + 1, TTL), 0);
        assert!(t.find(&a, key).is_some(), "kept within its TTL");
        assert_eq!(t.expire_lua(&a, readded_at + TTL + 1, TTL), 1);
        // A stamp of the epoch instead of the second is taken for a second
        // long ago: the key would go at the very next look.
        t.upsert(&a, key, 14, lua, epoch).unwrap();
        assert_eq!(t.expire_lua(&a, readded_at + 1, TTL), 1);
    }
}
