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
//! reused slot nor race with its removal. Buckets, keys and configured
//! metadata change only under the zone lock (a few run-time fields, the
//! shed bits, a ramp's start and a Lua key's last use, are written
//! lock-free by a worker holding the key), which the caller proves by
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
//!    unlocking clears the mark (`enter`/`leave` in `repair.rs`, called only by the zone's
//!    lock guard). Whoever locks a dirty table finds it as a dead holder
//!    left it and repairs it first (`repair`): it rebuilds the chains, the
//!    free list and the counters from the blocks, and finishes the one
//!    step the journal names.
//! 3. **A one-entry journal for what the blocks cannot tell.** Zone memory
//!    just allocated and not yet reachable (`journal.alloc`), memory being
//!    freed (`journal.freeing`, set before it is made unreachable), and the
//!    dead worker's cell being given back (`records.rs`). Repair frees what
//!    is allocated but unreachable and finishes a give-back.
//!
//! Two gaps remain, each the few instructions between an effect and its
//! journal entry: a kill between the slab allocator returning memory and
//! the journal naming it leaks that chunk; a kill between a free returning
//! and the journal forgetting it makes the repair free it again, which
//! nginx's slab allocator recognises (`chunk is already free`) and ignores.
//! A kill inside nginx's slab allocator itself is beyond any repair here.
//! The named crash points (`core::crash`) sit between every two steps;
//! `crash_tests.rs` dies at each and checks what the next holder finds.
//!
//! # Files
//!
//! - `flags.rs`: a slot's flag word, one owner for its bits;
//! - `slot.rs`: a slot, its count word, and `SlotRef`, the lock-free handle
//!   that counts;
//! - `health.rs`: a key's health record (what checks found), beside its slot;
//! - `header.rs`: the table's header, buckets, blocks and journal, and the
//!   `Arena` that proves the lock;
//! - `keys.rs`: adding, stamping and removing keys, the free list, sweeps;
//! - `ramps.rs`: slow start's ramps;
//! - `checks.rs`: the checks' verdicts on keys and the checker's lease;
//! - `views.rs`: what readers copy out under the lock;
//! - `records.rs`: per-worker records, and giving back what a dead worker
//!   held;
//! - `pick_indexes.rs`: least-connections indexes of large upstream lists
//!   (`core::least_index` in the zone), rebuilt from the slots;
//! - `repair.rs`: all of the repair a table left dirty needs.
//!
//! Files depend on the ones above them, except that `keys.rs` calls
//! `ramps.rs` and `checks.rs` (a key's ramp and check bits go with the key).

mod checks;
#[cfg(test)]
mod crash_tests;
mod flags;
mod header;
mod health;
mod keys;
#[cfg(test)]
mod pick_index_tests;
mod pick_indexes;
mod ramps;
mod records;
mod repair;
mod slot;
#[cfg(test)]
pub(crate) mod tests;
mod views;

pub use checks::{Claim, Lease};
pub use flags::{
    CHECK_OUT, CHECK_TUNED, FLAG_BACKUP, FLAG_CHECKED, FLAG_DOWN, FLAG_DRAINING, FLAG_LUA,
    FLAG_REBALANCE,
};
pub use header::{Arena, Table};
pub use health::{CheckReport, HealthView, Recorded, Tuned, Verdict};
pub use keys::{Full, Sweep};
pub use pick_indexes::{IndexedList, PickIndexRef};
pub use records::{
    stop_counting, stopped, CellRef, Counted, KeysText, Reclaimed, RecordRef, RecordSeen,
    WorkerView, KEYS_TEXT_LEN,
};
pub use slot::{Acquire, Meta, RampStart, Release, SlotRef};
pub use views::EntryView;
