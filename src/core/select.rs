//! Choosing a peer: stock `least_conn`, on counts that the caller supplies.
//!
//! The walk mirrors `ngx_http_upstream_get_least_conn_peer`: the lowest
//! conns/weight wins (compared by cross-multiplication, no floats); ties are
//! broken by smooth weighted round-robin over the tied peers only. The peer
//! list is reached through a cursor so that nginx's linked list is walked in
//! place: a pick allocates nothing.

use core::cmp::Ordering;

/// What a usable peer carries into the comparison. 32-bit values keep the
/// cross products exact in 64 bits, one multiply each on the hot path;
/// configuration warns about larger weights, and the pick compares them
/// as `u32::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub conns: u32,
    pub weight: u32,
}

impl Load {
    /// `self`'s and `other`'s connections per unit of weight, as cross
    /// products: compare them instead of the ratios.
    #[inline]
    fn products(self, other: Load) -> (u64, u64) {
        (
            u64::from(self.conns) * u64::from(other.weight),
            u64::from(other.conns) * u64::from(self.weight),
        )
    }

    /// Orders `self` against `other` by connections per unit of weight.
    fn cmp_ratio(self, other: Load) -> Ordering {
        let (mine, theirs) = self.products(other);
        mine.cmp(&theirs)
    }
}

/// A list of peers as the balancer sees it.
pub trait PeerList {
    type Cursor: Copy;

    /// How many peers the list holds (decides `choose`'s walk).
    fn size(&self) -> usize;
    fn first(&self) -> Option<Self::Cursor>;
    fn next(&self, at: Self::Cursor) -> Option<Self::Cursor>;
    /// `None` when the peer cannot take a connection now: down, already
    /// tried by this request, failed within `fail_timeout`, or at `max_conns`.
    fn load(&self, at: Self::Cursor) -> Option<Load>;
    /// One smooth-WRR step: `current += effective`. Returns the effective
    /// weight added, and `weight`: below it (after failures), `creep` must
    /// follow (stock raises it by one after the step).
    fn step_weight(&mut self, at: Self::Cursor) -> (i64, i64);
    /// Raises `effective` by one if below `weight` (see `step_weight`).
    fn creep(&mut self, at: Self::Cursor);
    /// Undoes a `step_weight` of `at` that no `creep` followed.
    fn unstep_weight(&mut self, at: Self::Cursor);
    fn current_weight(&self, at: Self::Cursor) -> i64;
    fn lower_current_weight(&mut self, at: Self::Cursor, by: i64);
}

/// Which peers tied with the best of the first pass, by position, kept on
/// the stack. Positions it does not `cover` are not recorded: the tie-break
/// re-reads those peers instead.
trait Ties: Default {
    fn covers(&self, i: usize) -> bool;
    /// # Panics
    /// May panic for a position it does not cover.
    fn contains(&self, i: usize) -> bool;
    fn set(&mut self, i: usize);
}

/// 1024 bits for larger upstreams, zeroed with a few vector stores.
#[derive(Default)]
struct TieBits1024([u64; 16]);

impl Ties for TieBits1024 {
    #[inline]
    fn covers(&self, i: usize) -> bool {
        i < 1024
    }

    #[inline]
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    #[inline]
    fn set(&mut self, i: usize) {
        if self.covers(i) {
            self.0[i / 64] |= 1 << (i % 64);
        }
    }
}

/// Picks the least loaded usable peer, or `None` when no peer is usable.
/// Always inlined: it is most of a pick, and the caller's loop around it
/// (count, retry on a lost race) keeps its registers.
#[inline(always)]
pub fn choose<L: PeerList>(list: &mut L) -> Option<L::Cursor> {
    if list.size() <= SMALL {
        choose_in_one_walk(list)
    } else {
        choose_with::<L, TieBits1024>(list)
    }
}

/// Lists up to this long are walked once (`choose_in_one_walk`): their
/// tie-break's steps fit a word of bits.
const SMALL: usize = 64;

/// The first peer of the best (lowest conns/weight) class seen so far.
#[derive(Clone, Copy)]
struct Best<C> {
    cursor: C,
    load: Load,
    position: usize,
}

