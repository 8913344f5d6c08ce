//! The registry: the upstreams a configuration load declares, each with a
//! key and a handle per server, in the order of the front-end's peer lists.
//! Keys are built once at configuration time, so that a pick builds no
//! strings and searches nothing.
//!
//! The zone's init finds the table (`zone::DeclaredZone`); once the new
//! configuration can no longer fail to start, `Registry::commit` stamps its
//! keys into the table (a reload that fails leaves the zone as the running
//! configuration left it). Each worker then registers its record
//! (`workers.rs`) and counts through the handles, attributing every count
//! to itself. The front-ends (http, stream) fill the registry with
//! `Registry::add`; Lua's balancers declare their upstreams at run time
//! (`Registry::declare_lua`). All count with `PeerCounter::try_acquire` (or
//! `UpstreamCounters::acquire`) and `UpstreamCounters::release`.
//!
//! - `counter`: one server's counter and its phases;
//! - `upstream`: an upstream's counters, and what follows DNS;
//! - `lua`: Lua's declarations.

mod counter;
mod lua;
mod upstream;

use core::cell::Cell;

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN};

use crate::core::table::{Meta, RecordRef};
use crate::ngx::log::Log;

use super::zone::{DeclaredZone, ZoneLink};

pub use counter::{Held, NotTaken, PeerCounter};
pub use lua::DeclareError;
pub use upstream::{List, UpstreamCounters};

/// Every upstream one configuration load declares, and its zone.
#[derive(Debug, Default)]
pub struct Registry {
    /// `least_conn_persistent_zone`, and the zone's table once its init
    /// found or made it.
    zone: DeclaredZone,
    /// Set when the configuration is committed.
    link: Option<ZoneLink>,
    upstreams: Vec<UpstreamCounters>,
    /// This worker's record, once it has registered.
    record: Cell<Option<RecordRef>>,
}

impl Registry {
    /// Registers an upstream; the index names it from now on.
    pub fn add(&mut self, upstream: UpstreamCounters) -> usize {
        self.upstreams.push(upstream);
        self.upstreams.len() - 1
    }

