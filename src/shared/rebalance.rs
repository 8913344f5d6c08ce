//! Rebalancing (`least_conn_persistent_rebalance`): after a scale-up, long-
//! lived connections stay where they are, so each worker, on its own timer
//! (`tick`), closes some of its own connections to the servers above their
//! fair share; their clients reconnect, and the pick sends them to the
//! least loaded. The decision (`core::rebalance`) reads the zone's counts
//! of every key of the upstream, those a newer configuration added
//! included: after a reload it is the old generation's workers, which hold
//! the old connections, that shed them. Its state (whether the upstream
//! sheds) and each server's closes are bits of the keys' flags, so the
//! status page shows them and the hysteresis is shared.

use core::cell::{Cell, RefCell};
use std::collections::VecDeque;

use nginx_sys::NGX_LOG_INFO;

use crate::core::ramp;
use crate::core::rebalance::{
    self, load_cmp, may_close, next_closes, old_enough, place_returning, usable, Key, Params,
    Quota, Server,
};
use crate::core::table::{
    SlotRef, Tuned, CHECK_OUT, CHECK_TUNED, FLAG_BACKUP, FLAG_DOWN, FLAG_DRAINING, FLAG_REBALANCE,
};
use crate::ngx::live::LiveNode;
use crate::ngx::log::Log;
use crate::ngx::peers;
use crate::ngx::process;

use super::registry::{Held, UpstreamCounters};

/// How often each worker looks (ms).
pub const PERIOD_MS: usize = 200;

/// The most closes a tick plans for the upstream (the plan's work grows
/// with it).
const MAX_PLANNED: u64 = 1000;

/// How often (in ticks) the upstream's keys are looked up in any case.
const RESCAN_TICKS: u64 = 25;

/// How long after a close its client has had time to come back, for the
/// judgement of whether closes help (`stalled`).
const GRACE_MS: u64 = 2_000;

/// How many closes, in a tick's worth at least, that brought nothing make
/// closes wait, and for how long at most.
const STALL_CLOSES: u64 = 3;
const STALL_MS: u64 = 60_000;

/// How long a closed connection may count as on its way back: its client
/// reconnects, and the pick sends it to the least loaded server. Until the
/// counts show it back, the decision places it there itself, or it would
/// go on closing connections whose clients have not come back yet.
const RECONNECT_MS: u64 = 10_000;

/// What a worker keeps per upstream between ticks.
#[derive(Debug, Default)]
pub struct Rebalancer {
    /// Handles on the upstream's keys in the zone, and the table's epoch
    /// and key count they were found at.
    keys: RefCell<Vec<SlotRef>>,
    found_at: Cell<Option<(u32, u32)>>,
    found_tick: Cell<u64>,
    quota: Cell<Quota>,
    ticks: Cell<u64>,
    /// Whether it last saw the upstream over the mark but paused (logged
    /// once), and whether a newer configuration dropped the directive.
    paused: Cell<bool>,
    disabled: Cell<bool>,
    /// Whether it last held its closes for a failing server (logged once).
    failing: Cell<bool>,
    /// Closes that brought nothing: the servers below their share had
    /// gained nothing since (what they held then, and when).
    stalled: Cell<Option<(u64, u64)>>,
    stall_logged: Cell<bool>,
    /// Per usable server, the part of a close each tick's plan left over
    /// (in units of the server's connections), so that small parts add up.
    carry: RefCell<Vec<u64>>,
    /// The upstream's closes so far (all workers, from the keys) and its
    /// connections, as this worker saw them over the last `RECONNECT_MS`.
    seen: RefCell<VecDeque<Seen>>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    at_ms: u64,
    closes: u64,
    conns: u64,
    /// What the servers below their fair share held.
    under: u64,
}

/// The upstream as the zone counts it now.
struct View {
    keys: Vec<SlotRef>,
    /// The usable primary servers, and which key each is.
    servers: Vec<Server>,
    key_of: Vec<usize>,
    /// A primary server is down, draining or ramping up.
    paused: bool,
    /// The upstream sheds (as the keys record it).
    active: bool,
    /// The newest configuration still has the directive (a reload that
    /// removed it stops an older generation's closes too).
    enabled: bool,
}

