//! The index against the scan it replaces (`select::choose`, stock's
//! walk), its weight shares among ties, and deaths halfway through a
//! change.

use super::*;
use crate::core::select::tests::Peers;
use crate::core::select::{choose, Load};

/// A small deterministic generator (xorshift), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Servers as the model keeps them, with what puts one out of the index.
struct Model {
    peers: Peers,
    down: Vec<bool>,
    /// 0: none.
    max_conns: Vec<u32>,
}

impl Model {
    fn new(weights: &[i64]) -> Model {
        let n = weights.len();
        let mut model = Model {
            peers: Peers::new(weights),
            down: vec![false; n],
            max_conns: vec![0; n],
        };
        model.refresh_usable();
        model
    }

    fn len(&self) -> usize {
        self.down.len()
    }

    fn full(&self, i: usize) -> bool {
        self.max_conns[i] != 0 && self.peers.conns[i] >= self.max_conns[i]
    }

    /// The key the index should hold for `i`: what the caller computes
    /// from the live count and the flags.
    fn key(&self, i: usize) -> Key {
        if self.down[i] || self.full(i) {
            Key::OUT
        } else {
            Key {
                conns: self.peers.conns[i],
                weight: self.peers.weight[i] as u32,
            }
        }
    }

    fn refresh_usable(&mut self) {
        self.peers.usable = (0..self.len())
            .map(|i| !self.down[i] && !self.full(i))
            .collect();
    }

    fn load(&self, i: usize) -> Load {
        Load {
            conns: self.peers.conns[i],
            weight: self.peers.weight[i] as u32,
        }
    }
}

fn same_ratio(a: Load, b: Load) -> bool {
    u64::from(a.conns) * u64::from(b.weight) == u64::from(b.conns) * u64::from(a.weight)
}

/// One pick by the index, checked against the scan on the same servers
/// with the same ones ruled out: both find a server or neither, and at the
/// same connections per weight (the tie-breaks differ: stock's is smooth
/// round-robin, the index's deadlines). Counts the pick; returns it.
fn pick_both(index: &LeastIndex, model: &mut Model, ruled_out: &[usize]) -> Option<usize> {
    let saved = model.peers.usable.clone();
    for &i in ruled_out {
        model.peers.usable[i] = false;
    }
    let scanned = choose(&mut model.peers);
    model.peers.usable = saved;
    let found = index.best(|i| ruled_out.contains(&i), u32::MAX);
    match (found, scanned) {
        (Best::Nothing, None) => None,
        (Best::At(i), Some(s)) => {
            assert!(
                same_ratio(model.load(i), model.load(s)),
                "index picked {i} {:?}, the scan {s} {:?}",
                model.load(i),
                model.load(s)
            );
            assert!(!ruled_out.contains(&i) && model.peers.usable[i]);
            model.peers.conns[i] += 1;
            model.refresh_usable();
            index.picked(i, model.key(i));
            Some(i)
        }
        other => panic!("index and scan disagree: {other:?}"),
    }
}

fn release_one(index: &LeastIndex, model: &mut Model, rng: &mut Rng) {
    let held: Vec<usize> = (0..model.len())
        .filter(|&i| model.peers.conns[i] > 0)
        .collect();
    if held.is_empty() {
        return;
    }
    let i = held[rng.below(held.len())];
    model.peers.conns[i] -= 1;
    model.refresh_usable();
    index.set(i, model.key(i));
}

/// A reload or a DNS change: some servers go, some come (at 0), weights
/// may change; positions move, the index is rebuilt.
fn change_list(index: &LeastIndex, model: &mut Model, rng: &mut Rng) {
    let mut kept: Vec<(u32, i64, bool, u32)> = Vec::new();
    for i in 0..model.len() {
        if rng.chance(10) {
            continue;
        }
        let weight = if rng.chance(10) {
            1 + rng.below(10) as i64
        } else {
            model.peers.weight[i]
        };
        kept.push((
            model.peers.conns[i],
            weight,
            model.down[i],
            model.max_conns[i],
        ));
    }
    while kept.len() < index.capacity() && rng.chance(50) {
        kept.insert(
            rng.below(kept.len() + 1),
            (0, 1 + rng.below(5) as i64, false, 0),
        );
    }
    let weights: Vec<i64> = kept.iter().map(|k| k.1).collect();
    let mut next = Model::new(&weights);
    for (i, k) in kept.iter().enumerate() {
        next.peers.conns[i] = k.0;
        next.down[i] = k.2;
        next.max_conns[i] = k.3;
    }
    next.refresh_usable();
    *model = next;
    index.rebuild(model.len(), |i| model.key(i));
}

