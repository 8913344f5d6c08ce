//! Keys in the table: stamping and adding them, the free list and growing,
//! removing, and what a reload (`sweep`), DNS (`drain`) and Lua's expiry
//! remove.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use super::flags::{Flag, FLAG_CHECKED, FLAG_LUA, OUT};
use super::header::{Arena, Block, Table};
use super::slot::{count_of, generation_of, pack, Meta, RampStart, Slot, SlotRef, SLOTS_PER_BLOCK};
use crate::core::crash;
use crate::core::key;
use crate::core::sweep::{plan, Action};

/// Whether configuration epoch `a` is later than `b` (epochs wrap).
pub(super) fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The zone has no room for another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub removed: u32,
    pub draining: u32,
}

impl Table {
    /// Records `meta` and `epoch` on a key found stored, unless a later
    /// configuration declares it: an older worker (following DNS, or
    /// looking up a stale handle) never marks a key the current
    /// configuration declares as draining, nor moves its epoch back. Lua
    /// keys' epochs are seconds, and always move on. A key that comes back
    /// from `down` or draining starts its ramp (`ramp`).
    fn restamp(&self, slot: &Slot, meta: Meta, epoch: u32, ramp: RampStart) {
        let stored = slot.epoch.load(Ordering::Relaxed);
        if meta.flags & FLAG_LUA != 0 || !newer(stored, epoch) {
            let was_out = slot.flags.any(OUT);
            if was_out && meta.flags & OUT == 0 {
                // Before the flags: a kill in between leaves a ramp on a
                // key still out, which the stamp that brings it back
                // starts again.
                self.begin_ramp(slot, meta.slow_start, ramp.now);
            } else {
                self.rewindow(slot, meta.slow_start, ramp.now);
            }
            if meta.flags & FLAG_CHECKED == 0 && slot.meta().flags & FLAG_CHECKED != 0 {
                // Checks removed: what they found goes with them.
                self.forget_health(slot);
            }
            slot.set_meta(meta, epoch);
        }
    }

    /// Stamps `key` with `epoch` and records `meta`, if it is stored.
    pub fn stamp(
        &self,
        locked: &impl Arena,
        key: &[u8],
        meta: Meta,
        epoch: u32,
    ) -> Option<SlotRef> {
        self.stamp_at(locked, key, meta, epoch, RampStart::NEVER)
    }

    /// `stamp`, starting a ramp as `ramp` says (`RampStart`).
    pub fn stamp_at(
        &self,
        locked: &impl Arena,
        key: &[u8],
        meta: Meta,
        epoch: u32,
        ramp: RampStart,
    ) -> Option<SlotRef> {
        self.assert_locked(locked);
        let slot = self.find_slot(key, key::hash(key))?;
        self.restamp(slot, meta, epoch, ramp);
        Some(Self::handle(slot))
    }

    /// Finds or adds `key`, stamps it with `epoch` and records `meta` (see
    /// `restamp` for a key a later configuration declares).
    pub fn upsert(
        &self,
        locked: &impl Arena,
        key: &[u8],
        upstream_len: usize,
        meta: Meta,
        epoch: u32,
    ) -> Result<SlotRef, Full> {
        self.upsert_at(locked, key, upstream_len, meta, epoch, RampStart::NEVER)
    }

