//! The registry: the upstreams a configuration load declares, each with a
//! key and a handle per server, in the order of the front-end's peer lists.
//! Keys are built once at configuration time, so that a pick builds no
//! strings and searches nothing.
//!
//! The zone's init finds the table; once the new configuration can no longer
//! fail to start, `Registry::commit` stamps its keys into the table (a reload
//! that fails leaves the zone as the running configuration left it). Each
//! worker then registers its record (`workers.rs`) and counts through the
//! handles, attributing every count to itself. Front-ends (http today;
//! stream and the Lua C ABI later) fill the registry with `Registry::add`
//! and count with `PeerCounter::acquire` and `UpstreamCounters::release`.

use core::cell::{Cell, Ref, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE};

use crate::core::check_conf::CheckParams;
use crate::core::follow::{runtime_stamp, PeerListCopy};
use crate::core::health_table::Tuned;
use crate::core::key::{self, Occurrence};
use crate::core::ramp;
use crate::core::rebalance::Params;
use crate::core::record::{self, CellRef, Counted, RecordRef};
use crate::core::table::{
    Acquire, Meta, RampStart, Release, SlotRef, Table, FLAG_BACKUP, FLAG_CHECKED, FLAG_DRAINING,
    FLAG_LUA, FLAG_REBALANCE,
};
use crate::ngx::live::LiveList;
use crate::ngx::log::Log;
use crate::ngx::peers::{self, Failures, SharedCount};

use super::rebalance::Rebalancer;
use super::zone::{DeclaredZone, Locked, ZoneLink};

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

/// What a pick took, so that `release` gives back exactly that.
#[derive(Clone, Debug, Default)]
pub enum Held {
    #[default]
    Nothing,
    Shared(Counted),
    /// Counted by this worker alone (no zone, or the zone was full): the
    /// server's local count, which stays valid when a list that DNS
    /// changes (`resolve`) is rebuilt or drops the server.
    Local(Rc<Cell<u32>>),
}

/// Why a counter did not count a connection (`PeerCounter::try_acquire`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// At `max_conns`: pick again.
    AtLimit,
    /// Removed from the zone, or no cell yet: look it up (or get the
    /// cells) with no peer lock held, then pick again.
    Stale,
}

/// Where a server's counter is, as a configuration load, a worker's start
/// and run-time changes move it along.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Not stored in a zone: before the configuration is committed, or for
    /// good when no zone is configured. A pick counts it per worker.
    Declared,
    /// The key is in the zone (the commit stored it); this worker has no
    /// cell for it yet: its first pick of the list allocates the cells
    /// (`UpstreamCounters::attach_cells`), so a worker takes zone memory
    /// only for the lists it counts on. Picks compare its shared count.
    Stored(SlotRef),
    /// Counting in the zone, this worker's share in its own cell.
    Counting(Counted),
    /// The key was removed while this worker counted on it: to be looked
    /// up again (`refresh`), with no peer lock held.
    Stale,
    /// Counted by this worker alone: the zone had no room for the key.
    Local,
}

#[derive(Debug)]
pub struct PeerCounter {
    pub key: Box<[u8]>,
    pub upstream_len: usize,
    pub meta: Meta,
    /// Changed through `&self`: a stale handle is looked up again while
    /// the list it is in is borrowed.
    phase: Cell<Phase>,
    /// This worker's connections to a peer it counts itself (status page).
    local: Rc<Cell<u32>>,
}

/// The counter's handle in the zone, as a pick holds it.
#[inline]
fn counting(phase: Phase) -> Option<Counted> {
    match phase {
        Phase::Counting(c) => Some(c),
        _ => None,
    }
}

impl PeerCounter {
    fn new(upstream: &[u8], server: &[u8], meta: Meta) -> PeerCounter {
        let mut k = vec![0; key::key_len(upstream, server)];
        key::write_key(&mut k, upstream, server);
        PeerCounter {
            key: k.into_boxed_slice(),
            upstream_len: upstream.len(),
            meta,
            phase: Cell::new(Phase::Declared),
            local: Rc::default(),
        }
    }

    /// The `<server>` part of the key: the address, numbered when the
    /// upstream lists it again.
    pub fn server(&self) -> &[u8] {
        &self.key[key::KEY_PREFIX.len() + self.upstream_len + 1..]
    }

    /// The key's slot in the zone, once stored.
    pub fn slot(&self) -> Option<SlotRef> {
        match self.phase.get() {
            Phase::Stored(slot) | Phase::Counting(Counted { slot, .. }) => Some(slot),
            Phase::Declared | Phase::Stale | Phase::Local => None,
        }
    }

