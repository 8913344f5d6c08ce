//! One upstream's counters, a list of them per peer list (primary, backup)
//! in the front-end's peer order, and what follows DNS: when `resolve`
//! changes a peer list at run time, `follow` rebuilds the counters for it,
//! keeping the counter of each key kept.

use core::cell::{Cell, Ref, RefCell};
use std::collections::{HashMap, HashSet};

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_INFO};

use crate::core::check_conf::CheckParams;
use crate::core::follow::PeerListCopy;
use crate::core::key::{self, Occurrence};
use crate::core::ramp;
use crate::core::rebalance::Params;
use crate::core::table::{self, CellRef, Counted, IndexedList, PickIndexRef, RecordRef};
use crate::core::table::{
    Meta, RampStart, Release, SlotRef, Table, FLAG_BACKUP, FLAG_CHECKED, FLAG_REBALANCE,
};
use crate::ngx::live::LiveList;
use crate::ngx::log::Log;
use crate::ngx::peers::{self, Failures, PeerCursor};
use crate::ngx::subsystem::RrPeers;
use crate::shared::zone::{Locked, ZoneLink};

use super::counter::{counted_by, Held, PeerCounter};

/// Which of an upstream's lists a server is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Primary,
    Backup,
}

impl List {
    fn other(self) -> List {
        match self {
            List::Primary => List::Backup,
            List::Backup => List::Primary,
        }
    }
}

/// One list of an upstream's counters, in the front-end's peer order.
#[derive(Debug, Default)]
struct CounterList {
    /// Rebuilt (by `UpstreamCounters::follow`) when DNS changes the peers.
    counters: RefCell<Vec<PeerCounter>>,
    /// The version of the front-end's peer list the counters match; `None`
    /// for a list that never changes at run time.
    version: Cell<Option<usize>>,
    /// Set once this worker has its cells for the list's keys
    /// (`UpstreamCounters::attach_cells`); cleared when the list is rebuilt.
    cells: Cell<bool>,
    /// Set with `cells` when no pick index, health check or slow start
    /// bears on the list's picks (`UpstreamCounters::plain`).
    plain: Cell<bool>,
    /// The `server` lines (names) that have had addresses in the list:
    /// slow start ramps an address DNS adds to a name resolved before, not
    /// the first resolution.
    lines: RefCell<HashSet<Box<[u8]>>>,
    /// The list's pick index, once the commit built it.
    pick_index: Cell<Option<PickIndexRef>>,
    /// This worker's cursors on the list's peers, by position, for picks
    /// through the index (made at its first such pick), and the version of
    /// the list they were made at.
    cursors: RefCell<Vec<PeerCursor>>,
    /// `Some(version)` once made (`peers::version`: `None` for a list
    /// that never changes).
    cursors_version: Cell<Option<Option<usize>>>,
}

/// How a peer list changed, as `UpstreamCounters::follow` found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Followed {
    pub kept: usize,
    pub added: usize,
    /// Keys of addresses gone: removed if idle, else draining.
    pub gone: usize,
    /// New addresses the zone had no room for: counted per worker.
    pub full: usize,
}

/// One upstream's counters in this worker, and the settings the zone
/// records for its servers (slow start, rebalancing, checks).
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    pub name: Box<[u8]>,
    primary: CounterList,
    backup: CounterList,
    /// Set when the configuration is committed.
    link: Option<ZoneLink>,
    /// This worker's record, once it has registered.
    record: Cell<Option<RecordRef>>,
    /// How many times the primary list was named, and the count the backup
    /// list's names were made against (see `note_named`).
    primary_names: Cell<u64>,
    backup_named_against: Cell<u64>,
    /// Slow start: the window its servers ramp up over when they join or
    /// come back, in deciseconds (`core::ramp`); 0: none.
    pub slow_start: u32,
    /// `least_conn_persistent_rebalance`, when given (`shared::rebalance`).
    pub rebalance: Option<Params>,
    /// `least_conn_persistent_check`, when given.
    pub check: Option<CheckParams>,
    /// `index=`: lists of at least this many servers (at a load, or as DNS
    /// changes them) get a pick index; `usize::MAX`: none (the default, for
    /// upstreams that are not nginx's: Lua's).
    pub index_from: usize,
    /// Set once this worker has warned that the upstream's TCP checks
    /// probe servers it proxies UDP to (stream `listen ... udp`).
    #[cfg(feature = "stream")]
    pub udp_warned: Cell<bool>,
    /// Rebalancing (`shared::rebalance`): this worker's connections of the
    /// upstream (each with what its request holds), and its primary peers'
    /// failures.
    pub live: LiveList<Held>,
    pub failures: Option<Failures>,
}

