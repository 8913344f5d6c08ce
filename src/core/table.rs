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
//!
//! # Crash consistency: one discipline
//!
//! nginx's master force-unlocks the zone mutex of a process that died
//! holding it and carries on, so a locked section can stop at any
//! instruction and the table must still be usable. The discipline:
//!
//! 1. **The blocks are the truth.** A slot is in use exactly when its
//!    `key_len` is non-zero, and that is written last when a key is added
//!    (after its key bytes, hash and metadata) and first when one is removed
//!    (right after the generation bump that retires its handles). Chains,
//!    the free list, `keys` and `nblocks` are indexes derived from the
//!    blocks; a block is linked with one store of the list head.
//! 2. **Dirty while locked.** Locking the zone marks the table dirty and
//!    unlocking clears the mark (`enter`/`leave`, called only by the zone's
//!    lock guard). Whoever locks a dirty table finds it as a dead holder
//!    left it and repairs it first (`repair`): it rebuilds the chains, the
//!    free list and the counters from the blocks, and finishes the one
//!    step the journal names.
//! 3. **A one-entry journal for what the blocks cannot tell.** Zone memory
//!    just allocated and not yet reachable (`journal.alloc`), memory being
//!    freed (`journal.freeing`, set before it is made unreachable), and the
//!    dead worker's cell being given back (`record.rs`). Repair frees what
//!    is allocated but unreachable and finishes a give-back.
//!
//! Two gaps remain, each the few instructions between an effect and its
//! journal entry: a kill between the slab allocator returning memory and
//! the journal naming it leaks that chunk; a kill between a free returning
//! and the journal forgetting it makes the repair free it again, which
//! nginx's slab allocator recognises (`chunk is already free`) and ignores.
//! A kill inside nginx's slab allocator itself is beyond any repair here.
//! The named crash points (`crash.rs`) sit between every two steps.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::crash;
use super::key;
use super::ramp;
use super::sweep::{plan, Action};

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

const MAGIC: u64 = 0x4c43_5031_0000_0005; // "LCP1", layout 5 (health checks)
pub(super) const SLOTS_PER_BLOCK: usize = 63; // a block is then exactly 4 KiB

/// Flags of a key that takes no new connections: a ramp waits for it.
const OUT: u32 = FLAG_DOWN | FLAG_DRAINING;

pub const FLAG_BACKUP: u32 = 1;
pub const FLAG_DOWN: u32 = 2;
pub const FLAG_DRAINING: u32 = 4;
/// Declared from Lua (the C ABI), not by nginx's configuration: reloads do
/// not sweep it; its `epoch` is the second it was last declared or picked.
pub const FLAG_LUA: u32 = 8;
/// The upstream has `least_conn_persistent_rebalance` (configuration).
pub const FLAG_REBALANCE: u32 = 16;
/// The upstream has `least_conn_persistent_check` (configuration): its
/// keys have health records (`health_table.rs`).
pub const FLAG_CHECKED: u32 = 256;
/// The flags a configuration (or Lua) writes, as `Meta::flags`.
const META_FLAGS: u32 =
    FLAG_BACKUP | FLAG_DOWN | FLAG_DRAINING | FLAG_LUA | FLAG_REBALANCE | FLAG_CHECKED;
/// Run-time state in the rest of `flags`, which `set_meta` keeps: the
/// upstream sheds now (rebalancing); the checks' verdicts (`CHECK_BITS`);
/// and in the top bits how many connections to the key rebalancing closed.
const FLAG_SHEDDING: u32 = 32;
/// Health checks: the key takes no new connection (down, or draining by
/// its capacity answer), as `down`.
pub(super) const FLAG_CHECK_OUT: u32 = 64;
/// Health checks: the pick reads the key's health record (an override of
/// weight or max_conns, or load the server reported).
pub(super) const FLAG_CHECK_TUNED: u32 = 128;
pub(super) const CHECK_BITS: u32 = FLAG_CHECK_OUT | FLAG_CHECK_TUNED;
const SHED_SHIFT: u32 = 9;
#[cfg(test)]
const SHED_MAX: u32 = u32::MAX >> SHED_SHIFT;

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
    /// Slow start: the window (`Meta::slow_start`, deciseconds).
    ramp_window: AtomicU32,
    /// When the key's current ramp began (deciseconds of the monotonic
    /// clock); 0: none. Written under the lock, or lock-free by a worker
    /// holding a count on the key (`SlotRef::start_ramp`).
    ramp_since: AtomicU32,
}

