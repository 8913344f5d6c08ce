//! A slot: one key's counter, its flags and what the configuration said of
//! it, and `SlotRef`, a worker's handle that counts lock-free.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::flags::{Flag, FlagWord};
use crate::core::ramp;

pub const SLOTS_PER_BLOCK: usize = 63; // a block is then exactly 4 KiB

pub(super) const fn pack(generation: u32, count: u32) -> u64 {
    ((generation as u64) << 32) | count as u64
}
pub(super) fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}
pub(super) fn count_of(word: u64) -> u32 {
    word as u32
}

#[repr(C, align(64))]
#[derive(Debug)]
pub struct Slot {
    pub(super) word: AtomicU64,
    pub(super) flags: FlagWord,
    pub(super) epoch: AtomicU32,
    pub(super) weight: AtomicU32,
    pub(super) max_conns: AtomicU32,
    pub(super) hash: AtomicU32,
    /// 0 marks a free slot.
    pub(super) key_len: AtomicU32,
    pub(super) upstream_len: AtomicU32,
    /// Where the slot sits: block index * SLOTS_PER_BLOCK + position. Worker
    /// records keep their share of the count under this number.
    pub(super) id: AtomicU32,
    pub(super) key: AtomicPtr<u8>,
    /// Next slot in the bucket chain, or in the free list.
    pub(super) next: AtomicPtr<Slot>,
    /// Slow start: the window (`Meta::slow_start`, deciseconds).
    pub(super) ramp_window: AtomicU32,
    /// When the key's current ramp began (deciseconds of the monotonic
    /// clock); 0: none. Written under the lock, or lock-free by a worker
    /// holding a count on the key (`Table::start_ramp`).
    pub(super) ramp_since: AtomicU32,
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

/// A worker's handle on one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotRef {
    pub(super) slot: NonNull<Slot>,
    pub(super) generation: u32,
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

impl Slot {
    pub(super) fn empty() -> Slot {
        Slot {
            word: AtomicU64::new(pack(1, 0)),
            flags: FlagWord::default(),
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

    pub(super) fn meta(&self) -> Meta {
        Meta {
            weight: self.weight.load(Ordering::Relaxed),
            max_conns: self.max_conns.load(Ordering::Relaxed),
            flags: self.flags.meta(),
            slow_start: self.ramp_window.load(Ordering::Relaxed),
        }
    }

    pub(super) fn set_meta(&self, meta: Meta, epoch: u32) {
        self.weight.store(meta.weight, Ordering::Relaxed);
        self.max_conns.store(meta.max_conns, Ordering::Relaxed);
        self.ramp_window.store(meta.slow_start, Ordering::Relaxed);
        // The run-time bits stay (other workers change them lock-free), but
        // not those of a directive no longer given.
        self.flags.configure(meta.flags);
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Connections to the key rebalancing closed, and whether its upstream
    /// sheds now.
    pub(super) fn rebalancing(&self) -> (u32, bool) {
        self.flags.rebalancing()
    }

    /// Where the key's ramp is at `now`: `Some(elapsed, window)` while it
    /// ramps (`ramp::elapsed`).
    #[inline]
    pub(super) fn ramp(&self, now: u32) -> Option<(u32, u32)> {
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
                    let draining = slot.flags.is_draining_after_release();
                    return Release::Released {
                        now_idle_draining: draining && count_of(w) == 1,
                    };
                }
                Err(now) => w = now,
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.slot().flags.has(Flag::Draining)
    }

    /// Whether the key has a leaf in a pick index, which its releases
    /// update (`Table::pick_index_released`).
    #[inline]
    pub fn is_indexed(&self) -> bool {
        self.slot().flags.has(Flag::Indexed)
    }

    pub fn flags(&self) -> u32 {
        self.slot().flags.bits()
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
        self.slot().flags.add_shed();
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
        self.slot().flags.set_shedding(on)
    }

    /// Marks a Lua key as used at second `now` (see `Table::expire_lua`).
    #[inline]
    pub fn touch(&self, now: u32) {
        self.slot().epoch.store(now, Ordering::Relaxed);
    }
}
