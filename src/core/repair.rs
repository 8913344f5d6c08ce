//! Locking the zone marks its table dirty, unlocking clears the mark, and
//! whoever locks a table left dirty repairs it first (the discipline is
//! written down in `table.rs`). Here, above both the table and the worker
//! records, as the repair needs both.

use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use super::table::{Arena, Table};

impl Table {
    /// Called by the zone's lock guard right after locking: repairs what a
    /// holder that died left, then marks the table dirty until `leave`.
    /// Returns whether a repair was needed.
    pub fn enter(&self, locked: &impl Arena) -> bool {
        self.check(locked);
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
    /// docs of `table.rs`): finishes a give-back, rebuilds the indexes from
    /// the blocks, frees memory the journal names that nothing reaches, and
    /// removes the draining keys nothing counts on any more. Idempotent: a
    /// holder that dies repairing leaves work for the next.
    fn repair(&self, locked: &impl Arena) {
        self.count_repair();
        self.finish_give_back();
        self.rebuild_indexes(locked);
        self.repair_records(locked);
        for p in [&self.journal.alloc, &self.journal.freeing] {
            let chunk = p.load(Ordering::Relaxed);
            if let Some(c) = NonNull::new(chunk) {
                if !self.slots_reach(chunk) && !self.record_reaches(chunk) {
                    // SAFETY: zone memory nothing reaches: allocated and
                    // never linked, or unlinked and not yet freed.
                    unsafe { locked.free(c) };
                }
            }
            p.store(ptr::null_mut(), Ordering::Relaxed);
        }
        self.remove_idle_draining(locked);
        self.reconcile_health();
    }
}
