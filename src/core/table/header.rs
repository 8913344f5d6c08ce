//! The table's header in the zone: its buckets, blocks, journal and the
//! times of the periodic looks; the `Arena` that proves the zone lock.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::health::HealthBlock;
use super::slot::{generation_of, Slot, SlotRef, SLOTS_PER_BLOCK};
use crate::core::key;

/// Memory of the zone, handed out only while the zone lock is held: the
/// zone's lock guard, which table methods take as proof of the lock.
pub trait Arena {
    /// Whether this is the lock of `table`'s zone (another zone's lock
    /// proves nothing about this table).
    fn holds(&self, table: &Table) -> bool;
    /// Memory aligned to 64 bytes for sizes of 64 and more, to 8 otherwise.
    fn alloc(&self, size: usize) -> Option<NonNull<u8>>;
    /// # Safety
    /// `ptr` came from `alloc` of the same zone and is not used afterwards.
    unsafe fn free(&self, ptr: NonNull<u8>);
}

const MAGIC: u64 = 0x4c43_5031_0000_0006; // "LCP1", layout 6 (pick indexes)

#[repr(C)]
#[derive(Debug)]
pub(super) struct Block {
    pub(super) next: AtomicPtr<Block>,
    /// 0 for the first block allocated, then 1, 2, ...
    pub(super) index: u32,
    /// Health records of the block's slots, allocated when a key of the
    /// block is first checked or followed (`Table::ensure_health`); never
    /// freed.
    pub(super) health: AtomicPtr<HealthBlock>,
    pub(super) slots: [Slot; SLOTS_PER_BLOCK],
}

#[repr(C)]
#[derive(Debug)]
pub struct Table {
    magic: u64,
    pub(super) epoch: AtomicU32,
    pub(super) keys: AtomicU32,
    nbuckets: u32,
    pub(super) buckets: NonNull<AtomicPtr<Slot>>,
    pub(super) blocks: AtomicPtr<Block>,
    pub(super) nblocks: AtomicU32,
    pub(super) free: AtomicPtr<Slot>,
    /// The list of the records of the worker processes that count here,
    /// typed in `records.rs` (which builds on the table, not the reverse).
    pub(super) workers: AtomicPtr<()>,
    /// Connections given back on behalf of workers that died holding them.
    pub(super) reclaimed: AtomicU64,
    /// Non-zero while a process holds the zone lock (module docs).
    pub(super) dirty: AtomicU32,
    /// Times a table left dirty was repaired.
    pub(super) repairs: AtomicU32,
    pub(super) journal: Journal,
    /// Records on the `workers` list.
    pub(super) nrecords: AtomicU32,
    /// When (ms, the callers' monotonic clock) the next look for dead
    /// workers is due; the worker whose compare-and-swap moves it does it.
    next_reclaim: AtomicU64,
    /// When (ms) the next look for expired Lua keys is due.
    next_lua_expiry: AtomicU64,
    /// Slow start: no key ramps at or after this time (deciseconds); picks
    /// before it look at each key's ramp. Only ever raised.
    pub(super) ramps_until: AtomicU32,
    /// Health checks: the lease of the process that runs them, `pid << 32
    /// | end` (ms of the monotonic clock, wrapping); 0: nobody.
    pub(super) checker: AtomicU64,
    /// Health checks: how many keys have a check bit set (out, or tuned).
    /// While 0 the picks of a checked upstream skip reading the bits (all
    /// up, nothing overridden: the common case costs what an unchecked
    /// pick does). Changed under the lock with the bits; repair counts
    /// again.
    pub(super) check_flagged: AtomicU32,
    /// The least-connections indexes of large upstream lists, typed in
    /// `pick_indexes.rs`.
    pub(super) pick_indexes: AtomicPtr<()>,
}