    /// The handle this worker counts through, once it counts in the zone.
    #[inline]
    fn counted(&self) -> Option<Counted> {
        counting(self.phase.get())
    }

    /// Stored by the commit (`None`: the zone is full): counted per worker
    /// then.
    fn stored_or_local(slot: Option<SlotRef>) -> Phase {
        slot.map_or(Phase::Local, Phase::Stored)
    }

    /// Whether the server is counted in the zone (not by this worker alone).
    pub fn in_zone(&self) -> bool {
        !matches!(self.phase.get(), Phase::Declared | Phase::Local)
    }

    /// Whether this worker has no cell for the key yet (see `Phase::Stored`).
    pub fn needs_cell(&self) -> bool {
        matches!(self.phase.get(), Phase::Stored(_))
    }

    /// Slow start: `Some(elapsed, window)` while the server ramps up at
    /// `now` (deciseconds; `core::ramp`).
    #[inline]
    pub fn ramp_at(&self, now: u32) -> Option<(u32, u32)> {
        self.counted()?.slot.ramp(now)
    }

    /// The count a pick compares: the shared one (see `SlotRef::count_hint`)
    /// or this worker's own.
    #[inline]
    pub fn count_hint_or_local(&self) -> u32 {
        match self.slot() {
            Some(slot) => slot.count_hint(),
            None => self.local.get(),
        }
    }

    /// Marks a Lua key as used now (it then does not expire).
    pub fn touch(&self, now: u32) {
        if let Some(slot) = self.slot() {
            slot.touch(now);
        }
    }

    /// The live count, across workers when in the zone.
    pub fn count(&self) -> Option<u32> {
        match self.slot() {
            Some(slot) => slot.count(),
            None => Some(self.local.get()),
        }
    }

    pub fn local_count(&self) -> u32 {
        self.local.get()
    }

    /// Counts a connection: `Ok` with what to give back. `AtLimit`: at
    /// `max_conns` (another worker may just have taken the last place), pick
    /// again. `Stale`: a newer configuration removed the key (or a Lua key
    /// expired); the counter is left `is_stale` until the caller, with any
    /// peer lock let go, calls `refresh`, and picks again.
    /// A counter with no cell yet (`needs_cell`) answers `Stale` too,
    /// unchanged: the caller then gets this worker's cells for the list
    /// (`UpstreamCounters::attach_cells`) and picks again.
    /// Returns the hold rather than storing it: storing would first drop
    /// the caller's previous value, a call this path then has to make room
    /// for on every pick.
    #[inline]
    pub fn try_acquire(&self, max_conns: u32) -> Result<Held, NotTaken> {
        let Some(c) = self.counted() else {
            return self.acquire_uncounted();
        };
        match c.acquire(max_conns) {
            Acquire::Taken => Ok(Held::Shared(c)),
            Acquire::AtLimit => Err(NotTaken::AtLimit),
            Acquire::Stale => Err(self.mark_stale()),
        }
    }

    #[cold]
    #[inline(never)]
    fn mark_stale(&self) -> NotTaken {
        self.phase.set(Phase::Stale);
        NotTaken::Stale
    }

    /// Whether the key was found removed, to be looked up again (`refresh`).
    pub fn is_stale(&self) -> bool {
        matches!(self.phase.get(), Phase::Stale)
    }

    /// `try_acquire` for a caller that holds no peer lock (Lua's pick): a
    /// stale handle is looked up again on the spot. `None`: at `max_conns`,
    /// pick again.
    pub fn acquire(&self, up: &UpstreamCounters, max_conns: u32) -> Option<Held> {
        match self.try_acquire(max_conns) {
            Ok(held) => Some(held),
            Err(NotTaken::AtLimit) => None,
            Err(NotTaken::Stale) => {
                self.refresh(up);
                // A key just looked up again is stale again only if removed
                // in the meantime: like full.
                self.try_acquire(max_conns).ok()
            }
        }
    }

    /// No cell yet (see `try_acquire`), or per-worker counting: no zone,
    /// or no room in it.
    #[cold]
    #[inline(never)]
    fn acquire_uncounted(&self) -> Result<Held, NotTaken> {
        if self.needs_cell() {
            return Err(NotTaken::Stale);
        }
        self.local.set(self.local.get() + 1);
        Ok(Held::Local(Rc::clone(&self.local)))
    }

    /// Gives up on the zone for this server: this worker counts it itself,
    /// as when the zone is full (a counter that keeps going stale the
    /// moment it is looked up again).
    pub fn count_locally(&self) {
        self.phase.set(Phase::Local);
    }