impl UpstreamCounters {
    pub fn new(name: &[u8]) -> UpstreamCounters {
        UpstreamCounters {
            name: name.into(),
            index_from: usize::MAX,
            ..Default::default()
        }
    }

    fn counter_list(&self, list: List) -> &CounterList {
        match list {
            List::Primary => &self.primary,
            List::Backup => &self.backup,
        }
    }

    /// The server's metadata as the zone records it: backups flagged, the
    /// upstream's slow start, and whether it rebalances and is checked.
    fn meta_for(&self, list: List, mut meta: Meta) -> Meta {
        if list == List::Backup {
            meta.flags |= FLAG_BACKUP;
        }
        meta.slow_start = self.slow_start;
        if self.rebalance.is_some() {
            meta.flags |= FLAG_REBALANCE;
        }
        if self.check.is_some() {
            meta.flags |= FLAG_CHECKED;
        }
        meta
    }

    /// Health checks: whether some key of the zone is out or tuned (the
    /// pick then reads each key's bits).
    #[inline]
    pub fn checks_flagged(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.table.checks_flagged())
    }

    /// Slow start: the time (deciseconds) when some key of the zone may be
    /// ramping up, for a pick that then compares ramps (`core::ramp`).
    #[inline]
    pub fn ramping_now(&self) -> Option<u32> {
        let link = self.link.as_ref()?;
        let now = ramp::now_ds(peers::now_ms());
        link.table.ramping(now).then_some(now)
    }

    /// Slow start for a server this worker saw come back from `max_fails`
    /// (a connection to it worked, and round-robin cleared its failures):
    /// unless it ramps already. `slot` is held by the caller. Logs at
    /// `info` when this call started the ramp.
    pub fn ramp_after_failures(&self, slot: SlotRef, log: Log) {
        // Once this worker gave back what it holds (exiting), its handles
        // hold nothing: the key may have gone.
        let Some(link) = self.link.as_ref().filter(|_| !table::stopped()) else {
            return;
        };
        if link.table.start_ramp(slot, ramp::now_ds(peers::now_ms())) {
            let server = self.for_slot(slot).map_or_else(String::new, |pc| {
                String::from_utf8_lossy(pc.server()).into_owned()
            });
            log.module(
                NGX_LOG_INFO,
                format_args!(
                    "upstream \"{}\": server {} is back after max_fails: slow start over {} s",
                    String::from_utf8_lossy(&self.name),
                    server,
                    self.slow_start / 10
                ),
            );
        }
    }

    /// The counter of this worker that counts on `slot`.
    fn for_slot(&self, slot: SlotRef) -> Option<Ref<'_, PeerCounter>> {
        [List::Primary, List::Backup].into_iter().find_map(|list| {
            Ref::filter_map(self.list(list), |l| {
                l.iter().find(|pc| pc.slot() == Some(slot))
            })
            .ok()
        })
    }

    /// When a key this upstream stores at run time starts a ramp: now, for
    /// a key it adds only if the upstream has others (a first load ramps
    /// nothing: every server is new).
    pub(super) fn ramp_start(&self, has_others: bool) -> RampStart {
        RampStart {
            now: ramp::now_ds(peers::now_ms()),
            new_keys: has_others && self.slow_start != 0,
        }
    }

    /// Sets `list`'s servers (each peer's address and `server` line, and
    /// its metadata, in the front-end's peer order), each with its own key.
    pub fn set_list<'a>(
        &mut self,
        list: List,
        servers: impl IntoIterator<Item = (Occurrence<'a>, Meta)>,
    ) {
        let servers: Vec<_> = servers.into_iter().collect();
        let cl = self.counter_list(list);
        cl.lines
            .borrow_mut()
            .extend(servers.iter().map(|(o, _)| Box::from(o.line)));
        let counters = self.counters_for(list, servers);
        *self.counter_list(list).counters.borrow_mut() = counters;
        self.note_named(list);
    }

    /// A counter per server of `list`, keyed apart from each other and, for
    /// the backup list, from the primary list (`key::server_names`): the
    /// primary list's keys depend on it alone, the backup list's on both.
    fn counters_for<'a>(
        &self,
        list: List,
        servers: impl IntoIterator<Item = (Occurrence<'a>, Meta)>,
    ) -> Vec<PeerCounter> {
        let (peers, metas): (Vec<Occurrence>, Vec<Meta>) = servers.into_iter().unzip();
        let names = match list {
            List::Primary => key::server_names(&peers, |_| false),
            List::Backup => {
                let primary = self.list(List::Primary);
                key::server_names(&peers, |name| primary.iter().any(|pc| pc.server() == name))
            }
        };
        names
            .iter()
            .zip(metas)
            .map(|(name, meta)| PeerCounter::new(&self.name, name, self.meta_for(list, meta)))
            .collect()
    }

    /// Records that `list` was (re)named: the backup list's names depend on
    /// the primary list's, so a new primary list calls for naming the
    /// backup list again (`needs_follow`).
    fn note_named(&self, list: List) {
        match list {
            List::Primary => self.primary_names.set(self.primary_names.get() + 1),
            List::Backup => self.backup_named_against.set(self.primary_names.get()),
        }
    }

    /// Whether `list`, now at `version` in the front-end, must be followed:
    /// DNS changed it, or (the backup list) the primary list it was named
    /// against changed.
    #[inline]
    pub fn needs_follow(&self, list: List, version: usize) -> bool {
        self.version(list) != Some(version)
            || (list == List::Backup && self.backup_named_against.get() != self.primary_names.get())
    }

    /// The counters of `list`, one per peer, in the peer list's order.
    #[inline]
    pub fn list(&self, list: List) -> Ref<'_, [PeerCounter]> {
        Ref::map(self.counter_list(list).counters.borrow(), Vec::as_slice)
    }

    /// Calls `f` for every server, primary then backup.
    pub fn for_each_peer(&self, mut f: impl FnMut(&PeerCounter)) {
        for list in [List::Primary, List::Backup] {
            self.list(list).iter().for_each(&mut f);
        }
    }

    fn peers_mut(&mut self) -> impl Iterator<Item = &mut PeerCounter> {
        let (primary, backup) = (
            self.primary.counters.get_mut(),
            self.backup.counters.get_mut(),
        );
        primary.iter_mut().chain(backup.iter_mut())
    }

    /// The zone the upstream counts in, once committed.
    pub fn link(&self) -> Option<&ZoneLink> {
        self.link.as_ref()
    }

    /// The counter of this worker that counts on `slot`: its server's name.
    pub fn server_of(&self, slot: SlotRef) -> Option<String> {
        self.for_slot(slot)
            .map(|pc| String::from_utf8_lossy(pc.server()).into_owned())
    }

    /// The name of the zone the upstream counts in, once committed.
    pub fn zone_name(&self) -> Option<&[u8]> {
        self.link.as_ref().map(|l| l.shm.name())
    }

    /// The version of the peer list `list` matches (see `follow`).
    #[inline]
    pub fn version(&self, list: List) -> Option<usize> {
        self.counter_list(list).version.get()
    }

    /// Rebuilds `list` for the front-end's peers as they are now (`copy`,
    /// taken from the list with round-robin's lock held, which the caller
    /// has released since: this locks the zone): a key kept keeps its
    /// counter; a new one is added, at 0 if new to the zone; a gone one
    /// drains (removed now if idle). Before the configuration is committed
    /// only the list changes: `commit` stores the keys. Everything is
    /// allocated before the zone is locked and freed after; nothing is
    /// logged (the caller logs what `Followed` says).
    pub fn follow(&self, list: List, copy: &PeerListCopy) -> Followed {
        let fresh = self.counters_for(list, copy.iter());
        let cl = self.counter_list(list);
        cl.version.set(Some(copy.version));
        cl.cells.set(false);
        cl.plain.set(false);
        self.note_named(list);
        let held_by_other: Vec<Box<[u8]>> = self
            .list(list.other())
            .iter()
            .map(|pc| pc.key.clone())
            .collect();
        // Match first, with no lock.
        let Matched {
            new,
            added,
            restamped,
            drained,
            mut done,
            leftover,
        } = match_kept(cl.counters.take(), fresh, &held_by_other);
        // Whether each new peer's name had addresses before (allocated
        // before locking); then the names this list has seen grow.
        let resolved_before: Vec<bool> = {
            let mut lines = cl.lines.borrow_mut();
            let before: Vec<bool> = copy.iter().map(|(o, _)| lines.contains(o.line)).collect();
            lines.extend(copy.iter().map(|(o, _)| Box::from(o.line)));
            before
        };
        if let Some(link) = self.link.as_ref() {
            let now = peers::now() as u32;
            let locked = link.lock();
            // Gone keys drain first, then new ones are stored: a worker
            // that dies in between leaves no key that only it knew of.
            for &slot in &drained {
                link.table.drain(&locked, slot, link.epoch);
            }
            crate::core::crash::point("follow.locked");
            let ramp = self.ramp_start(true);
            for &i in &restamped {
                self.restamp(&new[i], Some(&locked), ramp);
            }
            for &i in &added {
                let pc = &new[i];
                let ramp = RampStart {
                    new_keys: ramp.new_keys && resolved_before[i],
                    ..ramp
                };
                let stored = pc.store(link, &locked, now, ramp);
                done.full += usize::from(stored.is_none());
                pc.set_counting(stored.map(|(slot, _)| self.counted(link, &locked, slot)));
            }
            // The list's index in its new order, for the workers that
            // follow to this version (the others scan until they do).
            cl.pick_index
                .set(self.build_pick_index(link, &locked, list, &new));
        }
        *cl.counters.borrow_mut() = new;
        drop((leftover, held_by_other));
        done
    }

    /// Records a kept server's new metadata (weight, max_conns, down): one
    /// back from `down` ramps up (`ramp`).
    fn restamp(&self, pc: &PeerCounter, locked: Option<&Locked>, ramp: RampStart) {
        if let (Some(link), Some(locked)) = (self.link.as_ref(), locked) {
            link.table
                .stamp_at(locked, &pc.key, pc.meta, link.epoch, ramp);
        }
    }

    /// Whether this worker's first pick of `list` must first get its cells
    /// (`attach_cells`, with no peer lock held).
    #[inline]
    pub fn needs_cells(&self, list: List) -> bool {
        !self.counter_list(list).cells.get()
    }

    /// Whether this worker has its cells for `list`, and no pick index or
    /// slow start bears on its picks (health checks may, while they flag
    /// nothing: the caller asks): one test for what a request's first pick
    /// of the list may skip.
    #[inline]
    pub fn plain(&self, list: List) -> bool {
        self.counter_list(list).plain.get()
    }

    /// Gives this worker a cell for every key of `list` it has none for
    /// (`Phase::Stored`), in one hold of the zone lock: the first pick of
    /// the list in this worker. The caller holds no peer lock. Logs once
    /// unlocked if the zone had no room for some.
    #[cold]
    #[inline(never)]
    pub fn attach_cells(&self, list: List) {
        let cl = self.counter_list(list);
        cl.cells.set(true);
        let plain = cl.pick_index.get().is_none() && self.slow_start == 0;
        cl.plain.set(plain);
        let Some(link) = self.link.as_ref() else {
            return;
        };
        let counters = self.list(list);
        let record = self.record.get();
        // After this worker gave back what it holds (`workers::finish`), its
        // record is gone: counts it takes then are not recorded.
        let record = record.filter(|_| !table::stopped());
        if let Some(record) = record {
            // The blocks are read before locking: a worker's first read of
            // a zone page faults it in (a fork does not copy the page
            // tables of shared memory), and that kernel time is better
            // spent with the mutex free. Under the lock: a chunk per block
            // this worker has none for (a full zone leaves some without:
            // their cells are then not found below); the cells are found
            // after it.
            let blocks = blocks_without_cells(link.table, record, &counters);
            if !blocks.is_empty() {
                link.table.make_chunks(&link.lock(), record, &blocks);
            }
        }
        let mut unrecorded = 0usize;
        for pc in counters.iter() {
            if let Some(slot) = pc.stored_slot() {
                let mine = record
                    .and_then(|record| link.table.made_cell(record, slot))
                    .unwrap_or_else(CellRef::unrecorded);
                unrecorded += usize::from(!mine.is_recorded());
                pc.set_counting(Some(Counted { slot, mine }));
            }
        }
        if unrecorded > 0 && record.is_some() {
            Log::cycle().zone(
                NGX_LOG_ERR,
                link.shm.name(),
                format_args!(
                    " has no room to record what this worker holds on {unrecorded} server(s) of \
                     upstream \"{}\": they are counted, but not given back if the worker dies; \
                     make the zone larger",
                    String::from_utf8_lossy(&self.name)
                ),
            );
        }
    }

    /// A handle on `slot` that attributes counts to this worker's record.
    pub(super) fn counted(&self, link: &ZoneLink, locked: &Locked, slot: SlotRef) -> Counted {
        counted_by(self.record.get(), link, locked, slot)
    }

    /// Looks a stale counter of this upstream up again
    /// (`PeerCounter::try_acquire` said `Stale`): in the zone it counts in,
    /// for this worker's record. Locks the zone: the caller must hold no
    /// peer lock.
    pub fn refresh(&self, pc: &PeerCounter) {
        pc.refresh(self.link.as_ref(), self.record.get());
    }

    /// `PeerCounter::try_acquire` for a caller that holds no peer lock
    /// (Lua's pick): a stale counter is looked up again on the spot.
    /// `None`: at `max_conns`, pick again.
    #[inline]
    pub fn acquire(&self, pc: &PeerCounter, max_conns: u32) -> Option<Held> {
        pc.acquire(self.link.as_ref(), self.record.get(), max_conns)
    }

    /// The commit's first pass (`Registry::commit`): from now on the
    /// upstream counts in `link`; its keys the zone has already are stamped
    /// with this load's epoch. Returns how many servers it has, and whether
    /// the zone had a key of it (only then do the keys it adds ramp up).
    pub(super) fn stamp_known(&mut self, link: ZoneLink, locked: &Locked) -> (u32, bool) {
        self.link = Some(link);
        let ramp = self.ramp_start(true);
        let (mut servers, mut found) = (0, false);
        for pc in self.peers_mut() {
            servers += 1;
            if let Some(slot) = link
                .table
                .stamp_at(locked, &pc.key, pc.meta, link.epoch, ramp)
            {
                pc.set_stored(Some(slot));
                found = true;
            }
        }
        (servers, found)
    }

    /// The commit's second pass, after the sweep freed what it could:
    /// stores the keys new to the zone (ramping up if `had_keys`). Returns
    /// how many found no room (counted per worker then).
    pub(super) fn store_new(&mut self, locked: &Locked, had_keys: bool) -> u32 {
        let Some(link) = self.link else {
            return 0;
        };
        let ramp = self.ramp_start(had_keys);
        let mut full = 0;
        for pc in self.peers_mut().filter(|pc| pc.is_declared()) {
            let slot =
                link.table
                    .upsert_at(locked, &pc.key, pc.upstream_len, pc.meta, link.epoch, ramp);
            full += u32::from(slot.is_err());
            pc.set_stored(slot.ok());
        }
        full
    }

    /// A Lua declaration: the upstream counts in `link`, for `record`.
    pub(super) fn set_zone(&mut self, link: ZoneLink, record: Option<RecordRef>) {
        self.link = Some(link);
        self.record.set(record);
    }

    /// This worker's record, once it has registered (`None`: the zone had
    /// no room for it).
    pub(super) fn set_record(&self, record: Option<RecordRef>) {
        self.record.set(record);
    }

    /// The commit's last pass, once every key is stored: the pick index of
    /// each list a load indexes, over its keys in peer order (none if a
    /// key found no room, or the zone has none for the index).
    /// Returns how many servers of lists long enough for an index got none
    /// (no room in the zone, or keys that found none): they are scanned.
    pub(super) fn build_pick_indexes(&self, locked: &Locked) -> usize {
        let Some(link) = self.link else {
            return 0;
        };
        let mut unindexed = 0;
        for list in [List::Primary, List::Backup] {
            let cl = self.counter_list(list);
            let counters = self.list(list);
            let index = self.build_pick_index(&link, locked, list, &counters);
            if index.is_none() && counters.len() >= self.index_from {
                unindexed += counters.len();
            }
            cl.pick_index.set(index);
        }
        unindexed
    }

    /// The pick index of `list` over `counters` (its counters at the list's
    /// current version), if the list is indexed and every counter is in the
    /// zone; under the zone lock.
    fn build_pick_index(
        &self,
        link: &ZoneLink,
        locked: &Locked,
        list: List,
        counters: &[PeerCounter],
    ) -> Option<PickIndexRef> {
        let cl = self.counter_list(list);
        // A worker of an earlier load following DNS leaves the index to the
        // current load's workers.
        let current = link.epoch == link.table.epoch();
        if !current
            || counters.len() < self.index_from
            || !counters.iter().all(|pc| pc.slot().is_some())
        {
            return None;
        }
        // Every counter has its slot (just checked).
        let slots = counters.iter().map(|pc| pc.slot().expect("stored"));
        let of = IndexedList {
            upstream: &self.name,
            list: list as u32,
            epoch: link.epoch,
            version: index_version(cl.version.get()),
        };
        let now = ramp::now_ds(peers::now_ms());
        link.table.build_pick_index(locked, of, now, slots)
    }

    /// The version of `list` as its pick index records it.
    #[inline]
    pub fn index_version(&self, list: List) -> u64 {
        index_version(self.counter_list(list).version.get())
    }

    /// The pick index of `list`, if the load built one.
    #[inline]
    pub fn pick_index(&self, list: List) -> Option<PickIndexRef> {
        self.counter_list(list).pick_index.get()
    }

    /// This worker's cursors on `peers`, the front-end's `list`, if they
    /// were made for the list as it is (`make_cursors`); no allocation:
    /// asked under the zone lock.
    #[inline]
    pub fn cursors(&self, list: List, peers: &RrPeers) -> Option<Ref<'_, [PeerCursor]>> {
        let cl = self.counter_list(list);
        let fresh = cl.cursors_version.get() == Some(peers::version(peers))
            && cl.cursors.borrow().len() == peers.number;
        fresh.then(|| Ref::map(cl.cursors.borrow(), Vec::as_slice))
    }

    /// Makes this worker's cursors on `peers` (locked by the caller; the
    /// zone is not: this allocates).
    #[cold]
    #[inline(never)]
    pub fn make_cursors(&self, list: List, peers: &RrPeers) {
        let cl = self.counter_list(list);
        *cl.cursors.borrow_mut() = peers::cursors(peers);
        cl.cursors_version.set(Some(peers::version(peers)));
    }

    /// A release of `slot`, a key in a pick index: its leaf is read again,
    /// in this load's index or, found by name, a later load's.
    #[cold]
    #[inline(never)]
    fn pick_index_released(&self, link: &ZoneLink, slot: SlotRef) {
        let now = ramp::now_ds(peers::now_ms());
        let locked = link.lock();
        let own = [List::Primary, List::Backup]
            .into_iter()
            .filter_map(|list| self.pick_index(list))
            .any(|index| index.released(link.table, &locked, slot, now));
        if !own {
            link.table
                .pick_index_released(&locked, &self.name, slot, now);
        }
    }

    /// Gives back what a pick took; `log` is the request's.
    pub fn release(&self, held: Held, log: Log) {
        match held {
            Held::Nothing => {}
            Held::Local(local) => local.set(local.get().saturating_sub(1)),
            Held::Shared(c) => match c.release() {
                Release::Released { now_idle_draining } => {
                    if let (true, Some(l)) = (c.slot.is_indexed(), self.link.as_ref()) {
                        self.pick_index_released(l, c.slot);
                    }
                    if now_idle_draining {
                        if let Some(l) = self.link {
                            l.table.remove_if_drained(&l.lock(), c.slot);
                        }
                    }
                }
                Release::Underflow | Release::Stale => log.module(
                    NGX_LOG_ERR,
                    format_args!(
                        "release of a counter of upstream \"{}\" that is already 0 (kept at 0)",
                        String::from_utf8_lossy(&self.name)
                    ),
                ),
            },
        }
    }
}