/// One tick for `up`, whose configuration has `params`; `r`: what this
/// worker keeps for it between ticks.
pub fn tick(up: &UpstreamCounters, r: &Rebalancer, params: &Params, log: Log) {
    r.ticks.set(r.ticks.get() + 1);
    // A worker with nothing of the upstream looks only in its turn: the
    // upstream's state still ends when it should (every worker holding
    // nothing may be the last), at no cost per worker.
    if up.live.is_empty() && !my_turn(r.ticks.get()) {
        return;
    }
    let Some(view) = view(up, r) else {
        return;
    };
    if !view.enabled && !r.disabled.replace(true) {
        log_state(
            up,
            "stops: the newest configuration has no least_conn_persistent_rebalance",
            params,
            log,
        );
    }
    // The state is decided on the zone's counts alone, by the workers of
    // the newest configuration (an exiting worker follows it: its own
    // tolerance may be another): it starts above the tolerance and ends
    // once every server is within half of it, or none may close one.
    let state = if process::exiting() {
        view.enabled && view.active
    } else {
        decide(up, params, &view, log)
    };
    // Paused, the state stays as it was (shown), and nothing closes.
    let now = state && !view.paused;
    let paused = state && view.paused;
    if paused != r.paused.replace(paused) && paused {
        log_state(
            up,
            "waits: a server is down, draining or ramping up",
            params,
            log,
        );
    }
    // nginx's cached clock: one time for the whole tick.
    let now_ms = peers::now_ms();
    let recent = recent(r, &view, now_ms);
    let mut quota = r.quota.get();
    // A peer failing as this worker sees it (its own, or with an upstream
    // `zone` every worker's) holds its closes back, not the shared state,
    // which other workers see otherwise.
    let failing = now && up.failures.is_some_and(|f| f.any(peers::now()));
    if failing != r.failing.replace(failing) && failing {
        log_state(up, "waits: a server is failing (max_fails)", params, log);
    }
    let stalled = now && stalled(r, &recent, params, now_ms);
    if stalled != r.stall_logged.replace(stalled) && stalled {
        log_state(
            up,
            "waits: the connections it closed did not come back to the servers below their \
             share (one refusing connections?)",
            params,
            log,
        );
    }
    if now && !failing && !stalled {
        shed(up, r, params, view, recent.away, &mut quota, log);
    } else {
        quota.clear();
    }
    r.quota.set(quota);
}

/// The state's decision, written to every key of the upstream: whether it
/// sheds. While a server is down, draining or ramping up it stays as it was.
fn decide(up: &UpstreamCounters, params: &Params, view: &View, log: Log) -> bool {
    if view.paused {
        return view.enabled && view.active;
    }
    let now = view.enabled && rebalance::decide(view.active, &view.servers, params.tolerance);
    // Every key marked (a key added since gets it too): not `any`, which
    // would stop at the first change.
    let changed = view.keys.iter().filter(|k| k.set_shedding(now)).count() > 0;
    if changed && now != view.active {
        log_state(up, if now { "starts" } else { "ends" }, params, log);
    }
    now
}

/// Whether the closes of late brought the servers below their share
/// nothing (their clients did not come back there: a server that refuses
/// connections, which the workers closing have no way to see, or clients
/// that do not reconnect): then closes wait until those servers gain, or a
/// minute. Logged once.
fn stalled(r: &Rebalancer, recent: &Recent, params: &Params, now_ms: u64) -> bool {
    if let Some((under, since)) = r.stalled.get() {
        if recent.under > under || now_ms.saturating_sub(since) > STALL_MS {
            r.stalled.set(None);
        }
        return r.stalled.get().is_some();
    }
    let enough = u64::from(params.rate / 5).max(STALL_CLOSES);
    if recent.judged_closes >= enough && recent.under_gain == 0 {
        r.stalled.set(Some((recent.under, now_ms)));
        return true;
    }
    false
}

/// The mark a server must be above to shed: the start mark, or once the
/// upstream sheds, half of it (hysteresis).
fn stop_mark(active: bool, tolerance: u32) -> u32 {
    if active {
        tolerance / 2
    } else {
        tolerance
    }
}

fn log_state(up: &UpstreamCounters, what: &str, params: &Params, log: Log) {
    log.module(
        NGX_LOG_INFO,
        format_args!(
            "upstream \"{}\": rebalancing {what} (tolerance {}%)",
            String::from_utf8_lossy(&up.name),
            params.tolerance
        ),
    );
}

