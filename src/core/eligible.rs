//! Whether a peer can take a connection, and the load a pick compares it
//! by: the one rule for nginx's peer lists and for Lua's (`array_list`).
//!
//! A peer is out when its front-end says so (down, tried by this request,
//! failed within `fail_timeout`), when the health checks took it out, or
//! when its count reached its `max_conns`. Otherwise it is compared by its
//! count and weight; the checks may override both limits and add the load
//! its server reported; slow start compares a ramping peer by its virtual
//! count (`ramp::virtual_count`), but never ramps its `max_conns`.
//!
//! The facts are asked for as the rule reaches them (`Peers`), so that a
//! pick reads only what it needs:
//! an out peer costs no count, and the checks' record and the ramp are read
//! only for a peer that has them, in functions of their own (cold).

use super::ramp;
use super::select::Load;
use super::table::{Tuned, CHECK_OUT, CHECK_TUNED};

/// A peer list, as the rule asks about one of its peers.
pub trait Peers {
    /// Names a peer of the list: a cursor or a position, a word or two
    /// (passed in registers to the cold paths).
    type At: Copy;

    /// A configured `max_conns` in the width the front-end keeps it: a
    /// count is compared with it as it is (nginx's may be past `u32::MAX`,
    /// and then never stops a pick).
    type MaxConns: Copy + PartialOrd + From<u32> + TryInto<u32>;

    /// Whether a ramping peer's virtual count is worked out of line: where
    /// a pick is compiled apart for while some peer ramps, its loop stays
    /// small; where one loop serves every pick, a call in it would cost
    /// every peer of every pick.
    const RAMP_OUT_OF_LINE: bool = false;

    /// The peer's key's health-check bits (`CHECK_OUT`, `CHECK_TUNED`); 0
    /// when the checks say nothing of it.
    fn check_bits(&self, at: Self::At) -> u32;

    /// Our count of the peer's connections, and `check_bits` (read
    /// together: one look at a shared handle).
    fn conns_and_bits(&self, at: Self::At) -> (u32, u32);

    /// The peer's configured weight.
    fn weight(&self, at: Self::At) -> u32;

    /// The peer's configured `max_conns`; 0: none.
    fn configured_max_conns(&self, at: Self::At) -> Self::MaxConns;

    /// Slow start: `Some(elapsed, window)` (deciseconds) while the peer
    /// ramps up.
    fn ramp(&self, at: Self::At) -> Option<(u32, u32)>;

    /// For a peer with check bits: whether they came from a key that is no
    /// longer its own (a stale handle): the checks then say nothing of it.
    fn stale(&self, _at: Self::At) -> bool {
        false
    }

    /// For a peer with check bits: the overrides and the reported load.
    fn tuned(&self, at: Self::At) -> Tuned;

    /// For a tuned peer: what its count `conns` is compared with beyond
    /// itself for the load its server reported. The key's own excess,
    /// unless the count is not the key's (a Lua list's, `array_list`).
    fn excess(&self, _at: Self::At, tuned: &Tuned, _conns: u32) -> u32 {
        tuned.excess
    }
}

/// The load the peer `at` is compared by, or `None` when it cannot take a
/// connection. `out`: what the front-end alone knows puts it out (down,
/// tried by this request, failed within `fail_timeout`).
#[inline(always)]
pub fn load<P: Peers + ?Sized>(peers: &P, at: P::At, out: bool) -> Option<Load> {
    if out {
        return None;
    }
    let (conns, bits) = peers.conns_and_bits(at);
    if bits != 0 {
        return checked(peers, at, conns, bits);
    }
    unchecked(peers, at, conns)
}

/// The `max_conns` (0: none) counting a connection on the peer `at` may
/// reach: the configured one (at most `u32::MAX`), or a capacity answer's
/// override.
#[inline(always)]
pub fn max_conns<P: Peers + ?Sized>(peers: &P, at: P::At) -> u32 {
    if peers.check_bits(at) & CHECK_TUNED != 0 && !peers.stale(at) {
        if let Some(n) = peers.tuned(at).max_conns {
            return n;
        }
    }
    saturate(peers.configured_max_conns(at))
}

