//! Round-robin's peer lists and per-request data, as the balancer uses them.
//!
//! Like stock `least_conn`, ours sits on round-robin: its peer lists (with
//! weights, `max_fails`, `max_conns`, backup list) and its per-request data
//! (the `tried` bitmap, the current list). This is the only file that walks
//! those raw lists.

use core::ffi::c_void;
use core::ptr::NonNull;

use super::subsystem::{RrPeer, RrPeerData, RrPeers, UpstreamSrvConf};
use nginx_sys::{
    ngx_cached_time, ngx_exiting, ngx_int_t, ngx_peer_connection_t, ngx_rwlock_unlock,
    ngx_rwlock_wlock, ngx_uint_t, time_t,
};

use crate::core::eligible;
use crate::core::key::Occurrence;
use crate::core::select::{Load, PeerList};
use crate::core::table::Tuned;

const BITS: usize = usize::BITS as usize;

/// The peers of one list (primary or backup), in order.
pub fn each_peer(list: &RrPeers) -> impl Iterator<Item = &RrPeer> + Clone {
    let mut p = list.peer;
    core::iter::from_fn(move || {
        // SAFETY: round-robin links the list's peers by `next`; they live in
        // the configuration pool (or the upstream's zone), as long as `list`.
        let peer = unsafe { p.as_ref()? };
        p = peer.next;
        Some(peer)
    })
}

/// An upstream's primary list and, if any, its backup list, as
/// round-robin's init (`init_round_robin`) left them in `peer.data`.
///
/// # Safety
/// `data` is that pointer, of an upstream whose round-robin init succeeded.
pub unsafe fn lists<'a>(data: *mut c_void) -> (Option<&'a RrPeers>, Option<&'a RrPeers>) {
    // SAFETY: the function's contract.
    let primary = unsafe { data.cast::<RrPeers>().as_ref() };
    let backup = primary.and_then(|p| unsafe { p.next.as_ref() });
    (primary, backup)
}

/// The version of a peer list that DNS can change at run time (nginx's
/// `config` counter, bumped on every change); `None` for a list that
/// cannot change (no upstream `zone`, or an nginx before 1.27.3).
#[inline]
pub fn version(list: &RrPeers) -> Option<usize> {
    // SAFETY: null, or the counter the upstream zone keeps for the list.
    #[cfg(ngx_resolve)]
    let version = unsafe { list.config.as_ref() }.copied();
    #[cfg(not(ngx_resolve))]
    let version = {
        let _ = list;
        None
    };
    version
}

/// A cursor on every peer of `list`, by position: a pick through a pick
/// index reaches the peer it chose without a walk.
pub fn cursors(list: &RrPeers) -> Vec<PeerCursor> {
    let mut out = Vec::with_capacity(list.number);
    let mut p = list.peer;
    while let Some(peer) = NonNull::new(p) {
        out.push(PeerCursor {
            peer,
            index: out.len(),
        });
        // SAFETY: round-robin links the list's peers by `next`.
        p = unsafe { peer.as_ref() }.next;
    }
    out
}

/// Whether a peer is configured `down`; on nginx 1.29.6+ (http) not one
/// that only drains (`server ... drain`: it still takes the sessions that
/// stick to it, so its health matters).
pub fn is_down(peer: &RrPeer) -> bool {
    #[cfg(all(ngx_sticky, not(feature = "stream")))]
    let ignored = nginx_sys::NGX_HTTP_UPSTREAM_DRAINING as ngx_uint_t;
    #[cfg(not(all(ngx_sticky, not(feature = "stream"))))]
    let ignored: ngx_uint_t = 0;
    peer.down & !ignored != 0
}

pub fn name(peer: &RrPeer) -> &[u8] {
    peer.name.as_bytes()
}

/// A peer as keys are named: its address, and the `server` line (as
/// written) that gave it.
pub fn occurrence(peer: &RrPeer) -> Occurrence<'_> {
    Occurrence {
        address: peer.name.as_bytes(),
        line: peer.server.as_bytes(),
    }
}

/// nginx's cached current time, in seconds.
pub fn now() -> time_t {
    // SAFETY: nginx keeps `ngx_cached_time` pointing at a valid time slot.
    unsafe { (*ngx_cached_time).sec }
}

