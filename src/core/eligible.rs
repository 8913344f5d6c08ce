//! Whether a peer can take a connection, and the load a pick compares it
//! by: the one rule for nginx's peer lists (`ngx::peers`) and Lua's
//! (`array_list`).
//!
//! A peer is out when its front-end says so (down, tried by this request,
//! failed within `fail_timeout`), when the health checks took it out, or
//! when its count reached its `max_conns`. Otherwise it is compared by its
//! count and weight; the checks may override both limits and add the load
//! its server reported; slow start compares a ramping peer by its virtual
//! count (`ramp::virtual_count`), but never ramps its `max_conns`.
//!
//! The facts are asked for as the rule reaches them (`Peer`), so that the
//! common case reads no more than it did when each front-end wrote its own:
//! an out peer costs no count, and the checks' record and the ramp are read
//! only for a peer that has them, in functions of their own (cold).

use super::health_table::{Tuned, CHECK_OUT, CHECK_TUNED};
use super::ramp;
use super::select::Load;

/// One peer, as the rule asks about it.
pub trait Peer {
    /// Whether the front-end alone knows it cannot take a connection:
    /// configured down, tried by this request, failed within `fail_timeout`.
    fn out(&self) -> bool;

    /// Our count of its connections.
    fn conns(&self) -> u32;

    /// Its key's health-check bits (`CHECK_OUT`, `CHECK_TUNED`); 0 when the
    /// checks say nothing of it.
    fn check_bits(&self) -> u32;

    /// `conns` and `check_bits` together (one look at a shared handle).
    #[inline(always)]
    fn conns_and_bits(&self) -> (u32, u32) {
        (self.conns(), self.check_bits())
    }

    /// Its configured weight.
    fn weight(&self) -> u32;

    /// Its configured `max_conns`; 0: none. Wider than a count, as nginx
    /// keeps it: a limit past `u32::MAX` never stops a pick.
    fn max_conns(&self) -> u64;

    /// Slow start: `Some(elapsed, window)` (deciseconds) while it ramps up.
    fn ramp(&self) -> Option<(u32, u32)>;

    /// For a peer with check bits: whether they came from a key that is no
    /// longer its own (a stale handle): the checks then say nothing of it.
    fn stale(&self) -> bool {
        false
    }

    /// For a peer with check bits: the overrides and the reported load.
    fn tuned(&self) -> Tuned;

    /// For a tuned peer: what its count `conns` is compared with beyond
    /// itself for the load its server reported. The key's own excess,
    /// unless the count is not the key's (a Lua list's, `array_list`).
    fn excess(&self, tuned: &Tuned, _conns: u32) -> u32 {
        tuned.excess
    }
}

/// The load `p` is compared by, or `None` when it cannot take a connection.
#[inline(always)]
pub fn load(p: &impl Peer) -> Option<Load> {
    if p.out() {
        return None;
    }
    let (conns, bits) = p.conns_and_bits();
    if bits != 0 {
        return checked(p, conns, bits);
    }
    unchecked(p, conns)
}

/// The `max_conns` (0: none) counting a connection on `p` may reach: the
/// configured one (at most `u32::MAX`), or a capacity answer's override.
#[inline(always)]
pub fn max_conns(p: &impl Peer) -> u32 {
    if p.check_bits() & CHECK_TUNED != 0 && !p.stale() {
        if let Some(n) = p.tuned().max_conns {
            return n;
        }
    }
    saturate(p.max_conns())
}

/// `load` of a peer the checks say nothing of.
#[inline(always)]
fn unchecked(p: &impl Peer, conns: u32) -> Option<Load> {
    if let Some((elapsed, window)) = p.ramp() {
        return ramping(p, conns, elapsed, window);
    }
    if full(conns, p.max_conns()) {
        return None;
    }
    Some(Load {
        conns,
        weight: p.weight(),
    })
}

/// A ramping peer's load: its virtual count. Its `max_conns` is not
/// ramped: with no queue in nginx, a lower limit would refuse requests no
/// other server can take.
#[cold]
#[inline(never)]
fn ramping(p: &impl Peer, conns: u32, elapsed: u32, window: u32) -> Option<Load> {
    if full(conns, p.max_conns()) {
        return None;
    }
    Some(Load {
        conns: ramp::virtual_count(conns, elapsed, window),
        weight: p.weight(),
    })
}

