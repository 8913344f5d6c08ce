//! An index of an upstream's servers by connections per weight: the least
//! loaded one in O(log n), for picks over large upstreams, where a scan of
//! every server is most of a proxied request's cost.
//!
//! A tournament tree over the servers' positions (the leaves): every inner
//! node holds the position of the best leaf below it, so the root holds the
//! best of all, and a leaf that changes costs one walk up its path. Best
//! is the lowest connections per weight (cross products, no floats); among
//! servers tied there, the earliest deadline: each pick moves the chosen
//! server's deadline on by `SCALE / weight`, so that a stable set of tied
//! servers is served in proportion to their weights (earliest deadline
//! first, as Envoy's weighted picks; within one pick of each server's share
//! over any `sum of weights` picks). A server out of the index (down, full,
//! taken out by checks, ramping: the caller's `Key::OUT`) never wins.
//!
//! The index works on memory the caller gives it (`Parts`), plain atomics,
//! so that it can live in shared memory, read and written by every worker
//! under one lock the caller holds. A process may die at any instruction of
//! a change: the change is announced first (`Head::pending`), so the next
//! holder of the lock redoes it from the truth (`repair`), which the caller
//! supplies: the live counts.
//!
//! The pick takes a predicate for what only the caller knows (tried by this
//! request, failed within `fail_timeout` in this worker): the search then
//! skips the winners it rules out, at O(log n) each, and gives up past a
//! budget (the caller scans instead).

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::Release};

#[cfg(test)]
mod tests;

/// No position: an empty subtree's winner, or no change pending.
const NONE: u32 = u32::MAX;
/// Pending: the whole index is being rebuilt.
const EVERY: u32 = u32::MAX - 1;
/// The largest number of servers an index takes (positions below `EVERY`).
pub const MAX_SERVERS: usize = 1 << 24;

/// A pick moves the chosen server's deadline on by `SCALE / weight`: at
/// least 1 for any 32-bit weight, and 2^32 for weight 1, so that a weight-1
/// server's deadline wraps after 2^32 of its picks; deadlines are compared
/// as serial numbers (`deadline_before`), and a changed leaf is brought up
/// to the index's virtual time, so that live ones stay close together.
const SCALE: u64 = 1 << 32;

/// What the index orders a server by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub conns: u32,
    /// 0: out of the index (down, full, taken out, ramping, absent).
    pub weight: u32,
}

impl Key {
    pub const OUT: Key = Key {
        conns: 0,
        weight: 0,
    };

    pub fn is_out(self) -> bool {
        self.weight == 0
    }
}

/// One server's place in the index.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Leaf {
    conns: AtomicU32,
    weight: AtomicU32,
    deadline: AtomicU64,
}

/// The index's own state, beside its leaves and nodes.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Head {
    /// How many leaves are servers (the rest, up to the tree's width, are
    /// empty).
    servers: AtomicU32,
    /// The leaf a change is being made to (`EVERY`: all of them), or
    /// `NONE`; a holder that died leaves it for `repair`.
    pending: AtomicU32,
    /// The deadline of the last pick: where a changed leaf's deadline is
    /// brought up to, so that a server back after a while does not take
    /// every tie until it catches up.
    vtime: AtomicU64,
}

/// The memory an index of up to `capacity` servers lives in.
pub struct Parts<'a> {
    pub head: &'a Head,
    /// `capacity` leaves.
    pub leaves: &'a [Leaf],
    /// `width(capacity)` nodes (the first is not used).
    pub nodes: &'a [AtomicU32],
}

/// How many nodes an index of `capacity` servers needs: a power of two.
pub const fn width(capacity: usize) -> usize {
    if capacity <= 1 {
        1
    } else {
        capacity.next_power_of_two()
    }
}

/// What a pick found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Best {
    /// The position of the server to pick.
    At(usize),
    /// No server in the index, or every one the caller ruled out.
    Nothing,
    /// The caller ruled out more winners than its budget allowed: it
    /// should scan instead.
    GaveUp,
}

/// An index in its memory. Every method but `new` expects the caller's
/// lock held.
pub struct LeastIndex<'a> {
    head: &'a Head,
    leaves: &'a [Leaf],
    nodes: &'a [AtomicU32],
    width: usize,
}