/// nginx's cached monotonic clock, in milliseconds: the same clock in every
/// process of the machine.
pub fn now_ms() -> u64 {
    // SAFETY: a plain integer nginx updates with its cached time.
    unsafe { nginx_sys::ngx_current_msec as u64 }
}

/// A weight or `max_conns` as the pick compares it: 32 bits, larger ones
/// (which stock nginx accepts; configuration warns) at the most.
#[inline(always)]
pub fn saturate(value: impl TryInto<u32>) -> u32 {
    value.try_into().unwrap_or(u32::MAX)
}

/// A peer of the list being picked from, and its position in that list.
#[derive(Clone, Copy, Debug)]
pub struct PeerCursor {
    peer: NonNull<RrPeer>,
    pub index: usize,
}

/// Which peers of the current list this request has tried: round-robin's
/// bitmap, sized for the larger of the two lists.
#[derive(Clone, Copy)]
struct Tried(NonNull<usize>);

impl Tried {
    /// # Safety (for all three): `i` is below the size of the larger list.
    #[inline]
    unsafe fn contains(self, i: usize) -> bool {
        unsafe { *self.0.as_ptr().add(i / BITS) & (1 << (i % BITS)) != 0 }
    }

    #[inline]
    unsafe fn insert(self, i: usize) {
        unsafe { *self.0.as_ptr().add(i / BITS) |= 1 << (i % BITS) };
    }

    unsafe fn clear(self, peers: usize) {
        unsafe { core::ptr::write_bytes(self.0.as_ptr(), 0, peers.div_ceil(BITS)) };
    }
}

/// One request's round-robin data.
#[derive(Debug)]
pub struct RoundRobin {
    data: NonNull<RrPeerData>,
    /// Round-robin's `tried` bitmap, which it allocates with its data.
    tried: NonNull<usize>,
    /// Whether a peer of the current list was tried: until then a pick
    /// skips the per-peer test of the `tried` bitmap.
    tried_any: bool,
}

impl RoundRobin {
    /// # Safety
    /// `data` is what round-robin's `init_round_robin_peer` left in
    /// `u.peer.data`; it lives as long as the request.
    pub unsafe fn from_ptr(data: *mut c_void) -> Option<RoundRobin> {
        let data = NonNull::new(data.cast::<RrPeerData>())?;
        // SAFETY: the function's contract.
        let tried = NonNull::new(unsafe { data.as_ref() }.tried)?;
        Some(RoundRobin {
            data,
            tried,
            tried_any: false,
        })
    }

    /// For round-robin's own functions (free, SSL sessions).
    pub fn as_ptr(&self) -> *mut c_void {
        self.data.as_ptr().cast()
    }

    fn data(&self) -> &RrPeerData {
        // SAFETY: from_ptr's contract; the worker is single-threaded.
        unsafe { self.data.as_ref() }
    }

    fn data_mut(&mut self) -> &mut RrPeerData {
        // SAFETY: as in data().
        unsafe { self.data.as_mut() }
    }

    /// The list being picked from: primary, or backup once switched.
    #[inline]
    pub fn peers(&self) -> &RrPeers {
        // SAFETY: round-robin sets `peers` to a list of the upstream.
        unsafe { &*self.data().peers }
    }

    fn tried(&self) -> Tried {
        Tried(self.tried)
    }

    /// Round-robin's lock on peers kept in an upstream `zone`.
    #[inline]
    pub fn lock(&self) -> PeersLock {
        // SAFETY: round-robin sets `peers` to a list of the upstream.
        PeersLock::new(unsafe { NonNull::new_unchecked(self.data().peers) })
    }

    /// Whether a peer of the current list was tried already: then a pick
    /// must test the `tried` bitmap (`RrList`'s `TRIED`).
    #[inline]
    pub fn tried_any(&self) -> bool {
        self.tried_any
    }

    /// Whether round-robin is about to clear the failures of the peer this
    /// request connected to, which had reached `max_fails`: a connection to
    /// it worked (not `failed`), after its `fail_timeout` (nginx's own test:
    /// `accessed < checked`). Asked before round-robin's free or notify,
    /// which may free a peer that DNS removed; read without the list's
    /// lock: a hint, which slow start uses to see a server come back.
    pub fn chosen_recovers(&self, failed: bool) -> bool {
        // SAFETY: null, or the peer `connect` chose, in a list of the
        // upstream, not freed before round-robin's free or notify.
        unsafe { self.data().current.as_ref() }.is_some_and(|p| {
            !failed && p.max_fails != 0 && p.fails >= p.max_fails && p.accessed < p.checked
        })
    }

