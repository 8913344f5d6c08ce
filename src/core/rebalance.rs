//! Rebalancing long-lived connections: which servers of
//! an upstream hold more than their fair share, whether the upstream sheds
//! (with hysteresis), whether one more close keeps a server at or above its
//! fair share, and the token bucket that holds the rate of closes across
//! all workers. Integer arithmetic only; the front-ends do the closing.
//!
//! Fair share: `f_i = T * w_i / W` for the usable servers (T their
//! connections, W their weights). An upstream starts shedding when some
//! server holds more than `f_i * (1 + tolerance)`, and stops once every
//! server is within `f_i * (1 + tolerance / 2)`. While the upstream sheds, a
//! server sheds while it is above the stop mark; a close never takes it below its fair share
//! (with one connection fewer in the upstream), and only helps: the client
//! that reconnects lands on the least loaded server, so the closing server
//! must still hold at least as much as that one will (per unit of weight),
//! or the two would trade the connection back and forth.
//!
//! A server that reports its own load (health checks' `load=`) is compared
//! with the connections of every nginx in front of it, but this nginx can
//! close only its own: of a server over its share it closes its part, the
//! part of the server's load it held at the answer (`Part`), so that
//! instances that each see the others' connections shed the overload
//! about once together, not once each.

use core::fmt;

use super::table::Tuned;

/// `least_conn_persistent_rebalance`'s parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Closes a second, for the whole upstream (all workers together).
    pub rate: u32,
    /// Percent over a fair share that starts shedding (it stops within half).
    pub tolerance: u32,
    /// A connection younger than this is never closed.
    pub min_age_ms: u64,
    /// Spread added to `min_age_ms`, per connection (`old_enough`).
    pub jitter_ms: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            rate: 1,
            tolerance: 10,
            min_age_ms: 60_000,
            jitter_ms: 30_000,
        }
    }
}

/// A parameter `Params::parse` refuses, as `[emerg]` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    Unknown(String),
    Invalid(&'static str, String),
    Repeated(&'static str),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Unknown(p) => write!(f, "has an invalid parameter \"{p}\""),
            ParamError::Invalid(name, v) => {
                write!(f, "has an invalid {name} \"{v}\" ({})", hint(name))
            }
            ParamError::Repeated(name) => write!(f, "has the parameter \"{name}\" twice"),
        }
    }
}

fn hint(name: &str) -> &'static str {
    match name {
        "rate" => "closes a second, such as 5/s or 5r/s, 1 to 100000",
        "tolerance" => "a percent over the fair share, such as 10%, 0% to 1000%",
        _ => "a time such as 30s or 5m",
    }
}

impl Params {
    /// `rate=5/s tolerance=10% min_age=5m jitter=30s`, each optional, in
    /// any order. `seconds`: nginx's time parser (`ngx_parse_time`).
    pub fn parse(
        args: &[&[u8]],
        seconds: impl Fn(&[u8]) -> Option<u64>,
    ) -> Result<Params, ParamError> {
        let mut p = Params::default();
        let mut seen: [bool; 4] = [false; 4];
        for &arg in args {
            let text = || String::from_utf8_lossy(arg).into_owned();
            let (name, value) = match arg.iter().position(|&b| b == b'=') {
                Some(at) => (&arg[..at], &arg[at + 1..]),
                None => return Err(ParamError::Unknown(text())),
            };
            let (i, name): (usize, &'static str) = match name {
                b"rate" => (0, "rate"),
                b"tolerance" => (1, "tolerance"),
                b"min_age" => (2, "min_age"),
                b"jitter" => (3, "jitter"),
                _ => return Err(ParamError::Unknown(text())),
            };
            if core::mem::replace(&mut seen[i], true) {
                return Err(ParamError::Repeated(name));
            }
            let bad = || ParamError::Invalid(name, String::from_utf8_lossy(value).into_owned());
            match i {
                0 => {
                    // `5/s`, or `5r/s` as limit_req writes rates.
                    let n = value.strip_suffix(b"/s").ok_or_else(bad)?;
                    let n = n.strip_suffix(b"r").unwrap_or(n);
                    p.rate = number(n, 1, 100_000).ok_or_else(bad)?
                }
                1 => {
                    p.tolerance = number(value.strip_suffix(b"%").ok_or_else(bad)?, 0, 1000)
                        .ok_or_else(bad)?
                }
                2 => p.min_age_ms = ms(value, &seconds).ok_or_else(bad)?,
                _ => p.jitter_ms = ms(value, &seconds).ok_or_else(bad)?,
            }
        }
        Ok(p)
    }
}