    /// Looks a stale handle up again (see `try_acquire`): a newer
    /// configuration removed the key while this (older) worker still uses
    /// it, or a Lua key went. Puts it back (draining, for a worker of an
    /// earlier configuration, so that it is counted until this worker is
    /// done with it and then removed); with no room for it, this worker
    /// counts the server itself. Locks the zone: the caller must hold no
    /// peer lock. Logs once the zone is unlocked.
    #[cold]
    #[inline(never)]
    pub fn refresh(&self, up: &UpstreamCounters) {
        let Some(link) = up.link.as_ref() else {
            self.count_locally();
            return;
        };
        let now = peers::now() as u32;
        let locked = link.lock();
        let found = link.table.find(&locked, &self.key);
        let readded = match found {
            Some(_) => None,
            None => Some(self.store(link, &locked, now, RampStart::NEVER)),
        };
        let phase = match found.or(readded.flatten().map(|(slot, _)| slot)) {
            Some(slot) => Phase::Counting(up.counted(link, &locked, slot)),
            None => Phase::Local,
        };
        self.phase.set(phase);
        drop(locked);
        if let Some(stored) = readded {
            self.note_readded(stored.map(|(_, meta)| meta));
        }
    }

    /// What `refresh` did with a key it found gone (`stored`: the metadata
    /// it put it back with, `None`: no room).
    fn note_readded(&self, stored: Option<Meta>) {
        let key = String::from_utf8_lossy(&self.key);
        let message = match stored {
            None => {
                format!("\"{key}\" could not be re-added (zone full): this worker counts it itself")
            }
            Some(meta) if meta.flags & FLAG_DRAINING != 0 => {
                format!("\"{key}\" re-added as draining for a worker of an earlier configuration")
            }
            Some(_) => format!("\"{key}\" re-added: it was removed while this worker used it"),
        };
        Log::cycle().module(NGX_LOG_NOTICE, format_args!("{message}"));
    }

    /// Finds or adds this server's key at run time (`now`: the current
    /// second), stamped as `follow::runtime_stamp` says: draining for a
    /// worker of an earlier configuration, with the second for a Lua key.
    /// Returns it and the metadata it was stored with.
    fn store(
        &self,
        link: &ZoneLink,
        locked: &Locked,
        now: u32,
        ramp: RampStart,
    ) -> Option<(SlotRef, Meta)> {
        let (meta, stamp) = runtime_stamp(self.meta, link.epoch, link.table.epoch(), now);
        link.table
            .upsert_at(locked, &self.key, self.upstream_len, meta, stamp, ramp)
            .ok()
            .map(|slot| (slot, meta))
    }
}

impl SharedCount for PeerCounter {
    /// The count a pick compares, from the zone; `None` when this worker
    /// counts the peer itself (see `SlotRef::count_hint`).
    /// A pick never sees a counter with no cell yet (`Phase::Stored`): it
    /// first gets the list's cells (`UpstreamCounters::needs_cells`).
    #[inline]
    fn count_hint(&self) -> Option<u32> {
        self.counted().map(|c| c.slot.count_hint())
    }

    #[inline]
    fn ramp(&self, now: u32) -> Option<(u32, u32)> {
        self.ramp_at(now)
    }

    #[inline(always)]
    fn check_bits(&self) -> u32 {
        self.counted().map_or(0, |c| c.slot.check_bits())
    }

    #[cold]
    fn tuned(&self) -> Tuned {
        self.counted().map(|c| c.slot.tuned()).unwrap_or_default()
    }