    /// Whether the peer this request connected to has no failure counted:
    /// asked after round-robin's notify (stream's, which clears them once a
    /// TCP connection is made), while the session keeps the peer alive.
    pub fn chosen_cleared(&self) -> bool {
        // SAFETY: null, or the peer `connect` chose, in use by this session.
        unsafe { self.data().current.as_ref() }.is_some_and(|p| p.fails == 0)
    }

    /// The current list as `core::select` sees it, with our counts.
    /// `TRIED`: test the `tried` bitmap (see `tried_any`).
    #[inline]
    pub fn list<S: CountSource, const TRIED: bool>(&self, counts: S) -> RrList<'_, S, TRIED> {
        self.list_at(counts, 0)
    }

    /// `list` for a pick while some peer may ramp up (slow start), at
    /// `now_ds` (deciseconds of `now_ms`).
    pub fn list_at<S: CountSource, const TRIED: bool, const RAMP: bool, const CHECKED: bool>(
        &self,
        counts: S,
        now_ds: u32,
    ) -> RrList<'_, S, TRIED, RAMP, CHECKED> {
        RrList {
            peers: self.peers(),
            tried: self.tried(),
            now_ds,
            counts,
        }
    }

    /// Points `pc` at the chosen peer and records the choice as round-robin does.
    #[inline]
    pub fn connect(&mut self, at: PeerCursor, pc: &mut ngx_peer_connection_t) {
        let now = now();
        // SAFETY: `at` comes from the current list, locked by the caller.
        let best = unsafe { &mut *at.peer.as_ptr() };
        if now - best.checked > best.fail_timeout {
            best.checked = now;
        }
        pc.sockaddr = best.sockaddr;
        pc.socklen = best.socklen;
        pc.name = &mut best.name;
        // nginx 1.29.6+: the chosen server's route, which `sticky` puts in
        // its cookie or learns for the session.
        #[cfg(all(ngx_sticky, not(feature = "stream")))]
        {
            pc.sid = &mut best.sid;
        }
        best.conns += 1;
        // Round-robin's free drops a reference to the peer it frees (nginx
        // 1.27.3+, as stock least_conn's get takes it).
        #[cfg(ngx_peer_refs)]
        {
            best.refs += 1;
        }
        let tried = self.tried();
        self.data_mut().current = best;
        // SAFETY: `at.index` is a position of the current list.
        unsafe { tried.insert(at.index) };
        self.tried_any = true;
    }

    /// Moves the request to the backup list, with nothing tried there yet.
    /// `false`: already there, or the upstream has none.
    pub fn switch_to_backup(&mut self) -> bool {
        let backup = self.peers().next;
        let Some(b) = NonNull::new(backup) else {
            return false;
        };
        self.data_mut().peers = backup;
        // SAFETY: the bitmap covers the larger list, and so this one.
        unsafe { self.tried().clear(b.as_ref().number) };
        self.tried_any = false;
        true
    }

    /// Whether the peer list changed (DNS, `resolve`) since the request
    /// began: its `tried` bitmap then no longer fits the list, and stock
    /// balancers give up the attempt as busy.
    #[inline]
    pub fn list_changed(&self) -> bool {
        #[cfg(ngx_resolve)]
        {
            version(self.peers()).is_some_and(|v| v != self.data().config)
        }
        #[cfg(not(ngx_resolve))]
        {
            false
        }
    }

    /// The list being picked from, to remember across a switch to backup.
    pub fn current(&self) -> CurrentList {
        CurrentList(NonNull::new(self.data().peers).expect("a request's peer list"))
    }
}

/// A list a request picked from.
#[derive(Clone, Copy, Debug)]
pub struct CurrentList(NonNull<RrPeers>);

impl CurrentList {
    /// Names the upstream in the error log for an attempt given up.
    pub fn name_for_errors(self, pc: &mut ngx_peer_connection_t) {
        // SAFETY: a list of the upstream (configuration pool or zone).
        pc.name = unsafe { self.0.as_ref() }.name;
    }