/// Moves `due` on by `interval` if `now` has reached it, for one caller.
pub(super) fn claim(due: &AtomicU64, now: u64, interval: u64) -> bool {
    let at = due.load(Ordering::Acquire);
    now >= at
        && due
            .compare_exchange(at, now + interval, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}

/// What repair needs and the blocks cannot tell (module docs).
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// Zone memory allocated and perhaps not yet reachable.
    pub(super) alloc: AtomicPtr<u8>,
    /// Zone memory being freed, perhaps already unreachable.
    pub(super) freeing: AtomicPtr<u8>,
    /// A dead worker's cell being given back, and its slot and share.
    pub(super) cell: AtomicPtr<AtomicU32>,
    pub(super) cell_slot: AtomicPtr<Slot>,
    pub(super) cell_held: AtomicU32,
    /// 1: on behalf of a dead worker (counted in `reclaimed`).
    pub(super) cell_dead: AtomicU32,
    /// Set once the share is subtracted from the slot's count.
    pub(super) cell_subtracted: AtomicU32,
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
                dirty: AtomicU32::new(0),
                repairs: AtomicU32::new(0),
                journal: Journal::default(),
                nrecords: AtomicU32::new(0),
                next_reclaim: AtomicU64::new(0),
                next_lua_expiry: AtomicU64::new(0),
                ramps_until: AtomicU32::new(0),
                checker: AtomicU64::new(0),
                check_flagged: AtomicU32::new(0),
                pick_indexes: AtomicPtr::new(ptr::null_mut()),
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

    /// Times a table left dirty by a dead lock holder was repaired.
    pub fn repairs(&self) -> u32 {
        self.repairs.load(Ordering::Relaxed)
    }

    /// Refuses a lock that is not this table's zone's: a bug, caught before
    /// it changes anything.
    pub(super) fn assert_locked(&self, locked: &impl Arena) {
        assert!(locked.holds(self), "a table used under another zone's lock");
    }

    /// Starts a configuration load; keys it upserts are stamped with the result.
    pub fn begin_epoch(&self, locked: &impl Arena) -> u32 {
        self.assert_locked(locked);
        self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }

    /// Whether the due time of the look for dead workers has come at `now`
    /// (ms) and this caller won it: the next one is then due `interval`
    /// later. Lock-free: of all workers ticking, one a period does the work.
    pub fn claim_reclaim(&self, now: u64, interval: u64) -> bool {
        claim(&self.next_reclaim, now, interval)
    }

    /// As `claim_reclaim`, for the look for expired Lua keys.
    pub fn claim_lua_expiry(&self, now: u64, interval: u64) -> bool {
        claim(&self.next_lua_expiry, now, interval)
    }

    pub(super) fn bucket(&self, hash: u32) -> &AtomicPtr<Slot> {
        let i = (hash & (self.nbuckets - 1)) as usize;
        // SAFETY: i < nbuckets; the array lives as long as the table.
        unsafe { &*self.buckets.as_ptr().add(i) }
    }

    pub(super) fn buckets(&self) -> &[AtomicPtr<Slot>] {
        // SAFETY: nbuckets pointers, living as long as the table.
        unsafe { core::slice::from_raw_parts(self.buckets.as_ptr(), self.nbuckets as usize) }
    }

    pub(super) fn chain(&self, hash: u32) -> impl Iterator<Item = &Slot> {
        let mut at = self.bucket(hash).load(Ordering::Relaxed);
        core::iter::from_fn(move || {
            // SAFETY: chains link used slots only, and change under the lock.
            let slot = unsafe { at.as_ref()? };
            at = slot.next.load(Ordering::Relaxed);
            Some(slot)
        })
    }

    pub(super) fn find_slot(&self, key: &[u8], hash: u32) -> Option<&Slot> {
        self.chain(hash).find(|s| {
            // SAFETY: lock held by our caller; chained slots are used.
            s.is_used() && s.hash.load(Ordering::Relaxed) == hash && unsafe { s.key() } == key
        })
    }

    pub(super) fn handle(slot: &Slot) -> SlotRef {
        SlotRef {
            slot: NonNull::from(slot),
            generation: generation_of(slot.word.load(Ordering::Acquire)),
        }
    }

    pub fn find(&self, locked: &impl Arena, key: &[u8]) -> Option<SlotRef> {
        self.assert_locked(locked);
        self.find_slot(key, key::hash(key)).map(Self::handle)
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

    /// The block of index `index` (blocks are listed newest first, with
    /// indexes counting down from `nblocks - 1`).
    pub(super) fn block(&self, index: usize) -> Option<&Block> {
        self.blocks().find(|b| b.index as usize == index)
    }

    pub(super) fn all_slots(&self) -> impl Iterator<Item = &Slot> {
        self.blocks()
            .flat_map(|b| b.slots.iter())
            .filter(|s| s.is_used())
    }
}
