//! The balancer nginx calls: `init_upstream` per upstream at configuration
//! time, `init_peer` per request, then `get`/`free` per attempt.
//!
//! Like stock least_conn it sits on round-robin's peer lists and per-request
//! data (tried bitmap, fails, checked), and chains round-robin's `free`, so
//! `max_fails`/`fail_timeout` and `keepalive` work as they do there.

use core::ffi::c_void;
use core::ptr::NonNull;

use nginx_sys::{
    ngx_cached_time, ngx_conf_t, ngx_http_request_t, ngx_http_upstream_free_round_robin_peer,
    ngx_http_upstream_init_round_robin, ngx_http_upstream_init_round_robin_peer,
    ngx_http_upstream_rr_peer_data_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t, ngx_rwlock_unlock,
    ngx_rwlock_wlock, ngx_uint_t, time_t, NGX_BUSY, NGX_ERROR, NGX_LOG_EMERG, NGX_OK,
};
use ngx::core::Pool;
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_conf_log_error;

use crate::counters::{Held, PeerCounter, UpstreamCounters};
use crate::select::{choose, Load, PeerList};
use crate::Module;

/// Per-request state, in the request pool.
#[derive(Clone, Copy)]
struct PeerData {
    rrp: *mut ngx_http_upstream_rr_peer_data_t,
    counters: *mut UpstreamCounters,
    on_backup: bool,
    held: Held,
}

/// `peer.init_upstream`: round-robin's lists, plus our keys for them.
pub extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx passes the configuration and the upstream being set up.
    let (cf, us) = unsafe { (&mut *cf, &mut *us) };
    if unsafe { ngx_http_upstream_init_round_robin(cf, us) } != NGX_OK as ngx_int_t {
        return NGX_ERROR as ngx_int_t;
    }
    us.peer.init = Some(init_peer);
    let (Some(mcf), Some(scf)) = (Module::main_conf_mut(cf), Module::server_conf_mut(us)) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: round-robin init just filled peer.data and host.
    let counters =
        unsafe { UpstreamCounters::new(crate::zone::str_bytes(&us.host), us.peer.data.cast()) };
    let counters = match counters {
        Ok(c) => c,
        Err(e) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "least_conn_persistent: {}", e);
            return NGX_ERROR as ngx_int_t;
        }
    };
    scf.counters = mcf.register(counters);
    NGX_OK as ngx_int_t
}

/// `peer.init`, per request.
extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    if unsafe { ngx_http_upstream_init_round_robin_peer(r, us) } != NGX_OK as ngx_int_t {
        return NGX_ERROR as ngx_int_t;
    }
    // SAFETY: nginx passes a live request with an upstream, and the upstream
    // whose init_upstream set us up.
    let (r, us) = unsafe { (&mut *r, &*us) };
    let Some(scf) = Module::server_conf(us) else {
        return NGX_ERROR as ngx_int_t;
    };
    let pool = unsafe { Pool::from_ngx_pool(r.pool) };
    let pd = pool.alloc_type::<PeerData>();
    let Some(pd) = NonNull::new(pd) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: `r.upstream` is set before peer.init; `pd` is fresh pool memory.
    unsafe {
        let u = &mut *r.upstream;
        pd.as_ptr().write(PeerData {
            rrp: u.peer.data.cast(),
            counters: scf.counters,
            on_backup: false,
            held: Held::Nothing,
        });
        u.peer.data = pd.as_ptr().cast();
        u.peer.get = Some(get_peer);
        u.peer.free = Some(free_peer);
        #[cfg(ngx_feature = "http_ssl")]
        {
            u.peer.set_session = Some(set_session);
            u.peer.save_session = Some(save_session);
        }
    }
    NGX_OK as ngx_int_t
}

/// Round-robin's lock on peers kept in an upstream `zone`; a no-op otherwise.
struct PeersLock(*mut ngx_http_upstream_rr_peers_t);

impl PeersLock {
    fn new(peers: *mut ngx_http_upstream_rr_peers_t) -> PeersLock {
        // SAFETY: live peer list; rwlock is only used with a zone (shpool).
        unsafe {
            if !(*peers).shpool.is_null() {
                ngx_rwlock_wlock(&mut (*peers).rwlock);
            }
        }
        PeersLock(peers)
    }
}