/// A list's version as its pick index records it: 0 for a list DNS never
/// changes, the front-end's version plus one for one it does.
fn index_version(version: Option<usize>) -> u64 {
    version.map_or(0, |v| v as u64 + 1)
}

/// What following a peer list does with its counters, decided with no lock
/// held (`match_kept`).
struct Matched {
    /// The list's counters from now on, in the peer list's order.
    new: Vec<PeerCounter>,
    /// Where in `new` the keys new to the list are, and the kept keys whose
    /// metadata changed (weight, max_conns, down).
    added: Vec<usize>,
    restamped: Vec<usize>,
    /// The slots of the keys gone, to drain.
    drained: Vec<SlotRef>,
    done: Followed,
    /// Counters no longer used (fresh ones a kept key replaced, and the
    /// gone ones): freed once the zone is unlocked.
    leftover: (Vec<PeerCounter>, HashMap<Box<[u8]>, PeerCounter>),
}

/// Matches `fresh`, the counters for a peer list as it is now, against
/// `old`, the list's counters until now: a kept key keeps its counter (and
/// the count this worker holds on it), with the fresh metadata.
/// `held_by_other`: the keys of the upstream's other list; a key gone from
/// this list that the other list holds is not drained (for a moment, until
/// that list is named again, DNS can give one list a name the other still
/// counts on).
fn match_kept(
    old: Vec<PeerCounter>,
    fresh: Vec<PeerCounter>,
    held_by_other: &[Box<[u8]>],
) -> Matched {
    let mut old: HashMap<Box<[u8]>, PeerCounter> =
        old.into_iter().map(|pc| (pc.key.clone(), pc)).collect();
    let mut new = Vec::with_capacity(fresh.len());
    let mut replaced = Vec::with_capacity(fresh.len());
    let mut added = Vec::with_capacity(fresh.len());
    let mut restamped = Vec::with_capacity(fresh.len());
    let mut done = Followed::default();
    for mut pc in fresh {
        let meta = pc.meta;
        match old.remove(&pc.key) {
            Some(kept) => {
                done.kept += 1;
                replaced.push(core::mem::replace(&mut pc, kept));
                if pc.meta != meta {
                    pc.meta = meta;
                    restamped.push(new.len());
                }
            }
            None => {
                done.added += 1;
                added.push(new.len());
            }
        }
        new.push(pc);
    }
    done.gone = old.len();
    let drained = old
        .values()
        .filter(|gone| !held_by_other.contains(&gone.key))
        .filter_map(PeerCounter::slot)
        .collect();
    Matched {
        new,
        added,
        restamped,
        drained,
        done,
        leftover: (replaced, old),
    }
}