    pub fn upstream(&self, index: usize) -> Option<&UpstreamCounters> {
        self.upstreams.get(index)
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &UpstreamCounters> {
        self.upstreams.iter()
    }

    pub fn has_zone(&self) -> bool {
        self.zone.is_declared()
    }

    /// The zone this load declares (`least_conn_persistent_zone`).
    pub fn declared_zone(&mut self) -> &mut DeclaredZone {
        &mut self.zone
    }

    /// The zone, once the configuration is committed.
    pub fn zone(&self) -> Option<&ZoneLink> {
        self.link.as_ref()
    }

    /// This worker's record, once registered.
    pub fn record(&self) -> Option<RecordRef> {
        self.record.get()
    }

    /// Stamps every key of this load into the zone, hands the handles to
    /// its upstreams, and removes or drains keys that are gone. Called once
    /// the configuration can no longer fail (`init_module`). Keys freed by
    /// the sweep are free for the keys this load adds.
    pub fn commit(&mut self, log: Log) {
        let Some((shm, table)) = self.zone.opened() else {
            return;
        };
        let started = std::time::Instant::now();
        let mut link = ZoneLink {
            shm,
            table,
            epoch: 0,
        };
        let locked = link.lock();
        link.epoch = table.begin_epoch(&locked);
        self.link = Some(link);
        let (mut servers, mut full) = (0u32, 0u32);
        // Per upstream, whether the zone had keys of it already: only then
        // do the keys this load adds ramp up (slow start).
        let mut had_keys = Vec::with_capacity(self.upstreams.len());
        for up in &mut self.upstreams {
            let (its_servers, found) = up.stamp_known(link, &locked);
            servers += its_servers;
            had_keys.push(found);
        }
        let sweep = table.sweep(&locked, link.epoch);
        for (up, &found) in self.upstreams.iter_mut().zip(&had_keys) {
            full += up.store_new(&locked, found);
        }
        table.begin_pick_indexes(&locked);
        let unindexed: usize = self
            .upstreams
            .iter()
            .map(|up| up.build_pick_indexes(&locked))
            .sum();
        table.finish_pick_indexes(&locked);
        drop(locked);
        log.zone(
            NGX_LOG_NOTICE,
            shm.name(),
            format_args!(
                ": {} servers, {} keys, {} removed, {} draining, in {:.3} ms",
                servers,
                table.keys(),
                sweep.removed,
                sweep.draining,
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
        if full > 0 {
            log.zone(
                NGX_LOG_ERR,
                shm.name(),
                format_args!(
                    " is full: {full} of {servers} servers fall back to per-worker counting"
                ),
            );
        }
        if unindexed > 0 {
            log.zone(
                NGX_LOG_WARN,
                shm.name(),
                format_args!(
                    " has no room for the pick index of {unindexed} server(s) (lists of index= \
                     servers or more): their picks scan every server; make the zone larger"
                ),
            );
        }
    }

    /// A Lua upstream, declared through the C ABI by this worker
    /// (`lua::declare`): its counters, or why not.
    pub fn declare_lua(
        &self,
        id: &[u8],
        servers: &[(&[u8], Meta)],
        previous: Option<&UpstreamCounters>,
        now: u32,
        slow_start: u32,
    ) -> Result<UpstreamCounters, DeclareError> {
        let link = self.link.ok_or(DeclareError::NoZone)?;
        let record = self.record.get();
        lua::declare(link, record, id, servers, previous, now, slow_start)
    }

    /// Hands this worker's record to every upstream (`None`: the zone had
    /// no room for it). The cells come later, as the worker first counts
    /// on each list (`UpstreamCounters::attach_cells`). Returns how many
    /// servers this worker counts without a record (they are not given back
    /// if it dies).
    pub fn attach_worker(&self, record: Option<RecordRef>) -> usize {
        self.record.set(record);
        let mut unattributed = 0;
        for up in &self.upstreams {
            up.set_record(record);
            if record.is_none() {
                up.for_each_peer(|pc| unattributed += usize::from(pc.slot().is_some()));
            }
        }
        unattributed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::key::Occurrence;
    use crate::core::table::tests::HeapArena;
    use crate::core::table::Table;

    fn upstream(name: &[u8], addresses: &[&'static str]) -> UpstreamCounters {
        let mut up = UpstreamCounters::new(name);
        up.set_list(
            List::Primary,
            addresses.iter().map(|a| {
                let (address, line) = (a.as_bytes(), a.as_bytes());
                (Occurrence { address, line }, Meta::default())
            }),
        );
        up
    }

    #[test]
    fn an_upstream_is_named_by_the_order_it_was_added_in() {
        let mut registry = Registry::default();
        assert_eq!(registry.add(upstream(b"one", &["a:80"])), 0);
        assert_eq!(registry.add(upstream(b"two", &["a:80"])), 1);
        assert_eq!(registry.upstream(1).map(|up| &*up.name), Some(&b"two"[..]));
        assert!(registry.upstream(2).is_none());
        assert_eq!(registry.upstreams().count(), 2);
        assert!(!registry.has_zone() && registry.zone().is_none());
    }

    #[test]
    fn a_worker_without_a_record_names_the_servers_it_counts_unrecorded() {
        let a = HeapArena::new(1 << 20);
        let table = Table::create(&a, 64).expect("room for a table");
        // SAFETY: just created in `a`, never freed.
        let table = unsafe { &*table.as_ptr() };
        let epoch = table.begin_epoch(&a);
        let mut registry = Registry::default();
        let stored = upstream(b"stored", &["a:80", "b:80"]);
        for pc in stored.list(List::Primary).iter() {
            let slot = table.upsert(&a, &pc.key, pc.upstream_len, pc.meta, epoch);
            pc.set_stored(slot.ok());
        }
        registry.add(stored);
        // Counted by this worker alone: no record needed.
        registry.add(upstream(b"local", &["c:80"]));
        assert_eq!(registry.attach_worker(None), 2);
        assert_eq!(registry.record(), None);
    }
}
