//! Slow start under least connections: how a server that has just joined
//! (or come back) is compared while it ramps up over a window.
//!
//! Scaling a weight alone does nothing here: a new server's count is 0,
//! and 0 / w is the lowest whatever w is. So a ramping server is compared
//! as if it held the connection it would take, scaled up by the share of
//! the window still ahead: `v = ceil((c + 1) * W / e)` for `e` of the
//! window `W` elapsed. It is chosen only while `v / w` is no higher than
//! the others', so after every pick its count stays within about `e / W`
//! of theirs (per unit of weight): a bound that rises from 0 to theirs over
//! the window, whatever the arrivals, a reconnect storm included. At the
//! end of the window the server is compared as any other. `max_conns` does
//! not ramp (HAProxy's `maxconn` does, into its queue): nginx has no queue,
//! and a lower limit would refuse requests no other server can take.
//!
//! Times are deciseconds of nginx's monotonic clock (`now_ds`), the same
//! in every process; 0 means "not ramping". Integer arithmetic only.

/// Deciseconds since some start of the monotonic clock, from nginx's
/// `ngx_current_msec`; never 0 (0 marks "not ramping").
pub fn now_ds(msec: u64) -> u32 {
    u32::try_from(msec / 100).unwrap_or(u32::MAX).max(1)
}

/// How far into its window a ramp is: `Some(elapsed)` (deciseconds, at
/// least 1) while `since` (0: none) is less than `window` ago, `None` once
/// it is over or when there is none. A `since` a little ahead of `now` (a
/// worker whose cached time lags the one that started the ramp) reads as
/// just started.
#[inline]
pub fn elapsed(now: u32, since: u32, window: u32) -> Option<u32> {
    if since == 0 || window == 0 {
        return None;
    }
    let e = now.saturating_sub(since).max(1);
    (e < window).then_some(e)
}

/// The count a ramping server is compared with: `ceil((conns + 1) *
/// window / elapsed)`, at most `u32::MAX`. `elapsed` is in `1..window`.
#[inline]
pub fn virtual_count(conns: u32, elapsed: u32, window: u32) -> u32 {
    let e = u64::from(elapsed.max(1));
    let v = (u64::from(conns) + 1) * u64::from(window);
    u32::try_from(v.div_ceil(e)).unwrap_or(u32::MAX)
}