/// The upstream's closes of late, as this worker saw the zone's figures
/// over the last `RECONNECT_MS`.
struct Recent {
    /// Clients of connections closed lately (by any worker) that have not
    /// come back yet: the upstream's connections fell by that much since,
    /// unless other clients came or went meanwhile (then the guess is off
    /// by as much, and never more than the closes).
    away: u64,
    /// Closes made at least `GRACE_MS` ago (in the window), whose clients
    /// had time to come back, and what the servers below their share
    /// gained since the window began.
    judged_closes: u64,
    under_gain: u64,
    under: u64,
}

fn recent(r: &Rebalancer, v: &View, now_ms: u64) -> Recent {
    let total: u64 = v.servers.iter().map(|s| u64::from(s.conns)).sum();
    let weights: u64 = v.servers.iter().map(|s| u64::from(s.weight)).sum();
    let now = Seen {
        at_ms: now_ms,
        closes: v.keys.iter().map(|k| u64::from(k.rebalancing().0)).sum(),
        conns: total,
        under: v
            .servers
            .iter()
            .filter(|s| u64::from(s.conns) * weights < total * u64::from(s.weight))
            .map(|s| u64::from(s.conns))
            .sum(),
    };
    let mut seen = r.seen.borrow_mut();
    while seen
        .front()
        .is_some_and(|s| now.at_ms.saturating_sub(s.at_ms) > RECONNECT_MS)
    {
        seen.pop_front();
    }
    // Before the window starts, nothing is known to be away.
    let then = seen.front().copied().unwrap_or(now);
    let judged = seen
        .iter()
        .rev()
        .find(|s| now.at_ms.saturating_sub(s.at_ms) >= GRACE_MS)
        .copied()
        .unwrap_or(then);
    seen.push_back(now);
    // A key removed takes its closes with it: never below zero.
    let closed = now.closes.saturating_sub(then.closes);
    Recent {
        away: closed.min(then.conns.saturating_sub(now.conns)),
        judged_closes: judged.closes.saturating_sub(then.closes),
        under_gain: now.under.saturating_sub(then.under),
        under: now.under,
    }
}

fn my_turn(tick: u64) -> bool {
    let (slot, count) = process::worker_slot();
    tick % count.max(1) as u64 == slot as u64
}

/// The zone's view of the upstream; `None` without a zone, or while a key
/// was just removed (the next tick finds the keys again).
fn view(up: &UpstreamCounters, r: &Rebalancer) -> Option<View> {
    let link = up.link()?;
    let table = link.table;
    // Found again when the table changed, and every few seconds anyway: a
    // key added here and another removed elsewhere leave the count alike.
    let at = (table.epoch(), table.keys());
    let stale = r.ticks.get().saturating_sub(r.found_tick.get()) >= RESCAN_TICKS;
    if r.found_at.get() != Some(at) || stale {
        let mut keys = table.key_room();
        if !table.upstream_keys(&link.lock(), &up.name, &mut keys) {
            return None;
        }
        let mut known = r.keys.borrow_mut();
        if *known != keys {
            // Another set of servers: what was seen of the old one (the
            // servers below their share, each server's carry) says nothing
            // of the new one.
            r.seen.borrow_mut().clear();
            r.carry.borrow_mut().clear();
            r.stalled.set(None);
            *known = keys;
        }
        r.found_at.set(Some(at));
        r.found_tick.set(r.ticks.get());
    }
    let keys = r.keys.borrow().clone();
    let now_ds = ramp::now_ds(peers::now_ms());
    let (mut active, mut enabled) = (false, true);
    let mut found = Vec::with_capacity(keys.len());
    for k in &keys {
        let Some(conns) = k.count() else {
            r.found_at.set(None);
            return None;
        };
        let meta = k.meta();
        active |= k.rebalancing().1;
        // A draining key keeps what an older configuration stamped.
        if meta.flags & FLAG_DRAINING == 0 {
            enabled &= meta.flags & FLAG_REBALANCE != 0;
        }
        let bits = k.check_bits();
        found.push(Key {
            backup: meta.flags & FLAG_BACKUP != 0,
            // Health checks that took a server out (down, or draining by
            // its answer) count as `down`.
            out: meta.flags & (FLAG_DOWN | FLAG_DRAINING) != 0 || bits & CHECK_OUT != 0,
            ramping: k.ramp(now_ds).is_some(),
            conns,
            weight: meta.weight,
            max_conns: meta.max_conns,
            tuned: if bits & CHECK_TUNED != 0 {
                k.tuned()
            } else {
                Tuned::default()
            },
        });
    }
    let (servers, key_of, paused) = usable(&found);
    Some(View {
        keys,
        servers,
        key_of,
        paused,
        active,
        enabled,
    })
}