impl Drop for PeersLock {
    fn drop(&mut self) {
        // SAFETY: locked in new().
        unsafe {
            if !(*self.0).shpool.is_null() {
                ngx_rwlock_unlock(&mut (*self.0).rwlock);
            }
        }
    }
}

/// nginx's peer list seen through `PeerList`, with our counts.
struct Peers<'a> {
    peers: &'a ngx_http_upstream_rr_peers_t,
    tried: *mut usize,
    counters: &'a [PeerCounter],
    now: time_t,
}

type Cursor = (NonNull<ngx_http_upstream_rr_peer_t>, usize);

const BITS: usize = usize::BITS as usize;

impl Peers<'_> {
    fn tried(&self, i: usize) -> bool {
        // SAFETY: round-robin sized the bitmap for `number` peers.
        unsafe { *self.tried.add(i / BITS) & (1 << (i % BITS)) != 0 }
    }

    fn peer(&self, c: Cursor) -> &ngx_http_upstream_rr_peer_t {
        // SAFETY: cursors come from this list, locked for this pick.
        unsafe { c.0.as_ref() }
    }

    fn peer_mut(&mut self, mut c: Cursor) -> &mut ngx_http_upstream_rr_peer_t {
        // SAFETY: as in peer().
        unsafe { c.0.as_mut() }
    }
}

impl PeerList for Peers<'_> {
    type Cursor = Cursor;

    fn size(&self) -> usize {
        self.peers.number
    }

    fn first(&self) -> Option<Cursor> {
        NonNull::new(self.peers.peer).map(|p| (p, 0))
    }

    fn next(&self, c: Cursor) -> Option<Cursor> {
        NonNull::new(self.peer(c).next).map(|p| (p, c.1 + 1))
    }

    fn load(&self, c: Cursor) -> Option<Load> {
        let peer = self.peer(c);
        if self.tried(c.1) || peer.down != 0 {
            return None;
        }
        if peer.max_fails != 0
            && peer.fails >= peer.max_fails
            && self.now - peer.checked <= peer.fail_timeout
        {
            return None;
        }
        let conns = self
            .counters
            .get(c.1)
            .map_or(peer.conns as u32, |pc| pc.count(peer));
        if peer.max_conns != 0 && conns as usize >= peer.max_conns {
            return None;
        }
        // Weights fit in u32: counters::UpstreamCounters::new checked.
        Some(Load {
            conns,
            weight: peer.weight as u32,
        })
    }

    fn step_weight(&mut self, c: Cursor) -> i64 {
        let peer = self.peer_mut(c);
        let e = peer.effective_weight;
        peer.current_weight += e;
        if peer.effective_weight < peer.weight {
            peer.effective_weight += 1;
        }
        e as i64
    }

    fn current_weight(&self, c: Cursor) -> i64 {
        self.peer(c).current_weight as i64
    }

    fn lower_current_weight(&mut self, c: Cursor, by: i64) {
        self.peer_mut(c).current_weight -= by as ngx_int_t;
    }
}

extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes the connection being set up and the data init_peer
    // installed; the request (and so both) outlives this call.
    let (pc, pd) = unsafe { (&mut *pc, &mut *data.cast::<PeerData>()) };
    pc.set_cached(0);
    pc.connection = core::ptr::null_mut();
    get(pc, pd)
}

fn get(pc: &mut ngx_peer_connection_t, pd: &mut PeerData) -> ngx_int_t {
    // SAFETY: round-robin's per-request data and our counters live as long
    // as the request and the cycle.
    let (rrp, counters) = unsafe { (&mut *pd.rrp, &mut *pd.counters) };
    let peers_ptr = rrp.peers;
    let lock = PeersLock::new(peers_ptr);
    // SAFETY: locked above.
    let peers = unsafe { &*peers_ptr };
    let now = unsafe { (*ngx_cached_time).sec };

    if let Some((best, index)) = pick(peers, rrp, counters, pd.on_backup, now, &mut pd.held) {
        // SAFETY: `best` is a peer of the locked list.
        let best = unsafe { &mut *best.as_ptr() };
        if now - best.checked > best.fail_timeout {
            best.checked = now;
        }
        pc.sockaddr = best.sockaddr;
        pc.socklen = best.socklen;
        pc.name = &mut best.name;
        best.conns += 1;
        rrp.current = best;
        // SAFETY: bitmap sized for this list.
        unsafe { *rrp.tried.add(index / BITS) |= 1 << (index % BITS) };
        return NGX_OK as ngx_int_t;
    }

    drop(lock);
    no_primary(pc, pd, peers_ptr)
}