#[repr(C)]
#[derive(Debug)]
pub(super) struct Block {
    next: AtomicPtr<Block>,
    /// 0 for the first block allocated, then 1, 2, ...
    index: u32,
    /// Health records of the block's slots, allocated when a key of the
    /// block is first checked (`health_table.rs`); never freed.
    pub(super) health: AtomicPtr<super::health_table::HealthBlock>,
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
    /// The list of the records of the worker processes that count here,
    /// typed in `record.rs` (which builds on the table, not the reverse).
    pub(super) workers: AtomicPtr<()>,
    /// Connections given back on behalf of workers that died holding them.
    pub(super) reclaimed: AtomicU64,
    /// Non-zero while a process holds the zone lock (module docs).
    dirty: AtomicU32,
    /// Times a table left dirty was repaired.
    repairs: AtomicU32,
    pub(super) journal: Journal,
    /// Records on the `workers` list.
    pub(super) nrecords: AtomicU32,
    /// When (ms, the callers' monotonic clock) the next look for dead
    /// workers is due; the worker whose compare-and-swap moves it does it.
    next_check: AtomicU64,
    /// When (ms) the next look for expired Lua keys is due.
    next_lua_expiry: AtomicU64,
    /// Slow start: no key ramps at or after this time (deciseconds); picks
    /// before it look at each key's ramp. Only ever raised.
    ramps_until: AtomicU32,
    /// Health checks: the lease of the process that runs them, `pid << 32
    /// | end` (ms of the monotonic clock, wrapping); 0: nobody.
    pub(super) checker: AtomicU64,
    /// Health checks: how many keys have a check bit set (out, or tuned).
    /// While 0 the picks of a checked upstream skip reading the bits (all
    /// up, nothing overridden: the common case costs what an unchecked
    /// pick does). Changed under the lock with the bits; repair counts
    /// again.
    pub(super) check_flagged: AtomicU32,
}

/// Whether configuration epoch `a` is later than `b` (epochs wrap).
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Moves `due` on by `interval` if `now` has reached it, for one caller.
fn claim(due: &AtomicU64, now: u64, interval: u64) -> bool {
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

/// Per-server data written by each configuration load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub weight: u32,
    /// 0: unlimited.
    pub max_conns: u32,
    pub flags: u32,
    /// Slow start: the window a server that joins or comes back ramps up
    /// over, in deciseconds (`ramp.rs`); 0: none.
    pub slow_start: u32,
}

/// When a ramp may start as `upsert_at` or `stamp_at` records a key
/// (`ramp.rs`): at `now` (deciseconds, 0: never), for a key it adds only if
/// `new_keys` (a configuration load that adds a server to an upstream that
/// had others); for a key found stored, when it comes back from `down` or
/// draining. A key whose `Meta::slow_start` is 0 never ramps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RampStart {
    pub now: u32,
    pub new_keys: bool,
}

impl RampStart {
    pub const NEVER: RampStart = RampStart {
        now: 0,
        new_keys: false,
    };
}

/// The zone has no room for another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A worker's handle on one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// When its slow start began (0: never); see `ramp::elapsed`.
    pub ramp_since: u32,
    /// Connections rebalancing closed, and whether the upstream sheds now.
    pub shed: u32,
    pub shedding: bool,
    /// What health checks found (`None`: the key is not checked).
    pub health: Option<super::health_table::HealthView>,
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
            ramp_window: AtomicU32::new(0),
            ramp_since: AtomicU32::new(0),
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
            flags: self.flags.load(Ordering::Relaxed) & META_FLAGS,
            slow_start: self.ramp_window.load(Ordering::Relaxed),
        }
    }

    fn set_meta(&self, meta: Meta, epoch: u32) {
        self.weight.store(meta.weight, Ordering::Relaxed);
        self.max_conns.store(meta.max_conns, Ordering::Relaxed);
        self.ramp_window.store(meta.slow_start, Ordering::Relaxed);
        // The run-time bits stay (other workers change them lock-free), but
        // the mark of an upstream that sheds goes with its directive, and
        // the checks' verdicts with theirs.
        let mut keep = !META_FLAGS;
        if meta.flags & FLAG_REBALANCE == 0 {
            keep &= !FLAG_SHEDDING;
        }
        if meta.flags & FLAG_CHECKED == 0 {
            keep &= !CHECK_BITS;
        }
        let _ = self
            .flags
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some((f & keep) | (meta.flags & META_FLAGS))
            });
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Connections to the key rebalancing closed, and whether its upstream
    /// sheds now.
    fn rebalancing(&self) -> (u32, bool) {
        let f = self.flags.load(Ordering::Relaxed);
        (f >> SHED_SHIFT, f & FLAG_SHEDDING != 0)
    }

    /// Where the key's ramp is at `now`: `Some(elapsed, window)` while it
    /// ramps (`ramp::elapsed`).
    #[inline]
    fn ramp(&self, now: u32) -> Option<(u32, u32)> {
        let window = self.ramp_window.load(Ordering::Relaxed);
        let since = self.ramp_since.load(Ordering::Relaxed);
        ramp::elapsed(now, since, window).map(|e| (e, window))
    }
}

