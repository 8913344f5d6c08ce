//! A peer list kept in arrays, for front-ends that have no nginx peer list of
//! their own (Lua balancers): each position has a weight, a `max_conns`, the
//! smooth weighted round-robin state nginx keeps in its peers, and a count
//! supplied by the caller. Positions can be skipped (servers a request has
//! tried already), and can follow the health checks of another upstream's
//! keys (`Checks`).

use core::cell::Cell;

use super::eligible;
use super::select::{Load, PeerList};
use super::table::{SlotRef, Tuned, CHECK_TUNED};

/// A server's weights for the tie-break, as nginx's round-robin keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundRobinState {
    pub weight: i64,
    pub current: i64,
    pub effective: i64,
}

impl RoundRobinState {
    pub fn new(weight: u32) -> RoundRobinState {
        RoundRobinState {
            weight: i64::from(weight),
            current: 0,
            effective: i64::from(weight),
        }
    }
}

/// What health checks say of each position: a Lua upstream following an
/// nginx upstream's checks has, per server, the key of that upstream with
/// the same address (`Followed`); one that follows none has `Unchecked`,
/// which the compiler folds away: its picks pay nothing for checks.
pub trait Checks {
    /// The checks' bits of position `i` (`CHECK_OUT`, `CHECK_TUNED`; 0:
    /// nothing to say), read on every pick.
    fn bits(&self, i: usize) -> u32;
    /// For a position with bits: whether the key it follows is gone (a
    /// stale handle: the bits were another key's), which leaves it
    /// unchecked.
    fn stale(&self, i: usize) -> bool;
    /// For a position with bits: its overrides and reported load.
    fn tuned(&self, i: usize) -> Tuned;
    /// What a pick adds to position `i`'s count `conns` for the load its
    /// server reported (`tuned`).
    fn excess(&self, i: usize, tuned: &Tuned, conns: u32) -> u32;
}

/// No checks followed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unchecked;

impl Checks for Unchecked {
    #[inline(always)]
    fn bits(&self, _: usize) -> u32 {
        0
    }

    fn stale(&self, _: usize) -> bool {
        true
    }

    fn tuned(&self, _: usize) -> Tuned {
        Tuned::default()
    }

    fn excess(&self, _: usize, _: &Tuned, _: u32) -> u32 {
        0
    }
}

/// Per position, which answer of the followed key's server the count was
/// last taken at and that count (`Followed::seen`).
pub type Seen = Cell<Option<(u32, u32)>>;

/// The checks a list follows: per position the key of another upstream
/// (`None`: none, unchecked), and what this list's count was when the
/// key's server last reported its load.
///
/// The server's report `R` counts every connection to it, this list's
/// included; the key's `excess` is `R` less the key's own count, not this
/// list's. A pick compares `max(L, R + (L - L0))` = `L + max(0, R - L0)`,
/// `L` the list's count now and `L0` its count at the answer: what it
/// opened and closed since counts at once, as nginx's picks count theirs.
/// The checker knows only the key, so `L0` is taken here: the count at the
/// first pick (of this process) that reads the answer.
#[derive(Clone, Copy)]
pub struct Followed<'a> {
    pub keys: &'a [Option<SlotRef>],
    /// As long as `keys`; a position past its end takes each pick's count
    /// as the count at the answer (compared as `max(L, R)`).
    pub seen: &'a [Seen],
}

impl Checks for Followed<'_> {
    #[inline]
    fn bits(&self, i: usize) -> u32 {
        self.keys
            .get(i)
            .copied()
            .flatten()
            .map_or(0, |k| k.check_bits())
    }

    #[cold]
    fn stale(&self, i: usize) -> bool {
        let key = self.keys.get(i).copied().flatten();
        key.is_none_or(|k| k.count().is_none())
    }

    #[cold]
    fn tuned(&self, i: usize) -> Tuned {
        match self.keys.get(i).copied().flatten() {
            Some(k) if k.check_bits() & CHECK_TUNED != 0 => k.tuned(),
            _ => Tuned::default(),
        }
    }

    #[cold]
    fn excess(&self, i: usize, tuned: &Tuned, conns: u32) -> u32 {
        let Some(reported) = tuned.reported else {
            return 0;
        };
        let at_answer = match self.seen.get(i) {
            Some(seen) => match seen.get() {
                Some((answer, count)) if answer == tuned.answer => count,
                _ => {
                    seen.set(Some((tuned.answer, conns)));
                    conns
                }
            },
            None => conns,
        };
        reported.saturating_sub(at_answer)
    }
}

