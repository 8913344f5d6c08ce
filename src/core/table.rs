//! The counter table that lives in the shared zone.
//!
//! Layout, all inside the zone's slab pool:
//! - a `Table` header, found again through the pool's `data` pointer when a
//!   reload reuses the zone;
//! - a fixed array of hash buckets, each a chain of slots;
//! - slots, carved from page-sized blocks that are never given back to the
//!   pool, so a pointer to a slot always points at a slot;
//! - key bytes, one slab chunk per key, freed with the key.
//!
//! A slot's counter and generation share one 64-bit word. Workers keep
//! `SlotRef`s (pointer + generation) and update the word lock-free with
//! compare-and-swap; freeing a slot bumps the generation in the same CAS that
//! checks the count is zero, so a stale `SlotRef` can neither count into a
//! reused slot nor race with its removal. Everything else (buckets, keys,
//! metadata) changes only under the zone lock, which the caller proves by
//! passing the `Arena` it got from locking the zone.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::key;
use super::sweep::{plan, Action};

/// Memory of the zone, handed out only while the zone lock is held.
pub trait Arena {
    /// Memory aligned to 64 bytes for sizes of 64 and more, to 8 otherwise.
    fn alloc(&self, size: usize) -> Option<NonNull<u8>>;
    /// # Safety
    /// `ptr` came from `alloc` of the same zone and is not used afterwards.
    unsafe fn free(&self, ptr: NonNull<u8>);
}

const MAGIC: u64 = 0x4c43_5031_0000_0002; // "LCP1", layout 2 (worker records)
pub(super) const SLOTS_PER_BLOCK: usize = 63; // a block is then exactly 4 KiB

pub const FLAG_BACKUP: u32 = 1;
pub const FLAG_DOWN: u32 = 2;
pub const FLAG_DRAINING: u32 = 4;
/// Declared from Lua (the C ABI), not by nginx's configuration: reloads do
/// not sweep it; its `epoch` is the second it was last declared or picked.
pub const FLAG_LUA: u32 = 8;

const fn pack(generation: u32, count: u32) -> u64 {
    ((generation as u64) << 32) | count as u64
}
fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}
fn count_of(word: u64) -> u32 {
    word as u32
}

#[repr(C, align(64))]
#[derive(Debug)]
pub struct Slot {
    word: AtomicU64,
    pub(super) flags: AtomicU32,
    epoch: AtomicU32,
    weight: AtomicU32,
    max_conns: AtomicU32,
    hash: AtomicU32,
    /// 0 marks a free slot.
    key_len: AtomicU32,
    upstream_len: AtomicU32,
    /// Where the slot sits: block index * SLOTS_PER_BLOCK + position. Worker
    /// records keep their share of the count under this number.
    pub(super) id: AtomicU32,
    key: AtomicPtr<u8>,
    /// Next slot in the bucket chain, or in the free list.
    next: AtomicPtr<Slot>,
}

#[repr(C)]
#[derive(Debug)]
pub(super) struct Block {
    next: AtomicPtr<Block>,
    /// 0 for the first block allocated, then 1, 2, ...
    index: u32,
    pub(super) slots: [Slot; SLOTS_PER_BLOCK],
}

#[repr(C)]
#[derive(Debug)]
pub struct Table {
    magic: u64,
    epoch: AtomicU32,
    keys: AtomicU32,
    nbuckets: u32,
    buckets: NonNull<AtomicPtr<Slot>>,
    blocks: AtomicPtr<Block>,
    nblocks: AtomicU32,
    free: AtomicPtr<Slot>,
    /// The records of the worker processes that count here (`record.rs`).
    pub(super) workers: AtomicPtr<super::record::WorkerRecord>,
    /// Connections given back on behalf of workers that died holding them.
    pub(super) reclaimed: AtomicU64,
}

/// Per-server data written by each configuration load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub weight: u32,
    /// 0: unlimited.
    pub max_conns: u32,
    pub flags: u32,
}

/// The zone has no room for another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A worker's handle on one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRef {
    slot: NonNull<Slot>,
    generation: u32,
}

