//! A peer list kept in arrays, for front-ends that have no nginx peer list of
//! their own (Lua balancers): each position has a weight, a `max_conns`, the
//! smooth weighted round-robin state nginx keeps in its peers, and a count
//! supplied by the caller. Positions can be skipped (servers a request has
//! tried already).

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

/// The list one pick walks. `count(i)` is the i-th server's live count.
pub struct ArrayList<'a, F> {
    pub rr: &'a mut [RoundRobinState],
    /// (weight, max_conns) by position; max_conns 0: no limit.
    pub limits: &'a [(u32, u32)],
    /// Bit i set: skip position i. Positions past its end are not skipped.
    pub skip: &'a [u64],
    pub count: F,
}

impl<F: Fn(usize) -> u32> ArrayList<'_, F> {
    fn skipped(&self, i: usize) -> bool {
        self.skip
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

impl<F: Fn(usize) -> u32> PeerList for ArrayList<'_, F> {
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
            };
            let c = choose(&mut list)?;
            counts.borrow_mut()[c] += 1;
            Some(c)
        }
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
        };
        let seq: Vec<usize> = (0..6).map(|_| choose(&mut list).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 0, 0, 1, 0]);
    }
}
