//! A peer list kept in arrays, for front-ends that have no nginx peer list of
//! their own (Lua balancers): each position has a weight, a `max_conns`, the
//! smooth weighted round-robin state nginx keeps in its peers, and a count
//! supplied by the caller. Positions can be skipped (servers a request has
//! tried already).

use super::ramp;
use super::select::{Load, PeerList};

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

/// The list one pick walks. `count(i)` is the i-th server's live count;
/// `ramp(i)`: `Some(elapsed, window)` while it ramps up (slow start,
/// `core::ramp`).
pub struct ArrayList<'a, F, R> {
    pub rr: &'a mut [RoundRobinState],
    /// (weight, max_conns) by position; max_conns 0: no limit.
    pub limits: &'a [(u32, u32)],
    /// Bit i set: skip position i. Positions past its end are not skipped.
    pub skip: &'a [u64],
    pub count: F,
    pub ramp: R,
}

impl<F: Fn(usize) -> u32, R: Fn(usize) -> Option<(u32, u32)>> ArrayList<'_, F, R> {
    fn skipped(&self, i: usize) -> bool {
        self.skip
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

impl<F: Fn(usize) -> u32, R: Fn(usize) -> Option<(u32, u32)>> PeerList for ArrayList<'_, F, R> {
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
        if self.skipped(at) {
            return None;
        }
        let (weight, max_conns) = *self.limits.get(at)?;
        let conns = (self.count)(at);
        if max_conns != 0 && conns >= max_conns {
            return None;
        }
        let conns = (self.ramp)(at).map_or(conns, |(e, w)| ramp::virtual_count(conns, e, w));
        Some(Load { conns, weight })
    }

    fn step_weight(&mut self, at: usize) -> i64 {
        let s = &mut self.rr[at];
        let e = s.effective;
        s.current += e;
        if s.effective < s.weight {
            s.effective += 1;
        }
        e
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
        };
        let seq: Vec<usize> = (0..6).map(|_| choose(&mut list).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 0, 0, 1, 0]);
    }
}