    /// `upsert`, starting a ramp as `ramp` says (`RampStart`).
    pub fn upsert_at(
        &self,
        locked: &impl Arena,
        key: &[u8],
        upstream_len: usize,
        meta: Meta,
        epoch: u32,
        ramp: RampStart,
    ) -> Result<SlotRef, Full> {
        self.assert_locked(locked);
        let hash = key::hash(key);
        if let Some(slot) = self.find_slot(key, hash) {
            self.restamp(slot, meta, epoch, ramp);
            return Ok(Self::handle(slot));
        }
        if key.is_empty() || key.len() > u32::MAX as usize {
            return Err(Full);
        }
        let slot = self.free_slot(locked).ok_or(Full)?;
        let bytes = locked.alloc(key.len()).ok_or(Full)?;
        // Reachable from the slot at once: a kill from here on leaves an
        // unused slot holding a key, whose bytes repair frees.
        slot.key.store(bytes.as_ptr(), Ordering::Relaxed);
        crash::point("insert.claimed");
        // SAFETY: fresh chunk of key.len() bytes.
        unsafe { ptr::copy_nonoverlapping(key.as_ptr(), bytes.as_ptr(), key.len()) };
        slot.upstream_len
            .store(upstream_len as u32, Ordering::Relaxed);
        slot.hash.store(hash, Ordering::Relaxed);
        // A new key starts with nothing checked, and no run-time bits.
        self.forget_health(slot);
        slot.flags.clear();
        slot.set_meta(meta, epoch);
        // The new key's ramp (none for a key added down or draining), written
        // before the key is published.
        slot.ramp_since.store(0, Ordering::Relaxed);
        if ramp.new_keys && meta.flags & OUT == 0 {
            self.begin_ramp(slot, meta.slow_start, ramp.now);
        }
        // Published: from here the slot is the key's, chained or not.
        slot.key_len.store(key.len() as u32, Ordering::Release);
        self.pop_free(slot);
        crash::point("insert.published");
        let bucket = self.bucket(hash);
        slot.next
            .store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
        bucket.store(ptr::from_ref(slot).cast_mut(), Ordering::Release);
        self.keys.fetch_add(1, Ordering::Relaxed);
        Ok(Self::handle(slot))
    }

    fn free_slot(&self, locked: &impl Arena) -> Option<&Slot> {
        if self.free.load(Ordering::Relaxed).is_null() {
            self.grow(locked)?;
        }
        // SAFETY: the free list links free slots inside live blocks.
        unsafe { self.free.load(Ordering::Relaxed).as_ref() }
    }

