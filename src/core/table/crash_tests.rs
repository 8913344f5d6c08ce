//! Every crash point of the table and the records, under `cargo test`: a
//! locked section "dies" there (a panic, `crash::testing::die_at`), the
//! next lock repairs the table, and the table must then equal one where
//! nothing died, with the same memory in use and every invariant holding.

use super::pick_index_tests::big;
use super::slot::SLOTS_PER_BLOCK;
use super::tests::{table, HeapArena, M};
use super::{CheckReport, Counted, HealthView, Meta, PickIndexRef, RecordRef, SlotRef, Table};
use super::{FLAG_CHECKED, FLAG_DRAINING};
use crate::core::check_answer::Capacity;
use crate::core::crash::testing::die_at;
use crate::core::health::Why;
use crate::core::least_index::Best;
use crate::core::liveness::ProcessId;

fn worker(pid: i32) -> ProcessId {
    ProcessId {
        pid,
        start_time: 7,
        uid: 33,
    }
}

/// Keys, counts, flags, ramps and health, sorted.
type Contents = (Vec<u8>, u32, u32, u32, Option<HealthView>);
fn contents(t: &Table, a: &HeapArena) -> Vec<Contents> {
    let mut v = vec![];
    t.enter(a);
    t.for_each(a, |e| {
        v.push((
            e.key.to_vec(),
            e.count,
            e.meta.flags,
            e.ramp_since,
            e.health,
        ))
    });
    t.leave(a);
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

/// State a scenario sets up and its steps use.
#[derive(Default)]
struct World {
    slots: Vec<SlotRef>,
    records: Vec<RecordRef>,
    counted: Vec<Counted>,
    index: Option<PickIndexRef>,
}

/// Runs `setup`, then `step` in a locked section, then `after` (what the
/// next process does) in another: once cleanly, once dying at the `nth`
/// pass of `point` in `step`. Both must end alike.
fn dies_cleanly(
    point: &'static str,
    nth: u32,
    setup: fn(&Table, &HeapArena, &mut World),
    step: fn(&Table, &HeapArena, &mut World),
    after: fn(&Table, &HeapArena, &mut World),
) {
    compare(point, nth, setup, step, step, after);
}

/// As `dies_cleanly`, but a death at `point` undoes the step: the clean run
/// does not run it at all.
fn dies_as_if_never(
    point: &'static str,
    nth: u32,
    setup: fn(&Table, &HeapArena, &mut World),
    step: fn(&Table, &HeapArena, &mut World),
    after: fn(&Table, &HeapArena, &mut World),
) {
    compare(point, nth, setup, nothing, step, after);
}

fn compare(
    point: &'static str,
    nth: u32,
    setup: fn(&Table, &HeapArena, &mut World),
    clean_step: fn(&Table, &HeapArena, &mut World),
    step: fn(&Table, &HeapArena, &mut World),
    after: fn(&Table, &HeapArena, &mut World),
) {
    let run = |die: bool| {
        let step = if die { step } else { clean_step };
        let a = Box::leak(Box::new(HeapArena::new(1 << 22)));
        let t = table(a);
        let mut w = World::default();
        t.enter(a);
        setup(t, a, &mut w);
        t.leave(a);
        let locked_step = |w: &mut World| {
            t.enter(a);
            step(t, a, w);
            t.leave(a);
        };
        if die {
            assert!(
                die_at(point, nth, || locked_step(&mut w)),
                "{point} #{nth} was not reached"
            );
            assert!(t.enter(a), "the next lock finds the table dirty");
            t.leave(a);
        } else {
            locked_step(&mut w);
        }
        t.enter(a);
        after(t, a, &mut w);
        t.leave(a);
        t.validate();
        (contents(t, a), a.used(), t.reclaimed())
    };
    let clean = run(false);
    let crashed = run(true);
    assert_eq!(crashed, clean, "{point} #{nth}: the repaired table differs");
}

fn key(i: usize) -> Vec<u8> {
    format!("conn_count:u:10.0.0.{i}:80").into_bytes()
}

fn upsert(t: &Table, a: &HeapArena, w: &mut World, i: usize) {
    let s = t.upsert(a, &key(i), 12, M, t.epoch()).unwrap();
    w.slots.push(s);
}

fn one_key(t: &Table, a: &HeapArena, w: &mut World) {
    t.begin_epoch(a);
    upsert(t, a, w, 0);
}

fn add_key(t: &Table, a: &HeapArena, w: &mut World) {
    upsert(t, a, w, 1);
}

/// A full first block: the next key grows the table.
fn full_block(t: &Table, a: &HeapArena, w: &mut World) {
    t.begin_epoch(a);
    for i in 0..SLOTS_PER_BLOCK {
        upsert(t, a, w, i);
    }
}

fn add_key_past_the_block(t: &Table, a: &HeapArena, w: &mut World) {
    upsert(t, a, w, SLOTS_PER_BLOCK);
}

/// The next process adds what it needs again: a no-op if it is there.
fn add_again(t: &Table, a: &HeapArena, _: &mut World) {
    t.upsert(a, &key(1), 12, M, t.epoch()).unwrap();
    t.upsert(a, &key(SLOTS_PER_BLOCK), 12, M, t.epoch())
        .unwrap();
}

#[test]
fn a_death_adding_a_key_leaves_no_trace() {
    for point in ["insert.claimed", "insert.published"] {
        dies_cleanly(point, 1, one_key, add_key, add_again);
    }
    for point in ["grow.allocated", "grow.linked"] {
        dies_cleanly(point, 1, full_block, add_key_past_the_block, add_again);
    }
}

fn two_keys_one_draining_idle(t: &Table, a: &HeapArena, w: &mut World) {
    t.begin_epoch(a);
    upsert(t, a, w, 0);
    upsert(t, a, w, 1);
    w.slots[0].acquire(0);
}

fn drain_the_idle_key(t: &Table, a: &HeapArena, w: &mut World) {
    t.drain(a, w.slots[1], t.epoch());
}

fn nothing(_: &Table, _: &HeapArena, _: &mut World) {}

#[test]
fn a_death_removing_a_key_leaves_it_removed() {
    for point in ["remove.retired", "remove.unlinked", "remove.freeing"] {
        dies_cleanly(
            point,
            1,
            two_keys_one_draining_idle,
            drain_the_idle_key,
            nothing,
        );
    }
}

fn old_keys_busy_and_idle(t: &Table, a: &HeapArena, w: &mut World) {
    t.begin_epoch(a);
    for i in 0..4 {
        upsert(t, a, w, i);
    }
    w.slots[0].acquire(0);
    w.slots[2].acquire(0);
}

fn reload_keeping_key_3(t: &Table, a: &HeapArena, w: &mut World) {
    let e = t.begin_epoch(a);
    t.stamp(a, &key(3), M, e);
    t.sweep(a, e);
    let _ = w;
}

/// The master loads the configuration again after its sweep died (the
/// sweep runs in the master: this is what a reload after a crash does).
fn sweep_again(t: &Table, a: &HeapArena, _: &mut World) {
    let e = t.begin_epoch(a);
    t.stamp(a, &key(3), M, e);
    t.sweep(a, e);
}

#[test]
fn a_death_sweeping_loses_no_count_and_no_key() {
    for nth in 1..=3 {
        dies_cleanly(
            "sweep.marked",
            nth,
            old_keys_busy_and_idle,
            reload_keeping_key_3,
            sweep_again,
        );
    }
}

fn register(t: &Table, a: &HeapArena, w: &mut World) {
    if let Some(r) = t.register_worker(a, worker(1)) {
        w.records.push(r);
    }
}

fn one_key_one_worker(t: &Table, a: &HeapArena, w: &mut World) {
    one_key(t, a, w);
    register(t, a, w);
}

fn register_again(t: &Table, a: &HeapArena, w: &mut World) {
    // The master starts a new worker, which registers.
    let _ = t.register_worker(a, worker(2)).unwrap();
    let _ = w;
}

fn cell_for_the_key(t: &Table, a: &HeapArena, w: &mut World) {
    t.cell(a, w.records[0], w.slots[0]).unwrap();
}

fn cell_again(t: &Table, a: &HeapArena, w: &mut World) {
    t.cell(a, w.records[0], w.slots[0]).unwrap();
}

#[test]
fn a_death_registering_leaks_no_record() {
    dies_as_if_never("register.allocated", 1, one_key, register, register_again);
    dies_cleanly(
        "cell.allocated",
        1,
        one_key_one_worker,
        cell_for_the_key,
        cell_again,
    );
}

/// Two workers counting on two keys (one draining); worker 1 then dies.
fn two_workers_counting(t: &Table, a: &HeapArena, w: &mut World) {
    t.begin_epoch(a);
    for i in 0..3 {
        upsert(t, a, w, i);
    }
    for pid in [1, 2] {
        let r = t.register_worker(a, worker(pid)).unwrap();
        w.records.push(r);
        for s in &w.slots {
            w.counted.push(Counted {
                slot: *s,
                mine: t.cell(a, r, *s).unwrap(),
            });
        }
    }
    // Worker 1 (records[0]): 3 on key 0, 1 on key 2; worker 2: 2 on key 0.
    for _ in 0..3 {
        w.counted[0].acquire(0);
    }
    w.counted[2].acquire(0);
    for _ in 0..2 {
        w.counted[3].acquire(0);
    }
    w.slots[2].slot().flags.mark_draining();
}

fn reclaim_worker_1(t: &Table, a: &HeapArena, _: &mut World) {
    let mut seen = Vec::with_capacity(4);
    t.records_into(a, &mut seen);
    for s in seen.into_iter().filter(|s| s.worker.pid == 1) {
        t.reclaim_seen(a, s);
    }
}

#[test]
fn a_death_giving_back_a_dead_workers_share_is_finished_exactly() {
    for nth in 1..=2 {
        dies_cleanly(
            "reclaim.journalled",
            nth,
            two_workers_counting,
            reclaim_worker_1,
            reclaim_worker_1,
        );
        dies_cleanly(
            "reclaim.subtracted",
            nth,
            two_workers_counting,
            reclaim_worker_1,
            reclaim_worker_1,
        );
    }
    dies_cleanly(
        "reclaim.unlinked",
        1,
        two_workers_counting,
        reclaim_worker_1,
        reclaim_worker_1,
    );
}

#[test]
fn a_death_repairing_is_repaired_by_the_next() {
    // A sweep dies with an idle key marked draining; the repair that
    // removes it dies too; the next one finishes.
    let a = Box::leak(Box::new(HeapArena::new(1 << 22)));
    let t = table(a);
    let mut w = World::default();
    t.enter(a);
    old_keys_busy_and_idle(t, a, &mut w);
    t.leave(a);
    assert!(die_at("sweep.marked", 2, || {
        t.enter(a);
        reload_keeping_key_3(t, a, &mut w);
    }));
    assert!(die_at("remove.retired", 1, || {
        t.enter(a);
    }));
    assert!(t.enter(a));
    t.leave(a);
    t.validate();
    assert_eq!(t.repairs(), 2);
    // Key 1 (idle, marked) is gone; key 0 (busy) drains; keys 2 and 3
    // were not reached by the dead sweep: the next reload sees to them.
    let c = contents(t, a);
    assert_eq!(
        c,
        vec![
            (key(0), 1, FLAG_DRAINING, 0, None),
            (key(2), 1, 0, 0, None),
            (key(3), 0, 0, 0, None)
        ]
    );
}

const CHECKED: Meta = Meta {
    flags: FLAG_CHECKED,
    ..M
};

fn checked_key(t: &Table, a: &HeapArena, w: &mut World) {
    t.begin_epoch(a);
    let s = t.upsert(a, &key(0), 12, CHECKED, t.epoch()).unwrap();
    w.slots.push(s);
}

fn give_records(t: &Table, a: &HeapArena, w: &mut World) {
    assert!(t.ensure_health(a, w.slots[0]));
}

fn failed(now_ms: u64) -> CheckReport {
    CheckReport {
        why: Why::Refused,
        http_status: 0,
        duration_ms: 1,
        now_ms,
        now_ds: 1,
        rise: 2,
        fall: 3,
        capacity: None,
        reported: Some(None),
        malformed: 0,
    }
}

fn checked_key_up(t: &Table, a: &HeapArena, w: &mut World) {
    checked_key(t, a, w);
    give_records(t, a, w);
    let up = CheckReport {
        why: Why::Ok,
        http_status: 200,
        capacity: Some(Capacity::default()),
        ..failed(5)
    };
    t.record_check(a, w.slots[0], &up).unwrap();
}

/// Up, then two failed checks of three (`fall`).
fn checked_key_failing(t: &Table, a: &HeapArena, w: &mut World) {
    checked_key_up(t, a, w);
    for i in 0..2 {
        t.record_check(a, w.slots[0], &failed(10 + i)).unwrap();
    }
}

/// The third: the key goes down (its record first, then its bits).
fn third_fail(t: &Table, a: &HeapArena, w: &mut World) {
    t.record_check(a, w.slots[0], &failed(12)).unwrap();
}

fn is_down(t: &Table, a: &HeapArena, _: &mut World) {
    let c = contents_unlocked(t, a);
    let h = c[0].4.expect("checked");
    assert!(h.out && h.fails == 3, "{h:?}");
}

fn contents_unlocked(t: &Table, a: &HeapArena) -> Vec<Contents> {
    let mut v = vec![];
    t.for_each(a, |e| {
        v.push((
            e.key.to_vec(),
            e.count,
            e.meta.flags,
            e.ramp_since,
            e.health,
        ))
    });
    v
}

#[test]
fn a_death_recording_checks_leaves_records_and_bits_agreeing() {
    for point in ["health.allocated", "health.linked"] {
        dies_cleanly(point, 1, checked_key, give_records, give_records);
    }
    dies_cleanly(
        "health.recorded",
        1,
        checked_key_failing,
        third_fail,
        is_down,
    );
}

/// A checked key found down, idle: the next step removes it.
fn checked_key_down(t: &Table, a: &HeapArena, w: &mut World) {
    checked_key_up(t, a, w);
    for i in 0..3 {
        t.record_check(a, w.slots[0], &failed(10 + i)).unwrap();
    }
    let c = contents_unlocked(t, a);
    assert!(c[0].4.expect("checked").out, "down: its bit set");
}

fn drain_the_checked_key(t: &Table, a: &HeapArena, w: &mut World) {
    t.drain(a, w.slots[0], t.epoch() + 1);
}

#[test]
fn a_death_removing_a_key_found_down_leaves_its_bits_uncounted() {
    for point in ["remove.retired", "remove.unlinked", "remove.freeing"] {
        dies_cleanly(point, 1, checked_key_down, drain_the_checked_key, nothing);
    }
}

/// Eight keys of upstream "big", three of them busy.
fn eight_busy_keys(t: &Table, a: &HeapArena, w: &mut World) {
    let e = t.begin_epoch(a);
    for i in 0..8 {
        let key = format!("conn_count:big:10.0.0.{i}:80").into_bytes();
        w.slots.push(t.upsert(a, &key, 3, M, e).unwrap());
    }
    for s in &w.slots[..3] {
        s.acquire(0);
    }
}

/// A load that indexes the keys (`build_pick_index`).
fn index_the_keys(t: &Table, a: &HeapArena, w: &mut World) {
    let e = t.begin_epoch(a);
    t.begin_pick_indexes(a);
    w.index = t.build_pick_index(a, big(e, 0), 1, w.slots.iter().copied());
    t.finish_pick_indexes(a);
}

fn eight_keys_indexed(t: &Table, a: &HeapArena, w: &mut World) {
    eight_busy_keys(t, a, w);
    index_the_keys(t, a, w);
}

/// A load that no longer indexes them: the body is freed.
fn unindex_the_keys(t: &Table, a: &HeapArena, _: &mut World) {
    t.begin_epoch(a);
    t.begin_pick_indexes(a);
    t.finish_pick_indexes(a);
}

/// A pick through the index: counted, then recorded in it.
fn pick_through_the_index(t: &Table, a: &HeapArena, w: &mut World) {
    let index = w.index.expect("indexed");
    let Best::At(i) = index.best(t, a, 0, |_| false, 8) else {
        panic!("nothing to pick");
    };
    w.slots[i].acquire(0);
    index.picked(t, a, i, 1);
}

#[test]
fn a_death_in_a_pick_index_leaves_it_as_its_slots_say() {
    for point in ["index.entry", "index.allocated", "index.linked"] {
        dies_cleanly(point, 1, eight_busy_keys, index_the_keys, index_the_keys);
    }
    dies_cleanly(
        "index.freeing",
        1,
        eight_keys_indexed,
        unindex_the_keys,
        nothing,
    );
    dies_cleanly(
        "index.picked",
        1,
        eight_keys_indexed,
        pick_through_the_index,
        nothing,
    );
}
