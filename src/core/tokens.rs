//! Tokens for what a pick took, handed to code we do not control (Lua): a
//! token names an entry and its generation, so it is honoured once; a token
//! released before is recognised, and a forged one is refused, never
//! trusted as a pointer.
//!
//! Token bits: the low 20, the entry's index + 1 (0 is never a token); the
//! 32 above them, the entry's generation when the token was issued. A token
//! is then below 2^52: a Lua number (a double, exact below 2^53) holds it
//! exactly, so handing it to Lua allocates nothing (a 64-bit cdata would be
//! a heap object per pick).
//!
//! What follows from the layout:
//! - a worker has at most 2^20 - 1 (1,048,575) picks outstanding; `issue`
//!   refuses beyond that (never reuses an entry still held). A worker holds
//!   far fewer connections than that (`worker_connections`), so only Lua
//!   code that never releases its tokens reaches it;
//! - an entry's generation wraps after 2^32 reuses: a token kept past that
//!   many reuses of its entry reads as a newer one and is refused as
//!   invalid; only a token kept for exactly a multiple of 2^32 reuses would
//!   be honoured again.

/// Bits of a token that hold the entry's index + 1.
const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Every token is below 2^TOKEN_BITS: 20 bits of index, 32 of generation.
pub const TOKEN_BITS: u32 = INDEX_BITS + u32::BITS;
/// The most entries (picks outstanding at once): index + 1 fits the index
/// bits, and is never 0.
pub const MAX_OUTSTANDING: usize = (1 << INDEX_BITS) - 1;

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

/// Outstanding picks of one worker.
#[derive(Debug)]
pub struct Tokens<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Redeem<T> {
    Taken(T),
    /// Issued here, and redeemed before.
    Already,
    /// Never issued here.
    Invalid,
}