/// No peer of the current list can take the request: try the backup list
/// once, else fail as stock does. Kept out of line: the pick stays small.
#[cold]
#[inline(never)]
fn no_primary(
    pc: &mut ngx_peer_connection_t,
    pd: &mut PeerData,
    peers_ptr: *mut ngx_http_upstream_rr_peers_t,
) -> ngx_int_t {
    // SAFETY: as in get.
    let (rrp, peers) = unsafe { (&mut *pd.rrp, &*peers_ptr) };
    if !pd.on_backup && !peers.next.is_null() {
        pd.on_backup = true;
        rrp.peers = peers.next;
        // SAFETY: round-robin sized the bitmap for the larger of the lists.
        unsafe {
            let n = (*rrp.peers).number.div_ceil(BITS);
            core::ptr::write_bytes(rrp.tried, 0, n);
        }
        let rc = get(pc, pd);
        if rc != NGX_BUSY as ngx_int_t {
            return rc;
        }
    }
    let _lock = PeersLock::new(peers_ptr);
    all_failed(peers, pc);
    NGX_BUSY as ngx_int_t
}

/// Chooses and counts a peer. A choice can lose a race for the last
/// `max_conns` place to another worker; choosing again then sees it full.
fn pick(
    peers: &ngx_http_upstream_rr_peers_t,
    rrp: &ngx_http_upstream_rr_peer_data_t,
    counters: &mut UpstreamCounters,
    on_backup: bool,
    now: time_t,
    held: &mut Held,
) -> Option<Cursor> {
    let (list, link) = counters.split(on_backup);
    // Keys must match peers one to one; if they do not (a peer list changed
    // under us), count every peer per worker rather than misattribute.
    let matched = list.len() == peers.number;
    for _ in 0..=peers.number {
        let mut view = Peers {
            peers,
            tried: rrp.tried,
            counters: if matched { list } else { &[] },
            now,
        };
        let best = choose(&mut view)?;
        let Some(pc) = list.get_mut(best.1).filter(|_| matched) else {
            *held = Held::Nothing;
            return Some(best);
        };
        // SAFETY: `best` is a live peer of the locked list.
        let max_conns = unsafe { (*best.0.as_ptr()).max_conns } as u32;
        if pc.acquire(link, max_conns, held) {
            return Some(best);
        }
    }
    None
}

/// Stock's "mark them as live for quick recovery".
fn all_failed(peers: &ngx_http_upstream_rr_peers_t, pc: &mut ngx_peer_connection_t) {
    let mut p = peers.peer;
    // SAFETY: the caller holds the list's lock.
    unsafe {
        while let Some(peer) = p.as_mut() {
            peer.fails = 0;
            p = peer.next;
        }
    }
    pc.name = peers.name;
}

extern "C" fn free_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void, state: ngx_uint_t) {
    // SAFETY: as in get_peer.
    let pd = unsafe { &mut *data.cast::<PeerData>() };
    let held = core::mem::take(&mut pd.held);
    // SAFETY: counters live as long as the cycle; log is the connection's.
    unsafe { (*pd.counters).release(held, (*pc).log) };
    unsafe { ngx_http_upstream_free_round_robin_peer(pc, pd.rrp.cast(), state) };
}

#[cfg(ngx_feature = "http_ssl")]
extern "C" fn set_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: round-robin's session hooks take its own per-request data.
    unsafe {
        let pd = &*data.cast::<PeerData>();
        nginx_sys::ngx_http_upstream_set_round_robin_peer_session(pc, pd.rrp.cast())
    }
}

#[cfg(ngx_feature = "http_ssl")]
extern "C" fn save_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: as in set_session.
    unsafe {
        let pd = &*data.cast::<PeerData>();
        nginx_sys::ngx_http_upstream_save_round_robin_peer_session(pc, pd.rrp.cast())
    }
}