/// While the upstream sheds: this worker's share of the closes. `away`:
/// clients of connections closed lately not back yet (`Recent::away`).
fn shed(
    up: &UpstreamCounters,
    r: &Rebalancer,
    params: &Params,
    v: View,
    away: u64,
    quota: &mut Quota,
    log: Log,
) {
    let now_ms = peers::now_ms();
    let mark = stop_mark(true, params.tolerance);
    // This worker's long-lived connections per server that may close now
    // (old enough), and those it is closing that nginx has not finalized
    // yet (still counted).
    let n = v.servers.len();
    let (mut ready, mut closing) = (vec![0u64; n], vec![0u32; n]);
    up.live.for_each(|held, node| {
        if let Some(j) = server_of(&v, held) {
            if node.closing() {
                closing[j] += 1;
            } else if node.long_lived() && ready_to_close(node, params, now_ms) {
                ready[j] += 1;
            }
        }
    });
    // The upstream as it will be once the clients closed lately are back.
    let mut servers = v.servers.clone();
    for (s, c) in servers.iter_mut().zip(&closing) {
        s.closing(*c);
    }
    let in_progress: u64 = closing.iter().map(|&c| u64::from(c)).sum();
    place_returning(&mut servers, away + in_progress);
    // This worker's share of the rate: what it holds of the connections
    // of the servers that may close one.
    let over: Vec<usize> = (0..n).filter(|&j| may_close(&servers, j, mark)).collect();
    let held: u64 = over.iter().map(|&j| ready[j]).sum();
    let total: u64 = over.iter().map(|&j| u64::from(servers[j].conns)).sum();
    quota.refill(now_ms, PERIOD_MS as u64, params.rate, held, total);
    if quota.closes() == 0 {
        return;
    }
    // The upstream's next closes, as many as all workers may make in a
    // tick, from the servers this worker can close a connection of, and
    // this worker's part of each server's: what it holds of that server's
    // connections (the fractions carried over, so that the parts add up).
    let tick_closes = (u64::from(params.rate) * PERIOD_MS as u64).div_ceil(1000);
    let closable: Vec<bool> = ready.iter().map(|&m| m > 0).collect();
    let next = next_closes(&servers, mark, tick_closes.min(MAX_PLANNED), &closable);
    let mut carry = r.carry.borrow_mut();
    carry.resize(n, 0);
    let mut plan = vec![0u64; n];
    for j in 0..n {
        let den = u64::from(servers[j].conns).max(1);
        let num = next[j] * ready[j] + carry[j];
        plan[j] = (num / den).min(ready[j]);
        carry[j] = if next[j] == 0 { 0 } else { num % den };
    }
    // The budget to the most loaded servers first.
    let mut budget = quota.closes();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| load_cmp(servers[b], servers[a]));
    for &j in &order {
        plan[j] = plan[j].min(budget);
        budget -= plan[j];
    }
    let mut closed = 0;
    up.live.for_each(|held, node| {
        let Some(j) = server_of(&v, held) else {
            return;
        };
        if plan[j] == 0 || !node.long_lived() || !ready_to_close(node, params, now_ms) {
            return;
        }
        let Held::Shared(c) = held else {
            return;
        };
        if !node.close() {
            return;
        }
        plan[j] -= 1;
        closed += 1;
        // Still held: the count goes when nginx finalizes the request.
        c.slot.note_shed();
        log_close(up, params, &v, j, c.slot, log);
    });
    quota.spend(closed);
}

/// Old enough: `min_age` and its own part of `jitter`.
fn ready_to_close(node: &LiveNode<Held>, params: &Params, now_ms: u64) -> bool {
    old_enough(
        node.age_ms(now_ms),
        params.min_age_ms,
        params.jitter_ms,
        node.salt(),
    )
}

/// Which usable server of `v` the connection counts on.
fn server_of(v: &View, held: &Held) -> Option<usize> {
    let Held::Shared(c) = held else {
        return None;
    };
    let k = v.keys.iter().position(|k| *k == c.slot)?;
    v.key_of.iter().position(|&i| i == k)
}