// SAFETY: a SlotRef points into shared memory that stays mapped for the life
// of every process that holds one, and the slot is only touched atomically.
unsafe impl Send for SlotRef {}
unsafe impl Sync for SlotRef {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    Taken,
    /// The count is at `max_conns` (another worker may just have taken it).
    AtLimit,
    /// The key was removed since this handle was made: look it up again.
    Stale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Released {
        now_idle_draining: bool,
    },
    /// The count was already zero and stays there: a bug somewhere.
    Underflow,
    Stale,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub removed: u32,
    pub draining: u32,
}

/// One key as the status page shows it.
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    pub key: &'a [u8],
    pub upstream_len: usize,
    pub count: u32,
    pub meta: Meta,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            word: AtomicU64::new(pack(1, 0)),
            flags: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
            weight: AtomicU32::new(0),
            max_conns: AtomicU32::new(0),
            hash: AtomicU32::new(0),
            key_len: AtomicU32::new(0),
            upstream_len: AtomicU32::new(0),
            id: AtomicU32::new(0),
            key: AtomicPtr::new(ptr::null_mut()),
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    pub(super) fn is_used(&self) -> bool {
        self.key_len.load(Ordering::Relaxed) != 0
    }

    /// # Safety
    /// Zone lock held and the slot in use.
    pub(super) unsafe fn key(&self) -> &[u8] {
        let len = self.key_len.load(Ordering::Relaxed) as usize;
        core::slice::from_raw_parts(self.key.load(Ordering::Relaxed), len)
    }

    /// Takes up to `n` off the count (a dead worker's share); returns how
    /// many it took. The generation stays: the slot is still the same key.
    pub(super) fn subtract(&self, n: u32) -> u32 {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let take = count_of(w).min(n);
            match self.word.compare_exchange_weak(
                w,
                w - u64::from(take),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return take,
                Err(now) => w = now,
            }
        }
    }

    fn meta(&self) -> Meta {
        Meta {
            weight: self.weight.load(Ordering::Relaxed),
            max_conns: self.max_conns.load(Ordering::Relaxed),
            flags: self.flags.load(Ordering::Relaxed),
        }
    }

    fn set_meta(&self, meta: Meta, epoch: u32) {
        self.weight.store(meta.weight, Ordering::Relaxed);
        self.max_conns.store(meta.max_conns, Ordering::Relaxed);
        self.flags.store(meta.flags, Ordering::Relaxed);
        self.epoch.store(epoch, Ordering::Relaxed);
    }
}

impl SlotRef {
    pub(super) fn slot(&self) -> &Slot {
        // SAFETY: slots live in blocks that are never freed (module docs).
        unsafe { self.slot.as_ref() }
    }

    /// The live count, or `None` when the handle is stale.
    pub fn count(&self) -> Option<u32> {
        let w = self.slot().word.load(Ordering::Acquire);
        (generation_of(w) == self.generation).then_some(count_of(w))
    }

    /// The count for comparing peers, without the generation check: a stale
    /// handle (a key removed while an old worker still runs) can at worst
    /// misjudge one pick; `acquire` then sees the new generation and the
    /// caller looks the key up again. Saves the check on every peer of
    /// every pick.
    pub fn count_hint(&self) -> u32 {
        count_of(self.slot().word.load(Ordering::Relaxed))
    }

    /// Counts one more connection unless `max_conns` (0: none) is reached.
    pub fn acquire(&self, max_conns: u32) -> Acquire {
        let word = &self.slot().word;
        // No max_conns still stops short of wrapping the 32-bit count.
        let limit = if max_conns == 0 { u32::MAX } else { max_conns };
        let mut w = word.load(Ordering::Acquire);
        loop {
            if generation_of(w) != self.generation {
                return Acquire::Stale;
            }
            if count_of(w) >= limit {
                return Acquire::AtLimit;
            }
            match word.compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Acquire::Taken,
                Err(now) => w = now,
            }
        }
    }

    /// Counts one connection less; never below zero.
    pub fn release(&self) -> Release {
        let slot = self.slot();
        let mut w = slot.word.load(Ordering::Acquire);
        loop {
            if generation_of(w) != self.generation {
                return Release::Stale;
            }
            if count_of(w) == 0 {
                return Release::Underflow;
            }
            match slot
                .word
                .compare_exchange_weak(w, w - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let draining = slot.flags.load(Ordering::Relaxed) & FLAG_DRAINING != 0;
                    return Release::Released {
                        now_idle_draining: draining && count_of(w) == 1,
                    };
                }
                Err(now) => w = now,
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.flags() & FLAG_DRAINING != 0
    }

    pub fn flags(&self) -> u32 {
        self.slot().flags.load(Ordering::Relaxed)
    }

    /// Marks a Lua key as used at second `now` (see `Table::expire_lua`).
    #[inline]
    pub fn touch(&self, now: u32) {
        self.slot().epoch.store(now, Ordering::Relaxed);
    }
}

