//! Tokens for what a pick took, handed to code we do not control (Lua): a
//! token names an entry and its generation, so it is honoured once; a token
//! released before is recognised, and a forged one is refused, never
//! trusted as a pointer.
//!
//! Token bits: low 32, the entry's index + 1 (0 is never a token); the 20
//! above them, the entry's generation when the token was issued. A token is
//! then below 2^52: a Lua number holds it exactly, so handing it to Lua
//! allocates nothing (a 64-bit cdata would be a heap object per pick).

/// Generations wrap within 20 bits.
const GENERATIONS: u32 = 1 << 20;

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
    /// Stores `value` and returns its token. Reuses entries: after the
    /// first picks, issuing allocates nothing.
    pub fn issue(&mut self, value: T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i as usize,
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
        (u64::from(e.generation) << 32) | (index as u64 + 1)
    }

    /// Takes back the value of `token`, once.
    pub fn redeem(&mut self, token: u64) -> Redeem<T> {
        if token >> 52 != 0 {
            return Redeem::Invalid;
        }
        let (low, generation) = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
        let Some(index) = low.checked_sub(1) else {
            return Redeem::Invalid;
        };
        let Some(e) = self.entries.get_mut(index) else {
            return Redeem::Invalid;
        };
        if generation == e.generation {
            if let Some(v) = e.value.take() {
                e.generation = (e.generation + 1) % GENERATIONS;
                self.free.push(index as u32);
                return Redeem::Taken(v);
            }
        }
        // An older generation of an issued entry: released before. (After
        // 2^20 reuses of one entry the count wraps; a token kept that long
        // reads as a newer one and is refused as invalid, never honoured.)
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
        let a = t.issue("a");
        let b = t.issue("b");
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
        let a = t.issue(1);
        t.redeem(a);
        let b = t.issue(2);
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "same entry");
        assert_eq!(
            t.redeem(a),
            Redeem::Already,
            "the old token does not take the new value"
        );
        assert_eq!(t.redeem(b), Redeem::Taken(2));
    }

    #[test]
    fn tokens_fit_a_lua_number() {
        let mut t = Tokens::default();
        for _ in 0..3 * GENERATIONS as usize + 7 {
            let tok = t.issue(());
            assert!(tok < 1 << 52);
            assert_eq!(t.redeem(tok), Redeem::Taken(()));
        }
        let tok = t.issue(());
        assert_eq!(
            t.redeem(tok),
            Redeem::Taken(()),
            "after the generation wrapped"
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let mut t = Tokens::default();
        let a = t.issue(1);
        assert_eq!(t.redeem(0), Redeem::Invalid);
        assert_eq!(t.redeem(u64::MAX), Redeem::Invalid);
        assert_eq!(t.redeem(a + 1), Redeem::Invalid, "an entry never issued");
        assert_eq!(
            t.redeem(a + (5 << 32)),
            Redeem::Invalid,
            "a future generation"
        );
        assert_eq!(t.redeem(a), Redeem::Taken(1));
    }
}