impl<T> Default for Tokens<T> {
    fn default() -> Self {
        Tokens {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Tokens<T> {
    /// Stores `value` and returns its token; gives `value` back when
    /// `MAX_OUTSTANDING` picks are outstanding (see `is_full`). Reuses
    /// entries: after the first picks, issuing allocates nothing.
    pub fn issue(&mut self, value: T) -> Result<u64, T> {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None if self.entries.len() >= MAX_OUTSTANDING => return Err(value),
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    value: None,
                });
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[index];
        e.value = Some(value);
        Ok((u64::from(e.generation) << INDEX_BITS) | (index as u64 + 1))
    }

    /// Whether `issue` would refuse: every index is held by a pick not
    /// released yet.
    pub fn is_full(&self) -> bool {
        self.free.is_empty() && self.entries.len() >= MAX_OUTSTANDING
    }

    /// Takes back the value of `token`, once.
    pub fn redeem(&mut self, token: u64) -> Redeem<T> {
        if token >> TOKEN_BITS != 0 {
            return Redeem::Invalid;
        }
        let (low, generation) = ((token & INDEX_MASK) as usize, (token >> INDEX_BITS) as u32);
        let Some(index) = low.checked_sub(1) else {
            return Redeem::Invalid;
        };
        let Some(e) = self.entries.get_mut(index) else {
            return Redeem::Invalid;
        };
        if generation == e.generation {
            if let Some(v) = e.value.take() {
                e.generation = e.generation.wrapping_add(1);
                self.free.push(index as u32);
                return Redeem::Taken(v);
            }
        }
        // An older generation of an issued entry: released before (wrapping:
        // module docs).
        if generation < e.generation {
            Redeem::Already
        } else {
            Redeem::Invalid
        }
    }

    /// Picks not released yet.
    pub fn outstanding(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_honoured_once() {
        let mut t = Tokens::default();
        let a = t.issue("a").unwrap();
        let b = t.issue("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.outstanding(), 2);
        assert_eq!(t.redeem(a), Redeem::Taken("a"));
        assert_eq!(t.redeem(a), Redeem::Already);
        assert_eq!(t.redeem(b), Redeem::Taken("b"));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn entries_are_reused_and_old_tokens_stay_released() {
        let mut t = Tokens::default();
        let a = t.issue(1).unwrap();
        t.redeem(a);
        let b = t.issue(2).unwrap();
        assert_eq!(a & INDEX_MASK, b & INDEX_MASK, "same entry");
        assert_eq!(
            t.redeem(a),
            Redeem::Already,
            "the old token does not take the new value"
        );
        assert_eq!(t.redeem(b), Redeem::Taken(2));
    }

    #[test]
    fn a_token_stays_released_past_2_pow_20_reuses_of_its_entry() {
        // 2^20 reuses: the generation does not wrap at the index's width.
        let mut t = Tokens::default();
        let first = t.issue(0).unwrap();
        assert_eq!(t.redeem(first), Redeem::Taken(0));
        for i in 1..1u32 << 20 {
            let tok = t.issue(i).unwrap();
            assert_eq!(t.redeem(tok), Redeem::Taken(i));
        }
        let now = t.issue(u32::MAX).unwrap();
        assert_eq!(now & INDEX_MASK, first & INDEX_MASK, "the same entry");
        assert_eq!(now >> INDEX_BITS, 1 << 20, "its 2^20-th generation");
        assert_eq!(t.redeem(first), Redeem::Already);
        assert_eq!(t.redeem(now), Redeem::Taken(u32::MAX));
    }

    #[test]
    fn tokens_fit_a_lua_number_up_to_the_last_generation() {
        let mut t = Tokens::default();
        let held: Vec<u64> = (0..3).map(|i| t.issue(i).unwrap()).collect();
        t.redeem(held[1]);
        t.entries[1].generation = u32::MAX;
        let last = t.issue(7).unwrap();
        assert!(last < 1 << 52, "below 2^52: {last:#x}");
        assert!(last as f64 as u64 == last, "exact as a double");
        assert_eq!(t.redeem(last), Redeem::Taken(7));
        let wrapped = t.issue(8).unwrap();
        assert_eq!(wrapped, 2, "generation 0 again, entry 1");
        assert_eq!(t.redeem(last), Redeem::Invalid, "reads as a newer one");
        assert_eq!(t.redeem(wrapped), Redeem::Taken(8));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let mut t = Tokens::default();
        let a = t.issue(1).unwrap();
        assert_eq!(t.redeem(0), Redeem::Invalid);
        assert_eq!(t.redeem(u64::MAX), Redeem::Invalid);
        assert_eq!(t.redeem(1 << 52 | a), Redeem::Invalid, "past 2^52");
        assert_eq!(t.redeem(a + 1), Redeem::Invalid, "an entry never issued");
        assert_eq!(
            t.redeem(a + (5 << INDEX_BITS)),
            Redeem::Invalid,
            "a future generation"
        );
        assert_eq!(t.redeem(a), Redeem::Taken(1));
    }

    #[test]
    fn the_index_space_exhausted_refuses_rather_than_wraps() {
        let mut t = Tokens::default();
        let tokens: Vec<u64> = (0..MAX_OUTSTANDING)
            .map(|i| t.issue(i).expect("room"))
            .collect();
        assert!(tokens.iter().all(|&tok| tok < 1 << 52));
        assert_eq!(tokens[MAX_OUTSTANDING - 1], INDEX_MASK, "the last index");
        assert!(t.is_full());
        assert_eq!(t.issue(usize::MAX), Err(usize::MAX), "refused");
        assert_eq!(t.outstanding(), MAX_OUTSTANDING);
        assert_eq!(t.redeem(tokens[5]), Redeem::Taken(5));
        assert!(!t.is_full());
        let again = t.issue(42).unwrap();
        assert_eq!(again & INDEX_MASK, tokens[5] & INDEX_MASK);
        assert_eq!(t.redeem(tokens[5]), Redeem::Already);
        assert_eq!(t.redeem(again), Redeem::Taken(42));
        assert_eq!(t.redeem(tokens[0]), Redeem::Taken(0));
    }
}