    /// Takes `slot`, the head of the free list, off it.
    fn pop_free(&self, slot: &Slot) {
        debug_assert!(ptr::eq(self.free.load(Ordering::Relaxed), slot));
        self.free
            .store(slot.next.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(super) fn push_free(&self, slot: &Slot) {
        self.drop_check_bits(slot);
        slot.flags.clear();
        slot.ramp_since.store(0, Ordering::Relaxed);
        slot.next
            .store(self.free.load(Ordering::Relaxed), Ordering::Relaxed);
        self.free
            .store(ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
    }

    pub(super) fn grow(&self, locked: &impl Arena) -> Option<()> {
        let block = locked.alloc(size_of::<Block>())?.cast::<Block>();
        self.journal
            .alloc
            .store(block.as_ptr().cast(), Ordering::Relaxed);
        crash::point("grow.allocated");
        let index = self.nblocks.load(Ordering::Relaxed);
        // SAFETY: fresh, 64-byte aligned memory the size of a Block.
        let block = unsafe {
            ptr::addr_of_mut!((*block.as_ptr()).next).write(AtomicPtr::new(ptr::null_mut()));
            ptr::addr_of_mut!((*block.as_ptr()).index).write(index);
            ptr::addr_of_mut!((*block.as_ptr()).health).write(AtomicPtr::new(ptr::null_mut()));
            for i in 0..SLOTS_PER_BLOCK {
                let slot = Slot::empty();
                slot.id
                    .store(index * SLOTS_PER_BLOCK as u32 + i as u32, Ordering::Relaxed);
                ptr::addr_of_mut!((*block.as_ptr()).slots[i]).write(slot);
            }
            &*block.as_ptr()
        };
        block
            .next
            .store(self.blocks.load(Ordering::Relaxed), Ordering::Relaxed);
        self.blocks
            .store(ptr::from_ref(block).cast_mut(), Ordering::Release);
        self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        crash::point("grow.linked");
        self.nblocks.store(index + 1, Ordering::Relaxed);
        for slot in block.slots.iter().rev() {
            self.push_free(slot);
        }
        Some(())
    }

    /// Frees `slot` if its count is zero; the generation bump and the zero
    /// check are one CAS, so no worker can count into it meanwhile.
    pub(super) fn try_remove(&self, locked: &impl Arena, slot: &Slot) -> bool {
        let w = slot.word.load(Ordering::Acquire);
        if count_of(w) != 0 || !slot.is_used() {
            return false;
        }
        let retired = pack(generation_of(w).wrapping_add(1), 0);
        if slot
            .word
            .compare_exchange(w, retired, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // Retracted: from here the slot is free, chained or not.
        slot.key_len.store(0, Ordering::Release);
        crash::point("remove.retired");
        let hash = slot.hash.load(Ordering::Relaxed);
        let mut link = self.bucket(hash);
        // SAFETY: lock held; the slot is chained in its bucket unless a
        // repair already rebuilt the chain without it.
        unsafe {
            while let Some(at) = link.load(Ordering::Relaxed).as_ref() {
                if ptr::eq(at, slot) {
                    link.store(slot.next.load(Ordering::Relaxed), Ordering::Release);
                    break;
                }
                link = &at.next;
            }
        }
        crash::point("remove.unlinked");
        self.free_key(locked, slot);
        self.push_free(slot);
        self.keys.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Frees the key bytes of a slot no longer in use.
    pub(super) fn free_key(&self, locked: &impl Arena, slot: &Slot) {
        let Some(k) = NonNull::new(slot.key.load(Ordering::Relaxed)) else {
            return;
        };
        self.journal.freeing.store(k.as_ptr(), Ordering::Relaxed);
        slot.key.store(ptr::null_mut(), Ordering::Relaxed);
        crash::point("remove.freeing");
        // SAFETY: the slot's own key chunk, now unreachable.
        unsafe { locked.free(k) };
        self.journal
            .freeing
            .store(ptr::null_mut(), Ordering::Relaxed);
    }

    /// Removes or drains every key the load of `epoch` did not declare. A
    /// key is marked draining before its count is read, so that a last
    /// release in between sees the mark and removes it.
    pub fn sweep(&self, locked: &impl Arena, epoch: u32) -> Sweep {
        self.assert_locked(locked);
        let mut done = Sweep::default();
        for slot in self.all_slots() {
            if slot.flags.has(Flag::Lua) {
                continue;
            }
            let key_epoch = slot.epoch.load(Ordering::Relaxed);
            if plan(key_epoch, epoch, 1) == Action::Keep {
                continue;
            }
            // SeqCst here and in `SlotRef::release` (its decrement, then
            // its read of the flag): either the release sees the mark and
            // removes the key once idle, or this read sees its decrement.
            slot.flags.mark_draining();
            crash::point("sweep.marked");
            let count = count_of(slot.word.load(Ordering::SeqCst));
            let removed =
                plan(key_epoch, epoch, count) == Action::Remove && self.try_remove(locked, slot);
            done.removed += u32::from(removed);
            done.draining += u32::from(!removed);
        }
        done
    }

    /// A key no longer declared by the configuration of `epoch`: removed
    /// now if idle, else draining until its last connection closes. A key
    /// a later configuration declares is left alone (an older worker
    /// following DNS must not drain it); Lua keys have no such epochs.
    pub fn drain(&self, locked: &impl Arena, at: SlotRef, epoch: u32) {
        self.assert_locked(locked);
        if at.count().is_none() {
            return;
        }
        let slot = at.slot();
        let lua = slot.flags.has(Flag::Lua);
        if !lua && newer(slot.epoch.load(Ordering::Relaxed), epoch) {
            return;
        }
        // SeqCst, with the count's read and `SlotRef::release`: one of the
        // two sees the other (see `sweep`).
        slot.flags.mark_draining();
        if count_of(slot.word.load(Ordering::SeqCst)) == 0 {
            self.try_remove(locked, slot);
        }
    }

    /// Removes `at` if nothing counts on it (a key just added, given up).
    pub fn remove_idle(&self, locked: &impl Arena, at: SlotRef) -> bool {
        self.assert_locked(locked);
        at.count() == Some(0) && self.try_remove(locked, at.slot())
    }

    /// Removes the Lua keys that are idle and were neither declared nor
    /// picked in the `ttl` seconds before `now`; returns how many.
    pub fn expire_lua(&self, locked: &impl Arena, now: u32, ttl: u32) -> u32 {
        self.assert_locked(locked);
        let mut removed = 0;
        for slot in self.all_slots() {
            let lua = slot.flags.has(Flag::Lua);
            let unused = now.wrapping_sub(slot.epoch.load(Ordering::Relaxed)) > ttl;
            if lua && unused && self.try_remove(locked, slot) {
                removed += 1;
            }
        }
        removed
    }

    /// Frees a draining key whose last connection just closed.
    pub fn remove_if_drained(&self, locked: &impl Arena, at: SlotRef) -> bool {
        self.assert_locked(locked);
        let slot = at.slot();
        at.count() == Some(0) && at.is_draining() && self.try_remove(locked, slot)
    }
}