/// The list one pick walks. `count(i)` is the i-th server's live count;
/// `ramp(i)`: `Some(elapsed, window)` while it ramps up (slow start,
/// `core::ramp`).
pub struct ArrayList<'a, F, R, K: ?Sized = Unchecked> {
    pub rr: &'a mut [RoundRobinState],
    /// (weight, max_conns) by position; max_conns 0: no limit.
    pub limits: &'a [(u32, u32)],
    /// Bit i set: skip position i. Positions past its end are not skipped.
    pub skip: &'a [u64],
    pub count: F,
    pub ramp: R,
    /// The health checks the positions follow.
    pub checks: &'a K,
}

impl<F, R, K> ArrayList<'_, F, R, K>
where
    F: Fn(usize) -> u32,
    R: Fn(usize) -> Option<(u32, u32)>,
    K: Checks + ?Sized,
{
    fn skipped(&self, i: usize) -> bool {
        self.skip
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The `max_conns` (0: none) a pick of position `i` may count up to
    /// (`core::eligible::max_conns`).
    pub fn max_conns(&self, i: usize) -> u32 {
        eligible::max_conns(self, i)
    }
}

/// The positions, as `core::eligible` asks about them.
impl<F, R, K> eligible::Peers for ArrayList<'_, F, R, K>
where
    F: Fn(usize) -> u32,
    R: Fn(usize) -> Option<(u32, u32)>,
    K: Checks + ?Sized,
{
    type At = usize;
    type MaxConns = u32;

    #[inline(always)]
    fn check_bits(&self, i: usize) -> u32 {
        self.checks.bits(i)
    }

    #[inline(always)]
    fn conns_and_bits(&self, i: usize) -> (u32, u32) {
        ((self.count)(i), self.checks.bits(i))
    }

    /// # Panics
    /// For a position past `limits` (never asked: `load` puts it out).
    #[inline(always)]
    fn weight(&self, i: usize) -> u32 {
        self.limits[i].0
    }

    /// None past `limits`.
    #[inline(always)]
    fn configured_max_conns(&self, i: usize) -> u32 {
        self.limits.get(i).map_or(0, |&(_, m)| m)
    }

    #[inline(always)]
    fn ramp(&self, i: usize) -> Option<(u32, u32)> {
        (self.ramp)(i)
    }

    fn stale(&self, i: usize) -> bool {
        self.checks.stale(i)
    }

    fn tuned(&self, i: usize) -> Tuned {
        self.checks.tuned(i)
    }

    /// What the server reported beyond this list's count at the answer
    /// (`Checks::excess`), not beyond the followed key's.
    fn excess(&self, i: usize, tuned: &Tuned, conns: u32) -> u32 {
        self.checks.excess(i, tuned, conns)
    }
}

impl<F, R, K> PeerList for ArrayList<'_, F, R, K>
where
    F: Fn(usize) -> u32,
    R: Fn(usize) -> Option<(u32, u32)>,
    K: Checks + ?Sized,
{
    type Cursor = usize;

    fn size(&self) -> usize {
        self.rr.len()
    }

    fn first(&self) -> Option<usize> {
        (!self.rr.is_empty()).then_some(0)
    }

    fn next(&self, at: usize) -> Option<usize> {
        (at + 1 < self.rr.len()).then_some(at + 1)
    }

    fn load(&self, at: usize) -> Option<Load> {
        let skipped = self.skipped(at);
        // A position past `limits` has no server.
        self.limits.get(at)?;
        eligible::load(self, at, skipped)
    }

    fn step_weight(&mut self, at: usize) -> (i64, i64) {
        let s = &mut self.rr[at];
        s.current += s.effective;
        (s.effective, s.weight)
    }

    fn creep(&mut self, at: usize) {
        let s = &mut self.rr[at];
        if s.effective < s.weight {
            s.effective += 1;
        }
    }

    fn unstep_weight(&mut self, at: usize) {
        let s = &mut self.rr[at];
        s.current -= s.effective;
    }

    fn current_weight(&self, at: usize) -> i64 {
        self.rr[at].current
    }

    fn lower_current_weight(&mut self, at: usize, by: i64) {
        self.rr[at].current -= by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::select::choose;
    use crate::core::table::CHECK_OUT;
    use std::cell::RefCell;

    struct Fixture {
        rr: Vec<RoundRobinState>,
        limits: Vec<(u32, u32)>,
        counts: RefCell<Vec<u32>>,
    }

    impl Fixture {
        fn new(limits: &[(u32, u32)]) -> Fixture {
            Fixture {
                rr: limits
                    .iter()
                    .map(|&(w, _)| RoundRobinState::new(w))
                    .collect(),
                limits: limits.to_vec(),
                counts: RefCell::new(vec![0; limits.len()]),
            }
        }

        fn pick(&mut self, skip: &[u64]) -> Option<usize> {
            let counts = &self.counts;
            let mut list = ArrayList {
                rr: &mut self.rr,
                limits: &self.limits,
                skip,
                count: |i| counts.borrow()[i],
                ramp: |_| None,
                checks: &Unchecked,
            };
            let c = choose(&mut list)?;
            counts.borrow_mut()[c] += 1;
            Some(c)
        }
    }

    #[test]
    fn a_ramping_server_is_compared_by_its_virtual_count() {
        let (mut rr, limits) = (vec![RoundRobinState::new(1); 2], vec![(1, 0), (1, 100)]);
        let counts = RefCell::new(vec![10u32, 0]);
        let ramp = |i: usize| (i == 1).then_some((30, 300));
        let mut list = ArrayList {
            rr: &mut rr,
            limits: &limits,
            skip: &[],
            count: |i| counts.borrow()[i],
            ramp,
            checks: &Unchecked,
        };
        // 10 against (0 + 1) * 300 / 30 = 10: a tie, either may win.
        assert_eq!(list.load(1).map(|l| l.conns), Some(10));
        counts.borrow_mut()[0] = 30;
        assert_eq!(choose(&mut list), Some(1));
        counts.borrow_mut()[1] = 10;
        assert_eq!(
            list.load(1).map(|l| l.conns),
            Some(110),
            "(10 + 1) * 300 / 30"
        );
        counts.borrow_mut()[1] = 100;
        assert_eq!(list.load(1), None, "at its max_conns, not ramped");
    }

    #[test]
    fn least_loaded_by_weight() {
        let mut f = Fixture::new(&[(3, 0), (1, 0)]);
        for _ in 0..40 {
            f.pick(&[]);
        }
        assert_eq!(*f.counts.borrow(), vec![30, 10]);
    }

    #[test]
    fn skipped_and_full_servers_are_passed_over() {
        let mut f = Fixture::new(&[(1, 0), (1, 2), (1, 0)]);
        assert_eq!(f.pick(&[0b101]), Some(1));
        assert_eq!(f.pick(&[0b101]), Some(1));
        assert_eq!(f.pick(&[0b101]), None, "1 is at max_conns, 0 and 2 skipped");
        // Skip bits past the list and words past the first do no harm.
        assert!(f.pick(&[0, u64::MAX]).is_some());
    }

    /// A table with one checked key per server of a followed upstream,
    /// and checks' results to drive them.
    mod followed {
        use super::*;
        use crate::core::check_answer::Capacity;
        use crate::core::health::Why;
        use crate::core::table::tests::HeapArena;
        use crate::core::table::CheckReport;
        use crate::core::table::{Meta, Table, FLAG_CHECKED};
        use core::ptr::NonNull;

        pub fn report(why: Why, capacity: Option<Capacity>) -> CheckReport {
            CheckReport {
                why,
                http_status: 200,
                duration_ms: 1,
                now_ms: 1000,
                now_ds: 10,
                rise: 1,
                fall: 1,
                capacity,
                reported: None,
                malformed: 0,
            }
        }

        pub fn table(n: usize) -> (HeapArena, NonNull<Table>, Vec<SlotRef>) {
            let a = HeapArena::new(1 << 20);
            let table = Table::create(&a, 64).unwrap();
            // SAFETY: the table lives in the arena, returned with it.
            let t = unsafe { table.as_ref() };
            let meta = Meta {
                weight: 1,
                max_conns: 0,
                flags: FLAG_CHECKED,
                slow_start: 0,
            };
            let keys = (0..n)
                .map(|i| {
                    let key = format!("hc:s{i}");
                    let k = t.upsert(&a, key.as_bytes(), 2, meta, 1).unwrap();
                    assert!(t.ensure_health(&a, k));
                    t.follow_health(&a, k);
                    k
                })
                .collect();
            (a, table, keys)
        }
    }

    #[test]
    fn a_followed_key_down_or_draining_is_skipped_as_down() {
        use crate::core::check_answer::Capacity;
        use crate::core::health::Why;
        let (a, t, keys) = followed::table(2);
        // SAFETY: the test's own table, in `a`.
        let t = unsafe { t.as_ref() };
        let follows: Vec<Option<SlotRef>> = vec![Some(keys[0]), Some(keys[1])];
        let seen: Vec<Seen> = vec![Seen::default(); 2];
        let followed = Followed {
            keys: &follows,
            seen: &seen,
        };
        let mut f = Fixture::new(&[(1, 0), (1, 0), (1, 0)]);
        let pick = |f: &mut Fixture| {
            let counts = &f.counts;
            let mut list = ArrayList {
                rr: &mut f.rr,
                limits: &f.limits,
                skip: &[],
                count: |i| counts.borrow()[i],
                ramp: |_| None,
                checks: &followed,
            };
            let c = choose(&mut list);
            if let Some(c) = c {
                counts.borrow_mut()[c] += 1;
            }
            c
        };
        t.record_check(&a, keys[1], &followed::report(Why::Refused, None))
            .unwrap();
        assert_eq!(keys[1].check_bits(), CHECK_OUT);
        for _ in 0..10 {
            assert_ne!(pick(&mut f), Some(1), "1 follows a key that is down");
        }
        assert_eq!(f.counts.borrow()[1], 0);
        // Position 2 follows nothing (past the slice): unchecked.
        assert_eq!(f.counts.borrow()[2], 5);
        let drain = Capacity {
            drain: true,
            weight: None,
            max_conns: None,
        };
        t.record_check(&a, keys[1], &followed::report(Why::Ok, Some(drain)))
            .unwrap();
        t.record_check(&a, keys[0], &followed::report(Why::Refused, None))
            .unwrap();
        assert_eq!(pick(&mut f), Some(2), "0 down, 1 draining");
        let mut only = Fixture::new(&[(1, 0), (1, 0)]);
        assert_eq!(pick(&mut only), None, "every server out: no peer");
        t.record_check(&a, keys[0], &followed::report(Why::Ok, None))
            .unwrap();
        assert_eq!(pick(&mut only), Some(0), "back up");
    }

    #[test]
    fn a_followed_key_tuned_compares_with_its_overrides_and_excess() {
        use crate::core::check_answer::Capacity;
        use crate::core::health::Why;
        let (a, t, keys) = followed::table(2);
        // SAFETY: the test's own table, in `a`.
        let t = unsafe { t.as_ref() };
        let follows: Vec<Option<SlotRef>> = vec![Some(keys[0]), Some(keys[1])];
        let seen: Vec<Seen> = vec![Seen::default(); 2];
        let followed = Followed {
            keys: &follows,
            seen: &seen,
        };
        let (mut rr, limits) = (vec![RoundRobinState::new(1); 2], vec![(1, 0), (1, 0)]);
        let counts = RefCell::new(vec![4u32, 4]);
        let tuned = Capacity {
            drain: false,
            weight: Some(4),
            max_conns: Some(5),
        };
        t.record_check(&a, keys[1], &followed::report(Why::Ok, Some(tuned)))
            .unwrap();
        let list = ArrayList {
            rr: &mut rr,
            limits: &limits,
            skip: &[],
            count: |i| counts.borrow()[i],
            ramp: |_| None,
            checks: &followed,
        };
        assert_eq!(list.load(1).map(|l| l.weight), Some(4), "weight override");
        assert_eq!(list.max_conns(1), 5, "max_conns override");
        assert_eq!(list.max_conns(0), 0, "configured");
        counts.borrow_mut()[1] = 5;
        assert_eq!(list.load(1), None, "at the override's max_conns");
        // Reported load: the server said 7 while the followed key held 0
        // and this list 5 (its own count, not the key's, is what the 7
        // holds): 5 + (7 - 5).
        let mut r = followed::report(Why::Ok, Some(Capacity::default()));
        r.reported = Some(Some(7));
        t.record_check(&a, keys[1], &r).unwrap();
        assert_eq!(list.load(1).map(|l| (l.conns, l.weight)), Some((7, 1)));
        assert_eq!(list.max_conns(1), 0);
        // A stale handle says nothing: unchecked.
        assert!(t.remove_idle(&a, keys[1]));
        assert_eq!(list.load(1).map(|l| l.conns), Some(5));
    }

    /// A Lua upstream's own connections are in the load its servers
    /// report: a pick adds what the server reported beyond the list's count
    /// at the answer, not beyond the followed key's (which holds none of
    /// them).
    #[test]
    fn a_reported_load_counts_the_lists_own_connections_once() {
        use crate::core::check_answer::Capacity;
        use crate::core::health::Why;
        let (a, t, keys) = followed::table(2);
        // SAFETY: the test's own table, in `a`.
        let t = unsafe { t.as_ref() };
        let follows: Vec<Option<SlotRef>> = vec![Some(keys[0]), Some(keys[1])];
        let seen: Vec<Seen> = vec![Seen::default(); 2];
        let followed = Followed {
            keys: &follows,
            seen: &seen,
        };
        let answer = |key: SlotRef, load: u32| {
            let mut r = followed::report(Why::Ok, Some(Capacity::default()));
            r.reported = Some(Some(load));
            t.record_check(&a, key, &r).unwrap();
        };
        // A holds 10 of the list's connections and reports 10; B holds
        // none and reports 15 (another client's).
        let mut f = Fixture::new(&[(1, 0), (1, 0)]);
        f.counts.borrow_mut()[0] = 10;
        answer(keys[0], 10);
        answer(keys[1], 15);
        let pick = |f: &mut Fixture| {
            let counts = &f.counts;
            let mut list = ArrayList {
                rr: &mut f.rr,
                limits: &f.limits,
                skip: &[],
                count: |i| counts.borrow()[i],
                ramp: |_| None,
                checks: &followed,
            };
            let loads = (list.load(0).unwrap().conns, list.load(1).unwrap().conns);
            let c = choose(&mut list).unwrap();
            counts.borrow_mut()[c] += 1;
            (c, loads)
        };
        // A compared as 10, 11, ... (not 20): the next five go to A.
        for n in 10..15 {
            assert_eq!(pick(&mut f), (0, (n, 15)), "A at {n}, B at 15");
        }
        // At 15 each they take turns.
        let (c, loads) = pick(&mut f);
        assert_eq!(loads, (15, 15));
        let (d, _) = pick(&mut f);
        assert_ne!(c, d, "a tie: one each");
        assert_eq!(f.counts.borrow()[0] + f.counts.borrow()[1], 17);

        // A server reporting more than the list holds: what the list opens
        // since the answer adds to the report (the count at the answer
        // stays until the next one).
        let mut g = Fixture::new(&[(1, 0), (1, 0)]);
        let seen: Vec<Seen> = vec![Seen::default(); 2];
        let followed = Followed {
            keys: &follows,
            seen: &seen,
        };
        answer(keys[0], 10);
        answer(keys[1], 12);
        let load_of = |g: &mut Fixture, i: usize| {
            let counts = &g.counts;
            let list = ArrayList {
                rr: &mut g.rr,
                limits: &g.limits,
                skip: &[],
                count: |i| counts.borrow()[i],
                ramp: |_| None,
                checks: &followed,
            };
            list.load(i).unwrap().conns
        };
        assert_eq!((load_of(&mut g, 0), load_of(&mut g, 1)), (10, 12));
        g.counts.borrow_mut()[0] = 1;
        assert_eq!(load_of(&mut g, 0), 11, "10 reported, 1 opened since");
        // The next answer is a new base: 10 with our 1 in it.
        answer(keys[0], 10);
        assert_eq!(load_of(&mut g, 0), 10);
        g.counts.borrow_mut()[0] = 0;
        assert_eq!(load_of(&mut g, 0), 9, "one closed since");
    }

    #[test]
    fn ties_rotate_by_weight() {
        let mut f = Fixture::new(&[(2, 0), (1, 0)]);
        let counts = RefCell::new(vec![0u32, 0]);
        let mut list = ArrayList {
            rr: &mut f.rr,
            limits: &f.limits,
            skip: &[],
            count: |i| counts.borrow()[i],
            ramp: |_| None,
            checks: &Unchecked,
        };
        let seq: Vec<usize> = (0..6).map(|_| choose(&mut list).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 0, 0, 1, 0]);
    }
}