    /// No peer can take the request: names the upstream in the error log,
    /// as stock does (failures are left as they are).
    pub fn fail(self, pc: &mut ngx_peer_connection_t) {
        self.name_for_errors(pc);
    }
}

/// Round-robin's write lock on a list kept in an upstream `zone`; nothing
/// to lock otherwise. Released on drop.
pub struct PeersLock(NonNull<RrPeers>);

/// Locks `list` (a list of an upstream) as round-robin does for a pick.
pub fn lock(list: &RrPeers) -> PeersLock {
    PeersLock::new(NonNull::from(list))
}

impl PeersLock {
    fn new(mut peers: NonNull<RrPeers>) -> PeersLock {
        // SAFETY: a live list; its rwlock is used only with a zone (shpool).
        unsafe {
            let p = peers.as_mut();
            if !p.shpool.is_null() {
                ngx_rwlock_wlock(&mut p.rwlock);
            }
        }
        PeersLock(peers)
    }
}

impl Drop for PeersLock {
    fn drop(&mut self) {
        // SAFETY: locked in new().
        unsafe {
            let p = self.0.as_mut();
            if !p.shpool.is_null() {
                ngx_rwlock_unlock(&mut p.rwlock);
            }
        }
    }
}

/// Where a peer's count comes from when it is not round-robin's own.
pub trait SharedCount {
    fn count_hint(&self) -> Option<u32>;

    /// Slow start: `Some(elapsed, window)` (deciseconds) while the peer
    /// ramps up at `now` (`core::ramp`).
    fn ramp(&self, _now: u32) -> Option<(u32, u32)> {
        None
    }

    /// Health checks: the key's bits (`core::table::CHECK_OUT`,
    /// `CHECK_TUNED`); 0 for a peer with no key.
    fn check_bits(&self) -> u32 {
        0
    }

    /// Health checks: overrides and reported load (a key with `CHECK_TUNED`).
    fn tuned(&self) -> Tuned {
        Tuned::default()
    }

    /// `count_hint` and `check_bits` together (one look at the handle).
    #[inline(always)]
    fn count_and_bits(&self) -> (Option<u32>, u32) {
        (self.count_hint(), self.check_bits())
    }

    /// The peer's weight and `max_conns` as the pick compares them
    /// (`saturate`d), if kept here; `None`: read round-robin's.
    fn weight(&self) -> Option<u32> {
        None
    }

    fn max_conns(&self) -> Option<u32> {
        None
    }
}

/// The counts a pick compares, by peer position; `None`: round-robin's own
/// per-worker `conns`.
pub trait CountSource: Copy {
    fn count(&self, index: usize) -> Option<u32>;

    /// As `SharedCount::ramp`, by peer position.
    fn ramp(&self, _index: usize, _now: u32) -> Option<(u32, u32)> {
        None
    }

    /// As `SharedCount::check_bits`, by peer position.
    fn check_bits(&self, _index: usize) -> u32 {
        0
    }

    /// As `SharedCount::tuned`, by peer position.
    fn tuned(&self, _index: usize) -> Tuned {
        Tuned::default()
    }

    /// `count` and `check_bits` together, for a checked upstream's pick.
    #[inline(always)]
    fn count_and_bits(&self, index: usize) -> (Option<u32>, u32) {
        (self.count(index), self.check_bits(index))
    }

    /// As `SharedCount::weight` and `max_conns`, by peer position.
    fn weight(&self, _index: usize) -> Option<u32> {
        None
    }

    fn max_conns(&self, _index: usize) -> Option<u32> {
        None
    }
}

/// Counts matched one to one with the peers of a list.
pub struct Matched<'a, C>(&'a [C]);

impl<C> Clone for Matched<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Matched<'_, C> {}

impl<'a, C: SharedCount> Matched<'a, C> {
    /// `None` unless there is exactly one count per peer of `list` (a peer
    /// list that changed under us is counted per worker instead).
    pub fn new(counts: &'a [C], list: &RrPeers) -> Option<Self> {
        (counts.len() == list.number).then_some(Matched(counts))
    }

    /// The count of the peer at `index`.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&'a C> {
        self.0.get(index)
    }

    /// The count of the peer `c`, a cursor on the list `new` matched.
    #[inline(always)]
    pub fn of(&self, c: PeerCursor) -> &'a C {
        debug_assert!(c.index < self.0.len());
        // SAFETY: cursors number the list's peers from 0 below its
        // `number`, which `new` checked is our length.
        unsafe { self.0.get_unchecked(c.index) }
    }
}

