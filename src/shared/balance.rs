//! The balancer the front-ends share (http, and stream built with the
//! `stream` feature): registering an upstream's servers once round-robin
//! has set it up, and per connection attempt the pick (`get`) and release
//! (`free`) nginx calls through `ngx_peer_connection_t`.
//!
//! Like stock least_conn it sits on round-robin's peer lists and per-request
//! data (tried bitmap, fails, checked), and chains round-robin's `free` and
//! SSL session hooks, so `max_fails`/`fail_timeout`, `keepalive` and session
//! reuse work as they do there. A front-end only finds the registry and the
//! pool for its kind of request and calls `install`;
//! `front_end::init_upstream` calls `register`.

use core::ffi::c_void;
use core::ptr::NonNull;

use nginx_sys::{
    ngx_event_notify_peer_pt, ngx_event_save_peer_session_pt, ngx_event_set_peer_session_pt,
    ngx_int_t, ngx_peer_connection_t, ngx_uint_t, NGX_LOG_ERR, NGX_LOG_INFO, NGX_PEER_FAILED,
};
use ngx::core::{Pool, Status};
use ngx::ngx_log_debug;

use crate::core::follow::PeerListCopy;
use crate::core::least_index::Best;
use crate::core::ramp;
use crate::core::rebalance::Params;
use crate::core::select::{choose, PeerList};
use crate::core::table::{Meta, PickIndexRef, FLAG_DOWN};
use crate::ngx::conf::ConfWarning;
use crate::ngx::live::Conn;
use crate::ngx::log::Log;
use crate::ngx::peers::{self, Matched, PeerCursor, PeersLock, PerWorker, RoundRobin};
use crate::ngx::subsystem::{self, free_round_robin_peer, RrPeer, RrPeers, UpstreamSrvConf};

use super::registry::{Held, List, NotTaken, PeerCounter, Registry, UpstreamCounters};
use super::zone::{Locked, ZoneLink};

/// Per-request state, in the request's (or session's) pool.
struct PeerData {
    rr: RoundRobin,
    upstream: &'static UpstreamCounters,
    list: List,
    /// Whether the primary list was `plain` as the request began (read
    /// once, for its first attempt, which `get` makes at once): that attempt
    /// takes `get_plain`. Cleared on a switch to backup.
    plain: bool,
    held: Held,
    /// How many times this request's picks looked stale counters up again
    /// (see `MAX_REFRESHES`).
    refreshes: u8,
    /// Round-robin's other hooks (SSL sessions; stream's `notify`, which
    /// clears a peer's failures once connected), called with its own data.
    rr_set_session: ngx_event_set_peer_session_pt,
    rr_save_session: ngx_event_save_peer_session_pt,
    rr_notify: ngx_event_notify_peer_pt,
}

