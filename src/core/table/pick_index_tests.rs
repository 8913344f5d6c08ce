//! The zone's pick indexes: built by a load over its keys, following every
//! count, handed from load to load, and rebuilt from the slots.

use super::tests::{table, HeapArena, M};
use super::{IndexedList, Meta, PickIndexRef, SlotRef, Table, FLAG_DOWN};
use crate::core::least_index::Best;

/// Upstream "big"'s primary list, for the load `epoch`, at `version`.
pub(super) fn big(epoch: u32, version: u64) -> IndexedList<'static> {
    IndexedList {
        upstream: b"big",
        list: 0,
        epoch,
        version,
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("conn_count:big:10.0.0.{i}:80").into_bytes()
}

/// A load of `n` servers of upstream "big", indexed; their slots.
fn load(
    t: &Table,
    a: &HeapArena,
    n: usize,
    meta: impl Fn(usize) -> Meta,
) -> (PickIndexRef, Vec<SlotRef>) {
    t.enter(a);
    let epoch = t.begin_epoch(a);
    let slots: Vec<SlotRef> = (0..n)
        .map(|i| t.upsert(a, &key(i), 3, meta(i), epoch).unwrap())
        .collect();
    t.begin_pick_indexes(a);
    let index = t
        .build_pick_index(a, big(epoch, 0), 1, slots.iter().copied())
        .unwrap();
    t.finish_pick_indexes(a);
    t.leave(a);
    (index, slots)
}

/// A pick as the balancer makes one: the best, checked against its slot
/// (read again and searched anew if it is behind), counted, recorded.
fn pick(t: &Table, a: &HeapArena, index: PickIndexRef, slots: &[SlotRef]) -> Option<usize> {
    t.enter(a);
    let mut picked = None;
    for _ in 0..8 {
        match index.best(t, a, 0, |_| false, 8) {
            Best::At(i) if index.is_true(t, a, i, 1) => {
                slots[i].acquire(0);
                index.picked(t, a, i, 1);
                picked = Some(i);
                break;
            }
            Best::At(_) => continue,
            _ => break,
        }
    }
    t.leave(a);
    picked
}

fn release(t: &Table, a: &HeapArena, index: PickIndexRef, slot: SlotRef) {
    slot.release();
    t.enter(a);
    index.released(t, a, slot, 1);
    t.leave(a);
}

#[test]
fn picks_fill_the_least_loaded_servers_first() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, slots) = load(t, &a, 100, |_| M);
    for s in &slots[..50] {
        for _ in 0..3 {
            s.acquire(0);
        }
    }
    t.enter(&a);
    t.refresh_pick_indexes(&a);
    t.leave(&a);
    // 50 servers hold 3, 50 hold none: the next 150 picks go to the idle
    // ones until every server holds 3.
    for _ in 0..150 {
        let i = pick(t, &a, index, &slots).unwrap();
        assert!(i >= 50, "picked a loaded server {i}");
    }
    assert!(slots.iter().all(|s| s.count() == Some(3)));
    t.validate();
}

#[test]
fn a_release_makes_its_server_the_next_pick() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, slots) = load(t, &a, 40, |_| M);
    for _ in 0..40 {
        pick(t, &a, index, &slots).unwrap();
    }
    release(t, &a, index, slots[17]);
    assert_eq!(pick(t, &a, index, &slots), Some(17));
    t.validate();
}

#[test]
fn down_and_full_servers_are_never_picked() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let meta = |i: usize| Meta {
        flags: if i.is_multiple_of(2) { FLAG_DOWN } else { 0 },
        max_conns: if i == 1 { 2 } else { 0 },
        ..M
    };
    let (index, slots) = load(t, &a, 20, meta);
    for _ in 0..100 {
        let i = pick(t, &a, index, &slots).unwrap();
        assert!(i % 2 == 1, "picked down server {i}");
    }
    assert_eq!(slots[1].count(), Some(2), "max_conns held");
    t.validate();
}