impl<C: SharedCount> CountSource for Matched<'_, C> {
    #[inline]
    fn count(&self, index: usize) -> Option<u32> {
        debug_assert!(index < self.0.len());
        // SAFETY: cursors number the list's peers from 0 below its `number`,
        // which `new` checked is our length.
        unsafe { self.0.get_unchecked(index) }.count_hint()
    }

    #[inline]
    fn ramp(&self, index: usize, now: u32) -> Option<(u32, u32)> {
        self.0.get(index)?.ramp(now)
    }

    #[inline(always)]
    fn check_bits(&self, index: usize) -> u32 {
        self.0.get(index).map_or(0, SharedCount::check_bits)
    }

    #[cold]
    fn tuned(&self, index: usize) -> Tuned {
        self.0
            .get(index)
            .map(SharedCount::tuned)
            .unwrap_or_default()
    }

    #[inline(always)]
    fn count_and_bits(&self, index: usize) -> (Option<u32>, u32) {
        debug_assert!(index < self.0.len());
        // SAFETY: as in `count`.
        unsafe { self.0.get_unchecked(index) }.count_and_bits()
    }

    #[inline(always)]
    fn weight(&self, index: usize) -> Option<u32> {
        debug_assert!(index < self.0.len());
        // SAFETY: as in `count`.
        unsafe { self.0.get_unchecked(index) }.weight()
    }

    #[inline(always)]
    fn max_conns(&self, index: usize) -> Option<u32> {
        debug_assert!(index < self.0.len());
        // SAFETY: as in `count`.
        unsafe { self.0.get_unchecked(index) }.max_conns()
    }
}

/// Round-robin's own per-worker counts only.
#[derive(Clone, Copy)]
pub struct PerWorker;

impl CountSource for PerWorker {
    fn count(&self, _: usize) -> Option<u32> {
        None
    }
}

/// A round-robin list with our counts, for `core::select::choose`.
/// `RAMP`: some peer may be ramping up (slow start): the loads of those
/// follow `core::ramp` at `now_ds`.
///
/// `CHECKED`: the upstream has health checks: a peer whose key the checks
/// took out is skipped as `down`, and one they tuned is compared with its
/// overrides and reported load (`core::eligible`).
pub struct RrList<'a, S, const TRIED: bool, const RAMP: bool = false, const CHECKED: bool = false> {
    peers: &'a RrPeers,
    tried: Tried,
    now_ds: u32,
    counts: S,
}

impl<S, const TRIED: bool, const RAMP: bool, const CHECKED: bool>
    RrList<'_, S, TRIED, RAMP, CHECKED>
{
    fn peer(&self, c: PeerCursor) -> &RrPeer {
        // SAFETY: cursors come from this list, locked for this pick.
        unsafe { c.peer.as_ref() }
    }

    fn peer_mut(&mut self, mut c: PeerCursor) -> &mut RrPeer {
        // SAFETY: as in peer(); the worker is single-threaded.
        unsafe { c.peer.as_mut() }
    }
}