/// `load` of a peer the checks say nothing of.
#[inline(always)]
fn unchecked<P: Peers + ?Sized>(peers: &P, at: P::At, conns: u32) -> Option<Load> {
    if full(conns, peers.configured_max_conns(at)) {
        return None;
    }
    // A ramping peer's `max_conns`, just tested, is not ramped: with no
    // queue in nginx, a lower limit would refuse requests no other server
    // can take.
    let conns = match peers.ramp(at) {
        Some((elapsed, window)) if P::RAMP_OUT_OF_LINE => {
            virtual_count_out_of_line(conns, elapsed, window)
        }
        Some((elapsed, window)) => ramp::virtual_count(conns, elapsed, window),
        None => conns,
    };
    Some(Load {
        conns,
        weight: peers.weight(at),
    })
}

/// `ramp::virtual_count`, for `Peers::RAMP_OUT_OF_LINE`.
#[cold]
#[inline(never)]
fn virtual_count_out_of_line(conns: u32, elapsed: u32, window: u32) -> u32 {
    ramp::virtual_count(conns, elapsed, window)
}

/// The load of a peer with check bits: none when the checks took it out
/// (down, or draining by its answer); else compared with the capacity
/// answer's weight and `max_conns`, and its count plus what its server
/// reported beyond it (ramped, if it ramps).
#[cold]
#[inline(never)]
fn checked<P: Peers + ?Sized>(peers: &P, at: P::At, conns: u32, bits: u32) -> Option<Load> {
    if peers.stale(at) {
        return unchecked(peers, at, conns);
    }
    if bits & CHECK_OUT != 0 {
        return None;
    }
    let tuned = peers.tuned(at);
    // The limit holds our count; the server's own load only weighs in the
    // comparison.
    let max_conns = tuned
        .max_conns
        .unwrap_or_else(|| saturate(peers.configured_max_conns(at)));
    if full(conns, max_conns) {
        return None;
    }
    let weight = tuned.weight.unwrap_or_else(|| peers.weight(at));
    let load = conns.saturating_add(peers.excess(at, &tuned, conns));
    let load = match peers.ramp(at) {
        Some((elapsed, window)) => ramp::virtual_count(load, elapsed, window),
        None => load,
    };
    Some(Load {
        conns: load,
        weight,
    })
}

/// Whether `conns` reached `max_conns` (0: no limit).
#[inline(always)]
fn full<M: PartialOrd + From<u32>>(conns: u32, max_conns: M) -> bool {
    max_conns != M::from(0) && M::from(conns) >= max_conns
}

