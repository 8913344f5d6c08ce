//! The counter of one server, as a worker counts through it: its key, and
//! where the count is (`Phase`) as a configuration load, a worker's start
//! and run-time changes move it along: declared, stored in the zone,
//! counting there through this worker's cell, stale (the key was removed),
//! or counted by this worker alone. Only this file changes the phase; the
//! upstream's and the registry's files call the named steps.

use core::cell::Cell;
use std::rc::Rc;

use nginx_sys::NGX_LOG_NOTICE;

use crate::core::follow::runtime_stamp;
use crate::core::key;
use crate::core::table::{
    Acquire, CellRef, Counted, Meta, RampStart, RecordRef, SlotRef, Tuned, FLAG_DRAINING,
};
use crate::ngx::log::Log;
use crate::ngx::peers::{self, SharedCount};
use crate::shared::zone::{Locked, ZoneLink};

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

/// One server's counter: its key in the zone (`key::write_key`), the
/// metadata the zone records for it, and where its count is.
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
    pub(super) fn new(upstream: &[u8], server: &[u8], meta: Meta) -> PeerCounter {
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

    /// Whether the key is not stored in a zone yet (see `Phase::Declared`).
    pub(super) fn is_declared(&self) -> bool {
        matches!(self.phase.get(), Phase::Declared)
    }

    /// The key is stored in the zone at `slot` (`None`: the zone had no
    /// room: counted per worker then); this worker has no cell for it yet.
    pub(super) fn set_stored(&self, slot: Option<SlotRef>) {
        self.phase.set(slot.map_or(Phase::Local, Phase::Stored));
    }

    /// The key's slot while this worker has no cell for it yet
    /// (`needs_cell`).
    pub(super) fn stored_slot(&self) -> Option<SlotRef> {
        match self.phase.get() {
            Phase::Stored(slot) => Some(slot),
            _ => None,
        }
    }

    /// Counting in the zone through `counted` (`None`: the zone had no room
    /// for the key: this worker counts it itself).
    pub(super) fn set_counting(&self, counted: Option<Counted>) {
        self.phase
            .set(counted.map_or(Phase::Local, Phase::Counting));
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
    /// peer lock let go, calls `UpstreamCounters::refresh`, and picks again.
    /// A counter with no cell yet (`needs_cell`) answers `Stale` too,
    /// unchanged: the caller then gets this worker's cells for the list
    /// (`UpstreamCounters::attach_cells`) and picks again.
    /// Returns the hold rather than storing it: storing would first drop
    /// the caller's previous value, a call this path then has to make room
    /// for on every pick.
    #[inline]
    pub fn try_acquire(&self, max_conns: u32) -> Result<Held, NotTaken> {
        let Some(c) = self.counted() else {
            return self.acquire_uncounted().map(Held::Local);
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
    /// stale handle is looked up again on the spot (`refresh`). `None`: at
    /// `max_conns`, pick again.
    pub(super) fn acquire(
        &self,
        link: Option<&ZoneLink>,
        record: Option<RecordRef>,
        max_conns: u32,
    ) -> Option<Held> {
        match self.try_acquire(max_conns) {
            Ok(held) => Some(held),
            Err(NotTaken::AtLimit) => None,
            Err(NotTaken::Stale) => {
                self.refresh(link, record);
                // A key just looked up again is stale again only if removed
                // in the meantime: like full.
                self.try_acquire(max_conns).ok()
            }
        }
    }

    /// No cell yet (see `try_acquire`), or per-worker counting: no zone,
    /// or no room in it. Returns the local count, which `try_acquire` makes
    /// a hold of: an out-of-line call returning a whole `Held` would have
    /// the common path's hold built in memory too.
    #[cold]
    #[inline(never)]
    fn acquire_uncounted(&self) -> Result<Rc<Cell<u32>>, NotTaken> {
        if self.needs_cell() {
            return Err(NotTaken::Stale);
        }
        self.local.set(self.local.get() + 1);
        Ok(Rc::clone(&self.local))
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
    /// counts the server itself. `link`: the zone its upstream counts in,
    /// `record`: this worker's. Locks the zone: the caller must hold no
    /// peer lock. Logs once the zone is unlocked.
    #[cold]
    #[inline(never)]
    pub(super) fn refresh(&self, link: Option<&ZoneLink>, record: Option<RecordRef>) {
        let Some(link) = link else {
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
        let slot = found.or(readded.flatten().map(|(slot, _)| slot));
        self.set_counting(slot.map(|slot| counted_by(record, link, &locked, slot)));
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
    pub(super) fn store(
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

/// A handle on `slot` that attributes counts to `record` (this worker's;
/// `None`, or no cell for it: counted, not recorded).
pub(super) fn counted_by(
    record: Option<RecordRef>,
    link: &ZoneLink,
    locked: &Locked,
    slot: SlotRef,
) -> Counted {
    let mine = record
        .and_then(|record| link.table.cell(locked, record, slot))
        .unwrap_or_else(CellRef::unrecorded);
    Counted { slot, mine }
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

    /// The weight and `max_conns` the server was registered (or followed)
    /// with, saturated as the pick compares them: round-robin's, as the
    /// counters match the peer list.
    #[inline(always)]
    fn weight(&self) -> Option<u32> {
        Some(self.meta.weight)
    }

    #[inline(always)]
    fn max_conns(&self) -> Option<u32> {
        Some(self.meta.max_conns)
    }

    #[inline(always)]
    fn count_and_bits(&self) -> (Option<u32>, u32) {
        match self.counted() {
            Some(c) => (Some(c.slot.count_hint()), c.slot.check_bits()),
            None => (None, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::tests::HeapArena;
    use crate::core::table::Table;

    fn counter() -> PeerCounter {
        PeerCounter::new(b"backend", b"10.0.0.1:80", Meta::default())
    }

    /// The counter's key stored in a table on the heap (leaked).
    fn stored(a: &HeapArena, pc: &PeerCounter) -> (&'static Table, SlotRef) {
        let t = Table::create(a, 64).expect("room for a table");
        // SAFETY: just created in `a`, never freed.
        let t: &'static Table = unsafe { &*t.as_ptr() };
        let epoch = t.begin_epoch(a);
        let slot = t.upsert(a, &pc.key, pc.upstream_len, pc.meta, epoch);
        (t, slot.expect("room for a key"))
    }

    fn counting(pc: &PeerCounter, slot: SlotRef) {
        pc.set_counting(Some(Counted {
            slot,
            mine: CellRef::unrecorded(),
        }));
    }

    #[test]
    fn the_key_names_the_upstream_and_the_server() {
        let pc = counter();
        assert_eq!(&*pc.key, b"conn_count:backend:10.0.0.1:80");
        assert_eq!(pc.server(), b"10.0.0.1:80");
    }

    #[test]
    fn a_declared_counter_counts_in_this_worker() {
        let pc = counter();
        assert!(!pc.in_zone() && pc.is_declared());
        assert!(matches!(pc.try_acquire(0), Ok(Held::Local(_))));
        assert!(matches!(pc.try_acquire(0), Ok(Held::Local(_))));
        assert_eq!((pc.local_count(), pc.count()), (2, Some(2)));
        assert_eq!(pc.count_hint_or_local(), 2);
        // The pick compares no shared count for it.
        assert_eq!(pc.count_hint(), None);
    }

    #[test]
    fn a_stored_counter_asks_for_its_cell_and_counts_nothing() {
        let a = HeapArena::new(1 << 20);
        let pc = counter();
        let (_, slot) = stored(&a, &pc);
        pc.set_stored(Some(slot));
        assert!(pc.in_zone() && pc.needs_cell());
        assert_eq!(pc.stored_slot(), Some(slot));
        assert_eq!(pc.try_acquire(0).err(), Some(NotTaken::Stale));
        // Not stale: it needs its cell, not another look-up.
        assert!(pc.needs_cell() && !pc.is_stale());
        assert_eq!((slot.count(), pc.local_count()), (Some(0), 0));
    }

    #[test]
    fn a_counting_counter_takes_from_the_zone_up_to_max_conns() {
        let a = HeapArena::new(1 << 20);
        let pc = counter();
        let (_, slot) = stored(&a, &pc);
        counting(&pc, slot);
        assert!(!pc.needs_cell() && pc.stored_slot().is_none());
        assert!(matches!(pc.try_acquire(1), Ok(Held::Shared(c)) if c.slot == slot));
        assert_eq!(pc.try_acquire(1).err(), Some(NotTaken::AtLimit));
        assert_eq!((slot.count(), pc.count_hint()), (Some(1), Some(1)));
        assert_eq!(pc.local_count(), 0);
    }

    #[test]
    fn a_removed_key_leaves_the_counter_stale_until_it_is_counted_again() {
        let a = HeapArena::new(1 << 20);
        let pc = counter();
        let (table, slot) = stored(&a, &pc);
        counting(&pc, slot);
        assert!(table.remove_idle(&a, slot));
        assert_eq!(pc.try_acquire(0).err(), Some(NotTaken::Stale));
        assert!(pc.is_stale() && pc.slot().is_none());
        pc.count_locally();
        assert!(!pc.is_stale() && !pc.in_zone());
        assert!(matches!(pc.try_acquire(0), Ok(Held::Local(_))));
    }

    #[test]
    fn no_room_in_the_zone_means_counting_in_this_worker() {
        for pc in [counter(), counter()] {
            pc.set_stored(None);
            assert!(!pc.in_zone() && !pc.needs_cell());
            assert!(matches!(pc.try_acquire(0), Ok(Held::Local(_))));
            pc.set_counting(None);
            assert!(matches!(pc.try_acquire(0), Ok(Held::Local(_))));
            assert_eq!(pc.local_count(), 2);
        }
    }
}