impl Table {
    /// Bytes of zone memory `create` takes for `nbuckets` buckets.
    pub fn overhead(nbuckets: u32) -> usize {
        size_of::<Table>() + nbuckets as usize * size_of::<AtomicPtr<Slot>>()
    }

    /// Bucket count for a zone of `size` bytes: about one per 1 KiB, a power
    /// of two so that a bucket is a mask away from the hash.
    pub fn buckets_for(size: usize) -> u32 {
        ((size / 1024).clamp(64, 1 << 20) as u32).next_power_of_two()
    }

    pub fn create(arena: &impl Arena, nbuckets: u32) -> Option<NonNull<Table>> {
        debug_assert!(nbuckets.is_power_of_two());
        let table = arena.alloc(size_of::<Table>())?.cast::<Table>();
        let bytes = nbuckets as usize * size_of::<AtomicPtr<Slot>>();
        let Some(buckets) = arena.alloc(bytes) else {
            // SAFETY: just allocated, never shared.
            unsafe { arena.free(table.cast()) };
            return None;
        };
        let buckets = buckets.cast::<AtomicPtr<Slot>>();
        // SAFETY: fresh memory of the right size and alignment.
        unsafe {
            for i in 0..nbuckets as usize {
                buckets.add(i).write(AtomicPtr::new(ptr::null_mut()));
            }
            table.write(Table {
                magic: MAGIC,
                epoch: AtomicU32::new(0),
                keys: AtomicU32::new(0),
                nbuckets,
                buckets,
                blocks: AtomicPtr::new(ptr::null_mut()),
                nblocks: AtomicU32::new(0),
                free: AtomicPtr::new(ptr::null_mut()),
                workers: AtomicPtr::new(ptr::null_mut()),
                reclaimed: AtomicU64::new(0),
            });
        }
        Some(table)
    }

    /// The table a previous load left in the zone, if its layout is ours.
    ///
    /// # Safety
    /// `ptr` is null or points into the zone where `create` may have put a table.
    pub unsafe fn existing<'a>(ptr: *mut u8) -> Option<&'a Table> {
        let t = ptr.cast::<Table>().as_ref()?;
        (t.magic == MAGIC).then_some(t)
    }

    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn keys(&self) -> u32 {
        self.keys.load(Ordering::Relaxed)
    }

    /// Starts a configuration load; keys it upserts are stamped with the result.
    pub fn begin_epoch(&self, _locked: &impl Arena) -> u32 {
        self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }

    fn bucket(&self, hash: u32) -> &AtomicPtr<Slot> {
        let i = (hash & (self.nbuckets - 1)) as usize;
        // SAFETY: i < nbuckets; the array lives as long as the table.
        unsafe { &*self.buckets.as_ptr().add(i) }
    }

    fn chain(&self, hash: u32) -> impl Iterator<Item = &Slot> {
        let mut at = self.bucket(hash).load(Ordering::Relaxed);
        core::iter::from_fn(move || {
            // SAFETY: chains link used slots only, and change under the lock.
            let slot = unsafe { at.as_ref()? };
            at = slot.next.load(Ordering::Relaxed);
            Some(slot)
        })
    }

    fn find_slot(&self, key: &[u8], hash: u32) -> Option<&Slot> {
        self.chain(hash).find(|s| {
            // SAFETY: lock held by our caller; chained slots are used.
            s.hash.load(Ordering::Relaxed) == hash && unsafe { s.key() } == key
        })
    }

    fn handle(slot: &Slot) -> SlotRef {
        SlotRef {
            slot: NonNull::from(slot),
            generation: generation_of(slot.word.load(Ordering::Acquire)),
        }
    }

    pub fn find(&self, _locked: &impl Arena, key: &[u8]) -> Option<SlotRef> {
        self.find_slot(key, key::hash(key)).map(Self::handle)
    }