/// A decimal number in `min..=max`, digits only.
fn number(text: &[u8], min: u32, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = text.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    (min..=max).contains(&n).then_some(n)
}

fn ms(text: &[u8], seconds: impl Fn(&[u8]) -> Option<u64>) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    seconds(text)?.checked_mul(1000)
}

/// One usable server as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    /// What the picks compare: this nginx's count, plus what the server
    /// reported beyond it.
    pub conns: u32,
    pub weight: u32,
    /// 0: no limit. A server at its limit takes no reconnection.
    pub max_conns: u32,
    /// `None`: every connection counted is this nginx's.
    pub part: Option<Part>,
}

/// Of a server that reported more connections than this nginx held: what
/// it can close, and its part of the server's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// This nginx's connections to the server now (all it can close).
    pub ours: u32,
    /// This nginx's count when the load came, and the load the server
    /// reported (above it): this nginx's part is `held / reported`.
    pub held: u32,
    pub reported: u32,
}

impl Server {
    /// Whether a reconnecting client may land on it (least connections
    /// skips a server at its `max_conns`, and one of weight 0 never wins).
    fn takes_more(&self) -> bool {
        self.weight > 0 && (self.max_conns == 0 || self.conns < self.max_conns)
    }

    /// Counts one connection more (a client coming back through this
    /// nginx) or fewer (one it closes).
    fn add(&mut self, n: i32) {
        self.conns = self.conns.saturating_add_signed(n);
        if let Some(p) = &mut self.part {
            p.ours = p.ours.saturating_add_signed(n);
        }
    }

    /// Takes out `n` connections this nginx is closing (still counted
    /// until nginx finalizes them).
    pub fn closing(&mut self, n: u32) {
        self.conns = self.conns.saturating_sub(n);
        if let Some(p) = &mut self.part {
            p.ours = p.ours.saturating_sub(n);
        }
    }
}

/// One key of an upstream as the zone holds it (`usable`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key {
    pub backup: bool,
    /// Down, draining (a reload removed it), or taken out by its checks.
    pub out: bool,
    pub ramping: bool,
    /// This nginx's count of it.
    pub conns: u32,
    pub weight: u32,
    pub max_conns: u32,
    /// What its checks' answers change (`Tuned::default()`: nothing).
    pub tuned: Tuned,
}

/// The usable servers of an upstream's keys: its primaries in service, as
/// the picks compare them (a capacity answer's weight and max_conns, and
/// the load the server reported beyond ours), and which key each is; and
/// whether rebalancing pauses: a primary out of service (down, draining,
/// taken out by its checks) or ramping up. A backup is in no primary's
/// share: whatever its state (a powered-off cold standby its checks found
/// down), it pauses nothing.
pub fn usable(keys: &[Key]) -> (Vec<Server>, Vec<usize>, bool) {
    let mut servers = Vec::with_capacity(keys.len());
    let mut key_of = Vec::with_capacity(keys.len());
    let mut paused = false;
    for (i, k) in keys.iter().enumerate() {
        if k.backup {
            continue;
        }
        paused |= k.out || k.ramping;
        if k.out {
            continue;
        }
        let excess = k.tuned.excess;
        // `max_conns` limits our count, not the reported load: moved up by
        // the excess, as the count is (0 stays: no limit).
        let max_conns = match k.tuned.max_conns.unwrap_or(k.max_conns) {
            0 => 0,
            m => m.saturating_add(excess),
        };
        // The count at the answer: the load less the excess (fields read
        // lock-free may come from two answers: at worst a part off until
        // the next tick).
        let part = match k.tuned.reported {
            Some(reported) if excess > 0 => Some(Part {
                ours: k.conns,
                held: reported.saturating_sub(excess),
                reported,
            }),
            _ => None,
        };
        servers.push(Server {
            conns: k.conns.saturating_add(excess),
            weight: k.tuned.weight.unwrap_or(k.weight),
            max_conns,
            part,
        });
        key_of.push(i);
    }
    (servers, key_of, paused)
}

/// Totals of an upstream's usable servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Totals {
    conns: u64,
    weight: u64,
}