/// `choose` for a list of up to `SMALL` peers, in one walk. The peers that
/// tie with the best so far are stepped as they are met (the first of them
/// once a second ties), and unstepped if a lighter peer comes after them:
/// the steps that stay are those of stock's second walk over the tied
/// peers, and so is the peer chosen.
#[inline(always)]
fn choose_in_one_walk<L: PeerList>(list: &mut L) -> Option<L::Cursor> {
    let (mut at, mut position) = (list.first(), 0);
    // The best class so far, from the first peer that can take the
    // connection: its load, the position of its first peer, and `lead`:
    // that peer, then, once the class has two and is stepped, the one with
    // the highest current weight after its step (the first such).
    let (mut best, mut first, mut lead) = loop {
        let cursor = at?;
        at = list.next(cursor);
        position += 1;
        if let Some(load) = list.load(cursor) {
            break (load, position - 1, cursor);
        }
    };
    // The stepped peers, by position (none while the class has one), and
    // their steps.
    let mut stepped = 0u64;
    let mut steps = Steps::default();

    while let Some(cursor) = at {
        if let Some(load) = list.load(cursor) {
            // Two plain comparisons of the cross products, as in
            // `choose_with`.
            let (mine, theirs) = load.products(best);
            if mine == theirs {
                if stepped == 0 {
                    steps.add(list, lead);
                    stepped = 1 << first;
                }
                stepped |= 1 << position;
                if steps.add(list, cursor) > list.current_weight(lead) {
                    lead = cursor;
                }
            } else if mine < theirs {
                if stepped != 0 {
                    walk(list, stepped, L::unstep_weight);
                    (stepped, steps) = (0, Steps::default());
                }
                (best, first, lead) = (load, position, cursor);
            }
        }
        at = list.next(cursor);
        position += 1;
    }

    if stepped != 0 {
        list.lower_current_weight(lead, steps.total);
        if steps.short != 0 {
            walk(list, stepped, L::creep);
        }
    }
    Some(lead)
}

/// What the steps of `choose_in_one_walk`'s best class added, and whether
/// some stepped peer's effective weight differs from its weight (non-zero):
/// below it, it creeps once the class is final (a step uses the effective
/// weight before its creep; `creep` itself tests the weights).
#[derive(Default)]
struct Steps {
    total: i64,
    short: i64,
}

impl Steps {
    /// Steps `c`; returns its current weight after the step.
    #[inline(always)]
    fn add<L: PeerList>(&mut self, list: &mut L, c: L::Cursor) -> i64 {
        let (added, weight) = list.step_weight(c);
        self.total += added;
        self.short |= weight ^ added;
        list.current_weight(c)
    }
}

/// Calls `f` on the peers at the positions `class` holds.
#[cold]
#[inline(never)]
fn walk<L: PeerList>(list: &mut L, class: u64, f: impl Fn(&mut L, L::Cursor)) {
    let (mut at, mut position) = (list.first(), 0u32);
    while let (Some(c), true) = (at, class.checked_shr(position).is_some_and(|r| r != 0)) {
        if class & (1 << position) != 0 {
            f(list, c);
        }
        at = list.next(c);
        position += 1;
    }
}

#[inline(always)]
fn choose_with<L: PeerList, T: Ties>(list: &mut L) -> Option<L::Cursor> {
    let mut best: Option<Best<L::Cursor>> = None;
    let mut tied = false;
    let mut ties = T::default();

    let mut at = list.first();
    let mut position = 0;
    while let Some(cursor) = at {
        if let Some(load) = list.load(cursor) {
            // Two plain comparisons of the cross products (not an
            // Ordering): this runs once per peer of every pick.
            let (mine, theirs) = best.map_or((0, 1), |b| load.products(b.load));
            if mine == theirs {
                tied = true;
                ties.set(position);
            } else if mine < theirs {
                // Ties of a worse class stay in the bitmap, but all sit
                // before the new best, where the tie-break does not look.
                best = Some(Best {
                    cursor,
                    load,
                    position,
                });
                tied = false;
                ties.set(position);
            }
        }
        at = list.next(cursor);
        position += 1;
    }

    let best = best?;
    if !tied {
        return Some(best.cursor);
    }
    Some(break_tie(list, best, &ties))
}