    /// Stamps `key` with `epoch` and records `meta`, if it is stored.
    pub fn stamp(
        &self,
        _locked: &impl Arena,
        key: &[u8],
        meta: Meta,
        epoch: u32,
    ) -> Option<SlotRef> {
        let slot = self.find_slot(key, key::hash(key))?;
        slot.set_meta(meta, epoch);
        Some(Self::handle(slot))
    }

    /// Finds or adds `key`, stamps it with `epoch` and records `meta`.
    pub fn upsert(
        &self,
        locked: &impl Arena,
        key: &[u8],
        upstream_len: usize,
        meta: Meta,
        epoch: u32,
    ) -> Result<SlotRef, Full> {
        let hash = key::hash(key);
        if let Some(slot) = self.find_slot(key, hash) {
            slot.set_meta(meta, epoch);
            return Ok(Self::handle(slot));
        }
        if key.is_empty() || key.len() > u32::MAX as usize {
            return Err(Full);
        }
        let slot = self.pop_free(locked).ok_or(Full)?;
        let Some(bytes) = locked.alloc(key.len()) else {
            self.push_free(slot);
            return Err(Full);
        };
        // SAFETY: fresh chunk of key.len() bytes.
        unsafe { ptr::copy_nonoverlapping(key.as_ptr(), bytes.as_ptr(), key.len()) };
        slot.key.store(bytes.as_ptr(), Ordering::Relaxed);
        slot.key_len.store(key.len() as u32, Ordering::Relaxed);
        slot.upstream_len
            .store(upstream_len as u32, Ordering::Relaxed);
        slot.hash.store(hash, Ordering::Relaxed);
        slot.set_meta(meta, epoch);
        let bucket = self.bucket(hash);
        slot.next
            .store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
        bucket.store(ptr::from_ref(slot).cast_mut(), Ordering::Release);
        self.keys.fetch_add(1, Ordering::Relaxed);
        Ok(Self::handle(slot))
    }

