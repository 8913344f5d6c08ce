//! The table's own tests, and the heap arena every table test uses.

use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use super::flags::{CHECK_BITS, SHED_MAX};
use super::header::Block;
use super::slot::{Slot, SLOTS_PER_BLOCK};
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
            .filter(|s| s.flags.any(CHECK_BITS))
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
        self.validate_pick_indexes();
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
    slot.flags.add_sheds(SHED_MAX - 1);
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
    assert!(t.claim_reclaim(1000, 500));
    assert!(!t.claim_reclaim(1000, 500), "claimed already");
    assert!(!t.claim_reclaim(1499, 500), "not due yet");
    assert!(t.claim_reclaim(1500, 500));
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
    // The sweep dies after the mark, before it reads the count: the last
    // release then sees the mark and removes the key.
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