/// How far the ramp is, in percent (0..=99 while ramping).
pub fn percent(elapsed: u32, window: u32) -> u8 {
    if window == 0 {
        return 100;
    }
    let p = u64::from(elapsed.min(window)) * 100 / u64::from(window);
    u8::try_from(p.min(99)).unwrap_or(99)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::select::tests::Peers;
    use crate::core::select::{choose, Load, PeerList};

    #[test]
    fn times_are_deciseconds_and_never_zero() {
        assert_eq!(now_ds(0), 1);
        assert_eq!(now_ds(99), 1);
        assert_eq!(now_ds(1234), 12);
        assert_eq!(now_ds(u64::MAX), u32::MAX);
    }

    #[test]
    fn a_ramp_runs_from_its_start_for_its_window() {
        assert_eq!(elapsed(1000, 0, 300), None, "not ramping");
        assert_eq!(elapsed(1000, 900, 0), None, "no window");
        assert_eq!(elapsed(1000, 1000, 300), Some(1), "just started");
        assert_eq!(
            elapsed(1000, 1005, 300),
            Some(1),
            "started by a worker ahead"
        );
        assert_eq!(elapsed(1150, 1000, 300), Some(150));
        assert_eq!(elapsed(1299, 1000, 300), Some(299));
        assert_eq!(elapsed(1300, 1000, 300), None, "over");
    }

    #[test]
    fn the_virtual_count_falls_to_the_next_connection_over_the_window() {
        assert_eq!(virtual_count(0, 1, 300), 300);
        assert_eq!(virtual_count(0, 150, 300), 2);
        assert_eq!(virtual_count(9, 150, 300), 20);
        assert_eq!(virtual_count(9, 299, 300), 11);
        assert_eq!(virtual_count(u32::MAX, 1, 300), u32::MAX, "saturates");
    }

    #[test]
    fn percent_is_below_100_while_ramping() {
        assert_eq!(percent(1, 300), 0);
        assert_eq!(percent(150, 300), 50);
        assert_eq!(percent(299, 300), 99);
        assert_eq!(percent(300, 300), 99);
        assert_eq!(percent(5, 0), 100);
    }

    /// `Peers` whose last server ramps, as the balancer compares it.
    struct Ramping {
        peers: Peers,
        elapsed: u32,
        window: u32,
    }

    impl PeerList for Ramping {
        type Cursor = usize;
        fn size(&self) -> usize {
            self.peers.size()
        }
        fn first(&self) -> Option<usize> {
            self.peers.first()
        }
        fn next(&self, at: usize) -> Option<usize> {
            self.peers.next(at)
        }
        fn load(&self, at: usize) -> Option<Load> {
            let mut l = self.peers.load(at)?;
            if at + 1 == self.size() && self.elapsed < self.window {
                l.conns = virtual_count(l.conns, self.elapsed, self.window);
            }
            Some(l)
        }
        fn step_weight(&mut self, at: usize) -> (i64, i64) {
            self.peers.step_weight(at)
        }
        fn creep(&mut self, at: usize) {
            self.peers.creep(at)
        }
        fn unstep_weight(&mut self, at: usize) {
            self.peers.unstep_weight(at)
        }
        fn current_weight(&self, at: usize) -> i64 {
            self.peers.current_weight(at)
        }
        fn lower_current_weight(&mut self, at: usize, by: i64) {
            self.peers.lower_current_weight(at, by)
        }
    }

    impl Ramping {
        fn pick(&mut self) -> usize {
            let c = choose(self).unwrap();
            self.peers.conns[c] += 1;
            c
        }
    }

    /// Two servers at 50 each and a third joining with a 30 s window;
    /// 10 new connections a second. After every pick the new server holds
    /// at most about `e / W` of the least loaded other's count (+1), and
    /// its share of each 5 s of new connections rises.
    #[test]
    fn a_new_server_takes_a_rising_share_within_its_bound() {
        let window = 300;
        let mut r = Ramping {
            peers: Peers::new(&[1, 1, 1]),
            elapsed: 1,
            window,
        };
        r.peers.conns = vec![50, 50, 0];
        let mut shares = vec![];
        for bucket in 0..6 {
            let mut to_new = 0;
            for i in 0..50 {
                r.elapsed = (bucket * 50 + i + 1).min(window);
                to_new += usize::from(r.pick() == 2);
                let others = r.peers.conns[0].min(r.peers.conns[1]);
                let bound = u64::from(others) * u64::from(r.elapsed) / u64::from(window) + 1;
                assert!(
                    u64::from(r.peers.conns[2]) <= bound,
                    "at {} ds: {:?} over the bound {bound}",
                    r.elapsed,
                    r.peers.conns
                );
            }
            shares.push(to_new);
        }
        assert!(shares[0] < 25, "no herd at the start: {shares:?}");
        assert!(
            shares.windows(2).all(|w| w[1] + 2 >= w[0]) && shares[5] > shares[0] * 2,
            "a rising share: {shares:?}"
        );
        // Once the window is over, it is compared as any other server.
        r.elapsed = window;
        let before = r.peers.conns.clone();
        let mut plain = Peers::new(&[1, 1, 1]);
        plain.conns = before;
        plain.current = r.peers.current.clone();
        plain.effective = r.peers.effective.clone();
        for _ in 0..30 {
            assert_eq!(r.pick(), plain.pick().unwrap());
        }
    }

    /// A burst of 60 just after the server joined: it takes very few, the
    /// trade-off slow start makes with long-lived connections.
    #[test]
    fn a_burst_at_the_start_mostly_goes_to_the_others() {
        let mut r = Ramping {
            peers: Peers::new(&[1, 1, 1]),
            elapsed: 10,
            window: 300,
        };
        r.peers.conns = vec![50, 50, 0];
        for _ in 0..60 {
            r.pick();
        }
        assert!(r.peers.conns[2] <= 3, "{:?}", r.peers.conns);
    }
}
