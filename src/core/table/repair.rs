//! The table's crash repair: locking the zone marks its table dirty, unlocking
//! clears the mark, and whoever locks a table left dirty repairs it first
//! (the discipline is written down in `mod.rs`): the indexes rebuilt from
//! the blocks, the journal's step finished, the checks' bits recomputed.

use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use super::flags::Flag;
use super::header::{Arena, Table};

impl Table {
    /// Called by the zone's lock guard right after locking: repairs what a
    /// holder that died left, then marks the table dirty until `leave`.
    /// Returns whether a repair was needed.
    pub fn enter(&self, locked: &impl Arena) -> bool {
        self.assert_locked(locked);
        let dirty = self.is_dirty();
        if dirty {
            self.repair(locked);
        }
        self.set_dirty(true);
        dirty
    }

    /// Called by the zone's lock guard right before unlocking.
    pub fn leave(&self, _locked: &impl Arena) {
        self.set_dirty(false);
    }

    /// Brings a table a dead lock holder left back to a valid state (module
    /// docs): finishes a give-back, rebuilds the indexes from
    /// the blocks, frees memory the journal names that nothing reaches, and
    /// removes the draining keys nothing counts on any more. Idempotent: a
    /// holder that dies repairing leaves work for the next.
    pub(super) fn repair(&self, locked: &impl Arena) {
        self.count_repair();
        self.finish_give_back();
        self.rebuild_indexes(locked);
        self.repair_records(locked);
        for p in [&self.journal.alloc, &self.journal.freeing] {
            let chunk = p.load(Ordering::Relaxed);
            if let Some(c) = NonNull::new(chunk) {
                if !self.slots_reach(chunk)
                    && !self.record_reaches(chunk)
                    && !self.pick_indexes_reach(chunk)
                {
                    // SAFETY: zone memory nothing reaches: allocated and
                    // never linked, or unlinked and not yet freed.
                    unsafe { locked.free(c) };
                }
            }
            p.store(ptr::null_mut(), Ordering::Relaxed);
        }
        self.remove_idle_draining(locked);
        self.reconcile_health();
        // Last: from the counts as the steps above left them.
        self.rebuild_pick_indexes();
    }

    /// Whether a holder died with the lock.
    fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire) != 0
    }

    fn set_dirty(&self, dirty: bool) {
        self.dirty.store(u32::from(dirty), Ordering::Release);
    }

    fn count_repair(&self) {
        self.repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// Repair: removes the draining keys nothing counts on any more.
    fn remove_idle_draining(&self, locked: &impl Arena) {
        for slot in self.all_slots() {
            if slot.flags.has(Flag::Draining) {
                self.try_remove(locked, slot);
            }
        }
    }

    /// Chains, free list, key and block counts, from the blocks.
    fn rebuild_indexes(&self, locked: &impl Arena) {
        for b in self.buckets() {
            b.store(ptr::null_mut(), Ordering::Relaxed);
        }
        self.free.store(ptr::null_mut(), Ordering::Relaxed);
        let (mut keys, mut blocks) = (0, 0);
        for block in self.blocks() {
            blocks += 1;
            for slot in block.slots.iter().rev() {
                if slot.is_used() {
                    keys += 1;
                    let bucket = self.bucket(slot.hash.load(Ordering::Relaxed));
                    slot.next
                        .store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
                    bucket.store(ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
                } else {
                    // A key added or removed half way: its bytes go,
                    // through the journal (the chunk the journal is
                    // already freeing is left to it).
                    let k = slot.key.load(Ordering::Relaxed);
                    if !k.is_null() && k == self.journal.freeing.load(Ordering::Relaxed) {
                        slot.key.store(ptr::null_mut(), Ordering::Relaxed);
                    }
                    self.free_key(locked, slot);
                    self.push_free(slot);
                }
            }
        }
        self.keys.store(keys, Ordering::Relaxed);
        self.nblocks.store(blocks, Ordering::Relaxed);
    }

    /// Whether `chunk` is zone memory the table itself reaches: a block,
    /// a block's health page, or a key.
    pub(super) fn slots_reach(&self, chunk: *mut u8) -> bool {
        self.blocks().any(|b| ptr::eq(b, chunk.cast()))
            || self
                .blocks()
                .any(|b| b.health.load(Ordering::Relaxed).cast() == chunk)
            || self
                .blocks()
                .flat_map(|b| b.slots.iter())
                .any(|s| s.key.load(Ordering::Relaxed) == chunk)
    }

    /// Repair: finishes the give-back of a cell the journal names.
    pub(super) fn finish_give_back(&self) {
        let j = &self.journal;
        // SAFETY: the journal names a cell of a record still listed (a
        // record is unlinked only after its last give-back) and a slot.
        let Some(cell) = (unsafe { j.cell.load(Ordering::Acquire).as_ref() }) else {
            return;
        };
        // SAFETY: as above; slots live in blocks that are never freed.
        let slot = unsafe { &*j.cell_slot.load(Ordering::Relaxed) };
        if j.cell_subtracted.load(Ordering::Acquire) == 0 {
            let taken = slot.subtract(j.cell_held.load(Ordering::Relaxed));
            if j.cell_dead.load(Ordering::Relaxed) != 0 {
                self.reclaimed
                    .fetch_add(u64::from(taken), Ordering::Relaxed);
            }
            j.cell_subtracted.store(1, Ordering::Release);
        }
        cell.store(0, Ordering::Relaxed);
        j.cell.store(ptr::null_mut(), Ordering::Release);
    }
}