/// Adds an upstream's servers, in round-robin's order, to the registry,
/// once round-robin's init has set the upstream up; returns its index, and
/// what configuration should warn about. Every peer is counted on its own,
/// as stock `least_conn` does: an address listed twice is two peers, with
/// two keys (`key::server_names`).
pub fn register(
    registry: &mut Registry,
    us: &UpstreamSrvConf,
    slow_start: u32,
    index_from: usize,
    rebalance: Option<Params>,
    check: Option<crate::core::check_conf::CheckParams>,
) -> (usize, Vec<ConfWarning>) {
    let name = us.host.as_bytes();
    let mut counters = UpstreamCounters::new(name);
    // Before the lists: their servers' metadata carries them (`meta_for`).
    counters.slow_start = slow_start;
    counters.rebalance = rebalance;
    counters.check = check;
    counters.index_from = index_from;
    counters.failures = Some(peers::Failures::new(us));
    let mut warnings = Vec::new();
    // SAFETY: round-robin init has just filled peer.data.
    let (primary, backup) = unsafe { peers::lists(us.peer.data) };
    for (list, peers) in [(List::Primary, primary), (List::Backup, backup)] {
        let servers: Vec<_> = peers
            .into_iter()
            .flat_map(peers::each_peer)
            .inspect(|peer| warnings.extend(saturated(name, peer)))
            .map(|peer| (peers::occurrence(peer), runtime_meta(peer)))
            .collect();
        counters.set_list(list, servers);
    }
    (registry.add(counters), warnings)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the zone records of a server: weight, `max_conns`, `down`, as the
/// pick compares them (32 bits at the most).
fn runtime_meta(peer: &RrPeer) -> Meta {
    Meta {
        weight: peers::saturate(peer.weight),
        max_conns: peers::saturate(peer.max_conns),
        flags: if peer.down != 0 { FLAG_DOWN } else { 0 },
        // The upstream's, set as the counters are made (`meta_for`).
        slow_start: 0,
    }
}

/// A server's `weight` or `max_conns` past 32 bits: stock nginx accepts
/// them, the pick compares them at u32::MAX; configuration says so.
fn saturated(upstream: &[u8], peer: &RrPeer) -> Vec<ConfWarning> {
    [
        ("weight", peer.weight.unsigned_abs()),
        ("max_conns", peer.max_conns),
    ]
    .into_iter()
    .filter(|&(_, value)| u32::try_from(value).is_err())
    .map(|(parameter, value)| ConfWarning::Saturated {
        parameter,
        value,
        server: text(peers::name(peer)),
        upstream: text(upstream),
    })
    .collect()
}

/// Brings every upstream's counters in step with peer lists that DNS
/// changes (`resolve`), without waiting for a pick. Before the
/// configuration is committed (`init_module`), so that peers which
/// `resolve` servers kept across a reload (nginx copies them into the new
/// upstream zone) have their keys stamped by the commit like configured
/// ones; then in each worker's housekeeping (its turn comes every
/// `worker_processes` half-seconds, `workers::HOUSEKEEPING_INTERVAL_MS`), so that a
/// new address shows at 0 and a gone one drains even while no request comes.
pub fn follow_resolved_peers<'a>(
    registry: &Registry,
    upstreams: impl Iterator<Item = (&'a UpstreamSrvConf, usize)>,
) {
    for (us, index) in upstreams {
        let Some(upstream) = registry.upstream(index) else {
            continue;
        };
        // SAFETY: round-robin init filled peer.data; the upstream zone's
        // init, which ran before this, pointed it at the zone's copy.
        let (primary, backup) = unsafe { peers::lists(us.peer.data) };
        for (list, peers) in [(List::Primary, primary), (List::Backup, backup)] {
            let Some(peers) = peers.filter(|p| peers::version(p).is_some()) else {
                continue;
            };
            let lock = peers::lock(peers);
            let copy = copy_if_changed(upstream, list, peers);
            drop(lock);
            if let Some(copy) = copy {
                follow_copy(upstream, list, &copy, "periodic");
            }
        }
    }
}

/// Wraps round-robin's per-request data (just set up by the front-end's
/// `init_round_robin_peer`) in ours and takes over the peer connection's
/// hooks. `None`: no memory.
pub fn install(
    pool: &Pool,
    pc: &mut ngx_peer_connection_t,
    upstream: &'static UpstreamCounters,
    conn: Conn,
) -> Option<()> {
    // SAFETY: round-robin's per-request data, just set up; the request's.
    let rr = unsafe { RoundRobin::from_ptr(pc.data) }?;
    let pd = pool.alloc(size_of::<PeerData>()).cast::<PeerData>();
    if pd.is_null() {
        return None;
    }
    // SAFETY: fresh pool memory, sized and aligned (nginx aligns pool
    // allocations to pointers) for PeerData; nothing to drop.
    unsafe {
        pd.write(PeerData {
            rr,
            upstream,
            list: List::Primary,
            // A checked upstream's first attempt is plain while every key of
            // the zone is up with nothing overridden (the checks' verdicts
            // as the request begins).
            plain: upstream.plain(List::Primary)
                && !(upstream.check.is_some() && upstream.checks_flagged()),
            held: Held::Nothing,
            refreshes: 0,
            rr_set_session: pc.set_session,
            rr_save_session: pc.save_session,
            rr_notify: pc.notify,
        })
    };
    pc.data = pd.cast();
    if upstream.rebalance.is_some() && upstream.link().is_some() {
        // SAFETY: written just above, in the request's pool.
        let held = unsafe { NonNull::new_unchecked(core::ptr::addr_of_mut!((*pd).held)) };
        upstream.live.track(pool, held, conn, peers::now_ms())?;
    }
    // Slow start has its own pick, so that the pick of an upstream without
    // it pays nothing for it.
    pc.get = Some(if upstream.slow_start != 0 {
        get_peer::<true>
    } else {
        get_peer::<false>
    });
    pc.free = Some(free_peer);
    if pc.set_session.is_some() {
        pc.set_session = Some(set_session);
    }
    if pc.save_session.is_some() {
        pc.save_session = Some(save_session);
    }
    if pc.notify.is_some() {
        pc.notify = Some(notify);
    }
    Some(())
}

/// `SLOW`: the upstream has slow start (`core::ramp`).
extern "C" fn get_peer<const SLOW: bool>(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
) -> ngx_int_t {
    // SAFETY: nginx passes the connection being set up and the data
    // init_peer installed; the request (and so both) outlives this call.
    let (pc, pd) = unsafe { (&mut *pc, &mut *data.cast::<PeerData>()) };
    pc.set_cached(0);
    pc.connection = core::ptr::null_mut();
    get::<SLOW>(pc, pd)
}

#[inline(always)]
fn get<const SLOW: bool>(pc: &mut ngx_peer_connection_t, pd: &mut PeerData) -> ngx_int_t {
    let plain = !SLOW && pd.plain && !pd.rr.tried_any() && peers::route_hint(pc).is_none();
    if plain {
        return get_plain(pc, pd);
    }
    get_any::<SLOW>(pc, pd)
}

/// `get` of the first attempt on the primary list when nothing but the
/// counts and round-robin bears on it (`PeerData::plain`, nothing tried,
/// no `sticky` route).
#[inline(always)]
fn get_plain(pc: &mut ngx_peer_connection_t, pd: &mut PeerData) -> ngx_int_t {
    debug_assert_eq!(pd.list, List::Primary);
    let lock = pd.rr.lock();
    if pd.rr.list_changed() || needs_follow(pd) {
        drop(lock);
        return get_any::<false>(pc, pd);
    }
    let counters = pd.upstream.list(List::Primary);
    let Some(counts) = Matched::new(&counters, pd.rr.peers()) else {
        drop((counters, lock));
        return get_any::<false>(pc, pd);
    };
    if let Some(best) = pick_counted::<false, false, false>(pd, counts, None, 0) {
        pd.rr.connect(best, pc);
        log_got(pc, pd, best, "");
        return Status::NGX_OK.into();
    }
    drop(counters);
    get_slow::<false>(pc, pd, lock)
}

/// `get` of any attempt.
#[inline(never)]
fn get_any<const SLOW: bool>(pc: &mut ngx_peer_connection_t, pd: &mut PeerData) -> ngx_int_t {
    if let Some(index) = pd.upstream.pick_index(pd.list) {
        if let Some(best) = get_indexed(pc, pd, index) {
            log_got(pc, pd, best, " through its index");
            return Status::NGX_OK.into();
        }
    }
    let lock = pd.rr.lock();
    if pd.rr.list_changed() {
        // DNS changed the peers since the request began (`resolve`): as
        // stock does, this attempt gives up rather than pick from a list
        // its `tried` bitmap does not fit.
        pd.rr.current().name_for_errors(pc);
        return Status::NGX_BUSY.into();
    }
    if let Some(best) = pick::<SLOW>(pd, peers::route_hint(pc)) {
        pd.rr.connect(best, pc);
        log_got(pc, pd, best, "");
        return Status::NGX_OK.into();
    }
    get_slow::<SLOW>(pc, pd, lock)
}

/// The debug line of a peer a pick got (`how`: how, if not by a scan).
#[inline(always)]
fn log_got(pc: &ngx_peer_connection_t, pd: &PeerData, best: PeerCursor, how: &str) {
    ngx_log_debug!(
        mask: subsystem::DEBUG_MASK,
        pc.log,
        "least_conn_persistent: get peer {} of {:?} list{}, holding {:?}",
        best.index,
        pd.list,
        how,
        pd.held
    );
}

/// How many winners ruled out by round-robin or this request (tried,
/// failed) a pick through an index searches past before it scans instead.
const INDEX_BUDGET: u32 = 8;

/// A pick through the list's pick index (a large list), in three holds,
/// none inside another: round-robin's lock (none at all but for a list in
/// an upstream `zone`), to see that the list is the one the request and
/// the counters know and to have this worker's cursors on it; the zone's,
/// to take the least loaded server the index holds that round-robin and
/// this request do not rule out, count it and record the pick;
/// round-robin's again, to connect, if DNS did not change the list in
/// between (else the count is given back and the scan decides). Neither
/// lock is ever held while waiting for the other, and a process that dies
/// inside the zone's lock holds no spin lock that nothing would free. The
/// index holds what the health checks found (out, or tuned) and the ramps
/// of slow start. `None`: the scan decides (a `sticky` route, this
/// worker's first pick of the list, a counter to look up again, nothing
/// found).
#[inline]
fn get_indexed(
    pc: &mut ngx_peer_connection_t,
    pd: &mut PeerData,
    index: PickIndexRef,
) -> Option<PeerCursor> {
    let up = pd.upstream;
    let unusual = peers::route_hint(pc).is_some()
        || !matches!(pd.held, Held::Nothing)
        || up.needs_cells(pd.list);
    if unusual {
        return None;
    }
    let link = up.link()?;
    let version = {
        let _rr_lock = pd.rr.lock();
        if pd.rr.list_changed() || needs_follow(pd) {
            return None;
        }
        if up.cursors(pd.list, pd.rr.peers()).is_none() {
            // This worker's first pick of the list, or DNS changed it: its
            // cursors (this allocates: not under the zone's lock).
            up.make_cursors(pd.list, pd.rr.peers());
        }
        peers::version(pd.rr.peers())
    };
    let (best, held) = {
        let locked = link.lock();
        if pd.rr.tried_any() {
            pick_from_index::<true>(pd, index, link, &locked)?
        } else {
            pick_from_index::<false>(pd, index, link, &locked)?
        }
    };
    let rr_lock = pd.rr.lock();
    if peers::version(pd.rr.peers()) != version {
        drop(rr_lock);
        up.release(held, Log::cycle());
        return None;
    }
    keep(pd, held);
    pd.rr.connect(best, pc);
    drop(rr_lock);
    Some(best)
}

/// The choice and count of `get_indexed`, under the zone's lock.
/// Round-robin's facts of a peer (down, failures, `max_conns`) are read
/// without its lock, as hints: a change another worker makes at that moment
/// is seen before or after it, as between two picks; for a list DNS
/// changes, `get_indexed` checks its version again before it connects.
/// `TRIED`: test the request's `tried` bitmap.
#[inline(always)]
fn pick_from_index<const TRIED: bool>(
    pd: &PeerData,
    index: PickIndexRef,
    link: &ZoneLink,
    locked: &Locked,
) -> Option<(PeerCursor, Held)> {
    let counters = pd.upstream.list(pd.list);
    // Made for the list as it is (or the scan decides: DNS changed it
    // since `get_indexed` looked).
    let cursors = pd.upstream.cursors(pd.list, pd.rr.peers())?;
    let counts =
        Matched::new(&counters, pd.rr.peers()).filter(|_| cursors.len() == counters.len())?;
    // Checked: `max_conns` is the capacity answer's, if it gave one.
    let list = pd.rr.list_at::<_, TRIED, false, true>(counts, 0);
    let version = pd.upstream.index_version(pd.list);
    let now = ramp::now_ds(peers::now_ms());
    // A winner whose leaf is behind its count (counted by a pick that
    // scanned) is read again, and so is one found at its `max_conns`
    // (another worker took the last place); the pick goes on.
    for _ in 0..=INDEX_BUDGET {
        let at = match index.best(
            link.table,
            locked,
            version,
            |i| list.is_out(cursors[i]),
            INDEX_BUDGET,
        ) {
            Best::At(i) => i,
            Best::Nothing | Best::GaveUp => return None,
        };
        if !index.is_true(link.table, locked, at, now) {
            continue;
        }
        let cursor = cursors[at];
        // A server this worker counts by itself (the zone had no room for
        // its key again) is not in the index's count: the scan decides.
        if !counters[at].in_zone() {
            return None;
        }
        match counters[at].try_acquire(list.max_conns(cursor)) {
            Ok(held) => {
                index.picked(link.table, locked, at, now);
                return Some((cursor, held));
            }
            Err(NotTaken::AtLimit) => index.refresh(link.table, locked, at, now),
            Err(NotTaken::Stale) => return None,
        }
    }
    None
}

/// How many times the picks of one request look stale counters up again
/// before they count those peers per worker: each time, a key was removed
/// again in the moment between the look-up and the count.
const MAX_REFRESHES: u8 = 4;

/// The pick chose nothing (`lock`: round-robin's, still held). It may need
/// the zone first, which it must not lock while it holds round-robin's lock
/// (a spin lock that nothing frees if the process dies holding it): DNS
/// changed the peer list, or a counter went stale. Then the zone is worked
/// on with the lock released, and the pick runs again under it (where DNS
/// may have changed the list meanwhile: that just means following again,
/// or, as stock does, giving up as busy once the request's list changed).
/// Else no peer can take the request. Kept out of line: the pick stays
/// small.
#[cold]
#[inline(never)]
fn get_slow<const SLOW: bool>(
    pc: &mut ngx_peer_connection_t,
    pd: &mut PeerData,
    lock: PeersLock,
) -> ngx_int_t {
    if needs_follow(pd) {
        let copy = copy_peer_list(pd.rr.peers());
        drop(lock);
        follow_copy(pd.upstream, pd.list, &copy, "pick");
        return get::<SLOW>(pc, pd);
    }
    let needs_cells = pd.upstream.needs_cells(pd.list)
        || pd
            .upstream
            .list(pd.list)
            .iter()
            .any(PeerCounter::needs_cell);
    let stale = pd.upstream.list(pd.list).iter().any(PeerCounter::is_stale);
    drop(lock);
    if needs_cells {
        // This worker's first pick of the list: its cells, then again.
        pd.upstream.attach_cells(pd.list);
        if !stale {
            return get::<SLOW>(pc, pd);
        }
    }
    if !stale {
        return try_backup_or_fail::<SLOW>(pc, pd);
    }
    ngx_log_debug!(
        mask: subsystem::DEBUG_MASK,
        pc.log,
        "least_conn_persistent: a counter of the {:?} list is stale, round-robin lock \
         released: looking it up again",
        pd.list
    );
    pd.refreshes = pd.refreshes.saturating_add(1);
    for counter in pd.upstream.list(pd.list).iter().filter(|c| c.is_stale()) {
        if pd.refreshes > MAX_REFRESHES {
            counter.count_locally();
        } else {
            pd.upstream.refresh(counter);
        }
    }
    get::<SLOW>(pc, pd)
}

/// No peer of the current list can take the request: try the backup list
/// once, else fail as stock does. Kept out of line: the pick stays small.
#[cold]
#[inline(never)]
fn try_backup_or_fail<const SLOW: bool>(
    pc: &mut ngx_peer_connection_t,
    pd: &mut PeerData,
) -> ngx_int_t {
    let failed = pd.rr.current();
    if pd.list == List::Primary && pd.rr.switch_to_backup() {
        pd.list = List::Backup;
        pd.plain = false;
        let rc = get::<SLOW>(pc, pd);
        if rc != Status::NGX_BUSY.0 {
            return rc;
        }
    }
    failed.fail(pc);
    Status::NGX_BUSY.into()
}

/// Chooses and counts a peer: the server a `sticky` session asks for
/// (`route`, nginx 1.29.6+) if it can take the request, else the least
/// loaded, as stock least_conn does. `None` also when the counters must
/// first follow the list (see `needs_follow`), this worker has no cells for
/// the list yet (its first pick of it), or one went stale (see `get_slow`).
#[inline]
fn pick<const SLOW: bool>(pd: &mut PeerData, route: Option<&[u8]>) -> Option<PeerCursor> {
    if needs_follow(pd) || pd.upstream.needs_cells(pd.list) {
        return None;
    }
    let counters = pd.upstream.list(pd.list);
    let Some(counts) = Matched::new(&counters, pd.rr.peers()) else {
        pd.held = Held::Nothing;
        return pick_per_worker(&pd.rr, route);
    };
    if pd.upstream.check.is_some() && pd.upstream.checks_flagged() {
        return pick_checked::<SLOW>(pd, counts, route);
    }
    if SLOW {
        if let Some(now) = pd.upstream.ramping_now() {
            return if pd.rr.tried_any() {
                pick_counted::<true, true, false>(pd, counts, route, now)
            } else {
                pick_counted::<false, true, false>(pd, counts, route, now)
            };
        }
    }
    // A first attempt has tried nothing: its scan skips the bitmap test.
    if pd.rr.tried_any() {
        pick_counted::<true, false, false>(pd, counts, route, 0)
    } else {
        pick_counted::<false, false, false>(pd, counts, route, 0)
    }
}

/// `pick` for an upstream with health checks while some key of the zone
/// has a check bit (`Table::checks_flagged`): the same, on a list that
/// skips the servers the checks took out and compares the ones they tuned
/// (`RrList`'s `CHECKED`). Its own function: upstreams without checks, or
/// with every server up and nothing overridden, pay nothing for it.
#[inline(never)]
fn pick_checked<const SLOW: bool>(
    pd: &mut PeerData,
    counts: Matched<'_, PeerCounter>,
    route: Option<&[u8]>,
) -> Option<PeerCursor> {
    let now = if SLOW {
        pd.upstream.ramping_now()
    } else {
        None
    };
    match (pd.rr.tried_any(), now) {
        (true, Some(now)) => pick_counted::<true, true, true>(pd, counts, route, now),
        (false, Some(now)) => pick_counted::<false, true, true>(pd, counts, route, now),
        (true, None) => pick_counted::<true, false, true>(pd, counts, route, 0),
        (false, None) => pick_counted::<false, false, true>(pd, counts, route, 0),
    }
}

/// Whether the counters must follow a peer list that DNS changed
/// (`resolve`): nginx bumps the list's version on every change, under the
/// lock the pick holds.
#[inline]
fn needs_follow(pd: &PeerData) -> bool {
    peers::version(pd.rr.peers()).is_some_and(|v| pd.upstream.needs_follow(pd.list, v))
}

/// A copy of `peers` (the front-end's list, locked by the caller) for
/// `follow_copy` if the counters must follow it.
fn copy_if_changed(
    upstream: &UpstreamCounters,
    list: List,
    peers: &RrPeers,
) -> Option<PeerListCopy> {
    let version = peers::version(peers)?;
    upstream
        .needs_follow(list, version)
        .then(|| copy_peer_list(peers))
}

/// What following needs of `peers` (a list that DNS changes, locked by the
/// caller), owned, so that the zone is worked on once the lock is released.
#[cold]
#[inline(never)]
fn copy_peer_list(peers: &RrPeers) -> PeerListCopy {
    let version = peers::version(peers).unwrap_or_default();
    let each = peers::each_peer(peers).map(|p| (peers::occurrence(p), runtime_meta(p)));
    PeerListCopy::new(version, each)
}

/// Follows a copy of the peer list (`copy_peer_list`), with no peer lock
/// held: the zone is locked in `UpstreamCounters::follow`, and what changed
/// is logged after. `by`: who copied it (`pick`, or `periodic`:
/// housekeeping, the health checks' rescan, or the configuration load),
/// for the debug log.
#[cold]
#[inline(never)]
fn follow_copy(upstream: &UpstreamCounters, list: List, copy: &PeerListCopy, by: &str) {
    ngx_log_debug!(
        mask: subsystem::DEBUG_MASK,
        Log::cycle().as_ptr(),
        "least_conn_persistent: upstream \"{}\" {:?} peers at version {} copied ({}), \
         round-robin lock released: following",
        String::from_utf8_lossy(&upstream.name),
        list,
        copy.version,
        by
    );
    let followed = upstream.follow(list, copy);
    if let (true, Some(zone)) = (followed.full > 0, upstream.zone_name()) {
        Log::cycle().zone(
            NGX_LOG_ERR,
            zone,
            format_args!(
                " is full: {} address(es) that DNS added to upstream \"{}\" fall back to \
                 per-worker counting",
                followed.full,
                String::from_utf8_lossy(&upstream.name)
            ),
        );
    }
    if followed.added + followed.gone > 0 {
        Log::cycle().module(
            NGX_LOG_INFO,
            format_args!(
                "upstream \"{}\": {:?} peers changed at run time: {} added, {} gone \
                 (removed, or draining until their last connection), {} kept",
                String::from_utf8_lossy(&upstream.name),
                list,
                followed.added,
                followed.gone,
                followed.kept
            ),
        );
    }
}

/// A choice can lose a race for the last `max_conns` place to another
/// worker; choosing again then sees it full. A stale counter stops the
/// pick (`get_slow` looks it up again).
#[inline(always)]
fn pick_counted<const TRIED: bool, const RAMP: bool, const CHECKED: bool>(
    pd: &mut PeerData,
    counts: Matched<'_, PeerCounter>,
    route: Option<&[u8]>,
    now_ds: u32,
) -> Option<PeerCursor> {
    make_room(pd);
    let mut list = pd.rr.list_at::<_, TRIED, RAMP, CHECKED>(counts, now_ds);
    if let Some(best) = route.and_then(|r| list.find_route(r)) {
        let counter = counts.get(best.index)?;
        match counter.try_acquire(list.max_conns(best)) {
            Ok(held) => {
                store_hold(pd, held);
                return Some(best);
            }
            Err(NotTaken::AtLimit) => {}
            Err(NotTaken::Stale) => return None,
        }
    }
    // At most one choice more than the list has peers: each after the
    // first follows a peer found at its limit.
    let mut retries = list.size();
    loop {
        let best = choose(&mut list)?;
        let counter = counts.of(best);
        match counter.try_acquire(list.max_conns(best)) {
            Ok(held) => {
                store_hold(pd, held);
                return Some(best);
            }
            Err(NotTaken::AtLimit) if retries > 0 => retries -= 1,
            Err(_) => return None,
        }
    }
}

/// Stores what a pick took (`make_room`, then `store_hold`).
#[inline(always)]
fn keep(pd: &mut PeerData, held: Held) {
    make_room(pd);
    store_hold(pd, held);
}

/// Empties the slot a pick stores its hold in, before the pick counts. The
/// previous attempt's hold was given back (`free_peer` takes it), so there
/// is nothing to do; said before the count, this lets the compiler store
/// the hold in place (`store_hold`), with no drop of the old.
#[inline(always)]
fn make_room(pd: &mut PeerData) {
    if !matches!(pd.held, Held::Nothing) {
        give_back_hold(pd);
    }
}

/// Stores a hold in the slot `make_room` emptied: nothing to drop.
#[inline(always)]
fn store_hold(pd: &mut PeerData, held: Held) {
    let empty = core::mem::replace(&mut pd.held, held);
    debug_assert!(matches!(empty, Held::Nothing));
    core::mem::forget(empty);
}

/// Not reached (see `make_room`); were it, the hold is given back rather
/// than dropped uncounted (with round-robin's lock held by the scan: a
/// release of a key in a pick index would then wait for the zone's lock).
#[cold]
#[inline(never)]
fn give_back_hold(pd: &mut PeerData) {
    debug_assert!(false, "a pick replaced a hold it had not given back");
    let old = core::mem::take(&mut pd.held);
    pd.upstream.release(old, Log::cycle());
}

/// A pick on round-robin's own per-worker counts, counting nothing shared.
#[cold]
#[inline(never)]
fn pick_per_worker(rr: &RoundRobin, route: Option<&[u8]>) -> Option<PeerCursor> {
    if rr.tried_any() {
        let mut list = rr.list::<_, true>(PerWorker);
        route
            .and_then(|r| list.find_route(r))
            .or_else(|| choose(&mut list))
    } else {
        let mut list = rr.list::<_, false>(PerWorker);
        route
            .and_then(|r| list.find_route(r))
            .or_else(|| choose(&mut list))
    }
}

extern "C" fn free_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void, state: ngx_uint_t) {
    // SAFETY: as in get_peer.
    let (pc, pd) = unsafe { (&mut *pc, &mut *data.cast::<PeerData>()) };
    let held = core::mem::take(&mut pd.held);
    ngx_log_debug!(
        mask: subsystem::DEBUG_MASK,
        pc.log,
        "least_conn_persistent: free {:?}, state {}",
        held,
        state
    );
    // SAFETY: the connection's log.
    let log = unsafe { Log::from_ptr(pc.log) };
    if pd.upstream.slow_start != 0 {
        return free_slow_start(pc, pd, held, state, log);
    }
    pd.upstream.release(held, log);
    // SAFETY: round-robin's own per-request data, as its free expects.
    unsafe { free_round_robin_peer(pc, pd.rr.as_ptr(), state) };
}

