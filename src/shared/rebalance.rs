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
use crate::core::rebalance::{may_close, old_enough, shedding, Params, Quota, Server};
use crate::core::table::{SlotRef, FLAG_BACKUP, FLAG_DOWN, FLAG_DRAINING};
use crate::ngx::log::Log;
use crate::ngx::peers;
use crate::ngx::process;

use super::registry::{Held, UpstreamCounters};

/// How often each worker looks (ms).
pub const PERIOD_MS: usize = 200;

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
    quota: Cell<Quota>,
    ticks: Cell<u64>,
    /// The upstream's closes so far (all workers, from the keys) and its
    /// connections, as this worker saw them over the last `RECONNECT_MS`.
    seen: RefCell<VecDeque<Seen>>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    at_ms: u64,
    closes: u64,
    conns: u64,
}

/// The upstream as the zone counts it now.
struct View {
    keys: Vec<SlotRef>,
    /// The usable primary servers, and which key each is.
    servers: Vec<Server>,
    key_of: Vec<usize>,
    /// A server is down, draining, ramping up or failing.
    paused: bool,
    /// The upstream sheds (as the keys record it).
    active: bool,
}

/// One tick for `up`, whose configuration has `params`.
pub fn tick(up: &UpstreamCounters, params: &Params, log: Log) {
    let r = &up.rebalancer;
    r.ticks.set(r.ticks.get() + 1);
    // A worker with nothing of the upstream looks only in its turn: the
    // upstream's state still ends when it should (every worker holding
    // nothing may be the last), at no cost per worker.
    if up.live.is_empty() && !my_turn(r.ticks.get()) {
        return;
    }
    let Some(mut view) = view(up) else {
        return;
    };
    let coming_back = still_away(r, &view);
    place_returning(&mut view.servers, coming_back);
    let now = shedding(view.active, &view.servers, params.tolerance, view.paused);
    // Every key marked (a key added since gets it too): not `any`, which
    // would stop at the first change.
    let changed = view.keys.iter().filter(|k| k.set_shedding(now)).count() > 0;
    if changed && now != view.active {
        log.module(
            NGX_LOG_INFO,
            format_args!(
                "upstream \"{}\": rebalancing {} (tolerance {}%)",
                String::from_utf8_lossy(&up.name),
                if now { "starts" } else { "ends" },
                params.tolerance
            ),
        );
    }
    let mut quota = r.quota.get();
    if now {
        shed(up, params, view, &mut quota, log);
    } else {
        quota.clear();
    }
    r.quota.set(quota);
}

/// How many clients of connections closed in the last `RECONNECT_MS` (by
/// any worker) have not come back yet: the upstream's connections fell by
/// that much since, unless other clients came or went meanwhile (then the
/// guess is off by as much, and never more than the closes).
fn still_away(r: &Rebalancer, v: &View) -> u64 {
    let now = Seen {
        at_ms: peers::now_ms(),
        closes: v.keys.iter().map(|k| u64::from(k.rebalancing().0)).sum(),
        conns: v.servers.iter().map(|s| u64::from(s.conns)).sum(),
    };
    let mut seen = r.seen.borrow_mut();
    while seen
        .front()
        .is_some_and(|s| now.at_ms.saturating_sub(s.at_ms) > RECONNECT_MS)
    {
        seen.pop_front();
    }
    let then = seen.front().copied().unwrap_or(now);
    seen.push_back(now);
    // A key removed takes its closes with it: never below zero.
    let closed = now.closes.saturating_sub(then.closes);
    closed.min(then.conns.saturating_sub(now.conns))
}

/// Counts `n` reconnecting clients where least connections sends them
/// (one at a time, to the least loaded by weight; bounded).
fn place_returning(servers: &mut [Server], n: u64) {
    for _ in 0..n.min(100_000) {
        let Some(least) = (0..servers.len())
            .filter(|&i| servers[i].weight > 0)
            .min_by(|&a, &b| load_cmp(servers[a], servers[b]))
        else {
            return;
        };
        servers[least].conns = servers[least].conns.saturating_add(1);
    }
}

fn my_turn(tick: u64) -> bool {
    let (slot, count) = process::worker_slot();
    tick % count.max(1) as u64 == slot as u64
}