fn totals(servers: &[Server]) -> Totals {
    Totals {
        conns: servers.iter().map(|s| u64::from(s.conns)).sum(),
        weight: servers.iter().map(|s| u64::from(s.weight)).sum(),
    }
}

/// Whether `s` holds more than `(100 + percent)`% of its fair share:
/// `conns * W * 100 > T * w * (100 + percent)`, in 128 bits.
fn above(s: Server, t: Totals, percent: u32) -> bool {
    let mine = u128::from(s.conns) * u128::from(t.weight) * 100;
    let share = u128::from(t.conns) * u128::from(s.weight) * (100 + u128::from(percent));
    t.weight > 0 && mine > share
}

/// Whether the upstream sheds now: `active` is whether it shed before
/// (hysteresis: it starts above `tolerance`% over a fair share and stops
/// once every server is within half of it). `paused`: a primary is out
/// (down, draining, taken out by its checks) or ramping up (a failover is
/// not an imbalance).
pub fn shedding(active: bool, servers: &[Server], tolerance: u32, paused: bool) -> bool {
    if paused || servers.len() < 2 {
        return false;
    }
    let t = totals(servers);
    let mark = if active { tolerance / 2 } else { tolerance };
    servers.iter().any(|&s| above(s, t, mark))
}

/// Whether the upstream sheds, decided on `servers` (`active`: whether it
/// shed before): a server is over the mark (`shedding`), and this nginx
/// may close a connection of one (`may_close` at the mark). A server that
/// only the others' connections put over its share (this nginx holding no
/// more than its part) does not keep it on.
pub fn decide(active: bool, servers: &[Server], tolerance: u32) -> bool {
    let mark = if active { tolerance / 2 } else { tolerance };
    shedding(active, servers, tolerance, false)
        && (0..servers.len()).any(|j| may_close(servers, j, mark))
}

/// Whether one connection of `servers[i]` may close: the server is above
/// `tolerance`% over its fair share; with one connection fewer (in it and
/// in the upstream) it still holds at least its fair share; it still
/// holds at least as much as the least loaded server that can take the
/// reconnection (below its `max_conns`) once that one has it; and, of a
/// server that reported more than this nginx holds, this nginx holds more
/// than its part of the fair share (`Part`).
///
/// That last: with `f` the fair share and `p = held / reported` this
/// nginx's part of the server's load at the answer, this nginx keeps
/// `floor(f * p)`. At the answer (ours = held, the server compared as its
/// load R, over its share by E = R - f) that leaves it
/// `ceil(E * ours / R)` to close: its proportional part of the overload.
/// Its own closes since count against it (ours falls, `p` does not), so
/// it closes its part once however long the answer stays.
pub fn may_close(servers: &[Server], i: usize, tolerance: u32) -> bool {
    let Some(&s) = servers.get(i) else {
        return false;
    };
    let t = totals(servers);
    if s.conns == 0 || !above(s, t, tolerance) {
        return false;
    }
    if let Some(p) = s.part {
        // ours > f * held / max(reported, held), f = T * w / W.
        let whole = u128::from(p.reported.max(p.held));
        let mine = u128::from(p.ours) * u128::from(t.weight) * whole;
        if mine <= u128::from(t.conns) * u128::from(s.weight) * u128::from(p.held) {
            return false;
        }
    }
    let after = Totals {
        conns: t.conns - 1,
        ..t
    };
    // (conns - 1) * W >= (T - 1) * w: not below its fair share after.
    let fair = u128::from(s.conns - 1) * u128::from(after.weight)
        >= u128::from(after.conns) * u128::from(s.weight);
    // (conns - 1) / w >= (least + 1) / w_least, cross-multiplied.
    let least = servers
        .iter()
        .enumerate()
        .filter(|&(j, o)| j != i && o.takes_more())
        .map(|(_, &o)| o)
        .min_by(|a, b| {
            (u64::from(a.conns) * u64::from(b.weight))
                .cmp(&(u64::from(b.conns) * u64::from(a.weight)))
        });
    let gains = least.is_some_and(|o| {
        u64::from(s.conns - 1) * u64::from(o.weight)
            >= (u64::from(o.conns) + 1) * u64::from(s.weight)
    });
    fair && gains
}