    #[inline(always)]
    fn count_and_bits(&self) -> (Option<u32>, u32) {
        match self.counted() {
            Some(c) => (Some(c.slot.count_hint()), c.slot.check_bits()),
            None => (None, 0),
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
    /// The `server` lines (names) that have had addresses in the list:
    /// slow start ramps an address DNS adds to a name resolved before, not
    /// the first resolution.
    lines: RefCell<HashSet<Box<[u8]>>>,
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

/// One upstream's counters.
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
    /// Set once this worker has warned that the upstream's TCP checks
    /// probe servers it proxies UDP to (stream `listen ... udp`).
    #[cfg(feature = "stream")]
    pub udp_warned: Cell<bool>,
    /// Rebalancing: this worker's connections of the upstream (each with
    /// what its request holds), its primary peers' failures, and what its
    /// timer keeps between ticks.
    pub live: LiveList<Held>,
    pub failures: Option<Failures>,
    pub rebalancer: Rebalancer,
}

impl UpstreamCounters {
    pub fn new(name: &[u8]) -> UpstreamCounters {
        UpstreamCounters {
            name: name.into(),
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
    /// upstream's slow start.
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
        let Some(link) = self.link.as_ref().filter(|_| !record::stopped()) else {
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
    fn ramp_start(&self, has_others: bool) -> RampStart {
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
        self.note_named(list);
        let mut old: HashMap<Box<[u8]>, PeerCounter> = cl
            .counters
            .take()
            .into_iter()
            .map(|pc| (pc.key.clone(), pc))
            .collect();
        let held_by_other: Vec<Box<[u8]>> = self
            .list(list.other())
            .iter()
            .map(|pc| pc.key.clone())
            .collect();
        // Match first, with no lock: a kept key keeps its counter.
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
        let now = peers::now() as u32;
        // Whether each new peer's name had addresses before (allocated
        // before locking); then the names this list has seen grow.
        let resolved_before: Vec<bool> = {
            let mut lines = cl.lines.borrow_mut();
            let before: Vec<bool> = copy.iter().map(|(o, _)| lines.contains(o.line)).collect();
            lines.extend(copy.iter().map(|(o, _)| Box::from(o.line)));
            before
        };
        // What is left in `old` no new peer claimed. A key the other list
        // holds too is not drained: for a moment, until that list is named
        // again, DNS can give one list a name the other still counts on.
        let drained: Vec<SlotRef> = old
            .values()
            .filter(|gone| !held_by_other.contains(&gone.key))
            .filter_map(PeerCounter::slot)
            .collect();
        if let Some(link) = self.link.as_ref() {
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
                let phase = match pc.store(link, &locked, now, ramp) {
                    Some((slot, _)) => Phase::Counting(self.counted(link, &locked, slot)),
                    None => Phase::Local,
                };
                done.full += usize::from(matches!(phase, Phase::Local));
                pc.phase.set(phase);
            }
        }
        *cl.counters.borrow_mut() = new;
        drop((replaced, old, held_by_other));
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

    /// Gives this worker a cell for every key of `list` it has none for
    /// (`Phase::Stored`), in one hold of the zone lock: the first pick of
    /// the list in this worker. The caller holds no peer lock. Logs once
    /// unlocked if the zone had no room for some.
    #[cold]
    #[inline(never)]
    pub fn attach_cells(&self, list: List) {
        self.counter_list(list).cells.set(true);
        let Some(link) = self.link.as_ref() else {
            return;
        };
        let counters = self.list(list);
        let record = self.record.get();
        // After this worker gave back what it holds (`workers::finish`), its
        // record is gone: counts it takes then are not recorded.
        let record = record.filter(|_| !record::stopped());
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
            if let Phase::Stored(slot) = pc.phase.get() {
                let mine = record
                    .and_then(|record| link.table.made_cell(record, slot))
                    .unwrap_or_else(CellRef::unrecorded);
                unrecorded += usize::from(!mine.is_recorded());
                pc.phase.set(Phase::Counting(Counted { slot, mine }));
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
    fn counted(&self, link: &ZoneLink, locked: &Locked, slot: SlotRef) -> Counted {
        let mine = self
            .record
            .get()
            .and_then(|record| link.table.cell(locked, record, slot))
            .unwrap_or_else(CellRef::unrecorded);
        Counted { slot, mine }
    }

    /// Gives back what a pick took; `log` is the request's.
    pub fn release(&self, held: Held, log: Log) {
        match held {
            Held::Nothing => {}
            Held::Local(local) => local.set(local.get().saturating_sub(1)),
            Held::Shared(c) => match c.release() {
                Release::Released { now_idle_draining } => {
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

/// Why a Lua declaration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclareError {
    NoZone,
    Full,
    /// A key of the declaration belongs to an nginx `upstream {}` block.
    Conflict,
}

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
            up.link = Some(link);
            let ramp = up.ramp_start(true);
            let mut found = false;
            for pc in up.peers_mut() {
                servers += 1;
                if let Some(slot) = table.stamp_at(&locked, &pc.key, pc.meta, link.epoch, ramp) {
                    pc.phase.set(Phase::Stored(slot));
                    found = true;
                }
            }
            had_keys.push(found);
        }
        let sweep = table.sweep(&locked, link.epoch);
        for (up, &found) in self.upstreams.iter_mut().zip(&had_keys) {
            let ramp = up.ramp_start(found);
            for pc in up.peers_mut() {
                if matches!(pc.phase.get(), Phase::Declared) {
                    let slot = table.upsert_at(
                        &locked,
                        &pc.key,
                        pc.upstream_len,
                        pc.meta,
                        link.epoch,
                        ramp,
                    );
                    full += u32::from(slot.is_err());
                    pc.phase.set(PeerCounter::stored_or_local(slot.ok()));
                }
            }
        }
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
    }

    /// A Lua upstream (declared through the C ABI, by this worker): its keys
    /// are stored (or found) in the zone as Lua keys stamped with `now`, and
    /// the servers of `previous` (its earlier declaration) that are gone
    /// drain. Keys this call added are given up again if the zone is full.
    /// Linear in the servers; everything is allocated before the zone is
    /// locked, and nothing is logged under it.
    pub fn declare_lua(
        &self,
        id: &[u8],
        servers: &[(&[u8], Meta)],
        previous: Option<&UpstreamCounters>,
        now: u32,
        slow_start: u32,
    ) -> Result<UpstreamCounters, DeclareError> {
        let link = self.link.ok_or(DeclareError::NoZone)?;
        let mut up = UpstreamCounters::new(id);
        up.slow_start = slow_start;
        up.set_list(
            List::Primary,
            servers.iter().map(|&(address, meta)| {
                let flags = meta.flags | FLAG_LUA;
                let occurrence = Occurrence {
                    address,
                    line: address,
                };
                (occurrence, Meta { flags, ..meta })
            }),
        );
        let gone = previous.map_or_else(Vec::new, |previous| Self::undeclared(&up, previous));
        let mut added = Vec::with_capacity(servers.len());
        let locked = link.lock();
        // Keys it adds ramp up (slow start) if the id was declared before,
        // by this worker or another: not on its first declaration.
        let declared_before = previous.is_some()
            || up
                .list(List::Primary)
                .iter()
                .any(|pc| link.table.find(&locked, &pc.key).is_some());
        let ramp = up.ramp_start(declared_before);
        let mut refused = None;
        for (i, pc) in up.primary.counters.get_mut().iter_mut().enumerate() {
            let existing = link.table.find(&locked, &pc.key);
            if existing.is_some_and(|s| s.flags() & FLAG_LUA == 0) {
                refused = Some(DeclareError::Conflict);
                break;
            }
            match link
                .table
                .upsert_at(&locked, &pc.key, pc.upstream_len, pc.meta, now, ramp)
            {
                Ok(slot) => {
                    if existing.is_none() {
                        added.push(slot);
                    }
                    pc.phase.set(Phase::Stored(slot));
                }
                Err(_) => {
                    refused = Some(DeclareError::Full);
                    break;
                }
            }
            if i == 0 {
                crate::core::crash::point("lua.declared");
            }
        }
        if let Some(e) = refused {
            for &slot in &added {
                link.table.remove_idle(&locked, slot);
            }
            drop(locked);
            return Err(e);
        }
        for &slot in &gone {
            link.table.drain(&locked, slot, link.epoch);
        }
        up.link = Some(link);
        up.record.set(self.record.get());
        for pc in up.list(List::Primary).iter() {
            let slot = pc.slot().expect("stored above");
            pc.phase
                .set(Phase::Counting(up.counted(&link, &locked, slot)));
        }
        drop(locked);
        Ok(up)
    }

    /// The counters of `previous` (the earlier declaration of Lua upstream
    /// `up`) whose keys `up` no longer lists: what declaring it again
    /// drains. Linear (`key::undeclared`), done before the zone is locked.
    fn undeclared(up: &UpstreamCounters, previous: &UpstreamCounters) -> Vec<SlotRef> {
        let declared = up.list(List::Primary);
        let (primary, backup) = (previous.list(List::Primary), previous.list(List::Backup));
        let counted = primary
            .iter()
            .chain(backup.iter())
            .filter_map(|old| Some((&*old.key, old.slot()?)));
        key::undeclared(declared.iter().map(|pc| &*pc.key), counted)
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
            up.record.set(record);
            if record.is_none() {
                up.for_each_peer(|pc| unattributed += usize::from(pc.slot().is_some()));
            }
        }
        unattributed
    }
}

/// The blocks (`SlotRef::block`) of the counters that have no cell yet and
/// whose chunk `record` lacks, each once.
fn blocks_without_cells(table: &Table, record: RecordRef, counters: &[PeerCounter]) -> Vec<usize> {
    let mut blocks: Vec<usize> = counters
        .iter()
        .filter_map(|pc| match pc.phase.get() {
            Phase::Stored(slot) if table.made_cell(record, slot).is_none() => Some(slot.block()),
            _ => None,
        })
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}
