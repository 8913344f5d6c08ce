//! What readers copy out of the table under the lock: every key as the
//! status page shows it, and an upstream's keys for rebalancing.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::flags::Flag;
use super::header::{Arena, Table};
use super::health::HealthView;
use super::slot::{count_of, Meta, SlotRef};
use crate::core::key;

/// One key as the status page shows it.
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    pub key: &'a [u8],
    pub upstream_len: usize,
    pub count: u32,
    pub meta: Meta,
    /// When its slow start began (0: never); see `ramp::elapsed`.
    pub ramp_since: u32,
    /// Connections rebalancing closed, and whether the upstream sheds now.
    pub shed: u32,
    pub shedding: bool,
    /// What health checks found (`None`: the key is not checked).
    pub health: Option<HealthView>,
}

impl Table {
    /// Calls `f` for every key, under the lock the caller holds.
    pub fn for_each(&self, locked: &impl Arena, mut f: impl FnMut(EntryView<'_>)) {
        self.assert_locked(locked);
        for slot in self.all_slots() {
            f(EntryView {
                // SAFETY: lock held; used slot.
                key: unsafe { slot.key() },
                upstream_len: slot.upstream_len.load(Ordering::Relaxed) as usize,
                count: count_of(slot.word.load(Ordering::Acquire)),
                meta: slot.meta(),
                ramp_since: slot.ramp_since.load(Ordering::Relaxed),
                shed: slot.rebalancing().0,
                shedding: slot.rebalancing().1,
                health: self.health_view(slot),
            });
        }
    }

    /// Room for `upstream_keys`, for as many keys as the table has and some
    /// more, its memory written once here: the first touch of fresh pages
    /// (page faults) happens before the lock, not under it.
    pub fn key_room(&self) -> Vec<SlotRef> {
        let placeholder = SlotRef {
            slot: NonNull::dangling(),
            generation: 0,
        };
        let mut room = vec![placeholder; self.keys() as usize + 8];
        // Kept: the writes are the point.
        std::hint::black_box(&room);
        room.clear();
        room
    }

    /// Handles on the keys of `upstream` (nginx's, not Lua's) into `out`,
    /// without growing it (nothing is allocated under the lock): false if
    /// they do not all fit.
    pub fn upstream_keys(
        &self,
        locked: &impl Arena,
        upstream: &[u8],
        out: &mut Vec<SlotRef>,
    ) -> bool {
        self.assert_locked(locked);
        out.clear();
        for slot in self.all_slots() {
            // SAFETY: lock held; used slot.
            let key = unsafe { slot.key() };
            let ours = !slot.flags.has(Flag::Lua)
                && key::split_key(key).is_some_and(|(u, _)| u == upstream);
            if !ours {
                continue;
            }
            if out.len() == out.capacity() {
                return false;
            }
            out.push(Self::handle(slot));
        }
        true
    }
}
