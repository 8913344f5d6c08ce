//! Choosing a peer: stock `least_conn`, on counts that the caller supplies.
//!
//! The walk mirrors `ngx_http_upstream_get_least_conn_peer`: the lowest
//! conns/weight wins (compared by cross-multiplication, no floats); ties are
//! broken by smooth weighted round-robin over the tied peers only. The peer
//! list is reached through a cursor so that nginx's linked list is walked in
//! place: a pick allocates nothing.

/// What a usable peer carries into the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub conns: u64,
    pub weight: u64,
}

impl Load {
    /// `self` is strictly less loaded than `other`, per unit of weight.
    fn lighter_than(self, other: Load) -> bool {
        u128::from(self.conns) * u128::from(other.weight)
            < u128::from(other.conns) * u128::from(self.weight)
    }

    fn same_as(self, other: Load) -> bool {
        u128::from(self.conns) * u128::from(other.weight)
            == u128::from(other.conns) * u128::from(self.weight)
    }
}

/// A list of peers as the balancer sees it.
pub trait PeerList {
    type Cursor: Copy;

    fn first(&self) -> Option<Self::Cursor>;
    fn next(&self, at: Self::Cursor) -> Option<Self::Cursor>;
    /// `None` when the peer cannot take a connection now: down, already
    /// tried by this request, failed within `fail_timeout`, or at `max_conns`.
    fn load(&self, at: Self::Cursor) -> Option<Load>;
    /// One smooth-WRR step: `current += effective`, and `effective` creeps
    /// back toward `weight` after failures. Returns the effective weight added.
    fn step_weight(&mut self, at: Self::Cursor) -> i64;
    fn current_weight(&self, at: Self::Cursor) -> i64;
    fn lower_current_weight(&mut self, at: Self::Cursor, by: i64);
}

/// Picks the least loaded usable peer, or `None` when no peer is usable.
pub fn choose<L: PeerList>(list: &mut L) -> Option<L::Cursor> {
    let mut best: Option<(L::Cursor, Load)> = None;
    let mut tied = false;

    let mut at = list.first();
    while let Some(c) = at {
        if let Some(load) = list.load(c) {
            match best {
                Some((_, b)) if !load.lighter_than(b) => tied |= load.same_as(b),
                _ => {
                    best = Some((c, load));
                    tied = false;
                }
            }
        }
        at = list.next(c);
    }

    let (first_best, best_load) = best?;
    if !tied {
        return Some(first_best);
    }
    Some(break_tie(list, first_best, best_load))
}