fn log_close(up: &UpstreamCounters, params: &Params, v: &View, j: usize, slot: SlotRef, log: Log) {
    let total: u64 = v.servers.iter().map(|s| u64::from(s.conns)).sum();
    let weights: u64 = v.servers.iter().map(|s| u64::from(s.weight)).sum();
    let fair = (total * u64::from(v.servers[j].weight)).checked_div(weights);
    log.module(
        NGX_LOG_INFO,
        format_args!(
            "upstream \"{}\": rebalancing: closing a connection to {} (holds {}, fair share {}, \
             tolerance {}%)",
            String::from_utf8_lossy(&up.name),
            up.server_of(slot).unwrap_or_default(),
            slot.count().unwrap_or(0),
            fair.unwrap_or(0),
            params.tolerance
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::tests::HeapArena;
    use crate::core::table::{Meta, Table};

    /// The keys of two servers, in a table on the heap (leaked).
    fn keys(a: &HeapArena) -> Vec<SlotRef> {
        let t = Table::create(a, 64).expect("room for a table");
        // SAFETY: just created in `a`, never freed.
        let t = unsafe { &*t.as_ptr() };
        let epoch = t.begin_epoch(a);
        [&b"conn_count:u:a"[..], b"conn_count:u:b"]
            .iter()
            .map(|k| t.upsert(a, k, 1, Meta::default(), epoch).expect("room"))
            .collect()
    }

    /// The upstream seen with `conns` on its two servers (weight 1 each).
    fn view(keys: &[SlotRef], conns: [u32; 2]) -> View {
        let server = |conns| Server {
            conns,
            weight: 1,
            max_conns: 0,
            part: None,
        };
        View {
            keys: keys.to_vec(),
            servers: conns.map(server).to_vec(),
            key_of: vec![0, 1],
            paused: false,
            active: true,
            enabled: true,
        }
    }

    #[test]
    fn a_closed_connection_is_away_until_its_client_comes_back() {
        let a = HeapArena::new(1 << 20);
        let keys = keys(&a);
        let r = Rebalancer::default();
        assert_eq!(recent(&r, &view(&keys, [10, 2]), 0).away, 0);
        keys[0].note_shed();
        keys[0].note_shed();
        let two_closed = recent(&r, &view(&keys, [8, 2]), 500);
        assert_eq!((two_closed.away, two_closed.under), (2, 2));
        // One client back, on the server below its share.
        let one_back = recent(&r, &view(&keys, [8, 3]), 1000);
        assert_eq!((one_back.away, one_back.under_gain), (1, 1));
        // Closes made long enough ago are judged; past the window, nothing
        // closed then counts as away.
        let judged = recent(&r, &view(&keys, [8, 3]), 2500);
        assert_eq!(judged.judged_closes, 2);
        let later = recent(&r, &view(&keys, [8, 3]), 500 + RECONNECT_MS + 1);
        assert_eq!((later.away, later.judged_closes), (0, 0));
    }

    #[test]
    fn closes_that_bring_the_servers_below_their_share_nothing_wait() {
        let params = Params {
            rate: 5,
            ..Params::default()
        };
        let r = Rebalancer::default();
        let fruitless = Recent {
            away: 0,
            judged_closes: STALL_CLOSES,
            under_gain: 0,
            under: 2,
        };
        let helped = Recent {
            under_gain: 1,
            ..fruitless
        };
        let too_few = Recent {
            judged_closes: STALL_CLOSES - 1,
            ..fruitless
        };
        assert!(!stalled(&r, &helped, &params, 0));
        assert!(!stalled(&r, &too_few, &params, 0));
        assert!(stalled(&r, &fruitless, &params, 0));
        // Until the servers below their share gain, whatever the closes.
        assert!(stalled(&r, &too_few, &params, 1000));
        let gained = Recent {
            under: 3,
            ..too_few
        };
        assert!(!stalled(&r, &gained, &params, 2000));
        // Or for a minute at most.
        assert!(stalled(&r, &fruitless, &params, 3000));
        assert!(stalled(&r, &too_few, &params, 3000 + STALL_MS));
        assert!(!stalled(&r, &too_few, &params, 3000 + STALL_MS + 1));
    }
}