impl SlotRef {
    pub(super) fn slot(&self) -> &Slot {
        // SAFETY: slots live in blocks that are never freed (module docs).
        unsafe { self.slot.as_ref() }
    }

    /// Where the key's slow start is at `now` (deciseconds): `Some(elapsed,
    /// window)` while it ramps (`ramp.rs`).
    #[inline]
    pub fn ramp(&self, now: u32) -> Option<(u32, u32)> {
        self.slot().ramp(now)
    }

    /// The block the slot is in: where a worker's cell for it is kept
    /// (`Table::make_chunks`). A slot stays in its block for good.
    pub fn block(&self) -> usize {
        self.slot().id.load(Ordering::Relaxed) as usize / SLOTS_PER_BLOCK
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
                .compare_exchange_weak(w, w - 1, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => {
                    // SeqCst: see `Table::sweep`.
                    let draining = slot.flags.load(Ordering::SeqCst) & FLAG_DRAINING != 0;
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

    /// What the configuration that stamped the key last recorded (read
    /// lock-free: fields may come from two stamps).
    pub fn meta(&self) -> Meta {
        self.slot().meta()
    }

    /// Rebalancing: (connections it closed, whether the upstream sheds).
    pub fn rebalancing(&self) -> (u32, bool) {
        self.slot().rebalancing()
    }

    /// Counts one connection rebalancing closed; the caller holds a count
    /// on the key (so it stays this key). The count wraps to 0 after
    /// `SHED_MAX`, as a counter that restarts (the flags below stay).
    pub fn note_shed(&self) {
        self.slot()
            .flags
            .fetch_add(1 << SHED_SHIFT, Ordering::Relaxed);
    }

    /// Marks whether the key's upstream sheds; true if this call changed
    /// it. Lock-free, one bit no configuration writes; a handle gone stale
    /// since its generation was checked can at worst mark a reused slot,
    /// which a configuration without `least_conn_persistent_rebalance`
    /// clears when it stamps the key (`set_meta`), and one with it the
    /// next time a worker decides.
    pub fn set_shedding(&self, on: bool) -> bool {
        if self.count().is_none() {
            return false;
        }
        let flags = &self.slot().flags;
        // Read first: no write to the key's line when nothing changes.
        if (flags.load(Ordering::Relaxed) & FLAG_SHEDDING != 0) == on {
            return false;
        }
        let before = if on {
            flags.fetch_or(FLAG_SHEDDING, Ordering::Relaxed)
        } else {
            flags.fetch_and(!FLAG_SHEDDING, Ordering::Relaxed)
        };
        (before & FLAG_SHEDDING != 0) != on
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
                dirty: AtomicU32::new(0),
                repairs: AtomicU32::new(0),
                journal: Journal::default(),
                nrecords: AtomicU32::new(0),
                next_check: AtomicU64::new(0),
                next_lua_expiry: AtomicU64::new(0),
                ramps_until: AtomicU32::new(0),
                checker: AtomicU64::new(0),
                check_flagged: AtomicU32::new(0),
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
    pub(super) fn check(&self, locked: &impl Arena) {
        assert!(locked.holds(self), "a table used under another zone's lock");
    }

    /// Starts a configuration load; keys it upserts are stamped with the result.
    pub fn begin_epoch(&self, locked: &impl Arena) -> u32 {
        self.check(locked);
        self.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }

    /// Whether the due time of the look for dead workers has come at `now`
    /// (ms) and this caller won it: the next one is then due `interval`
    /// later. Lock-free: of all workers ticking, one a period does the work.
    pub fn claim_check(&self, now: u64, interval: u64) -> bool {
        claim(&self.next_check, now, interval)
    }

    /// As `claim_check`, for the look for expired Lua keys.
    pub fn claim_lua_expiry(&self, now: u64, interval: u64) -> bool {
        claim(&self.next_lua_expiry, now, interval)
    }

    fn bucket(&self, hash: u32) -> &AtomicPtr<Slot> {
        let i = (hash & (self.nbuckets - 1)) as usize;
        // SAFETY: i < nbuckets; the array lives as long as the table.
        unsafe { &*self.buckets.as_ptr().add(i) }
    }

    fn buckets(&self) -> &[AtomicPtr<Slot>] {
        // SAFETY: nbuckets pointers, living as long as the table.
        unsafe { core::slice::from_raw_parts(self.buckets.as_ptr(), self.nbuckets as usize) }
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
            s.is_used() && s.hash.load(Ordering::Relaxed) == hash && unsafe { s.key() } == key
        })
    }

    fn handle(slot: &Slot) -> SlotRef {
        SlotRef {
            slot: NonNull::from(slot),
            generation: generation_of(slot.word.load(Ordering::Acquire)),
        }
    }

    pub fn find(&self, locked: &impl Arena, key: &[u8]) -> Option<SlotRef> {
        self.check(locked);
        self.find_slot(key, key::hash(key)).map(Self::handle)
    }

    /// Records `meta` and `epoch` on a key found stored, unless a later
    /// configuration declares it: an older worker (following DNS, or
    /// looking up a stale handle) never marks a key the current
    /// configuration declares as draining, nor moves its epoch back. Lua
    /// keys' epochs are seconds, and always move on. A key that comes back
    /// from `down` or draining starts its ramp (`ramp`).
    fn restamp(&self, slot: &Slot, meta: Meta, epoch: u32, ramp: RampStart) {
        let stored = slot.epoch.load(Ordering::Relaxed);
        if meta.flags & FLAG_LUA != 0 || !newer(stored, epoch) {
            let was_out = slot.flags.load(Ordering::Relaxed) & OUT != 0;
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

    /// A new window for `slot`'s ramp (a reload changed `slow_start`): a
    /// ramp that is over stays over (not judged again by the new window),
    /// one that runs goes on to the new end.
    fn rewindow(&self, slot: &Slot, window: u32, now: u32) {
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
    fn begin_ramp(&self, slot: &Slot, window: u32, now: u32) {
        if window != 0 && now != 0 {
            self.ramps_until
                .fetch_max(now.saturating_add(window), Ordering::Relaxed);
            slot.ramp_since.store(now, Ordering::Relaxed);
        }
    }

    /// Starts `slot`'s ramp at `now` over its own window: a key the checks
    /// bring back up (`health_table.rs`); under the lock.
    pub(super) fn begin_ramp_checked(&self, slot: &Slot, now: u32) {
        self.begin_ramp(slot, slot.ramp_window.load(Ordering::Relaxed), now);
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
        self.check(locked);
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
        self.check(locked);
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
        slot.flags.store(0, Ordering::Relaxed);
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

    fn push_free(&self, slot: &Slot) {
        self.drop_check_bits(slot);
        slot.flags.store(0, Ordering::Relaxed);
        slot.ramp_since.store(0, Ordering::Relaxed);
        slot.next
            .store(self.free.load(Ordering::Relaxed), Ordering::Relaxed);
        self.free
            .store(ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
    }

    fn grow(&self, locked: &impl Arena) -> Option<()> {
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

    fn all_slots(&self) -> impl Iterator<Item = &Slot> {
        self.blocks()
            .flat_map(|b| b.slots.iter())
            .filter(|s| s.is_used())
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
    fn free_key(&self, locked: &impl Arena, slot: &Slot) {
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
        self.check(locked);
        let mut done = Sweep::default();
        for slot in self.all_slots() {
            if slot.flags.load(Ordering::Relaxed) & FLAG_LUA != 0 {
                continue;
            }
            let key_epoch = slot.epoch.load(Ordering::Relaxed);
            if plan(key_epoch, epoch, 1) == Action::Keep {
                continue;
            }
            // SeqCst here and in `SlotRef::release` (its decrement, then
            // its read of the flag): either the release sees the mark and
            // removes the key once idle, or this read sees its decrement.
            slot.flags.fetch_or(FLAG_DRAINING, Ordering::SeqCst);
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
        self.check(locked);
        if at.count().is_none() {
            return;
        }
        let slot = at.slot();
        let lua = slot.flags.load(Ordering::Relaxed) & FLAG_LUA != 0;
        if !lua && newer(slot.epoch.load(Ordering::Relaxed), epoch) {
            return;
        }
        // SeqCst, with the count's read and `SlotRef::release`: one of the
        // two sees the other (see `sweep`).
        slot.flags.fetch_or(FLAG_DRAINING, Ordering::SeqCst);
        if count_of(slot.word.load(Ordering::SeqCst)) == 0 {
            self.try_remove(locked, slot);
        }
    }

    /// Removes `at` if nothing counts on it (a key just added, given up).
    pub fn remove_idle(&self, locked: &impl Arena, at: SlotRef) -> bool {
        self.check(locked);
        at.count() == Some(0) && self.try_remove(locked, at.slot())
    }

    /// Removes the Lua keys that are idle and were neither declared nor
    /// picked in the `ttl` seconds before `now`; returns how many.
    pub fn expire_lua(&self, locked: &impl Arena, now: u32, ttl: u32) -> u32 {
        self.check(locked);
        let mut removed = 0;
        for slot in self.all_slots() {
            let lua = slot.flags.load(Ordering::Relaxed) & FLAG_LUA != 0;
            let unused = now.wrapping_sub(slot.epoch.load(Ordering::Relaxed)) > ttl;
            if lua && unused && self.try_remove(locked, slot) {
                removed += 1;
            }
        }
        removed
    }

    /// Frees a draining key whose last connection just closed.
    pub fn remove_if_drained(&self, locked: &impl Arena, at: SlotRef) -> bool {
        self.check(locked);
        let slot = at.slot();
        at.count() == Some(0) && at.is_draining() && self.try_remove(locked, slot)
    }

    /// Calls `f` for every key, under the lock the caller holds.
    pub fn for_each(&self, locked: &impl Arena, mut f: impl FnMut(EntryView<'_>)) {
        self.check(locked);
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
        self.check(locked);
        out.clear();
        for slot in self.all_slots() {
            // SAFETY: lock held; used slot.
            let key = unsafe { slot.key() };
            let ours = slot.flags.load(Ordering::Relaxed) & FLAG_LUA == 0
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

    /// Whether a holder died with the lock (`repair.rs`), and marking it.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire) != 0
    }

    pub(super) fn set_dirty(&self, dirty: bool) {
        self.dirty.store(u32::from(dirty), Ordering::Release);
    }

    pub(super) fn count_repair(&self) {
        self.repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// Repair: removes the draining keys nothing counts on any more.
    pub(super) fn remove_idle_draining(&self, locked: &impl Arena) {
        for slot in self.all_slots() {
            if slot.flags.load(Ordering::Relaxed) & FLAG_DRAINING != 0 {
                self.try_remove(locked, slot);
            }
        }
    }

    /// Chains, free list, key and block counts, from the blocks.
    pub(super) fn rebuild_indexes(&self, locked: &impl Arena) {
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

    /// Whether `chunk` is zone memory the table itself reaches: a block or
    /// a key.
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
        fn holds(&self, _table: &Table) -> bool {
            true
        }
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

    impl HeapArena {
        /// Bytes handed out and not freed.
        pub fn used(&self) -> usize {
            self.live.borrow().values().map(|l| l.size()).sum()
        }
    }

    impl Table {
        /// Checks every invariant the crash discipline promises: the
        /// indexes match the blocks, nothing is journalled, no lock mark.
        pub(crate) fn validate(&self) {
            assert_eq!(self.dirty.load(Ordering::Relaxed), 0, "left dirty");
            assert!(self.journal.alloc.load(Ordering::Relaxed).is_null());
            assert!(self.journal.freeing.load(Ordering::Relaxed).is_null());
            assert!(self.journal.cell.load(Ordering::Relaxed).is_null());
            let used: Vec<&Slot> = self.all_slots().collect();
            assert_eq!(self.keys() as usize, used.len(), "key count");
            let flagged = self
                .blocks()
                .flat_map(|b| b.slots.iter())
                .filter(|s| s.flags.load(Ordering::Relaxed) & CHECK_BITS != 0)
                .inspect(|s| assert!(s.is_used(), "check bits on a free slot"))
                .count();
            assert_eq!(
                self.check_flagged.load(Ordering::Relaxed) as usize,
                flagged,
                "keys with check bits counted"
            );
            assert_eq!(
                self.nblocks.load(Ordering::Relaxed) as usize,
                self.blocks().count()
            );
            let mut chained = 0;
            for b in self.buckets() {
                let mut at = b.load(Ordering::Relaxed);
                while let Some(s) = unsafe { at.as_ref() } {
                    assert!(s.is_used(), "a free slot in a chain");
                    assert!(ptr::eq(self.bucket(s.hash.load(Ordering::Relaxed)), b));
                    chained += 1;
                    at = s.next.load(Ordering::Relaxed);
                }
            }
            assert_eq!(chained, used.len(), "every used slot chained once");
            let mut free = 0;
            let mut at = self.free.load(Ordering::Relaxed);
            while let Some(s) = unsafe { at.as_ref() } {
                assert!(!s.is_used(), "a used slot on the free list");
                assert!(
                    s.key.load(Ordering::Relaxed).is_null(),
                    "a free slot with a key"
                );
                free += 1;
                at = s.next.load(Ordering::Relaxed);
            }
            assert_eq!(free + used.len(), self.blocks().count() * SLOTS_PER_BLOCK);
            for (i, s) in used.iter().enumerate() {
                for o in &used[i + 1..] {
                    assert!(unsafe { s.key() != o.key() }, "a key stored twice");
                }
            }
            assert_eq!(self.nrecords(), self.records_count());
        }
    }

    /// A table of 64 buckets in `arena` (which outlives its use).
    pub(crate) fn table(arena: &HeapArena) -> &'static Table {
        // SAFETY: the arena outlives the test's use of the table.
        unsafe { &*Table::create(arena, 64).unwrap().as_ptr() }
    }

    /// Weight 1, no limit, no flag.
    pub(crate) const M: Meta = Meta {
        weight: 1,
        max_conns: 0,
        flags: 0,
        slow_start: 0,
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
    fn rebalancing_bits_outlive_stamps_and_not_the_key() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let on = Meta {
            flags: FLAG_REBALANCE,
            ..M
        };
        let k = t.upsert(&a, b"conn_count:u:a", 12, on, 1).unwrap();
        let other = t.upsert(&a, b"conn_count:v:a", 12, on, 1).unwrap();
        assert_eq!(k.rebalancing(), (0, false));
        assert!(k.set_shedding(true), "changed");
        assert!(!k.set_shedding(true), "already on");
        k.note_shed();
        k.note_shed();
        // A reload's stamp keeps them; what it records reads as before.
        let down = Meta {
            flags: FLAG_REBALANCE | FLAG_DOWN,
            ..M
        };
        t.upsert(&a, b"conn_count:u:a", 12, down, 2).unwrap();
        assert_eq!(k.rebalancing(), (2, true));
        assert_eq!(k.meta().flags, FLAG_REBALANCE | FLAG_DOWN);
        assert_eq!(other.rebalancing(), (0, false), "another key's are its own");
        // The upstream's keys, not another's nor Lua's.
        let mut keys = Vec::with_capacity(4);
        assert!(t.upstream_keys(&a, b"u", &mut keys));
        assert_eq!(keys, vec![k]);
        let mut none = Vec::new();
        assert!(!t.upstream_keys(&a, b"u", &mut none), "no room: said so");
        // A key removed and another stored in its slot starts from zero.
        t.sweep(&a, 3);
        let again = t.upsert(&a, b"conn_count:w:b", 12, M, 3).unwrap();
        assert_eq!(again.rebalancing(), (0, false));
        assert!(!k.set_shedding(true), "a stale handle marks nothing");
        assert_eq!(again.rebalancing(), (0, false));
    }

    #[test]
    fn closes_wrap_at_the_fields_maximum() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let k = t.upsert(&a, b"k", 0, M, 1).unwrap();
        let slot = k.slot();
        slot.flags
            .fetch_add((SHED_MAX - 1) << SHED_SHIFT, Ordering::Relaxed);
        k.set_shedding(true);
        k.note_shed();
        assert_eq!(k.rebalancing(), (SHED_MAX, true));
        k.note_shed();
        k.note_shed();
        assert_eq!(k.rebalancing(), (1, true), "wraps, the flags kept");
        assert_eq!(k.meta().flags, 0, "the count spills into no flag");
    }

    /// Slow start of 30 s.
    const SLOW: Meta = Meta {
        slow_start: 300,
        ..M
    };

    /// A load (or DNS) at `now` that may start ramps of keys it adds.
    fn at(now: u32) -> RampStart {
        RampStart {
            now,
            new_keys: true,
        }
    }

    #[test]
    fn a_key_a_load_adds_ramps_only_when_asked_and_configured() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let first = t
            .upsert_at(&a, b"k1", 0, SLOW, e, RampStart::NEVER)
            .unwrap();
        assert_eq!(first.ramp(1000), None, "a first load ramps nothing");
        assert!(!t.ramping(1000));
        let added = t.upsert_at(&a, b"k2", 0, SLOW, e, at(1000)).unwrap();
        assert_eq!(added.ramp(1000), Some((1, 300)));
        assert_eq!(added.ramp(1150), Some((150, 300)));
        assert_eq!(added.ramp(1300), None, "over after its window");
        assert!(t.ramping(1299) && !t.ramping(1300));
        let plain = t.upsert_at(&a, b"k3", 0, M, e, at(1000)).unwrap();
        assert_eq!(plain.ramp(1000), None, "no slow start configured");
        // Found again (a reload): the ramp goes on, not again from 0.
        let e2 = t.begin_epoch(&a);
        t.upsert_at(&a, b"k2", 0, SLOW, e2, at(1100)).unwrap();
        assert_eq!(added.ramp(1150), Some((150, 300)));
        t.stamp_at(&a, b"k2", SLOW, e2, at(1120)).unwrap();
        assert_eq!(added.ramp(1150), Some((150, 300)));
    }

    #[test]
    fn a_key_back_from_down_or_draining_ramps() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let now = |now| RampStart {
            new_keys: false,
            ..at(now)
        };
        let down = Meta {
            flags: FLAG_DOWN,
            ..SLOW
        };
        let e1 = t.begin_epoch(&a);
        let k = t.upsert_at(&a, b"k", 0, down, e1, now(1000)).unwrap();
        assert_eq!(k.ramp(1000), None);
        // Still down at the next load, then up: only the change ramps.
        let e2 = t.begin_epoch(&a);
        t.stamp_at(&a, b"k", down, e2, now(1100)).unwrap();
        assert_eq!(k.ramp(1100), None);
        let heavier = Meta { weight: 5, ..SLOW };
        let e3 = t.begin_epoch(&a);
        t.stamp_at(&a, b"k", heavier, e3, now(1200)).unwrap();
        assert_eq!(k.ramp(1200), Some((1, 300)));
        // A weight change later does not start it again.
        let e4 = t.begin_epoch(&a);
        t.stamp_at(&a, b"k", SLOW, e4, now(1250)).unwrap();
        assert_eq!(k.ramp(1260), Some((60, 300)));
        // Drained by a load that dropped it, then declared again.
        let e5 = t.begin_epoch(&a);
        assert_eq!(k.acquire(0), Acquire::Taken);
        t.sweep(&a, e5);
        assert_ne!(k.flags() & FLAG_DRAINING, 0);
        let e6 = t.begin_epoch(&a);
        t.stamp_at(&a, b"k", SLOW, e6, now(2000)).unwrap();
        assert_eq!(k.ramp(2000), Some((1, 300)));
        // An older configuration's stamp starts nothing.
        t.stamp_at(&a, b"k", down, e5, now(2100)).unwrap();
        assert_eq!(k.ramp(2100), Some((100, 300)));
    }

    #[test]
    fn a_server_back_after_failures_ramps_once() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let k = t.upsert(&a, b"k", 0, SLOW, e).unwrap();
        let plain = t.upsert(&a, b"p", 0, M, e).unwrap();
        assert!(!t.start_ramp(plain, 1000), "no slow start configured");
        assert!(!t.start_ramp(k, 0), "no time");
        assert!(t.start_ramp(k, 1000));
        assert!(t.ramping(1000));
        assert!(!t.start_ramp(k, 1100), "ramping already");
        assert_eq!(k.ramp(1100), Some((100, 300)));
        assert!(t.start_ramp(k, 1400), "over: may start again");
        assert_eq!(k.ramp(1450), Some((50, 300)));
    }

    #[test]
    fn a_new_window_ends_no_finished_ramp_and_extends_a_running_one() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let k = t.upsert_at(&a, b"k", 0, SLOW, e, at(1000)).unwrap();
        // Finished at 1300; a reload at 2000 to an hour must not start it
        // again (the hour, judged from 1000, would still run).
        let hour = Meta {
            slow_start: 36000,
            ..SLOW
        };
        let e2 = t.begin_epoch(&a);
        t.stamp_at(&a, b"k", hour, e2, at(2000)).unwrap();
        assert_eq!(k.ramp(2000), None, "a finished ramp stays finished");
        // Running: a longer window goes on to its new end, gate included.
        let j = t.upsert_at(&a, b"j", 0, SLOW, e2, at(3000)).unwrap();
        let e3 = t.begin_epoch(&a);
        t.stamp_at(&a, b"j", hour, e3, at(3100)).unwrap();
        assert_eq!(j.ramp(3400), Some((400, 36000)));
        assert!(t.ramping(3400), "the gate follows the new end");
    }

    #[test]
    fn a_key_added_down_or_draining_does_not_ramp() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let at = at(1000);
        let e = t.begin_epoch(&a);
        for (key, flags) in [(&b"d"[..], FLAG_DOWN), (&b"r"[..], FLAG_DRAINING)] {
            let meta = Meta { flags, ..SLOW };
            let k = t.upsert_at(&a, key, 0, meta, e, at).unwrap();
            assert_eq!(k.ramp(1000), None);
        }
        assert!(!t.ramping(1000));
    }

    #[test]
    fn a_stale_handle_starts_no_ramp() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let old = t.upsert(&a, b"k", 0, SLOW, e).unwrap();
        assert!(t.remove_idle(&a, old));
        let new = t.upsert(&a, b"k2", 0, SLOW, e).unwrap();
        assert!(!t.start_ramp(old, 1000), "the key it named is gone");
        assert_eq!(new.ramp(1000), None);
        assert!(t.start_ramp(new, 1000));
    }

    #[test]
    fn a_reused_slot_has_no_ramp() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let e = t.begin_epoch(&a);
        let at = at(1000);
        let k = t.upsert_at(&a, b"k", 0, SLOW, e, at).unwrap();
        assert!(t.remove_idle(&a, k));
        let again = t.upsert(&a, b"k2", 0, SLOW, e).unwrap();
        assert_eq!(again.ramp(1001), None);
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
    fn one_caller_a_period_claims_the_check() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        assert!(t.claim_check(1000, 500));
        assert!(!t.claim_check(1000, 500), "claimed already");
        assert!(!t.claim_check(1499, 500), "not due yet");
        assert!(t.claim_check(1500, 500));
        assert!(t.claim_lua_expiry(1500, 60_000), "a clock of its own");
        assert!(!t.claim_lua_expiry(2000, 60_000));
    }

    #[test]
    fn an_older_configuration_never_overrides_a_newer_one() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let old = t.begin_epoch(&a);
        let new = t.begin_epoch(&a);
        let r = t.upsert(&a, b"k", 0, M, new).unwrap();
        // An old worker following DNS stores the key as draining.
        let draining = Meta {
            flags: FLAG_DRAINING,
            weight: 9,
            ..M
        };
        assert_eq!(t.upsert(&a, b"k", 0, draining, old), Ok(r));
        assert_eq!(t.stamp(&a, b"k", draining, old), Some(r));
        assert!(!r.is_draining());
        t.drain(&a, r, old);
        assert!(!r.is_draining(), "nor drained by the older one");
        assert_eq!(keys_of(t, &a), vec![("k".into(), 0, 0)]);
        let e3 = t.begin_epoch(&a);
        t.sweep(&a, e3);
        assert_eq!(r.count(), None, "stamped by `new`, not by `old`: swept");
        // A newer stamp does move it on.
        let r = t.upsert(&a, b"k", 0, M, e3).unwrap();
        let e4 = t.begin_epoch(&a);
        assert_eq!(t.upsert(&a, b"k", 0, draining, e4), Ok(r));
        assert!(r.is_draining());
    }

    #[test]
    fn a_sweep_marks_draining_before_it_reads_the_count() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        let r = t.upsert(&a, b"k", 0, M, t.begin_epoch(&a)).unwrap();
        r.acquire(0);
        let e2 = t.begin_epoch(&a);
        // The last release lands between the mark and the read of the
        // count: the sweep then sees 0 and removes the key.
        let done = crate::core::crash::testing::die_at("sweep.marked", 1, || {
            t.sweep(&a, e2);
        });
        assert!(done);
        assert!(r.is_draining(), "marked before the count is read");
        assert_eq!(
            r.release(),
            Release::Released {
                now_idle_draining: true
            },
            "the releaser sees the mark and removes it"
        );
        assert!(t.remove_if_drained(&a, r));
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
        t.drain(&a, idle, e);
        t.drain(&a, busy, e);
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