/// Counts `n` reconnecting clients where least connections sends them
/// (one at a time, to the least loaded by weight that can take one;
/// bounded).
pub fn place_returning(servers: &mut [Server], n: u64) {
    for _ in 0..n.min(100_000) {
        let Some(least) = (0..servers.len())
            .filter(|&i| servers[i].takes_more())
            .min_by(|&a, &b| load_cmp(servers[a], servers[b]))
        else {
            return;
        };
        servers[least].add(1);
    }
}

/// The first `n` closes the upstream would make, one after another from
/// the most loaded server that may close one (of those `closable` says),
/// each client coming back to the least loaded: how many from each server.
/// Work O(n * servers^2), so `n` is what the workers may spend together in
/// one tick.
pub fn next_closes(servers: &[Server], mark: u32, n: u64, closable: &[bool]) -> Vec<u64> {
    let mut s = servers.to_vec();
    let mut out = vec![0u64; s.len()];
    for _ in 0..n {
        let Some(j) = (0..s.len())
            .filter(|&j| closable.get(j) == Some(&true) && may_close(&s, j, mark))
            .max_by(|&a, &b| load_cmp(s[a], s[b]))
        else {
            break;
        };
        out[j] += 1;
        s[j].add(-1);
        place_returning(&mut s, 1);
    }
    out
}

/// Compares two servers' connections per weight (cross-multiplied).
pub fn load_cmp(a: Server, b: Server) -> core::cmp::Ordering {
    (u64::from(a.conns) * u64::from(b.weight)).cmp(&(u64::from(b.conns) * u64::from(a.weight)))
}

/// A worker's share of the upstream's rate of closes: a token bucket of
/// its own, refilled at `rate * mine / total` closes a second, where
/// `mine` is what this worker holds of the `total` connections that may
/// shed (the zone's counts). Summed over the workers, that is at most
/// `rate`: each holds its own connections, and the counts include them all.
/// It holds at most one close more than a tick refills, so a worker cannot
/// save up a burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// In millionths of a close (fine enough for a worker holding a small
    /// part of the connections at a low rate).
    micro: u64,
    /// When it was last refilled (ms); 0: never.
    at_ms: u64,
}

/// A close, in the quota's units.
const CLOSE: u64 = 1_000_000;

impl Quota {
    pub fn refill(&mut self, now_ms: u64, tick_ms: u64, rate: u32, mine: u64, total: u64) {
        let elapsed = if self.at_ms == 0 {
            0
        } else {
            now_ms.saturating_sub(self.at_ms)
        };
        self.at_ms = now_ms.max(self.at_ms);
        if mine == 0 || total == 0 {
            // Nothing to spend it on now: kept, up to one close.
            self.micro = self.micro.min(CLOSE);
            return;
        }
        let mine = mine.min(total);
        // 1 close a second is 1,000 millionths of a close a millisecond.
        let per_ms = |ms: u64| {
            u128::from(ms) * u128::from(rate) * 1000 * u128::from(mine) / u128::from(total)
        };
        // A tick's refill on top of less than one close: nothing spent each
        // tick is lost, and nothing saved beyond.
        let cap = per_ms(tick_ms) + u128::from(CLOSE);
        let micro = u128::from(self.micro) + per_ms(elapsed);
        self.micro = micro.min(cap) as u64;
    }

    /// Whole closes it holds now.
    pub fn closes(&self) -> u64 {
        self.micro / CLOSE
    }

    pub fn spend(&mut self, closes: u64) {
        self.micro = self.micro.saturating_sub(closes * CLOSE);
    }

    pub fn clear(&mut self) {
        *self = Quota::default();
    }
}