/// Random picks, releases, failures, downs, weight and `max_conns`
/// changes, reloads and DNS changes over `n` servers.
fn differential(n: usize, ops: usize, seed: u64) {
    let mut rng = Rng(seed);
    let owned = Owned::new(n + n / 2 + 1);
    let index = owned.index();
    let weights: Vec<i64> = (0..n).map(|_| 1 + rng.below(4) as i64).collect();
    let mut model = Model::new(&weights);
    index.rebuild(n, |i| model.key(i));
    let check_every = (n / 64).max(1);
    for op in 0..ops {
        let len = model.len();
        match rng.below(100) {
            0..=49 => {
                let ruled_out: Vec<usize> = (0..rng.below(3))
                    .filter(|_| len > 0)
                    .map(|_| rng.below(len))
                    .collect();
                pick_both(&index, &mut model, &ruled_out);
            }
            50..=84 => release_one(&index, &mut model, &mut rng),
            85..=89 if len > 0 => {
                let i = rng.below(len);
                model.down[i] = !model.down[i];
                model.refresh_usable();
                index.set(i, model.key(i));
            }
            90..=93 if len > 0 => {
                let i = rng.below(len);
                model.peers.weight[i] = 1 + rng.below(10) as i64;
                model.refresh_usable();
                index.set(i, model.key(i));
            }
            94..=97 if len > 0 => {
                let i = rng.below(len);
                model.max_conns[i] = rng.below(4) as u32;
                model.refresh_usable();
                index.set(i, model.key(i));
            }
            98..=99 => change_list(&index, &mut model, &mut rng),
            _ => {}
        }
        if op % check_every == 0 {
            assert!(index.is_valid(), "n={n} seed={seed} op={op}");
        }
    }
    assert!(index.is_valid());
}

#[test]
fn picks_the_lowest_connections_per_weight_as_the_scan_does() {
    for (n, ops) in [
        (1, 2000),
        (2, 4000),
        (3, 4000),
        (7, 4000),
        (64, 4000),
        (65, 4000),
    ] {
        for seed in 1..=5 {
            differential(n, ops, seed * 7919 + n as u64);
        }
    }
}

#[test]
fn picks_as_the_scan_does_at_a_hundred_to_ten_thousand_servers() {
    for (n, ops) in [(100, 6000), (1000, 6000), (10_000, 3000)] {
        differential(n, ops, 104_729 + n as u64);
    }
}

/// Picks with every pick released at once: the tie set never changes.
fn stable_ties(weights: &[u32], picks: usize) -> Vec<usize> {
    let owned = Owned::new(weights.len());
    let index = owned.index();
    let key = |i: usize, conns| Key {
        conns,
        weight: weights[i],
    };
    index.rebuild(weights.len(), |i| key(i, 0));
    (0..picks)
        .map(|_| {
            let Best::At(i) = index.best(|_| false, 0) else {
                panic!("no pick")
            };
            index.picked(i, key(i, 1));
            index.set(i, key(i, 0));
            i
        })
        .collect()
}

#[test]
fn tied_servers_get_their_weights_share_within_one_pick_over_any_window() {
    let mut rng = Rng(2_654_435_761);
    for _ in 0..300 {
        let weights: Vec<u32> = (0..1 + rng.below(8))
            .map(|_| 1 + rng.below(9) as u32)
            .collect();
        let total: usize = weights.iter().map(|&w| w as usize).sum();
        let seq = stable_ties(&weights, 6 * total);
        for window in seq.windows(total) {
            for (i, &w) in weights.iter().enumerate() {
                let got = window.iter().filter(|&&s| s == i).count() as i64;
                assert!(
                    (got - i64::from(w)).abs() <= 1,
                    "weights {weights:?}: server {i} got {got} in {window:?}"
                );
            }
        }
    }
}