#[test]
fn an_older_load_scans_and_its_releases_still_count() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (old, slots) = load(t, &a, 30, |_| M);
    for _ in 0..30 {
        pick(t, &a, old, &slots).unwrap();
    }
    // A reload with the same servers: the old load's handle is no longer
    // the index's, but what its workers release reaches the new one.
    let (new, new_slots) = load(t, &a, 30, |_| M);
    assert_eq!(new_slots, slots);
    assert!(!old.is_current() && new.is_current());
    t.enter(&a);
    assert_eq!(old.best(t, &a, 0, |_| false, 8), Best::GaveUp);
    t.leave(&a);
    release(t, &a, old, slots[9]);
    assert_eq!(pick(t, &a, new, &slots), Some(9));
    t.validate();
}

#[test]
fn a_load_that_no_longer_indexes_a_list_frees_its_body() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, _) = load(t, &a, 30, |_| M);
    let with_body = a.used();
    t.enter(&a);
    t.begin_epoch(&a);
    t.begin_pick_indexes(&a);
    t.finish_pick_indexes(&a);
    t.leave(&a);
    assert!(!index.is_current());
    assert_eq!(t.pick_index_counts(), (1, 0));
    assert!(a.used() < with_body);
    // Its releases change nothing.
    release(t, &a, index, t_slot(t, &a, 0));
    t.validate();
}

fn t_slot(t: &Table, a: &HeapArena, i: usize) -> SlotRef {
    t.enter(a);
    let s = t.find(a, &key(i)).unwrap();
    s.acquire(0);
    t.leave(a);
    s
}

#[test]
fn a_bigger_list_gets_a_bigger_body_and_a_smaller_one_keeps_it() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    load(t, &a, 10, |_| M);
    let small = a.used();
    load(t, &a, 200, |_| M);
    let (index, slots) = load(t, &a, 150, |_| M);
    assert!(a.used() > small);
    assert_eq!(t.pick_index_counts(), (1, 1));
    assert!(pick(t, &a, index, &slots).is_some());
    t.validate();
}

#[test]
fn counts_changed_behind_the_index_are_taken_up_by_a_refresh() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, slots) = load(t, &a, 8, |_| M);
    // Counted with no index update (a process that died in between).
    for s in &slots[..7] {
        s.acquire(0);
    }
    t.enter(&a);
    t.refresh_pick_indexes(&a);
    assert_eq!(index.best(t, &a, 0, |_| false, 8), Best::At(7));
    t.leave(&a);
    t.validate();
}

#[test]
fn no_room_for_an_index_leaves_the_list_unindexed() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    t.enter(&a);
    let epoch = t.begin_epoch(&a);
    let slots: Vec<SlotRef> = (0..500)
        .map(|i| t.upsert(&a, &key(i), 3, M, epoch).unwrap())
        .collect();
    a.budget.set(1000);
    t.begin_pick_indexes(&a);
    assert!(t
        .build_pick_index(&a, big(epoch, 0), 1, slots.iter().copied())
        .is_none());
    t.finish_pick_indexes(&a);
    t.leave(&a);
    t.validate();
}

#[test]
fn a_release_by_a_load_that_did_not_index_reaches_a_later_loads_index() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    // A load that does not index "big" (say it was small then), whose
    // worker holds a connection on server 4.
    t.enter(&a);
    let epoch = t.begin_epoch(&a);
    let held = t.upsert(&a, &key(4), 3, M, epoch).unwrap();
    held.acquire(0);
    t.leave(&a);
    assert!(!held.is_indexed());
    // A later load indexes it.
    let (index, slots) = load(t, &a, 20, |_| M);
    assert!(slots[4].is_indexed());
    for _ in 0..19 {
        pick(t, &a, index, &slots).unwrap();
    }
    // Every server holds one now; the old worker's release, found by the
    // upstream's name, makes server 4 the least loaded.
    held.release();
    t.enter(&a);
    t.pick_index_released(&a, b"big", held, 1);
    t.leave(&a);
    assert_eq!(pick(t, &a, index, &slots), Some(4));
    t.validate();
}