/// Smooth weighted round-robin among the peers tied with `start`, which is
/// the first of them in list order.
fn break_tie<L: PeerList>(list: &mut L, start: L::Cursor, best_load: Load) -> L::Cursor {
    let mut chosen: Option<L::Cursor> = None;
    let mut total = 0i64;

    let mut at = Some(start);
    while let Some(c) = at {
        // Counts are shared with other workers and may have moved since the
        // first pass: a peer that no longer ties simply sits this one out.
        if list.load(c).is_some_and(|l| l.same_as(best_load)) {
            total += list.step_weight(c);
            if chosen.is_none_or(|b| list.current_weight(c) > list.current_weight(b)) {
                chosen = Some(c);
            }
        }
        at = list.next(c);
    }

    let chosen = chosen.unwrap_or(start);
    list.lower_current_weight(chosen, total);
    chosen
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A peer list in plain memory, with nginx's round-robin fields.
    #[derive(Default)]
    pub struct Peers {
        pub conns: Vec<u64>,
        pub weight: Vec<i64>,
        pub current: Vec<i64>,
        pub effective: Vec<i64>,
        pub usable: Vec<bool>,
    }

    impl Peers {
        pub fn new(weights: &[i64]) -> Self {
            Peers {
                conns: vec![0; weights.len()],
                weight: weights.to_vec(),
                current: vec![0; weights.len()],
                effective: weights.to_vec(),
                usable: vec![true; weights.len()],
            }
        }

        /// Picks like the balancer does: choose, then count the connection.
        pub fn pick(&mut self) -> Option<usize> {
            let c = choose(self)?;
            self.conns[c] += 1;
            Some(c)
        }
    }

    impl PeerList for Peers {
        type Cursor = usize;
        fn first(&self) -> Option<usize> {
            (!self.conns.is_empty()).then_some(0)
        }
        fn next(&self, at: usize) -> Option<usize> {
            (at + 1 < self.conns.len()).then_some(at + 1)
        }
        fn load(&self, at: usize) -> Option<Load> {
            self.usable[at].then_some(Load {
                conns: self.conns[at],
                weight: self.weight[at] as u64,
            })
        }
        fn step_weight(&mut self, at: usize) -> i64 {
            let e = self.effective[at];
            self.current[at] += e;
            if self.effective[at] < self.weight[at] {
                self.effective[at] += 1;
            }
            e
        }
        fn current_weight(&self, at: usize) -> i64 {
            self.current[at]
        }
        fn lower_current_weight(&mut self, at: usize, by: i64) {
            self.current[at] -= by;
        }
    }

    #[test]
    fn empty_or_all_unusable_gives_none() {
        assert_eq!(choose(&mut Peers::new(&[])), None);
        let mut p = Peers::new(&[1, 1]);
        p.usable = vec![false, false];
        assert_eq!(choose(&mut p), None);
    }

    #[test]
    fn least_loaded_wins() {
        let mut p = Peers::new(&[1, 1, 1]);
        p.conns = vec![5, 2, 7];
        assert_eq!(choose(&mut p), Some(1));
    }

    #[test]
    fn held_connections_steer_new_ones_until_equal() {
        let mut p = Peers::new(&[1, 1]);
        p.conns = vec![6, 0];
        for _ in 0..6 {
            assert_eq!(p.pick(), Some(1));
        }
        assert_eq!(p.conns, vec![6, 6]);
        // Then they alternate.
        let a = p.pick().unwrap();
        let b = p.pick().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn weights_give_proportional_counts() {
        let mut p = Peers::new(&[3, 1]);
        for _ in 0..400 {
            p.pick();
        }
        assert_eq!(p.conns, vec![300, 100]);
    }

    #[test]
    fn ties_follow_smooth_weighted_round_robin() {
        // With equal loads the tie-break alone decides: 2:1 weights and no
        // counting give nginx's smooth sequence a, b, a.
        let mut p = Peers::new(&[2, 1]);
        let seq: Vec<usize> = (0..6).map(|_| choose(&mut p).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn unusable_peers_are_skipped() {
        let mut p = Peers::new(&[1, 1, 1]);
        p.conns = vec![0, 9, 9];
        p.usable[0] = false;
        for _ in 0..10 {
            assert_ne!(p.pick(), Some(0));
        }
        assert_eq!(p.conns[1] + p.conns[2], 28);
        assert!(p.conns[1].abs_diff(p.conns[2]) <= 1);
    }

    #[test]
    fn scale_up_fills_the_new_peer_first() {
        // 100 held over two peers, a third added: 60 more land 53/53/54.
        let mut p = Peers::new(&[1, 1, 1]);
        p.conns = vec![50, 50, 0];
        for _ in 0..60 {
            p.pick();
        }
        let (min, max) = (
            *p.conns.iter().min().unwrap(),
            *p.conns.iter().max().unwrap(),
        );
        assert!(max - min <= 1, "{:?}", p.conns);
        assert_eq!(p.conns.iter().sum::<u64>(), 160);
    }

    #[test]
    fn huge_counts_do_not_overflow_the_comparison() {
        let mut p = Peers::new(&[1_000_000, 1]);
        p.conns = vec![u64::MAX / 2, u64::MAX / 4];
        assert_eq!(choose(&mut p), Some(0));
    }
}