    fn pop_free(&self, locked: &impl Arena) -> Option<&Slot> {
        if self.free.load(Ordering::Relaxed).is_null() {
            self.grow(locked)?;
        }
        // SAFETY: the free list links free slots inside live blocks.
        let slot = unsafe { &*self.free.load(Ordering::Relaxed) };
        self.free
            .store(slot.next.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(slot)
    }

    fn push_free(&self, slot: &Slot) {
        slot.key_len.store(0, Ordering::Relaxed);
        slot.key.store(ptr::null_mut(), Ordering::Relaxed);
        slot.flags.store(0, Ordering::Relaxed);
        slot.next
            .store(self.free.load(Ordering::Relaxed), Ordering::Relaxed);
        self.free
            .store(ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
    }

    fn grow(&self, locked: &impl Arena) -> Option<()> {
        let block = locked.alloc(size_of::<Block>())?.cast::<Block>();
        let index = self.nblocks.load(Ordering::Relaxed);
        // SAFETY: fresh, 64-byte aligned memory the size of a Block.
        let block = unsafe {
            ptr::addr_of_mut!((*block.as_ptr()).next).write(AtomicPtr::new(ptr::null_mut()));
            ptr::addr_of_mut!((*block.as_ptr()).index).write(index);
            for i in 0..SLOTS_PER_BLOCK {
                let slot = Slot::empty();
                slot.id
                    .store(index * SLOTS_PER_BLOCK as u32 + i as u32, Ordering::Relaxed);
                ptr::addr_of_mut!((*block.as_ptr()).slots[i]).write(slot);
            }
            &*block.as_ptr()
        };
        self.nblocks.store(index + 1, Ordering::Relaxed);
        block
            .next
            .store(self.blocks.load(Ordering::Relaxed), Ordering::Relaxed);
        self.blocks
            .store(ptr::from_ref(block).cast_mut(), Ordering::Release);
        for slot in block.slots.iter().rev() {
            self.push_free(slot);
        }
        Some(())
    }

    /// Every block, newest first.
    pub(super) fn blocks(&self) -> impl Iterator<Item = &Block> {
        let mut block = self.blocks.load(Ordering::Acquire);
        core::iter::from_fn(move || {
            // SAFETY: blocks are never freed.
            let b = unsafe { block.as_ref()? };
            block = b.next.load(Ordering::Relaxed);
            Some(b)
        })
    }

    /// Blocks by index.
    pub(super) fn blocks_by_index(&self) -> Vec<&Block> {
        let mut v: Vec<&Block> = self.blocks().collect();
        v.sort_by_key(|b| b.index);
        v
    }

    fn all_slots(&self) -> impl Iterator<Item = &Slot> {
        self.blocks()
            .flat_map(|b| b.slots.iter())
            .filter(|s| s.is_used())
    }

    /// Frees `slot` if its count is zero; the generation bump and the zero
    /// check are one CAS, so no worker can count into it meanwhile.
    pub(super) fn try_remove(&self, locked: &impl Arena, slot: &Slot) -> bool {
        let w = slot.word.load(Ordering::Acquire);
        if count_of(w) != 0 {
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
        let hash = slot.hash.load(Ordering::Relaxed);
        let mut link = self.bucket(hash);
        // SAFETY: lock held; the slot is chained in its bucket.
        unsafe {
            while link.load(Ordering::Relaxed) != ptr::from_ref(slot).cast_mut() {
                link = &(*link.load(Ordering::Relaxed)).next;
            }
            link.store(slot.next.load(Ordering::Relaxed), Ordering::Release);
            if let Some(k) = NonNull::new(slot.key.load(Ordering::Relaxed)) {
                locked.free(k);
            }
        }
        self.push_free(slot);
        self.keys.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Removes or drains every key the load of `epoch` did not declare.
    pub fn sweep(&self, locked: &impl Arena, epoch: u32) -> Sweep {
        let mut done = Sweep::default();
        for slot in self.all_slots() {
            if slot.flags.load(Ordering::Relaxed) & FLAG_LUA != 0 {
                continue;
            }
            let w = slot.word.load(Ordering::Acquire);
            let action = plan(slot.epoch.load(Ordering::Relaxed), epoch, count_of(w));
            let removed = action == Action::Remove && self.try_remove(locked, slot);
            if action == Action::Drain || (action == Action::Remove && !removed) {
                slot.flags.fetch_or(FLAG_DRAINING, Ordering::Relaxed);
                done.draining += 1;
            }
            done.removed += u32::from(removed);
        }
        done
    }

    /// A key no longer declared: removed now if idle, else draining until
    /// its last connection closes.
    pub fn drain(&self, locked: &impl Arena, at: SlotRef) {
        if at.count().is_none() {
            return;
        }
        at.slot().flags.fetch_or(FLAG_DRAINING, Ordering::Relaxed);
        self.remove_if_drained(locked, at);
    }

    /// Removes `at` if nothing counts on it (a key just added, given up).
    pub fn remove_idle(&self, locked: &impl Arena, at: SlotRef) -> bool {
        at.count() == Some(0) && self.try_remove(locked, at.slot())
    }

    /// Removes the Lua keys that are idle and were neither declared nor
    /// picked in the `ttl` seconds before `now`; returns how many.
    pub fn expire_lua(&self, locked: &impl Arena, now: u32, ttl: u32) -> u32 {
        let stale: Vec<&Slot> = self
            .all_slots()
            .filter(|s| s.flags.load(Ordering::Relaxed) & FLAG_LUA != 0)
            .filter(|s| now.wrapping_sub(s.epoch.load(Ordering::Relaxed)) > ttl)
            .collect();
        stale
            .into_iter()
            .filter(|s| self.try_remove(locked, s))
            .count() as u32
    }

    /// Frees a draining key whose last connection just closed.
    pub fn remove_if_drained(&self, locked: &impl Arena, at: SlotRef) -> bool {
        let slot = at.slot();
        at.count() == Some(0) && at.is_draining() && self.try_remove(locked, slot)
    }

    /// Calls `f` for every key, under the lock the caller holds.
    pub fn for_each(&self, _locked: &impl Arena, mut f: impl FnMut(EntryView<'_>)) {
        for slot in self.all_slots() {
            f(EntryView {
                // SAFETY: lock held; used slot.
                key: unsafe { slot.key() },
                upstream_len: slot.upstream_len.load(Ordering::Relaxed) as usize,
                count: count_of(slot.word.load(Ordering::Acquire)),
                meta: slot.meta(),
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::alloc::{alloc, dealloc, Layout};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// Zone memory from the heap, with a byte budget to play "zone full".
    pub struct HeapArena {
        pub budget: Cell<usize>,
        live: RefCell<HashMap<usize, Layout>>,
    }

    impl HeapArena {
        pub fn new(budget: usize) -> Self {
            HeapArena {
                budget: Cell::new(budget),
                live: RefCell::new(HashMap::new()),
            }
        }
    }

    impl Arena for HeapArena {
        fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
            if size > self.budget.get() {
                return None;
            }
            self.budget.set(self.budget.get() - size);
            let layout = Layout::from_size_align(size, 64).unwrap();
            let p = NonNull::new(unsafe { alloc(layout) })?;
            self.live.borrow_mut().insert(p.as_ptr() as usize, layout);
            Some(p)
        }
        unsafe fn free(&self, ptr: NonNull<u8>) {
            let layout = self
                .live
                .borrow_mut()
                .remove(&(ptr.as_ptr() as usize))
                .unwrap();
            self.budget.set(self.budget.get() + layout.size());
            dealloc(ptr.as_ptr(), layout);
        }
    }

    fn table(arena: &HeapArena) -> &'static Table {
        unsafe { &*Table::create(arena, 64).unwrap().as_ptr() }
    }

    const M: Meta = Meta {
        weight: 1,
        max_conns: 0,
        flags: 0,
    };

    fn keys_of(t: &Table, a: &HeapArena) -> Vec<(String, u32, u32)> {
        let mut v = vec![];
        t.for_each(a, |e| {
            v.push((
                String::from_utf8(e.key.to_vec()).unwrap(),
                e.count,
                e.meta.flags,
            ))
        });
        v.sort();
        v
    }

    #[test]
    fn block_is_one_page() {
        assert_eq!(size_of::<Slot>(), 64);
        assert_eq!(size_of::<Block>(), 4096);
    }

    #[test]
    fn upsert_finds_the_same_counter_again() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let r1 = t.upsert(&a, b"conn_count:u:1", 12, M, e).unwrap();
        assert_eq!(r1.acquire(0), Acquire::Taken);
        let r2 = t.upsert(&a, b"conn_count:u:1", 12, M, e).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(r2.count(), Some(1));
        assert_eq!(t.keys(), 1);
        assert_eq!(t.find(&a, b"conn_count:u:1"), Some(r1));
        assert_eq!(t.find(&a, b"conn_count:u:2"), None);
    }

    #[test]
    fn existing_recognises_only_our_layout() {
        let a = HeapArena::new(1 << 20);
        let t = Table::create(&a, 64).unwrap();
        assert!(unsafe { Table::existing(t.as_ptr().cast()) }.is_some());
        assert!(unsafe { Table::existing(ptr::null_mut()) }.is_none());
        let mut junk = [0u64; 8];
        assert!(unsafe { Table::existing(junk.as_mut_ptr().cast()) }.is_none());
    }

    #[test]
    fn counts_never_go_below_zero() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let r = t.upsert(&a, b"k", 0, M, t.begin_epoch(&a)).unwrap();
        assert_eq!(r.release(), Release::Underflow);
        assert_eq!(r.count(), Some(0));
        r.acquire(0);
        assert_eq!(
            r.release(),
            Release::Released {
                now_idle_draining: false
            }
        );
        assert_eq!(r.count(), Some(0));
    }

    #[test]
    fn max_conns_caps_the_shared_count() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let r = t.upsert(&a, b"k", 0, M, t.begin_epoch(&a)).unwrap();
        assert_eq!(r.acquire(2), Acquire::Taken);
        assert_eq!(r.acquire(2), Acquire::Taken);
        assert_eq!(r.acquire(2), Acquire::AtLimit);
        assert_eq!(r.count(), Some(2));
    }

    #[test]
    fn reload_keeps_declared_counters_and_sweeps_the_rest() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e1 = t.begin_epoch(&a);
        let kept = t.upsert(&a, b"conn_count:u:a", 12, M, e1).unwrap();
        let busy = t.upsert(&a, b"conn_count:u:b", 12, M, e1).unwrap();
        let idle = t.upsert(&a, b"conn_count:u:c", 12, M, e1).unwrap();
        kept.acquire(0);
        busy.acquire(0);

        let e2 = t.begin_epoch(&a);
        assert_eq!(t.upsert(&a, b"conn_count:u:a", 12, M, e2), Ok(kept));
        let added = t.upsert(&a, b"conn_count:u:d", 12, M, e2).unwrap();
        assert_eq!(
            t.sweep(&a, e2),
            Sweep {
                removed: 1,
                draining: 1
            }
        );

        assert_eq!(kept.count(), Some(1));
        assert_eq!(added.count(), Some(0));
        assert_eq!(idle.count(), None, "removed key's handle must go stale");
        assert_eq!(idle.acquire(0), Acquire::Stale);
        assert_eq!(
            keys_of(t, &a),
            vec![
                ("conn_count:u:a".into(), 1, 0),
                ("conn_count:u:b".into(), 1, FLAG_DRAINING),
                ("conn_count:u:d".into(), 0, 0),
            ]
        );

        // The draining key goes when its last connection closes.
        assert_eq!(
            busy.release(),
            Release::Released {
                now_idle_draining: true
            }
        );
        assert!(t.remove_if_drained(&a, busy));
        assert_eq!(t.keys(), 2);
        assert_eq!(busy.release(), Release::Stale);
    }

    #[test]
    fn a_server_added_back_stops_draining() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let r = t.upsert(&a, b"k", 0, M, t.begin_epoch(&a)).unwrap();
        r.acquire(0);
        let e2 = t.begin_epoch(&a);
        t.sweep(&a, e2);
        assert!(r.is_draining());
        let e3 = t.begin_epoch(&a);
        assert_eq!(t.upsert(&a, b"k", 0, M, e3), Ok(r));
        assert!(!r.is_draining());
        assert_eq!(r.count(), Some(1));
    }

    #[test]
    fn freed_slots_are_reused_with_a_new_generation() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let old = t.upsert(&a, b"old", 0, M, t.begin_epoch(&a)).unwrap();
        let e2 = t.begin_epoch(&a);
        t.sweep(&a, e2);
        let new = t.upsert(&a, b"new", 0, M, e2).unwrap();
        assert_eq!(new.slot, old.slot, "the freed slot is reused");
        assert_ne!(new.generation, old.generation);
        new.acquire(0);
        assert_eq!(old.count(), None);
        assert_eq!(
            old.count_hint(),
            1,
            "the hint reads whatever the slot holds now"
        );
        assert_eq!(old.acquire(0), Acquire::Stale);
        assert_eq!(old.release(), Release::Stale);
        assert_eq!(new.count(), Some(1));
    }

    #[test]
    fn a_full_zone_says_so_and_loses_nothing() {
        let a = HeapArena::new(0);
        let t0 = Table::create(&a, 64);
        assert!(t0.is_none());

        let a = HeapArena::new(Table::overhead(64) + 4096 + 2 * "conn_count:u:1".len());
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let first = t.upsert(&a, b"conn_count:u:1", 12, M, e).unwrap();
        first.acquire(0);
        t.upsert(&a, b"conn_count:u:2", 12, M, e).unwrap();
        assert_eq!(t.upsert(&a, b"conn_count:u:3", 12, M, e), Err(Full));
        assert_eq!(first.count(), Some(1));
        assert_eq!(t.keys(), 2);
        // A failed insert gave its slot back: once a key chunk is free again
        // the next insert succeeds.
        let e2 = t.begin_epoch(&a);
        t.upsert(&a, b"conn_count:u:1", 12, M, e2).unwrap();
        t.sweep(&a, e2);
        assert!(t.upsert(&a, b"conn_count:u:3", 12, M, e2).is_ok());
    }

    #[test]
    fn lua_keys_are_not_swept_but_expire_when_idle_and_unused() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let lua = Meta {
            flags: FLAG_LUA,
            ..M
        };
        t.begin_epoch(&a);
        let busy = t.upsert(&a, b"conn_count:l:1", 12, lua, 1000).unwrap();
        let idle = t.upsert(&a, b"conn_count:l:2", 12, lua, 1000).unwrap();
        let fresh = t.upsert(&a, b"conn_count:l:3", 12, lua, 1000).unwrap();
        busy.acquire(0);
        let e2 = t.begin_epoch(&a);
        assert_eq!(
            t.sweep(&a, e2),
            Sweep::default(),
            "a reload leaves Lua keys alone"
        );
        fresh.touch(1590);
        assert_eq!(t.expire_lua(&a, 1601, 600), 1, "only the idle, unused one");
        assert_eq!(idle.count(), None);
        assert_eq!(busy.count(), Some(1));
        assert_eq!(fresh.count(), Some(0));
        // Across the wrap of the 32-bit second counter too.
        fresh.touch(u32::MAX - 10);
        assert_eq!(t.expire_lua(&a, 100, 600), 0);
    }