/// Smooth weighted round-robin among the peers tied with `best`, which is
/// the first of them in list order.
#[inline(always)]
fn break_tie<L: PeerList, T: Ties>(list: &mut L, best: Best<L::Cursor>, ties: &T) -> L::Cursor {
    // The chosen peer and its current weight (each peer is stepped once, so
    // the weight read holds). Every tied peer's weight beats the start.
    let mut chosen = best.cursor;
    let mut chosen_weight = i64::MIN;
    let mut total = 0i64;

    let (mut at, mut position) = (Some(best.cursor), best.position);
    while let Some(c) = at {
        // Within the bitmap the first pass's reading decides; past it the
        // peer is read again (counts may have moved, and a peer that no
        // longer ties simply sits this one out).
        let is_tied = if ties.covers(position) {
            ties.contains(position)
        } else {
            list.load(c)
                .is_some_and(|l| l.cmp_ratio(best.load) == Ordering::Equal)
        };
        if is_tied {
            total += list.step_weight(c).0;
            list.creep(c);
            let weight = list.current_weight(c);
            if weight > chosen_weight {
                chosen = c;
                chosen_weight = weight;
            }
        }
        at = list.next(c);
        position += 1;
    }

    list.lower_current_weight(chosen, total);
    chosen
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A peer list in plain memory, with nginx's round-robin fields.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct Peers {
        pub conns: Vec<u32>,
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
        fn size(&self) -> usize {
            self.conns.len()
        }
        fn first(&self) -> Option<usize> {
            (!self.conns.is_empty()).then_some(0)
        }
        fn next(&self, at: usize) -> Option<usize> {
            (at + 1 < self.conns.len()).then_some(at + 1)
        }
        fn load(&self, at: usize) -> Option<Load> {
            self.usable[at].then_some(Load {
                conns: self.conns[at],
                weight: self.weight[at] as u32,
            })
        }
        fn step_weight(&mut self, at: usize) -> (i64, i64) {
            let e = self.effective[at];
            self.current[at] += e;
            (e, self.weight[at])
        }
        fn creep(&mut self, at: usize) {
            if self.effective[at] < self.weight[at] {
                self.effective[at] += 1;
            }
        }
        fn unstep_weight(&mut self, at: usize) {
            self.current[at] -= self.effective[at];
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
        assert_eq!(p.conns.iter().sum::<u32>(), 160);
    }

    #[test]
    fn ties_past_the_bitmap_rotate_too() {
        // All tied, more peers than the wide bitmap holds: the tie-break
        // must reach the ones past it and rotate over every peer once.
        let n = 1024 + 904;
        let mut p = Peers::new(&vec![1; n]);
        let mut seen = vec![0u32; n];
        for _ in 0..n {
            seen[choose(&mut p).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    #[test]
    fn ties_rotate_in_lists_around_the_one_word_limit() {
        for n in [63, 64, 65, 130] {
            let mut p = Peers::new(&vec![1; n]);
            let mut seen = vec![0u32; n];
            for _ in 0..2 * n {
                seen[choose(&mut p).unwrap()] += 1;
            }
            assert!(seen.iter().all(|&s| s == 2), "n={n}: {seen:?}");
        }
    }

    #[test]
    fn a_worse_class_tied_earlier_is_ignored() {
        // Peers 0 and 1 tie at 5, then 2 is lighter, then 3 ties with it.
        let mut p = Peers::new(&[1, 1, 1, 1]);
        p.conns = vec![5, 5, 1, 1];
        for _ in 0..4 {
            let c = choose(&mut p).unwrap();
            assert!(c == 2 || c == 3, "picked {c}");
        }
    }

    /// xorshift64: a repeatable sequence for the tests below.
    fn next_random(state: &mut u64, below: u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state % below
    }

    #[test]
    fn one_walk_chooses_and_steps_as_two_walks_do() {
        // Small lists of every length: counts at 0 to 2 (ties, and lighter
        // peers after tied ones), weights 1 to 4, effective weights below
        // them (after failures), unusable peers; picks count, and some
        // connections end. The one walk and stock's two (`choose_with`)
        // choose the same peer and leave the same weights, pick after pick.
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let r = &mut seed;
        for n in (1..=SMALL).cycle().take(3 * SMALL) {
            let weight: Vec<i64> = (0..n).map(|_| 1 + next_random(r, 4) as i64).collect();
            let mut one = Peers::new(&weight);
            for (i, &w) in weight.iter().enumerate() {
                one.conns[i] = next_random(r, 3) as u32;
                one.effective[i] = next_random(r, w as u64 + 1) as i64;
                one.current[i] = next_random(r, 9) as i64 - 4;
                one.usable[i] = next_random(r, 6) != 0;
            }
            let mut two = one.clone();
            for _ in 0..4 * n {
                let chosen = choose_in_one_walk(&mut one);
                assert_eq!(chosen, choose_with::<_, TieBits1024>(&mut two));
                assert_eq!(one, two);
                if let Some(c) = chosen {
                    one.conns[c] += 1;
                }
                let i = next_random(r, n as u64) as usize;
                one.conns[i] = one.conns[i].saturating_sub(next_random(r, 2) as u32);
                two.conns.clone_from(&one.conns);
            }
        }
    }

    #[test]
    fn a_class_beaten_after_its_ties_is_left_unstepped() {
        // 0 and 1 tie (stepped), then 2 is lighter: their steps are undone;
        // 2 alone is chosen, with no step; an effective weight below its
        // weight creeps only for a peer that stays tied.
        let mut p = Peers::new(&[2, 2, 1, 1]);
        p.conns = vec![1, 1, 0, 0];
        p.effective = vec![1, 2, 1, 0];
        p.usable[3] = false;
        assert_eq!(choose_in_one_walk(&mut p), Some(2));
        assert_eq!(
            (p.current.clone(), p.effective.clone()),
            (vec![0; 4], vec![1, 2, 1, 0])
        );
        p.usable[2] = false;
        // 0 and 1 tie: 0 steps 1, 1 steps 2 and wins; 0 creeps to 2.
        assert_eq!(choose_in_one_walk(&mut p), Some(1));
        assert_eq!(
            (p.current, p.effective),
            (vec![1, -1, 0, 0], vec![2, 2, 1, 0])
        );
    }

    #[test]
    fn extreme_counts_and_weights_do_not_overflow() {
        let mut p = Peers::new(&[u32::MAX as i64, 1]);
        p.conns = vec![u32::MAX, u32::MAX / 2];
        assert_eq!(choose(&mut p), Some(0));
        let full = Load {
            conns: u32::MAX,
            weight: 1,
        };
        let heavy = Load {
            conns: u32::MAX,
            weight: u32::MAX,
        };
        assert_eq!(full.cmp_ratio(heavy), Ordering::Greater);
        assert_eq!(heavy.cmp_ratio(heavy), Ordering::Equal);
    }
}