/// The blocks (`SlotRef::block`) of the counters that have no cell yet and
/// whose chunk `record` lacks, each once.
fn blocks_without_cells(table: &Table, record: RecordRef, counters: &[PeerCounter]) -> Vec<usize> {
    let mut blocks: Vec<usize> = counters
        .iter()
        .filter_map(PeerCounter::stored_slot)
        .filter(|&slot| table.made_cell(record, slot).is_none())
        .map(|slot| slot.block())
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::tests::HeapArena;

    fn servers<'a>(addresses: &[&'a str]) -> Vec<(Occurrence<'a>, Meta)> {
        let meta = Meta {
            weight: 1,
            ..Meta::default()
        };
        addresses
            .iter()
            .map(|a| {
                let (address, line) = (a.as_bytes(), a.as_bytes());
                (Occurrence { address, line }, meta)
            })
            .collect()
    }

    fn names(up: &UpstreamCounters, list: List) -> Vec<String> {
        let counters = up.list(list);
        counters
            .iter()
            .map(|pc| String::from_utf8_lossy(pc.server()).into_owned())
            .collect()
    }

    #[test]
    fn every_server_has_a_key_of_its_own_across_both_lists() {
        let mut up = UpstreamCounters::new(b"u");
        up.set_list(List::Primary, servers(&["a:80", "a:80", "b:80"]));
        up.set_list(List::Backup, servers(&["b:80"]));
        assert_eq!(names(&up, List::Primary), ["a:80", "a:80#2", "b:80"]);
        assert_eq!(names(&up, List::Backup), ["b:80#2"]);
        assert!(up.list(List::Backup)[0].key.starts_with(b"conn_count:u:"));
    }

    #[test]
    fn each_server_carries_the_upstreams_settings_to_the_zone() {
        let mut up = UpstreamCounters::new(b"u");
        up.slow_start = 100;
        up.set_list(List::Primary, servers(&["a:80"]));
        up.set_list(List::Backup, servers(&["b:80"]));
        let primary = up.list(List::Primary)[0].meta;
        assert_eq!(
            (primary.flags, primary.slow_start, primary.weight),
            (0, 100, 1)
        );
        assert_eq!(up.list(List::Backup)[0].meta.flags, FLAG_BACKUP);
        up.rebalance = Some(Params::default());
        up.check = Some(CheckParams::default());
        up.set_list(List::Primary, servers(&["a:80"]));
        let flags = up.list(List::Primary)[0].meta.flags;
        assert_eq!(flags, FLAG_REBALANCE | FLAG_CHECKED);
    }

    #[test]
    fn a_new_primary_list_calls_for_naming_the_backup_list_again() {
        let mut up = UpstreamCounters::new(b"u");
        up.set_list(List::Primary, servers(&["a:80"]));
        up.set_list(List::Backup, servers(&["b:80"]));
        // A list DNS never changed follows no version of the peer list.
        assert!(up.needs_follow(List::Primary, 1));
        up.primary.version.set(Some(1));
        up.backup.version.set(Some(1));
        assert!(!up.needs_follow(List::Primary, 1) && !up.needs_follow(List::Backup, 1));
        assert!(up.needs_follow(List::Primary, 2));
        up.set_list(List::Primary, servers(&["b:80"]));
        assert!(!up.needs_follow(List::Primary, 1));
        assert!(up.needs_follow(List::Backup, 1));
        up.set_list(List::Backup, servers(&["b:80"]));
        assert!(!up.needs_follow(List::Backup, 1));
    }

    #[test]
    fn following_keeps_the_counter_of_each_key_kept() {
        let up = UpstreamCounters::new(b"u");
        let old = up.counters_for(List::Primary, servers(&["a:80", "b:80", "c:80"]));
        // This worker holds a connection to a:80.
        assert!(old[0].try_acquire(0).is_ok());
        let mut now = servers(&["a:80", "b:80", "d:80"]);
        now[1].1.weight = 5;
        let fresh = up.counters_for(List::Primary, now);
        let m = match_kept(old, fresh, &[]);
        let done = Followed {
            kept: 2,
            added: 1,
            gone: 1,
            full: 0,
        };
        assert_eq!(m.done, done);
        assert_eq!((m.added, m.restamped), (vec![2], vec![1]));
        let servers: Vec<&[u8]> = m.new.iter().map(PeerCounter::server).collect();
        assert_eq!(servers, [&b"a:80"[..], b"b:80", b"d:80"]);
        assert_eq!(m.new[0].local_count(), 1);
        assert_eq!(m.new[1].meta.weight, 5);
        // Counted by this worker alone: nothing in a zone to drain.
        assert!(m.drained.is_empty());
    }

    #[test]
    fn a_key_gone_drains_unless_the_other_list_holds_it() {
        let a = HeapArena::new(1 << 20);
        let table = Table::create(&a, 64).expect("room for a table");
        // SAFETY: just created in `a`, never freed.
        let table = unsafe { &*table.as_ptr() };
        let epoch = table.begin_epoch(&a);
        let up = UpstreamCounters::new(b"u");
        let old = up.counters_for(List::Primary, servers(&["a:80", "b:80", "c:80"]));
        let slots: Vec<SlotRef> = old
            .iter()
            .map(|pc| {
                let slot = table.upsert(&a, &pc.key, pc.upstream_len, pc.meta, epoch);
                pc.set_stored(Some(slot.expect("room for a key")));
                pc.slot().expect("stored")
            })
            .collect();
        let held_by_other = [old[1].key.clone()];
        let fresh = up.counters_for(List::Primary, servers(&["c:80"]));
        let m = match_kept(old, fresh, &held_by_other);
        assert_eq!((m.done.kept, m.done.gone), (1, 2));
        assert_eq!(m.drained, [slots[0]]);
        assert_eq!(m.new[0].slot(), Some(slots[2]));
    }
}
