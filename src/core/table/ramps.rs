//! Slow start in the table: when a key's ramp begins, a new window, and
//! the table-wide gate that lets picks skip ramps when none runs.

use core::sync::atomic::Ordering;

use super::header::Table;
use super::slot::{generation_of, Slot, SlotRef};
use crate::core::ramp;

impl Table {
    /// A new window for `slot`'s ramp (a reload changed `slow_start`): a
    /// ramp that is over stays over (not judged again by the new window),
    /// one that runs goes on to the new end.
    pub(super) fn rewindow(&self, slot: &Slot, window: u32, now: u32) {
        if window == slot.ramp_window.load(Ordering::Relaxed) {
            return;
        }
        match slot.ramp(now) {
            Some(_) => {
                let since = slot.ramp_since.load(Ordering::Relaxed);
                self.ramps_until
                    .fetch_max(since.saturating_add(window), Ordering::Relaxed);
            }
            None => slot.ramp_since.store(0, Ordering::Relaxed),
        }
    }

    /// Starts `slot`'s ramp over `window` at `now` (0: none); under the lock.
    /// The table's gate first: a kill in between leaves it open a while,
    /// which costs picks a look at each key's ramp, nothing more.
    pub(super) fn begin_ramp(&self, slot: &Slot, window: u32, now: u32) {
        if window != 0 && now != 0 {
            self.ramps_until
                .fetch_max(now.saturating_add(window), Ordering::Relaxed);
            slot.ramp_since.store(now, Ordering::Relaxed);
        }
    }

    /// Starts `slot`'s ramp at `now` over its own window: a key the checks
    /// bring back up (`checks.rs`); under the lock.
    pub(super) fn begin_ramp_checked(&self, slot: &Slot, now: u32) {
        self.begin_ramp(slot, slot.ramp_window.load(Ordering::Relaxed), now);
    }

    /// Whether some key may be ramping at `now` (deciseconds): picks then
    /// look at each key's ramp (`SlotRef::ramp`). Lock-free.
    #[inline]
    pub fn ramping(&self, now: u32) -> bool {
        now < self.ramps_until.load(Ordering::Relaxed)
    }

    /// Starts the ramp of the key `slot` holds at `now`, unless it is
    /// ramping already: a server back from `max_fails`, which a worker
    /// sees when a trial connection to it succeeds. Lock-free; the caller
    /// holds a count on the key, so the slot cannot be removed or reused
    /// meanwhile. `true` if this call started it.
    pub fn start_ramp(&self, slot: SlotRef, now: u32) -> bool {
        let s = slot.slot();
        let window = s.ramp_window.load(Ordering::Relaxed);
        let since = s.ramp_since.load(Ordering::Relaxed);
        if window == 0 || now == 0 || ramp::elapsed(now, since, window).is_some() {
            return false;
        }
        // A handle on a key removed since (its count given back) must not
        // mark the next key of the slot.
        if generation_of(s.word.load(Ordering::Acquire)) != slot.generation {
            return false;
        }
        self.ramps_until
            .fetch_max(now.saturating_add(window), Ordering::Relaxed);
        s.ramp_since
            .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}