#[test]
fn keys_a_load_no_longer_indexes_lose_their_mark() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (_, slots) = load(t, &a, 10, |_| M);
    assert!(slots.iter().all(|s| s.is_indexed()));
    t.enter(&a);
    t.begin_epoch(&a);
    t.begin_pick_indexes(&a);
    t.finish_pick_indexes(&a);
    t.leave(&a);
    assert!(slots.iter().all(|s| !s.is_indexed()));
}

#[test]
fn a_dead_workers_share_given_back_reaches_the_index() {
    use super::Counted;
    use crate::core::liveness::ProcessId;
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, slots) = load(t, &a, 4, |_| M);
    t.enter(&a);
    let id = ProcessId {
        pid: 7,
        start_time: 1,
        uid: 0,
    };
    let rec = t.register_worker(&a, id).unwrap();
    let on_0 = Counted {
        slot: slots[0],
        mine: t.cell(&a, rec, slots[0]).unwrap(),
    };
    t.leave(&a);
    // The worker holds 5 on server 0; every other server holds 1.
    for _ in 0..5 {
        on_0.acquire(0);
    }
    for s in &slots[1..] {
        s.acquire(0);
    }
    t.enter(&a);
    t.refresh_pick_indexes(&a);
    t.leave(&a);
    assert_ne!(pick(t, &a, index, &slots), Some(0));
    // It dies: its 5 are given back, and server 0 is the least loaded.
    t.enter(&a);
    t.reclaim(&a, rec);
    t.leave(&a);
    assert_eq!(pick(t, &a, index, &slots), Some(0));
    t.validate();
}

/// A check of `slot` as the checker records one: `why`, and a capacity
/// answer's weight.
fn check(
    t: &Table,
    a: &HeapArena,
    slot: SlotRef,
    why: super::super::health::Why,
    weight: Option<u32>,
) {
    use super::CheckReport;
    use crate::core::check_answer::Capacity;
    use crate::core::health::Why;
    let ok = why == Why::Ok;
    let report = CheckReport {
        why,
        http_status: if ok { 200 } else { 503 },
        duration_ms: 1,
        now_ms: 1000,
        now_ds: 10,
        rise: 1,
        fall: 1,
        capacity: ok.then_some(Capacity {
            weight,
            ..Capacity::default()
        }),
        reported: None,
        malformed: 0,
    };
    t.enter(a);
    assert!(t.ensure_health(a, slot));
    t.record_check(a, slot, &report).unwrap();
    t.leave(a);
}

#[test]
fn what_the_checks_find_is_in_the_index() {
    use crate::core::health::Why;
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let checked = |_| Meta {
        flags: super::FLAG_CHECKED,
        ..M
    };
    let (index, slots) = load(t, &a, 20, checked);
    // Server 3 fails its check: out of the index.
    check(t, &a, slots[3], Why::Refused, None);
    for _ in 0..60 {
        assert_ne!(pick(t, &a, index, &slots), Some(3));
    }
    // Back, with a capacity answer's weight of 4: it catches up, then
    // holds four times what each other server holds, within a pick.
    check(t, &a, slots[3], Why::Ok, Some(4));
    for _ in 0..230 {
        pick(t, &a, index, &slots).unwrap();
    }
    let c3 = slots[3].count().unwrap();
    for (i, s) in slots.iter().enumerate().filter(|&(i, _)| i != 3) {
        let c = s.count().unwrap();
        assert!(
            c3 <= 4 * (c + 1) && c <= c3 / 4 + 1,
            "server {i}: {c} against {c3} at weight 4"
        );
    }
    t.validate();
}