#[test]
fn equal_servers_are_taken_in_turn() {
    let seq = stable_ties(&[1; 5], 10);
    assert_eq!(seq, vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
}

#[test]
fn a_server_back_after_a_while_does_not_take_every_tie() {
    // Two servers take turns for a long while; a third comes back: it
    // shares the ties from then on, not all of them until it catches up.
    let owned = Owned::new(3);
    let index = owned.index();
    let key = |conns| Key { conns, weight: 1 };
    index.rebuild(3, |i| if i == 2 { Key::OUT } else { key(0) });
    for _ in 0..1000 {
        let Best::At(i) = index.best(|_| false, 0) else {
            panic!()
        };
        index.picked(i, key(1));
        index.set(i, key(0));
    }
    index.set(2, key(0));
    let mut seen = [0; 3];
    for _ in 0..30 {
        let Best::At(i) = index.best(|_| false, 0) else {
            panic!()
        };
        seen[i] += 1;
        index.picked(i, key(1));
        index.set(i, key(0));
    }
    assert_eq!(seen, [10, 10, 10]);
}

#[test]
fn deadlines_compare_across_the_wrap() {
    assert!(deadline_before(u64::MAX - 5, 3));
    assert!(!deadline_before(3, u64::MAX - 5));
    assert!(deadline_before(1, 2));
    assert!(!deadline_before(2, 2));
}

#[test]
fn ties_keep_turning_where_deadlines_wrap() {
    let owned = Owned::new(2);
    let index = owned.index();
    let key = Key {
        conns: 0,
        weight: 1,
    };
    index.rebuild(2, |_| key);
    owned.head.vtime.store(u64::MAX - 3 * SCALE, Relaxed);
    index.rebuild(2, |_| key);
    let mut seen = [0; 2];
    for _ in 0..20 {
        let Best::At(i) = index.best(|_| false, 0) else {
            panic!()
        };
        seen[i] += 1;
        index.picked(i, key);
    }
    assert_eq!(seen, [10, 10]);
}

#[test]
fn ruled_out_winners_are_skipped_and_cost_the_budget() {
    let owned = Owned::new(8);
    let index = owned.index();
    index.rebuild(8, |i| Key {
        conns: i as u32,
        weight: 1,
    });
    // 0 and 2 win inner nodes (each a search below it); 1 only a leaf.
    assert_eq!(index.best(|i| i < 3, 2), Best::At(3));
    assert_eq!(index.best(|i| i < 3, 1), Best::GaveUp);
    assert_eq!(index.best(|_| true, 100), Best::Nothing);
    assert_eq!(index.best(|i| i == 0, 1), Best::At(1));
}

#[test]
fn nothing_in_an_empty_or_all_out_index() {
    let owned = Owned::new(4);
    let index = owned.index();
    assert_eq!(index.best(|_| false, 0), Best::Nothing);
    index.rebuild(4, |_| Key::OUT);
    assert_eq!(index.best(|_| false, 0), Best::Nothing);
    index.set(
        2,
        Key {
            conns: 9,
            weight: 3,
        },
    );
    assert_eq!(index.best(|_| false, 0), Best::At(2));
}

#[test]
fn parts_that_do_not_fit_are_refused() {
    let head = Head::default();
    let leaves: Vec<Leaf> = (0..5).map(|_| Leaf::default()).collect();
    let nodes: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
    let parts = Parts {
        head: &head,
        leaves: &leaves,
        nodes: &nodes,
    };
    assert!(LeastIndex::new(parts).is_none());
    assert_eq!(width(5), 8);
    assert_eq!(width(1), 1);
    assert_eq!(width(0), 1);
}

#[test]
fn changes_past_the_servers_are_ignored() {
    let owned = Owned::new(4);
    let index = owned.index();
    index.rebuild(2, |_| Key {
        conns: 1,
        weight: 1,
    });
    index.set(
        3,
        Key {
            conns: 0,
            weight: 1,
        },
    );
    index.picked(
        7,
        Key {
            conns: 0,
            weight: 1,
        },
    );
    assert_eq!(index.best(|_| false, 0), Best::At(0));
    assert!(index.is_valid());
}

/// The nodes, for comparing two indexes.
fn nodes(owned: &Owned) -> Vec<u32> {
    owned.nodes.iter().map(|n| n.load(Relaxed)).collect()
}

/// A set or a pick that dies after `steps` nodes of its path, then the
/// next lock holder's repair: the index must be valid and hold what a
/// clean change would have left.
#[test]
fn a_change_that_dies_halfway_is_finished_by_repair() {
    let mut rng = Rng(88_172_645_463_325_252);
    for n in [1usize, 2, 5, 33, 200] {
        for _ in 0..60 {
            let conns: Vec<u32> = (0..n).map(|_| rng.below(5) as u32).collect();
            let truth = |i: usize| Key {
                conns: conns[i],
                weight: 1 + (i % 3) as u32,
            };
            let clean = Owned::new(n);
            let dying = Owned::new(n);
            for o in [&clean, &dying] {
                o.index().rebuild(n, truth);
            }
            let i = rng.below(n);
            let new = Key {
                conns: conns[i] + 1,
                weight: truth(i).weight,
            };
            let picked = rng.chance(50);
            let steps = rng.below(16);
            clean.index().change(i, new, picked, usize::MAX);
            dying.index().change(i, new, picked, steps);
            let after = |j: usize| if j == i { new } else { truth(j) };
            assert!(dying.index().repair(after));
            assert!(!dying.index().repair(after), "repaired twice");
            assert!(dying.index().is_valid());
            assert_eq!(nodes(&clean), nodes(&dying), "n={n} i={i} steps={steps}");
            assert_eq!(dying.index().key(i), new);
        }
    }
}

#[test]
fn a_rebuild_that_dies_is_redone_whole() {
    let owned = Owned::new(16);
    let index = owned.index();
    index.rebuild(16, |i| Key {
        conns: i as u32,
        weight: 1,
    });
    // Dies after the announcement and half the leaves.
    owned.head.pending.store(EVERY, Relaxed);
    for leaf in &owned.leaves[..8] {
        leaf.conns.store(100, Relaxed);
    }
    let truth = |i: usize| Key {
        conns: 20 - i as u32,
        weight: 1,
    };
    assert!(index.repair(truth));
    assert!(index.is_valid());
    assert_eq!(index.best(|_| false, 0), Best::At(15));
}