/// A configured `max_conns` as a count's limit: at most `u32::MAX`.
#[inline(always)]
fn saturate<M: TryInto<u32>>(max_conns: M) -> u32 {
    max_conns.try_into().unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// A peer given by its facts, counting the reads the rule should skip.
    #[derive(Clone, Default)]
    struct Given {
        out: bool,
        conns: u32,
        bits: u32,
        weight: u32,
        max_conns: u64,
        ramp: Option<(u32, u32)>,
        stale: bool,
        tuned: Tuned,
        /// `Some`: the peer's own excess (a Lua list's), not the key's.
        excess: Option<u32>,
        conns_read: Cell<u32>,
        tuned_read: Cell<u32>,
    }

    impl Given {
        fn up(conns: u32, weight: u32, max_conns: u64) -> Given {
            Given {
                conns,
                weight,
                max_conns,
                ..Given::default()
            }
        }

        fn tuned(mut self, bits: u32, tuned: Tuned) -> Given {
            self.bits = bits;
            self.tuned = tuned;
            self
        }
    }

    /// `Given` with its ramp worked out of line.
    struct OutOfLine(Given);

    /// `Given` with a 32-bit `max_conns`, as Lua's lists keep it.
    struct Narrow(Given);

    impl core::ops::Deref for OutOfLine {
        type Target = Given;
        fn deref(&self) -> &Given {
            &self.0
        }
    }

    impl core::ops::Deref for Narrow {
        type Target = Given;
        fn deref(&self) -> &Given {
            &self.0
        }
    }

    /// A list of one peer, named by `()`, with `Given`'s facts.
    macro_rules! list_of_one {
        ($list:ty, $max_conns:ty, $out_of_line:expr) => {
            impl Peers for $list {
                type At = ();
                type MaxConns = $max_conns;
                const RAMP_OUT_OF_LINE: bool = $out_of_line;
                fn check_bits(&self, _: ()) -> u32 {
                    self.bits
                }
                fn conns_and_bits(&self, _: ()) -> (u32, u32) {
                    self.conns_read.set(self.conns_read.get() + 1);
                    (self.conns, self.bits)
                }
                fn weight(&self, _: ()) -> u32 {
                    self.weight
                }
                fn configured_max_conns(&self, _: ()) -> $max_conns {
                    <$max_conns>::try_from(self.max_conns).expect("a test's max_conns")
                }
                fn ramp(&self, _: ()) -> Option<(u32, u32)> {
                    self.ramp
                }
                fn stale(&self, _: ()) -> bool {
                    self.stale
                }
                fn tuned(&self, _: ()) -> Tuned {
                    self.tuned_read.set(self.tuned_read.get() + 1);
                    self.tuned
                }
                fn excess(&self, _: (), tuned: &Tuned, conns: u32) -> u32 {
                    assert_eq!(conns, self.conns, "asked with the count itself");
                    self.excess.unwrap_or(tuned.excess)
                }
            }
        };
    }

    list_of_one!(Given, u64, false);
    list_of_one!(OutOfLine, u64, true);
    list_of_one!(Narrow, u32, false);

    /// The rule's answer for `p`.
    fn load_of(p: &Given) -> Option<Load> {
        load(p, (), p.out)
    }

    fn limit_of(p: &Given) -> u32 {
        max_conns(p, ())
    }

    fn at(conns: u32, weight: u32) -> Option<Load> {
        Some(Load { conns, weight })
    }

    #[test]
    fn an_up_peer_is_compared_by_its_count_and_weight() {
        assert_eq!(load_of(&Given::up(3, 2, 0)), at(3, 2));
        assert_eq!(load_of(&Given::up(3, 2, 4)), at(3, 2));
    }

    #[test]
    fn an_out_peer_is_none_and_its_count_is_not_read() {
        let p = Given {
            out: true,
            ..Given::up(0, 1, 0)
        };
        assert_eq!(load_of(&p), None);
        assert_eq!(p.conns_read.get(), 0);
    }

    #[test]
    fn a_peer_at_its_max_conns_is_none() {
        assert_eq!(load_of(&Given::up(4, 1, 4)), None);
        assert_eq!(load_of(&Given::up(5, 1, 4)), None);
        assert_eq!(
            load_of(&Given::up(u32::MAX, 1, 0)),
            at(u32::MAX, 1),
            "0: none"
        );
        let wide = u64::from(u32::MAX) + 1;
        assert_eq!(load_of(&Given::up(u32::MAX, 1, wide)), at(u32::MAX, 1));
    }

    #[test]
    fn a_ramping_peer_is_compared_by_its_virtual_count_but_its_limit_is_not_ramped() {
        let ramping = |conns, max_conns| Given {
            ramp: Some((30, 300)),
            ..Given::up(conns, 2, max_conns)
        };
        // (9 + 1) * 300 / 30
        assert_eq!(load_of(&ramping(9, 0)), at(100, 2));
        assert_eq!(
            load_of(&ramping(9, 10)),
            at(100, 2),
            "100 is past 10: not ramped"
        );
        assert_eq!(load_of(&ramping(10, 10)), None, "the count is");
        // Worked out of line, the same.
        for (conns, max_conns) in [(9, 0), (9, 10), (10, 10)] {
            let p = ramping(conns, max_conns);
            assert_eq!(load(&OutOfLine(p.clone()), (), false), load_of(&p));
        }
        assert_eq!(load(&OutOfLine(ramping(9, 0)), (), false), at(100, 2));
    }

    #[test]
    fn a_narrow_max_conns_is_compared_alike() {
        let narrow = |conns| Narrow(Given::up(conns, 1, 4));
        assert_eq!(load(&narrow(3), (), false), at(3, 1));
        assert_eq!(load(&narrow(4), (), false), None);
        assert_eq!(
            load(&Narrow(Given::up(9, 1, 0)), (), false),
            at(9, 1),
            "0: none"
        );
        assert_eq!(max_conns(&narrow(0), ()), 4);
        let tuned = Tuned {
            max_conns: Some(2),
            ..Tuned::default()
        };
        let p = Narrow(Given::up(2, 1, 4).tuned(CHECK_TUNED, tuned));
        assert_eq!(load(&p, (), false), None, "at the override");
    }

    #[test]
    fn a_peer_the_checks_took_out_is_none_and_its_record_is_not_read() {
        let p = Given::up(0, 1, 0).tuned(CHECK_OUT | CHECK_TUNED, Tuned::default());
        assert_eq!(load_of(&p), None);
        assert_eq!(p.tuned_read.get(), 0);
    }

    #[test]
    fn stale_check_bits_say_nothing() {
        let p = Given {
            stale: true,
            ramp: Some((150, 300)),
            ..Given::up(4, 3, 5)
        };
        let p = p.tuned(
            CHECK_OUT | CHECK_TUNED,
            Tuned {
                weight: Some(9),
                max_conns: Some(1),
                excess: 7,
                ..Tuned::default()
            },
        );
        // As unchecked: configured limits, no excess, ramped (4 + 1) * 2.
        assert_eq!(load_of(&p), at(10, 3));
        assert_eq!(limit_of(&p), 5);
        assert_eq!(p.tuned_read.get(), 0);
    }

    #[test]
    fn a_capacity_answer_overrides_weight_and_max_conns() {
        let tuned = Tuned {
            weight: Some(7),
            max_conns: Some(6),
            ..Tuned::default()
        };
        let p = |conns| Given::up(conns, 1, 2).tuned(CHECK_TUNED, tuned);
        assert_eq!(load_of(&p(5)), at(5, 7), "past the configured 2");
        assert_eq!(load_of(&p(6)), None, "at the override");
        assert_eq!(limit_of(&p(0)), 6);
        // No override: the configured ones.
        let plain = Given::up(1, 3, 2).tuned(CHECK_TUNED, Tuned::default());
        assert_eq!(load_of(&plain), at(1, 3));
        assert_eq!(
            load_of(&Given::up(2, 3, 2).tuned(CHECK_TUNED, Tuned::default())),
            None
        );
        assert_eq!(limit_of(&plain), 2);
    }

    #[test]
    fn a_reported_load_adds_to_the_comparison_not_to_the_limit() {
        let tuned = Tuned {
            excess: 10,
            ..Tuned::default()
        };
        let p = Given::up(3, 1, 4).tuned(CHECK_TUNED, tuned);
        assert_eq!(load_of(&p), at(13, 1), "3 of 4 taken: one more fits");
        // A count that is not the key's brings its own excess.
        let lua = Given {
            excess: Some(2),
            ..Given::up(3, 1, 4)
        };
        assert_eq!(load_of(&lua.tuned(CHECK_TUNED, tuned)), at(5, 1));
        let huge = Tuned {
            excess: u32::MAX,
            ..Tuned::default()
        };
        let p = Given::up(3, 1, 0).tuned(CHECK_TUNED, huge);
        assert_eq!(load_of(&p), at(u32::MAX, 1), "saturates");
    }

    #[test]
    fn a_ramping_tuned_peer_ramps_its_count_with_the_excess() {
        let tuned = Tuned {
            excess: 5,
            weight: Some(2),
            ..Tuned::default()
        };
        let p = Given {
            ramp: Some((100, 300)),
            ..Given::up(4, 1, 0)
        };
        // (4 + 5 + 1) * 300 / 100
        assert_eq!(load_of(&p.tuned(CHECK_TUNED, tuned)), at(30, 2));
    }

    #[test]
    fn max_conns_is_the_configured_one_unless_tuned() {
        let override_ = Tuned {
            max_conns: Some(3),
            ..Tuned::default()
        };
        let p = Given::up(0, 1, 9).tuned(CHECK_OUT, override_);
        assert_eq!(limit_of(&p), 9, "bits without CHECK_TUNED");
        assert_eq!(p.tuned_read.get(), 0);
        assert_eq!(
            limit_of(&Given::up(0, 1, 9).tuned(CHECK_TUNED, override_)),
            3
        );
        let wide = Given::up(0, 1, u64::from(u32::MAX) + 7);
        assert_eq!(limit_of(&wide), u32::MAX, "saturated to a count");
    }
}