/// Whether a connection opened `age_ms` ago is old enough to be closed:
/// `min_age_ms` plus its own part of `jitter_ms` (from `salt`, a number the
/// connection keeps, so that connections opened together do not all
/// become old enough at once).
pub fn old_enough(age_ms: u64, min_age_ms: u64, jitter_ms: u64, salt: u64) -> bool {
    let spread = if jitter_ms == 0 {
        0
    } else {
        // A multiplicative hash: neighbouring salts spread apart.
        salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) % jitter_ms
    };
    age_ms >= min_age_ms.saturating_add(spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups(list: &[(u32, u32)]) -> Vec<Server> {
        list.iter()
            .map(|&(conns, weight)| Server {
                conns,
                weight,
                max_conns: 0,
                part: None,
            })
            .collect()
    }

    /// Seconds the way nginx reads them, enough for the tests: "30s",
    /// "5m", a bare number.
    fn secs(t: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(t).ok()?;
        match s.as_bytes().last()? {
            b's' => s[..s.len() - 1].parse().ok(),
            b'm' => s[..s.len() - 1].parse::<u64>().ok().map(|m| m * 60),
            _ => s.parse().ok(),
        }
    }

    #[test]
    fn parameters_have_defaults_and_nginx_style_errors() {
        assert_eq!(Params::parse(&[], secs), Ok(Params::default()));
        let p = Params::parse(
            &[b"jitter=10s", b"rate=5/s", b"tolerance=20%", b"min_age=5m"],
            secs,
        );
        assert_eq!(
            p,
            Ok(Params {
                rate: 5,
                tolerance: 20,
                min_age_ms: 300_000,
                jitter_ms: 10_000
            })
        );
        let limit_req_style = Params::parse(&[b"rate=7r/s"], secs).map(|p| p.rate);
        assert_eq!(limit_req_style, Ok(7), "as limit_req writes a rate");
        let err = |args: &[&[u8]]| Params::parse(args, secs).unwrap_err().to_string();
        assert_eq!(err(&[b"on"]), "has an invalid parameter \"on\"");
        assert_eq!(err(&[b"speed=1"]), "has an invalid parameter \"speed=1\"");
        assert_eq!(
            err(&[b"rate=5"]),
            "has an invalid rate \"5\" (closes a second, such as 5/s or 5r/s, 1 to 100000)"
        );
        assert_eq!(
            err(&[b"rate=0/s"]),
            "has an invalid rate \"0/s\" (closes a second, such as 5/s or 5r/s, 1 to 100000)"
        );
        assert!(err(&[b"tolerance=10"]).starts_with("has an invalid tolerance \"10\""));
        assert!(err(&[b"tolerance=2000%"]).starts_with("has an invalid tolerance"));
        assert_eq!(
            err(&[b"min_age=soon"]),
            "has an invalid min_age \"soon\" (a time such as 30s or 5m)"
        );
        assert_eq!(
            err(&[b"jitter="]),
            "has an invalid jitter \"\" (a time such as 30s or 5m)"
        );
        assert_eq!(
            err(&[b"rate=1/s", b"rate=2/s"]),
            "has the parameter \"rate\" twice"
        );
    }

    #[test]
    fn a_new_server_makes_the_others_shed() {
        // 3,000 over two, a third added: fair share 1,000 each.
        let s = ups(&[(1500, 1), (1500, 1), (0, 1)]);
        assert!(shedding(false, &s, 10, false));
        assert!(may_close(&s, 0, 10));
        assert!(!may_close(&s, 2, 10), "the new server never sheds");
        assert!(!shedding(false, &s, 10, true), "paused: a server is down");
    }

    #[test]
    fn hysteresis_starts_above_the_tolerance_and_stops_within_half() {
        // Fair 1,000 each; 1,080 is 8% over.
        let s = ups(&[(1080, 1), (960, 1), (960, 1)]);
        assert!(!shedding(false, &s, 10, false), "8% over: does not start");
        assert!(shedding(true, &s, 10, false), "8% over: goes on (above 5%)");
        let s = ups(&[(1040, 1), (980, 1), (980, 1)]);
        assert!(!shedding(true, &s, 10, false), "4% over: stops");
    }

    #[test]
    fn weights_make_the_fair_share() {
        // Weights 3:1: fair 1,500 and 500.
        let s = ups(&[(1500, 3), (500, 1)]);
        assert!(!shedding(false, &s, 10, false));
        let s = ups(&[(1200, 3), (800, 1)]);
        assert!(shedding(false, &s, 10, false));
        assert!(may_close(&s, 1, 10), "the light one is over its share");
        assert!(!may_close(&s, 0, 10));
    }

    #[test]
    fn a_close_never_takes_a_server_below_its_fair_share() {
        // Tolerance 0: a close that helps, and none that trades back.
        let s = ups(&[(2, 1), (0, 1)]);
        assert!(may_close(&s, 0, 0), "2/0 -> 1/1");
        let s = ups(&[(1, 1), (0, 1)]);
        assert!(!may_close(&s, 0, 0), "1/0 -> 0/1 only trades places");
        for total in 0..60u32 {
            for first in 0..=total {
                let s = ups(&[(first, 1), (total - first, 2)]);
                for i in 0..2 {
                    if may_close(&s, i, 0) {
                        let t = u64::from(total - 1);
                        let w = u64::from(s[i].weight);
                        assert!(u64::from(s[i].conns - 1) * 3 >= t * w, "{s:?} {i}");
                        // The reconnection goes to the other: then no close
                        // back can follow at once.
                        let mut moved = s.clone();
                        moved[i].conns -= 1;
                        moved[1 - i].conns += 1;
                        assert!(!may_close(&moved, 1 - i, 0), "{s:?} {i}: back and forth");
                    }
                }
            }
        }
    }

    #[test]
    fn fewer_than_two_servers_never_shed() {
        assert!(!shedding(false, &ups(&[(100, 1)]), 0, false));
        assert!(!shedding(false, &[], 0, false));
        assert!(!may_close(&[], 0, 0));
    }

    #[test]
    fn the_closes_bring_every_server_within_the_mark() {
        // 1,500 / 1,500 / 0 at tolerance 10% (the stop mark is 5%): about
        // 500 from each, never a server below its fair share of 1,000.
        let s = ups(&[(1500, 1), (1500, 1), (0, 1)]);
        let e = next_closes(&s, 5, 100_000, &[true; 3]);
        assert_eq!(e[2], 0);
        assert!(
            e[0] >= 440 && e[0] <= 500 && e[1] >= 440 && e[1] <= 500,
            "{e:?}"
        );
        let mut after = s.clone();
        after[0].conns -= e[0] as u32;
        after[1].conns -= e[1] as u32;
        place_returning(&mut after, e[0] + e[1]);
        assert!(
            !shedding(true, &after, 10, false),
            "within the mark: {after:?}"
        );
        assert!(
            after[0].conns >= 1000 && after[1].conns >= 1000,
            "{after:?}"
        );
        // Weights: 2:1 with the heavy server empty.
        let w = next_closes(&ups(&[(0, 2), (300, 1)]), 0, 100_000, &[true; 2]);
        assert_eq!(w, vec![0, 200]);
        // Nothing to do when balanced, or alone.
        assert_eq!(
            next_closes(&ups(&[(10, 1), (10, 1)]), 0, 100, &[true; 2]),
            vec![0, 0]
        );
        assert_eq!(next_closes(&ups(&[(10, 1)]), 0, 100, &[true]), vec![0]);
        // A tick's worth: the most loaded first.
        assert_eq!(
            next_closes(&ups(&[(30, 1), (20, 1), (0, 1)]), 5, 3, &[true; 3]),
            vec![3, 0, 0]
        );
    }

    #[test]
    fn a_server_at_max_conns_takes_no_reconnection() {
        // c is full at 500: closing a's or b's connections would only send
        // the clients back to a or b, so nothing closes (not endlessly).
        let mut s = ups(&[(1250, 1), (1250, 1), (500, 1)]);
        s[2].max_conns = 500;
        assert_eq!(next_closes(&s, 5, 1000, &[true; 3]), vec![0, 0, 0]);
        // Only from the servers a worker can close a connection of: the
        // next most loaded, when the most loaded holds none it could close.
        let t = ups(&[(1100, 1), (900, 1), (0, 1)]);
        assert_eq!(next_closes(&t, 5, 2, &[false, true, true]), vec![0, 2, 0]);
        assert!(!may_close(&s, 0, 5));
        // Below its limit it fills up to it, then no further.
        s[2].conns = 0;
        s[0].conns = 1500;
        s[1].conns = 1500;
        let closes = next_closes(&s, 5, 100_000, &[true; 3]);
        assert_eq!(closes[0] + closes[1], 500, "{closes:?}");
        let mut back = ups(&[(0, 1), (0, 1)]);
        back[0].max_conns = 2;
        place_returning(&mut back, 10);
        assert_eq!((back[0].conns, back[1].conns), (2, 8));
    }

    #[test]
    fn returning_clients_go_to_the_least_loaded() {
        let mut s = ups(&[(10, 1), (4, 1), (0, 2)]);
        place_returning(&mut s, 10);
        assert_eq!(
            s,
            ups(&[(10, 1), (5, 1), (9, 2)]),
            "by connections per weight"
        );
        let mut none = ups(&[(1, 0)]);
        place_returning(&mut none, 5);
        assert_eq!(none[0].conns, 1, "weight 0 takes nothing");
    }

    #[test]
    fn the_workers_quotas_add_up_to_the_rate() {
        // Rate 10/s, three workers holding 600, 300 and 100 of 1,000, over
        // ten seconds of 200 ms ticks: 100 closes together, 60/30/10.
        let held = [600u64, 300, 100];
        let mut quotas = [Quota::default(); 3];
        let mut closes = [0u64; 3];
        for tick in 0..=50u64 {
            for (w, q) in quotas.iter_mut().enumerate() {
                q.refill(1_000 + tick * 200, 200, 10, held[w], 1_000);
                let n = q.closes();
                q.spend(n);
                closes[w] += n;
            }
        }
        assert_eq!(closes.iter().sum::<u64>(), 100, "{closes:?}");
        assert_eq!(closes, [60, 30, 10]);
    }

    #[test]
    fn a_quota_saves_no_burst_and_keeps_one_close_at_most() {
        let mut q = Quota::default();
        q.refill(1_000, 200, 10, 1, 1);
        assert_eq!(q.closes(), 0, "the first tick only starts the clock");
        // An hour idle: a tick's worth and one (3 closes at 10/s), no more.
        q.refill(3_601_000, 200, 10, 1, 1);
        assert_eq!(q.closes(), 3);
        // A slow worker still gets one close at a time.
        q.refill(3_602_000, 200, 1, 1, 1);
        assert_eq!(q.closes(), 1);
        q.refill(3_603_000, 200, 10, 0, 1);
        assert_eq!(q.closes(), 1, "nothing held: kept, up to one close");
        // A worker holding 1 of 1,000 at 1/s still earns its close.
        let mut small = Quota::default();
        for tick in 0..=5_000u64 {
            small.refill(1_000 + tick * 200, 200, 1, 1, 1_000);
        }
        assert_eq!(small.closes(), 1, "1,000 s at a thousandth of 1/s");
        // A clock that lags refills nothing.
        q.refill(3_604_000, 200, 10, 1, 1);
        let before = q;
        q.refill(3_603_500, 200, 10, 1, 1);
        assert_eq!(q, before);
    }

    /// A key with a load reported: `excess` above our `conns`.
    fn reporting(conns: u32, reported: u32) -> Key {
        Key {
            conns,
            weight: 1,
            tuned: Tuned {
                reported: Some(reported),
                excess: reported.saturating_sub(conns),
                ..Tuned::default()
            },
            ..Key::default()
        }
    }

    fn plain(conns: u32) -> Key {
        Key {
            conns,
            weight: 1,
            ..Key::default()
        }
    }

    #[test]
    fn a_backup_out_of_service_pauses_nothing() {
        let down = |k: Key| Key { out: true, ..k };
        let backup = |k: Key| Key { backup: true, ..k };
        let (servers, key_of, paused) = usable(&[plain(30), plain(0), backup(down(plain(0)))]);
        assert!(!paused, "a checked backup found down");
        assert_eq!((servers.len(), key_of), (2, vec![0, 1]));
        let ramping = Key {
            ramping: true,
            ..backup(plain(0))
        };
        assert!(
            !usable(&[plain(30), plain(0), ramping]).2,
            "a backup ramping up"
        );
        assert!(
            usable(&[plain(30), down(plain(0)), backup(plain(0))]).2,
            "a primary down"
        );
        let (servers, key_of, paused) = usable(&[
            plain(30),
            Key {
                ramping: true,
                ..plain(0)
            },
        ]);
        assert!(paused, "a primary ramping up");
        assert_eq!(
            (servers.len(), key_of),
            (2, vec![0, 1]),
            "ramping: still usable"
        );
    }

    #[test]
    fn a_reported_load_is_compared_and_split_into_our_part() {
        let (servers, _, _) = usable(&[reporting(10, 40), reporting(10, 5), plain(3)]);
        assert_eq!(servers[0].conns, 40);
        assert_eq!(
            servers[0].part,
            Some(Part {
                ours: 10,
                held: 10,
                reported: 40
            })
        );
        assert_eq!(
            (servers[1].conns, servers[1].part),
            (10, None),
            "below ours"
        );
        assert_eq!((servers[2].conns, servers[2].part), (3, None));
        // max_conns moves up by the excess.
        let mut capped = reporting(10, 40);
        capped.max_conns = 20;
        assert_eq!(usable(&[capped]).0[0].max_conns, 50);
    }

    /// A server that only other instances' connections (its reported load)
    /// put over its share: this nginx can close nothing of it, and the
    /// upstream does not stay rebalancing for it.
    #[test]
    fn a_server_over_its_share_by_reported_load_alone_sheds_nothing_here() {
        let (servers, _, _) = usable(&[reporting(0, 100), plain(0)]);
        assert!(shedding(true, &servers, 10, false), "over the mark");
        assert!(!may_close(&servers, 0, 5));
        assert!(!decide(false, &servers, 10), "does not start");
        assert!(!decide(true, &servers, 10), "ends");
        assert_eq!(next_closes(&servers, 5, 100, &[true; 2]), vec![0, 0]);
        // Holding some, but no more than its part: 5 of the 100 reported,
        // fair share 80: this nginx's part is 4, one close (ceil(20 * 5 /
        // 100)); once made (ours 4), nothing more.
        let (servers, _, _) = usable(&[reporting(5, 100), reporting(0, 60)]);
        assert!(decide(false, &servers, 10));
        assert_eq!(next_closes(&servers, 5, 100, &[true; 2]), vec![1, 0]);
        let mut closed = servers.clone();
        closed[0].closing(1);
        place_returning(&mut closed, 1);
        assert_eq!(closed[1].conns, 61, "its client back on the other");
        assert!(!decide(true, &closed, 10), "its part closed: ends");
    }

    /// Two nginx instances each holding half of an overloaded server: each
    /// sees the other's half as reported load, and each closes half of the
    /// overload, not all of it.
    #[test]
    fn instances_sharing_an_overloaded_server_each_shed_their_part() {
        // 100 on s0 (50 through each instance), none on s1: fair 50 each.
        let (servers, _, _) = usable(&[reporting(50, 100), reporting(0, 0)]);
        assert_eq!(next_closes(&servers, 5, 1000, &[true; 2]), vec![25, 0]);

        // Both instances, one close at a time in turn, the clients coming
        // back through either instance in turn (to the least loaded server
        // in its view), all before the next answer (the reported loads
        // stay): together about the overload.
        let reported = [100u32, 0];
        let held = [[50u32, 0], [50, 0]];
        let mut ours = held;
        let view = |ours: &[u32; 2], held: &[u32; 2]| -> Vec<Server> {
            let keys: Vec<Key> = (0..2)
                .map(|j| {
                    let mut k = reporting(ours[j], reported[j]);
                    k.tuned.excess = reported[j].saturating_sub(held[j]);
                    k
                })
                .collect();
            usable(&keys).0
        };
        let mut closes = [0u64; 2];
        let mut back = 0;
        loop {
            let mut any = false;
            for i in 0..2 {
                let v = view(&ours[i], &held[i]);
                let next = next_closes(&v, 5, 1, &[true; 2]);
                let Some(j) = (0..2).find(|&j| next[j] > 0) else {
                    continue;
                };
                any = true;
                closes[i] += 1;
                ours[i][j] -= 1;
                // The client comes back through instance `back`.
                let mut w = view(&ours[back], &held[back]);
                let before: Vec<u32> = w.iter().map(|s| s.conns).collect();
                place_returning(&mut w, 1);
                let to = (0..2).find(|&j| w[j].conns > before[j]).unwrap();
                ours[back][to] += 1;
                back = 1 - back;
            }
            if !any {
                break;
            }
        }
        assert_eq!(closes, [25, 25], "each its half of the overload of 50");
        let on = |j: usize| ours[0][j] + ours[1][j];
        assert_eq!(
            (on(0), on(1)),
            (50, 50),
            "balanced, not swung the other way"
        );
        // The next answers: nothing over its share, the decision off.
        let after = |i: usize| {
            let keys: Vec<Key> = (0..2).map(|j| reporting(ours[i][j], on(j))).collect();
            usable(&keys).0
        };
        assert!(!decide(true, &after(0), 10) && !decide(true, &after(1), 10));
    }

    #[test]
    fn jitter_spreads_when_connections_become_old_enough() {
        assert!(old_enough(300_000, 300_000, 0, 7));
        assert!(!old_enough(299_999, 300_000, 0, 7));
        let ready = (0..1000u64)
            .filter(|&salt| old_enough(315_000, 300_000, 30_000, salt))
            .count();
        assert!(
            (400..600).contains(&ready),
            "about half after half the jitter: {ready}"
        );
        assert!((0..1000u64).all(|salt| old_enough(330_000, 300_000, 30_000, salt)));
    }
}