impl<S: CountSource, const TRIED: bool, const RAMP: bool, const CHECKED: bool>
    RrList<'_, S, TRIED, RAMP, CHECKED>
{
    /// The `max_conns` (0: none) a pick of `c` may count up to
    /// (`core::eligible::max_conns`).
    pub fn max_conns(&self, c: PeerCursor) -> u32 {
        eligible::max_conns(self, c)
    }

    /// Whether round-robin or this request puts the peer out (tried by this
    /// request, down, failed within `fail_timeout`): what a pick index
    /// cannot know.
    #[inline]
    pub fn is_out(&self, c: PeerCursor) -> bool {
        self.out(c, 0)
    }

    /// `load`, where a peer whose `down` holds only bits of `ignored` still
    /// counts as up (a draining server, for the sessions that stick to it).
    #[inline(always)]
    fn load_unless_down(&self, c: PeerCursor, ignored: ngx_uint_t) -> Option<Load> {
        eligible::load(self, c, self.out(c, ignored))
    }

    /// Whether round-robin puts the peer out: tried by this request, down
    /// (but for bits of `ignored`), or failed `max_fails` times within
    /// `fail_timeout`.
    #[inline(always)]
    fn out(&self, c: PeerCursor, ignored: ngx_uint_t) -> bool {
        let peer = self.peer(c);
        // SAFETY: `c.index` is a position of this list.
        (TRIED && unsafe { self.tried.contains(c.index) })
            || peer.down & !ignored != 0
            || (peer.max_fails != 0
                && peer.fails >= peer.max_fails
                // The clock is read only for a peer that failed.
                && now() - peer.checked <= peer.fail_timeout)
    }

    /// nginx 1.29.6+: the peer whose route (`sid`: `route=`, or the md5 of
    /// its address) is `hint`, the server a `sticky` session asks for, if it
    /// can take the request as round-robin's lookup by route decides: not
    /// tried, not down (draining is fine: it keeps its sessions), not failed,
    /// below `max_conns` (by our count).
    #[cfg(all(ngx_sticky, not(feature = "stream")))]
    pub fn find_route(&self, hint: &[u8]) -> Option<PeerCursor> {
        let mut at = self.first();
        while let Some(c) = at {
            if self.peer(c).sid.as_bytes() == hint {
                let draining = nginx_sys::NGX_HTTP_UPSTREAM_DRAINING as ngx_uint_t;
                return self.load_unless_down(c, draining).map(|_| c);
            }
            at = self.next(c);
        }
        None
    }
}

/// Our counts of the list's peers, as `core::eligible` asks about them.
impl<S: CountSource, const TRIED: bool, const RAMP: bool, const CHECKED: bool> eligible::Peers
    for RrList<'_, S, TRIED, RAMP, CHECKED>
{
    type At = PeerCursor;
    type MaxConns = u64;

    /// A pick while some peer ramps is a variant of its own (`RAMP`).
    const RAMP_OUT_OF_LINE: bool = true;

    #[inline(always)]
    fn check_bits(&self, c: PeerCursor) -> u32 {
        if CHECKED {
            self.counts.check_bits(c.index)
        } else {
            0
        }
    }

    /// Our count, or round-robin's per-worker one; a checked upstream
    /// reads the key's checks' bits with it (one look at the handle, one
    /// cache line).
    #[inline(always)]
    fn conns_and_bits(&self, c: PeerCursor) -> (u32, u32) {
        let (count, bits) = if CHECKED {
            self.counts.count_and_bits(c.index)
        } else {
            (self.counts.count(c.index), 0)
        };
        let conns = match count {
            Some(n) => n,
            None => self.peer(c).conns as u32,
        };
        (conns, bits)
    }

    /// The weight our counts keep, with no saturation to work out, or
    /// round-robin's.
    #[inline(always)]
    fn weight(&self, c: PeerCursor) -> u32 {
        match self.counts.weight(c.index) {
            Some(w) => w,
            None => saturate(self.peer(c).weight),
        }
    }

    /// Ours (saturated: past `u32::MAX` it finds full only a count that
    /// `acquire` refuses anyway), or round-robin's.
    #[inline(always)]
    fn configured_max_conns(&self, c: PeerCursor) -> u64 {
        match self.counts.max_conns(c.index) {
            Some(m) => u64::from(m),
            None => self.peer(c).max_conns as u64,
        }
    }

    #[inline(always)]
    fn ramp(&self, c: PeerCursor) -> Option<(u32, u32)> {
        if RAMP {
            self.counts.ramp(c.index, self.now_ds)
        } else {
            None
        }
    }

    fn tuned(&self, c: PeerCursor) -> Tuned {
        self.counts.tuned(c.index)
    }
}

#[cfg(not(all(ngx_sticky, not(feature = "stream"))))]
impl<S: CountSource, const TRIED: bool, const RAMP: bool, const CHECKED: bool>
    RrList<'_, S, TRIED, RAMP, CHECKED>
{
    /// No `sticky` before nginx 1.29.6 (nor in stream): no route to find.
    #[inline(always)]
    pub fn find_route(&self, _hint: &[u8]) -> Option<PeerCursor> {
        None
    }
}