    #[test]
    fn drain_removes_idle_keys_and_marks_busy_ones() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let idle = t.upsert(&a, b"i", 0, M, e).unwrap();
        let busy = t.upsert(&a, b"b", 0, M, e).unwrap();
        busy.acquire(0);
        t.drain(&a, idle);
        t.drain(&a, busy);
        assert_eq!(idle.count(), None);
        assert!(busy.is_draining());
        assert!(!t.remove_idle(&a, busy));
        busy.release();
        assert!(t.remove_if_drained(&a, busy));
    }

    #[test]
    fn many_keys_across_blocks_and_collisions() {
        let a = HeapArena::new(1 << 22);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let refs: Vec<_> = (0..1000)
            .map(|i| {
                let k = format!("conn_count:u:10.0.{}.{}:80", i / 256, i % 256);
                t.upsert(&a, k.as_bytes(), 1, M, e).unwrap()
            })
            .collect();
        for (i, r) in refs.iter().enumerate() {
            for _ in 0..(i % 3) {
                r.acquire(0);
            }
        }
        assert_eq!(t.keys(), 1000);
        for (i, r) in refs.iter().enumerate() {
            let k = format!("conn_count:u:10.0.{}.{}:80", i / 256, i % 256);
            assert_eq!(t.find(&a, k.as_bytes()), Some(*r));
            assert_eq!(r.count(), Some((i % 3) as u32));
        }
        // Remove the idle third and check the chains still hold the rest.
        let e2 = t.begin_epoch(&a);
        for (i, _) in refs.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            let k = format!("conn_count:u:10.0.{}.{}:80", i / 256, i % 256);
            t.upsert(&a, k.as_bytes(), 1, M, e2).unwrap();
        }
        assert_eq!(
            t.sweep(&a, e2),
            Sweep {
                removed: 334,
                draining: 0
            }
        );
        assert_eq!(t.keys(), 666);
        for (i, r) in refs.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
            assert_eq!(r.count(), Some((i % 3) as u32));
        }
    }

    #[test]
    fn concurrent_counting_loses_nothing_while_removal_races() {
        use std::sync::{Arc, Barrier, Mutex};
        // The arena is the "lock": the sweeper holds the mutex around it.
        let arena = Mutex::new(HeapArena::new(1 << 20));
        let (t, busy, doomed) = {
            let a = arena.lock().unwrap();
            let t = table(&a);
            let e = t.begin_epoch(&*a);
            let busy = t.upsert(&*a, b"busy", 0, M, e).unwrap();
            let doomed = t.upsert(&*a, b"doomed", 0, M, e).unwrap();
            (t, busy, doomed)
        };
        let arena = Arc::new(arena);
        let barrier = Arc::new(Barrier::new(3));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let mut doomed_taken = 0;
                    for _ in 0..100_000 {
                        assert_eq!(busy.acquire(0), Acquire::Taken);
                        if doomed.acquire(0) == Acquire::Taken {
                            doomed_taken += 1;
                            assert!(matches!(doomed.release(), Release::Released { .. }));
                        }
                        assert!(matches!(busy.release(), Release::Released { .. }));
                    }
                    doomed_taken
                })
            })
            .collect();
        barrier.wait();
        let a = arena.lock().unwrap();
        let e2 = t.begin_epoch(&*a);
        t.upsert(&*a, b"busy", 0, M, e2).unwrap();
        // Drain or remove, depending on who wins the race.
        t.sweep(&*a, e2);
        drop(a);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(busy.count(), Some(0));
        let a = arena.lock().unwrap();
        let _ = t.remove_if_drained(&*a, doomed);
        assert_eq!(doomed.count(), None, "doomed key must be gone once idle");
        assert_eq!(t.keys(), 1);
    }
}