/// `free_peer` for an upstream with slow start: a server out after
/// `max_fails` that this connection found working again (round-robin's
/// free clears its failures) ramps up. Decided before round-robin frees
/// (which may free a peer that DNS removed); the count is released after
/// the ramp starts: held, the key cannot go meanwhile.
#[cold]
#[inline(never)]
fn free_slow_start(
    pc: &mut ngx_peer_connection_t,
    pd: &mut PeerData,
    held: Held,
    state: ngx_uint_t,
    log: Log,
) {
    let back = pd
        .rr
        .chosen_recovers(state & NGX_PEER_FAILED as ngx_uint_t != 0);
    // SAFETY: round-robin's own per-request data, as its free expects.
    unsafe { free_round_robin_peer(pc, pd.rr.as_ptr(), state) };
    if let (true, Held::Shared(c)) = (back, &held) {
        pd.upstream.ramp_after_failures(c.slot, log);
    }
    pd.upstream.release(held, log);
}

extern "C" fn set_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: the data `install` set; round-robin's hook takes its own.
    let pd = unsafe { &*data.cast::<PeerData>() };
    match pd.rr_set_session {
        // SAFETY: round-robin's hook, with the arguments it expects.
        Some(f) => unsafe { f(pc, pd.rr.as_ptr()) },
        None => Status::NGX_OK.into(),
    }
}

extern "C" fn save_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: as in set_session.
    let pd = unsafe { &*data.cast::<PeerData>() };
    if let Some(f) = pd.rr_save_session {
        // SAFETY: as in set_session.
        unsafe { f(pc, pd.rr.as_ptr()) };
    }
}

extern "C" fn notify(pc: *mut ngx_peer_connection_t, data: *mut c_void, kind: ngx_uint_t) {
    // SAFETY: as in set_session.
    let pd = unsafe { &*data.cast::<PeerData>() };
    // Stream clears a peer's failures once connected, here rather than in
    // free: slow start sees a server come back from max_fails there.
    let back = pd.upstream.slow_start != 0 && pd.rr.chosen_recovers(false);
    if let Some(f) = pd.rr_notify {
        // SAFETY: as in set_session.
        unsafe { f(pc, pd.rr.as_ptr(), kind) };
    }
    if let (true, Held::Shared(c)) = (back, &pd.held) {
        if pd.rr.chosen_cleared() {
            // SAFETY: nginx passes the connection being set up.
            let log = unsafe { Log::from_ptr((&*pc).log) };
            pd.upstream.ramp_after_failures(c.slot, log);
        }
    }
}