/// The load of a peer with check bits: none when the checks took it out
/// (down, or draining by its answer); else compared with the capacity
/// answer's weight and `max_conns`, and its count plus what its server
/// reported beyond it (ramped, if it ramps).
#[cold]
#[inline(never)]
fn checked(p: &impl Peer, conns: u32, bits: u32) -> Option<Load> {
    if p.stale() {
        return unchecked(p, conns);
    }
    if bits & CHECK_OUT != 0 {
        return None;
    }
    let tuned = p.tuned();
    // The limit holds our count; the server's own load only weighs in the
    // comparison.
    let max_conns = tuned.max_conns.unwrap_or_else(|| saturate(p.max_conns()));
    if full(conns, u64::from(max_conns)) {
        return None;
    }
    let weight = tuned.weight.unwrap_or_else(|| p.weight());
    let load = conns.saturating_add(p.excess(&tuned, conns));
    let load = match p.ramp() {
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
fn full(conns: u32, max_conns: u64) -> bool {
    max_conns != 0 && u64::from(conns) >= max_conns
}

#[inline(always)]
fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// A peer given by its facts, counting the reads the rule should skip.
    #[derive(Default)]
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

    impl Peer for Given {
        fn out(&self) -> bool {
            self.out
        }
        fn conns(&self) -> u32 {
            self.conns_read.set(self.conns_read.get() + 1);
            self.conns
        }
        fn check_bits(&self) -> u32 {
            self.bits
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn max_conns(&self) -> u64 {
            self.max_conns
        }
        fn ramp(&self) -> Option<(u32, u32)> {
            self.ramp
        }
        fn stale(&self) -> bool {
            self.stale
        }
        fn tuned(&self) -> Tuned {
            self.tuned_read.set(self.tuned_read.get() + 1);
            self.tuned
        }
        fn excess(&self, tuned: &Tuned, conns: u32) -> u32 {
            assert_eq!(conns, self.conns, "asked with the count itself");
            self.excess.unwrap_or(tuned.excess)
        }
    }

    fn at(conns: u32, weight: u32) -> Option<Load> {
        Some(Load { conns, weight })
    }

    #[test]
    fn an_up_peer_is_compared_by_its_count_and_weight() {
        assert_eq!(load(&Given::up(3, 2, 0)), at(3, 2));
        assert_eq!(load(&Given::up(3, 2, 4)), at(3, 2));
    }

    #[test]
    fn an_out_peer_is_none_and_its_count_is_not_read() {
        let p = Given {
            out: true,
            ..Given::up(0, 1, 0)
        };
        assert_eq!(load(&p), None);
        assert_eq!(p.conns_read.get(), 0);
    }

    #[test]
    fn a_peer_at_its_max_conns_is_none() {
        assert_eq!(load(&Given::up(4, 1, 4)), None);
        assert_eq!(load(&Given::up(5, 1, 4)), None);
        assert_eq!(load(&Given::up(u32::MAX, 1, 0)), at(u32::MAX, 1), "0: none");
        let wide = u64::from(u32::MAX) + 1;
        assert_eq!(load(&Given::up(u32::MAX, 1, wide)), at(u32::MAX, 1));
    }

    #[test]
    fn a_ramping_peer_is_compared_by_its_virtual_count_but_its_limit_is_not_ramped() {
        let ramping = |conns, max_conns| Given {
            ramp: Some((30, 300)),
            ..Given::up(conns, 2, max_conns)
        };
        // (9 + 1) * 300 / 30
        assert_eq!(load(&ramping(9, 0)), at(100, 2));
        assert_eq!(
            load(&ramping(9, 10)),
            at(100, 2),
            "100 is past 10: not ramped"
        );
        assert_eq!(load(&ramping(10, 10)), None, "the count is");
    }

    #[test]
    fn a_peer_the_checks_took_out_is_none_and_its_record_is_not_read() {
        let p = Given::up(0, 1, 0).tuned(CHECK_OUT | CHECK_TUNED, Tuned::default());
        assert_eq!(load(&p), None);
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
        assert_eq!(load(&p), at(10, 3));
        assert_eq!(max_conns(&p), 5);
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
        assert_eq!(load(&p(5)), at(5, 7), "past the configured 2");
        assert_eq!(load(&p(6)), None, "at the override");
        assert_eq!(max_conns(&p(0)), 6);
        // No override: the configured ones.
        let plain = Given::up(1, 3, 2).tuned(CHECK_TUNED, Tuned::default());
        assert_eq!(load(&plain), at(1, 3));
        assert_eq!(
            load(&Given::up(2, 3, 2).tuned(CHECK_TUNED, Tuned::default())),
            None
        );
        assert_eq!(max_conns(&plain), 2);
    }

    #[test]
    fn a_reported_load_adds_to_the_comparison_not_to_the_limit() {
        let tuned = Tuned {
            excess: 10,
            ..Tuned::default()
        };
        let p = Given::up(3, 1, 4).tuned(CHECK_TUNED, tuned);
        assert_eq!(load(&p), at(13, 1), "3 of 4 taken: one more fits");
        // A count that is not the key's brings its own excess.
        let lua = Given {
            excess: Some(2),
            ..Given::up(3, 1, 4)
        };
        assert_eq!(load(&lua.tuned(CHECK_TUNED, tuned)), at(5, 1));
        let huge = Tuned {
            excess: u32::MAX,
            ..Tuned::default()
        };
        let p = Given::up(3, 1, 0).tuned(CHECK_TUNED, huge);
        assert_eq!(load(&p), at(u32::MAX, 1), "saturates");
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
        assert_eq!(load(&p.tuned(CHECK_TUNED, tuned)), at(30, 2));
    }

    #[test]
    fn max_conns_is_the_configured_one_unless_tuned() {
        let override_ = Tuned {
            max_conns: Some(3),
            ..Tuned::default()
        };
        let p = Given::up(0, 1, 9).tuned(CHECK_OUT, override_);
        assert_eq!(max_conns(&p), 9, "bits without CHECK_TUNED");
        assert_eq!(p.tuned_read.get(), 0);
        assert_eq!(
            max_conns(&Given::up(0, 1, 9).tuned(CHECK_TUNED, override_)),
            3
        );
        let wide = Given::up(0, 1, u64::from(u32::MAX) + 7);
        assert_eq!(max_conns(&wide), u32::MAX, "saturated to a count");
    }
}