/// The route (a server's `sid`) that `sticky` asks this attempt to go to
/// (nginx 1.29.6+, http): `pc->hint`, set by sticky's get around its call
/// of ours.
#[cfg(all(ngx_sticky, not(feature = "stream")))]
#[inline]
pub fn route_hint<'a>(pc: &ngx_peer_connection_t) -> Option<&'a [u8]> {
    // SAFETY: null, or a string sticky's get keeps (on its stack, or in the
    // request) until our get, which it calls, has returned: the pick is done
    // with it by then.
    let hint = unsafe { pc.hint.as_ref() }?;
    if hint.len == 0 || hint.data.is_null() {
        return None;
    }
    // SAFETY: as above; `len` bytes at `data`.
    Some(unsafe { core::slice::from_raw_parts(hint.data, hint.len) })
}

#[cfg(not(all(ngx_sticky, not(feature = "stream"))))]
#[inline(always)]
pub fn route_hint<'a>(_pc: &ngx_peer_connection_t) -> Option<&'a [u8]> {
    None
}

impl<S: CountSource, const TRIED: bool, const RAMP: bool, const CHECKED: bool> PeerList
    for RrList<'_, S, TRIED, RAMP, CHECKED>
{
    type Cursor = PeerCursor;

    fn size(&self) -> usize {
        self.peers.number
    }

    #[inline]
    fn first(&self) -> Option<PeerCursor> {
        NonNull::new(self.peers.peer).map(|peer| PeerCursor { peer, index: 0 })
    }

    #[inline]
    fn next(&self, c: PeerCursor) -> Option<PeerCursor> {
        NonNull::new(self.peer(c).next).map(|peer| PeerCursor {
            peer,
            index: c.index + 1,
        })
    }

    #[inline]
    fn load(&self, c: PeerCursor) -> Option<Load> {
        self.load_unless_down(c, 0)
    }

    #[inline(always)]
    fn step_weight(&mut self, c: PeerCursor) -> (i64, i64) {
        let peer = self.peer_mut(c);
        peer.current_weight += peer.effective_weight;
        (peer.effective_weight as i64, peer.weight as i64)
    }

    fn creep(&mut self, c: PeerCursor) {
        let peer = self.peer_mut(c);
        if peer.effective_weight < peer.weight {
            peer.effective_weight += 1;
        }
    }

    fn unstep_weight(&mut self, c: PeerCursor) {
        let peer = self.peer_mut(c);
        peer.current_weight -= peer.effective_weight;
    }

    fn current_weight(&self, c: PeerCursor) -> i64 {
        self.peer(c).current_weight as i64
    }

    fn lower_current_weight(&mut self, c: PeerCursor, by: i64) {
        self.peer_mut(c).current_weight -= by as ngx_int_t;
    }
}

/// An upstream's primary peers as round-robin keeps them (in its `zone`
/// once that is set up, so looked up each time), for a look at their
/// failures outside any request (rebalancing pauses meanwhile).
#[derive(Clone, Copy, Debug)]
pub struct Failures(NonNull<UpstreamSrvConf>);

impl Failures {
    pub fn new(us: &UpstreamSrvConf) -> Failures {
        Failures(NonNull::from(us))
    }

    /// Whether some primary peer is failing at second `now`, as this worker
    /// (or with an upstream `zone`, every worker of its generation) sees it:
    /// it failed `max_fails` times, and was last tried (round-robin's
    /// `checked`) lately. Lately is `fail_timeout` in a worker that exits
    /// (it makes no connection, so its view of the server never changes
    /// again: it forgets as round-robin would retry), and three times that
    /// (at least 30 s) in a current worker, whose connections retry the
    /// server every `fail_timeout` and clear its failures once one works:
    /// a server that stays dead stays failing, not just for `fail_timeout`
    /// after each try.
    pub fn any(&self, now: time_t) -> bool {
        // SAFETY: nginx's flag, read in its event loop.
        let exiting = unsafe { ngx_exiting != 0 };
        // SAFETY: the upstream's configuration, which lives as long as the
        // configuration that registered it (the caller's); its round-robin
        // init succeeded.
        let (primary, _) = unsafe { lists(self.0.as_ref().peer.data) };
        let Some(list) = primary else {
            return false;
        };
        let _lock = lock(list);
        each_peer(list).any(|p| {
            let lately = if exiting {
                p.fail_timeout
            } else {
                (3 * p.fail_timeout).max(30)
            };
            p.max_fails != 0 && p.fails >= p.max_fails && now - p.checked <= lately
        })
    }
}