/// The zone's view of the upstream; `None` without a zone, or while a key
/// was just removed (the next tick finds the keys again).
fn view(up: &UpstreamCounters) -> Option<View> {
    let link = up.link()?;
    let table = link.table;
    let r = &up.rebalancer;
    let at = (table.epoch(), table.keys());
    if r.found_at.get() != Some(at) {
        let mut keys = Vec::with_capacity(table.keys() as usize + 8);
        if !table.upstream_keys(&link.lock(), &up.name, &mut keys) {
            return None;
        }
        *r.keys.borrow_mut() = keys;
        r.found_at.set(Some(at));
    }
    let keys = r.keys.borrow().clone();
    let now_ds = ramp::now_ds(peers::now_ms());
    let mut v = View {
        servers: Vec::with_capacity(keys.len()),
        key_of: Vec::with_capacity(keys.len()),
        paused: up.failures.is_some_and(|f| f.any(peers::now())),
        active: false,
        keys,
    };
    for (i, k) in v.keys.iter().enumerate() {
        let Some(conns) = k.count() else {
            r.found_at.set(None);
            return None;
        };
        let meta = k.meta();
        v.active |= k.rebalancing().1;
        if meta.flags & (FLAG_DOWN | FLAG_DRAINING) != 0 || k.ramp(now_ds).is_some() {
            v.paused = true;
        }
        if meta.flags & (FLAG_BACKUP | FLAG_DOWN | FLAG_DRAINING) == 0 {
            v.servers.push(Server {
                conns,
                weight: meta.weight,
            });
            v.key_of.push(i);
        }
    }
    Some(v)
}

/// While the upstream sheds: this worker's share of the closes.
fn shed(up: &UpstreamCounters, params: &Params, mut v: View, quota: &mut Quota, log: Log) {
    let now_ms = peers::now_ms();
    // This worker's long-lived connections per server, and of them those
    // old enough to close.
    let mut mine = vec![0u64; v.servers.len()];
    up.live.for_each(|held, node| {
        if let Some(j) = server_of(&v, held) {
            if node.long_lived() {
                mine[j] += 1;
            }
        }
    });
    let shedding: Vec<usize> = (0..v.servers.len())
        .filter(|&j| may_close(&v.servers, j, params.tolerance))
        .collect();
    let held: u64 = shedding.iter().map(|&j| mine[j]).sum();
    let total: u64 = shedding
        .iter()
        .map(|&j| u64::from(v.servers[j].conns))
        .sum();
    quota.refill(now_ms, PERIOD_MS as u64, params.rate, held, total);
    let mut plan = vec![0u64; v.servers.len()];
    let mut budget = quota.closes();
    while budget > 0 {
        // The most loaded server that may still close one (by weight), with
        // a connection of this worker left to close.
        let Some(j) = (0..v.servers.len())
            .filter(|&j| plan[j] < mine[j] && may_close(&v.servers, j, params.tolerance))
            .max_by(|&a, &b| load_cmp(v.servers[a], v.servers[b]))
        else {
            break;
        };
        plan[j] += 1;
        budget -= 1;
        // As the decision will see it once the client is back elsewhere.
        v.servers[j].conns -= 1;
        if let Some(least) = (0..v.servers.len())
            .filter(|&i| i != j && v.servers[i].weight > 0)
            .min_by(|&a, &b| load_cmp(v.servers[a], v.servers[b]))
        {
            v.servers[least].conns += 1;
        }
    }
    let mut closed = 0;
    up.live.for_each(|held, node| {
        let Some(j) = server_of(&v, held) else {
            return;
        };
        if plan[j] == 0
            || !node.long_lived()
            || !old_enough(
                node.age_ms(now_ms),
                params.min_age_ms,
                params.jitter_ms,
                node.salt(),
            )
        {
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

/// Which usable server of `v` the connection counts on.
fn server_of(v: &View, held: &Held) -> Option<usize> {
    let Held::Shared(c) = held else {
        return None;
    };
    let k = v.keys.iter().position(|k| *k == c.slot)?;
    v.key_of.iter().position(|&i| i == k)
}

/// Compares two servers' connections per weight (cross-multiplied).
fn load_cmp(a: Server, b: Server) -> core::cmp::Ordering {
    (u64::from(a.conns) * u64::from(b.weight)).cmp(&(u64::from(b.conns) * u64::from(a.weight)))
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