#[test]
fn a_worker_at_another_version_of_the_list_scans() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    t.enter(&a);
    let epoch = t.begin_epoch(&a);
    let slots: Vec<SlotRef> = (0..20)
        .map(|i| t.upsert(&a, &key(i), 3, M, epoch).unwrap())
        .collect();
    t.begin_pick_indexes(&a);
    // Built at version 5 of a list DNS changes (a worker followed it).
    let index = t
        .build_pick_index(&a, big(epoch, 5), 1, slots.iter().copied())
        .unwrap();
    t.finish_pick_indexes(&a);
    assert_eq!(
        index.best(t, &a, 4, |_| false, 8),
        Best::GaveUp,
        "not followed yet"
    );
    assert_eq!(index.best(t, &a, 5, |_| false, 8), Best::At(0));
    t.leave(&a);
}

#[test]
fn a_ramping_server_is_compared_by_its_virtual_count() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    // Slow start over 100 ds (10 s); server 0 starts ramping at 1000.
    let (index, slots) = load(t, &a, 16, |_| Meta {
        slow_start: 100,
        ..M
    });
    // Back after max_fails: the connection that saw it starts its ramp,
    // and its release reads the leaf (which lists it as ramping).
    slots[0].acquire(0);
    assert!(t.start_ramp(slots[0], 1000));
    release(t, &a, index, slots[0]);
    // 10 ds into its 100: it counts as (conns + 1) * 10.
    t.enter(&a);
    t.refresh_ramping_pick_indexes(&a, 1010);
    t.leave(&a);
    let picks_at = |now: u32, n: usize| -> usize {
        (0..n)
            .filter(|_| {
                t.enter(&a);
                let Best::At(i) = index.best(t, &a, 0, |_| false, 8) else {
                    panic!("nothing to pick")
                };
                slots[i].acquire(0);
                index.picked(t, &a, i, now);
                t.leave(&a);
                i == 0
            })
            .count()
    };
    // 15 idle servers take 9 each before server 0's virtual 10 ties.
    assert_eq!(
        picks_at(1010, 15 * 9),
        0,
        "ramping: none while others are below 10"
    );
    // The ramp over (and the look once more after it): an ordinary server.
    t.enter(&a);
    t.refresh_ramping_pick_indexes(&a, 1200);
    t.leave(&a);
    assert_eq!(picks_at(1200, 9), 9, "over: it catches up");
    t.validate();
}

#[test]
fn counts_taken_by_a_scan_are_seen_before_a_pick() {
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, slots) = load(t, &a, 16, |_| M);
    // A pick that scanned (a first pick of the worker, a sticky route)
    // counted server 0 five times with no index update.
    for _ in 0..5 {
        slots[0].acquire(0);
    }
    for _ in 0..15 * 5 {
        assert_ne!(pick(t, &a, index, &slots), Some(0), "server 0 holds 5");
    }
    assert_eq!(pick(t, &a, index, &slots), Some(0), "all at 5: its turn");
    t.validate();
}

#[test]
fn a_dead_workers_release_cut_short_is_made_good_by_its_reclaim() {
    use crate::core::liveness::ProcessId;
    let a = HeapArena::new(1 << 22);
    let t = table(&a);
    let (index, slots) = load(t, &a, 16, |_| Meta { max_conns: 1, ..M });
    for _ in 0..16 {
        pick(t, &a, index, &slots).unwrap();
    }
    assert_eq!(pick(t, &a, index, &slots), None, "every server full");
    t.enter(&a);
    let id = ProcessId {
        pid: 9,
        start_time: 1,
        uid: 0,
    };
    t.register_worker(&a, id).unwrap();
    t.leave(&a);
    // A worker releases server 3 and dies before it updates the index:
    // server 3 stays out of the index (full) until its reclaim.
    slots[3].release();
    assert_eq!(
        pick(t, &a, index, &slots),
        None,
        "the index still has it full"
    );
    t.enter(&a);
    let mut seen = Vec::with_capacity(4);
    t.records_into(&a, &mut seen);
    let dead = seen.into_iter().find(|s| s.worker == id).unwrap();
    t.reclaim_seen(&a, dead).unwrap();
    t.leave(&a);
    assert_eq!(pick(t, &a, index, &slots), Some(3));
    t.validate();
}