impl<'a> LeastIndex<'a> {
    /// The index in `parts`; `None` if the parts do not fit together.
    pub fn new(parts: Parts<'a>) -> Option<LeastIndex<'a>> {
        let capacity = parts.leaves.len();
        let width = width(capacity);
        (capacity <= MAX_SERVERS && parts.nodes.len() == width).then_some(LeastIndex {
            head: parts.head,
            leaves: parts.leaves,
            nodes: parts.nodes,
            width,
        })
    }

    pub fn capacity(&self) -> usize {
        self.leaves.len()
    }

    pub fn servers(&self) -> usize {
        self.head.servers.load(Relaxed) as usize
    }

    /// Sets the index up for `servers` servers (at most `capacity`), keyed
    /// by `key` (positions from 0): a new index, or after a reload or DNS
    /// changed the list. Deadlines start one step past the virtual time,
    /// heavier servers first, as a pick would leave them.
    pub fn rebuild(&self, servers: usize, key: impl Fn(usize) -> Key) {
        let servers = servers.min(self.capacity());
        self.head.pending.store(EVERY, Relaxed);
        fence(Release);
        self.head.servers.store(servers as u32, Relaxed);
        let now = self.head.vtime.load(Relaxed);
        for (i, leaf) in self.leaves.iter().enumerate() {
            let k = if i < servers { key(i) } else { Key::OUT };
            leaf.conns.store(k.conns, Relaxed);
            leaf.weight.store(k.weight, Relaxed);
            leaf.deadline
                .store(now.wrapping_add(step(k.weight)), Relaxed);
        }
        for node in (1..self.width).rev() {
            self.fix_node(node);
        }
        self.head.pending.store(NONE, Release);
    }

    /// Records that the server at `i` now has `key` (its count changed, or
    /// it went out or came back). Out of range: nothing to record.
    pub fn set(&self, i: usize, key: Key) {
        self.change(i, key, false, usize::MAX);
    }

    /// Records a pick of the server at `i`, which now has `key`: its
    /// deadline moves on by one step of its weight.
    pub fn picked(&self, i: usize, key: Key) {
        self.change(i, key, true, usize::MAX);
    }

    /// `set` or `picked`, announced first: a death anywhere after the
    /// announcement leaves `repair` to redo the leaf and its path. `steps`:
    /// how many nodes of the path to redo (all but where tests stand for a
    /// death halfway).
    fn change(&self, i: usize, key: Key, picked: bool, steps: usize) {
        if i >= self.servers() {
            return;
        }
        self.head.pending.store(i as u32, Relaxed);
        // The announcement before any change, in any process that looks.
        fence(Release);
        if picked {
            self.advance_deadline(i);
        }
        self.write_leaf(i, key);
        self.fix_path(i, steps);
        if steps == usize::MAX {
            self.head.pending.store(NONE, Release);
        }
    }

    /// One pick's step on the deadline of the server at `i`; the virtual
    /// time follows the deadlines picks were made at.
    fn advance_deadline(&self, i: usize) {
        let leaf = &self.leaves[i];
        let deadline = leaf.deadline.load(Relaxed);
        if deadline_before(self.head.vtime.load(Relaxed), deadline) {
            self.head.vtime.store(deadline, Relaxed);
        }
        let weight = leaf.weight.load(Relaxed);
        leaf.deadline
            .store(deadline.wrapping_add(step(weight)), Relaxed);
    }

    /// The best server that `out` does not rule out. A winner of an inner
    /// node ruled out costs a search below that node (its path: O(log n)),
    /// and the pick gives up past `budget` of those.
    pub fn best(&self, mut out: impl FnMut(usize) -> bool, budget: u32) -> Best {
        let mut left = budget;
        match self.search(1, NONE, &mut out, &mut left) {
            Ok(NONE) => Best::Nothing,
            Ok(i) => Best::At(i as usize),
            Err(GaveUp) => Best::GaveUp,
        }
    }

    /// Finishes a change that a process which died left half made: the
    /// leaf it was changing is read again from `key` (the truth, such as
    /// the live count) and its path redone; a rebuild is redone whole.
    /// Returns whether there was anything to finish.
    pub fn repair(&self, key: impl Fn(usize) -> Key) -> bool {
        match self.head.pending.load(Relaxed) {
            NONE => false,
            EVERY => {
                self.rebuild(self.servers(), key);
                true
            }
            i => {
                self.set(i as usize, key(i as usize));
                true
            }
        }
    }

    /// Whether every node holds the best of its two children: what the
    /// index must look like whenever no change is pending.
    pub fn is_valid(&self) -> bool {
        (1..self.width).all(|node| {
            let (l, r) = self.children(node);
            self.nodes[node].load(Relaxed) == self.better(l, r)
        })
    }

    /// The key the index holds for the server at `i`.
    pub fn key(&self, i: usize) -> Key {
        let leaf = &self.leaves[i];
        Key {
            conns: leaf.conns.load(Relaxed),
            weight: leaf.weight.load(Relaxed),
        }
    }

    /// A changed leaf's key; one that comes into the index, or changes,
    /// with its deadline behind the virtual time is brought up to it.
    fn write_leaf(&self, i: usize, key: Key) {
        let leaf = &self.leaves[i];
        let vtime = self.head.vtime.load(Relaxed);
        let deadline = leaf.deadline.load(Relaxed);
        if leaf.weight.load(Relaxed) == 0 && !key.is_out() {
            leaf.deadline
                .store(vtime.wrapping_add(step(key.weight)), Relaxed);
        } else if deadline_before(deadline, vtime) {
            leaf.deadline.store(vtime, Relaxed);
        }
        leaf.conns.store(key.conns, Relaxed);
        leaf.weight.store(key.weight, Relaxed);
    }

    /// Recomputes the nodes above leaf `i`, at most `steps` of them (all in
    /// use; fewer only where tests stand for a death halfway).
    fn fix_path(&self, i: usize, steps: usize) {
        let mut node = (self.width + i) / 2;
        let mut left = steps;
        while node >= 1 && left > 0 {
            self.fix_node(node);
            node /= 2;
            left -= 1;
        }
    }

    fn fix_node(&self, node: usize) {
        let (l, r) = self.children(node);
        self.nodes[node].store(self.better(l, r), Relaxed);
    }

    /// The winners of `node`'s two children.
    fn children(&self, node: usize) -> (u32, u32) {
        (self.winner(2 * node), self.winner(2 * node + 1))
    }

    /// The best leaf under `node`: stored for an inner node; a leaf (at
    /// `width` and past) is its own winner while it is in the index.
    #[inline]
    fn winner(&self, node: usize) -> u32 {
        if node < self.width {
            return self.nodes[node].load(Relaxed);
        }
        let i = node - self.width;
        match self.leaves.get(i) {
            Some(leaf) if i < self.servers() && leaf.weight.load(Relaxed) != 0 => i as u32,
            _ => NONE,
        }
    }

    /// The better of two winners (either may be `NONE`).
    #[inline]
    fn better(&self, a: u32, b: u32) -> u32 {
        if a == NONE {
            return b;
        }
        if b == NONE {
            return a;
        }
        let (x, y) = (&self.leaves[a as usize], &self.leaves[b as usize]);
        let mine = u64::from(x.conns.load(Relaxed)) * u64::from(y.weight.load(Relaxed));
        let theirs = u64::from(y.conns.load(Relaxed)) * u64::from(x.weight.load(Relaxed));
        if mine != theirs {
            return if mine < theirs { a } else { b };
        }
        let (da, db) = (x.deadline.load(Relaxed), y.deadline.load(Relaxed));
        if da == db {
            return a.min(b);
        }
        if deadline_before(da, db) {
            a
        } else {
            b
        }
    }

    /// The best leaf under `node` that `out` does not rule out (`known`: a
    /// leaf already ruled out, not asked again on its way down).
    fn search(
        &self,
        node: usize,
        known: u32,
        out: &mut impl FnMut(usize) -> bool,
        budget: &mut u32,
    ) -> Result<u32, GaveUp> {
        let w = self.winner(node);
        if w == NONE || (w != known && !out(w as usize)) {
            return Ok(w);
        }
        if node >= self.width {
            return Ok(NONE);
        }
        if w != known {
            *budget = budget.checked_sub(1).ok_or(GaveUp)?;
        }
        let l = self.search(2 * node, w, out, budget)?;
        let r = self.search(2 * node + 1, w, out, budget)?;
        Ok(self.better(l, r))
    }
}

/// A search past its budget.
struct GaveUp;

/// How far a pick moves a server's deadline.
#[inline]
fn step(weight: u32) -> u64 {
    SCALE / u64::from(weight.max(1))
}

/// Whether deadline `a` comes before `b`, as serial numbers (RFC 1982):
/// deadlines wrap, and the live ones stay within 2^63 of each other.
#[inline]
fn deadline_before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

/// A heap-backed index, for tests and benchmarks of the core.
#[cfg(test)]
pub(crate) struct Owned {
    head: Head,
    leaves: Vec<Leaf>,
    nodes: Vec<AtomicU32>,
}

#[cfg(test)]
impl Owned {
    pub fn new(capacity: usize) -> Owned {
        let owned = Owned {
            head: Head::default(),
            leaves: (0..capacity).map(|_| Leaf::default()).collect(),
            nodes: (0..width(capacity)).map(|_| AtomicU32::new(NONE)).collect(),
        };
        owned.index().rebuild(0, |_| Key::OUT);
        owned
    }

    pub fn index(&self) -> LeastIndex<'_> {
        LeastIndex::new(Parts {
            head: &self.head,
            leaves: &self.leaves,
            nodes: &self.nodes,
        })
        .expect("parts sized by width()")
    }
}
