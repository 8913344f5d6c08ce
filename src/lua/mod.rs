//! The C ABI for Lua balancers (`include/least_conn_persistent.h`): the
//! same shared counters, reached through LuaJIT's FFI.
//!
//! Each worker keeps its own table of Lua upstreams (declared by its Lua
//! code) and of outstanding picks (tokens); the counts live in the zone as
//! Lua keys, attributed to the worker's record like every other count. A
//! worker holds at most `tokens::MAX_OUTSTANDING` (2^20 - 1) picks
//! unreleased, the index space of a token that a Lua number holds exactly
//! (`core/tokens.rs`); past that `lcp_pick` answers `ERR_TOO_MANY_PICKS`
//! and counts nothing.
//!
//! A Lua upstream has no health checks of its own: it follows those of an
//! nginx upstream (`lcp_follow_checks`, ABI 3), each of its servers the key
//! of that upstream with the same address, looked up once. Its picks then
//! skip a server that key's checks took out and compare a tuned one as
//! nginx's picks do, a reported load against the Lua key's own count
//! (`array_list::Followed`); an upstream that follows nothing reads
//! no checks (`array_list::Unchecked`).
//!
//! The entry points below are the only `extern "C"` code here: each
//! validates what Lua passed, turns pointers into slices once, and answers
//! a code.

use core::cell::RefCell;
use core::ffi::c_char;
use std::collections::{HashMap, HashSet};

use crate::core::address;
use crate::core::array_list::{ArrayList, Checks, Followed, RoundRobinState, Seen, Unchecked};
use crate::core::health::State as Health;
use crate::core::select::choose;
use crate::core::table::{Meta, SlotRef};
use crate::core::tokens::{Redeem, Tokens};
use crate::ngx::log::Log;
use crate::ngx::peers::now;
use crate::shared::registry::{DeclareError, Held, List, PeerCounter, Registry, UpstreamCounters};
use crate::shared::workers;

pub const ABI_VERSION: i32 = 3;

const OK: i32 = 0;
const ERR_ARG: i32 = -1;
const ERR_NO_ZONE: i32 = -2;
const ERR_UNKNOWN: i32 = -3;
const ERR_ZONE_FULL: i32 = -4;
const ERR_NO_PEER: i32 = -5;
const ERR_TOKEN: i32 = -6;
const ERR_TOO_MANY_PICKS: i32 = -7;
const ALREADY: i32 = 1;

/// `lcp_health`'s answers.
const HEALTH_UNCHECKED: i32 = 0;
const HEALTH_CHECKING: i32 = 1;
const HEALTH_UP: i32 = 2;
const HEALTH_DOWN: i32 = 3;
const HEALTH_DRAIN: i32 = 4;

const MAX_ID: usize = 128;
/// An nginx upstream's name, for `lcp_follow_checks`.
const MAX_NAME: usize = 1024;
const MAX_ADDR: usize = 255;
const MAX_SERVERS: usize = 1024;
const MAX_WEIGHT: u32 = 1_000_000;

/// `lcp_server_t`.
#[repr(C)]
pub struct Server {
    addr: *const c_char,
    addr_len: usize,
    weight: u32,
    max_conns: u32,
}

struct LuaUpstream {
    counters: UpstreamCounters,
    rr: Vec<RoundRobinState>,
    limits: Vec<(u32, u32)>,
    follows: Option<Follows>,
}

/// The checks a Lua upstream follows (`lcp_follow_checks`).
struct Follows {
    /// The nginx upstream's name: a declaration again links the new list.
    upstream: Box<[u8]>,
    /// By server position: the nginx upstream's key of the same address
    /// (`None`: no server of that address, the server goes unchecked).
    keys: Vec<Option<SlotRef>>,
    /// By server position: the Lua key's count when this worker's picks
    /// first read the server's last load report (`array_list::Followed`).
    seen: Vec<Seen>,
}

/// What a token stands for.
#[derive(Clone)]
struct Pick {
    upstream: usize,
    held: Held,
}

#[derive(Default)]
struct State {
    upstreams: Vec<LuaUpstream>,
    by_id: HashMap<Box<[u8]>, usize>,
    picks: Tokens<Pick>,
}

impl State {
    /// The Lua upstream a handle names, if it is one.
    fn upstream(&self, handle: i32) -> Option<&LuaUpstream> {
        self.upstreams.get(usize::try_from(handle).ok()?)
    }

    fn upstream_mut(&mut self, handle: i32) -> Option<&mut LuaUpstream> {
        self.upstreams.get_mut(usize::try_from(handle).ok()?)
    }
}

thread_local! {
    // A worker runs Lua on one thread; this is that worker's table.
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// `len` bytes at `ptr`, or `None` for NULL or a length out of 1..=max.
///
/// # Safety
/// A non-null `ptr` points at `len` readable bytes (the caller's contract).
unsafe fn bytes<'a>(ptr: *const c_char, len: usize, max: usize) -> Option<&'a [u8]> {
    if ptr.is_null() || len == 0 || len > max {
        return None;
    }
    // SAFETY: the function's contract.
    Some(unsafe { core::slice::from_raw_parts(ptr.cast(), len) })
}

fn declare_error(e: DeclareError) -> i32 {
    match e {
        DeclareError::NoZone => ERR_NO_ZONE,
        DeclareError::Full => ERR_ZONE_FULL,
        DeclareError::Conflict => ERR_ARG,
    }
}

#[no_mangle]
pub extern "C" fn lcp_abi_version() -> i32 {
    ABI_VERSION
}

#[no_mangle]
pub extern "C" fn lcp_declare(
    id: *const c_char,
    id_len: usize,
    servers: *const Server,
    n: usize,
) -> i32 {
    lcp_declare_slow_start(id, id_len, servers, n, 0)
}

/// `lcp_declare`, with slow start (ABI 2): servers this declaration adds
/// (or brings back) ramp up over `slow_start` seconds (0: none).
#[no_mangle]
pub extern "C" fn lcp_declare_slow_start(
    id: *const c_char,
    id_len: usize,
    servers: *const Server,
    n: usize,
    slow_start: u32,
) -> i32 {
    // SAFETY: LuaJIT passes its string's bytes and length.
    let Some(id) = (unsafe { bytes(id, id_len, MAX_ID) }) else {
        return ERR_ARG;
    };
    if servers.is_null() || n == 0 || n > MAX_SERVERS {
        return ERR_ARG;
    }
    let Some(slow_start) = slow_start.checked_mul(10) else {
        return ERR_ARG;
    };
    // SAFETY: non-null, `n` elements (the caller's contract: an FFI array).
    let servers = unsafe { core::slice::from_raw_parts(servers, n) };
    let mut list = Vec::with_capacity(n);
    for s in servers {
        // SAFETY: each address is an FFI string with its length.
        let Some(addr) = (unsafe { bytes(s.addr, s.addr_len, MAX_ADDR) }) else {
            return ERR_ARG;
        };
        // The Lua library checks the same rules (and says which failed);
        // callers of the C ABI may not have.
        if address::parse(addr).is_err() {
            return ERR_ARG;
        }
        if s.weight == 0 || s.weight > MAX_WEIGHT {
            return ERR_ARG;
        }
        let meta = Meta {
            weight: s.weight,
            max_conns: s.max_conns,
            flags: 0,
            slow_start,
        };
        list.push((addr, meta));
    }
    match declare(id, &list, slow_start) {
        Ok(handle) => handle,
        Err(code) => code,
    }
}

/// Checks the declaration and stores it; the upstream's handle.
fn declare(id: &[u8], servers: &[(&[u8], Meta)], slow_start: u32) -> Result<i32, i32> {
    // Upstream names cannot hold ':', the key's separator.
    if id.contains(&b':') {
        return Err(ERR_ARG);
    }
    // Distinct addresses, checked in one pass (up to 1024 servers).
    let mut seen = HashSet::with_capacity(servers.len());
    if !servers.iter().all(|(addr, _)| seen.insert(*addr)) {
        return Err(ERR_ARG);
    }
    let registry = workers::registry().ok_or(ERR_NO_ZONE)?;
    STATE.with_borrow_mut(|st| {
        let existing = st.by_id.get(id).copied();
        let previous = existing.map(|i| &st.upstreams[i].counters);
        let counters = registry
            .declare_lua(id, servers, previous, now() as u32, slow_start)
            .map_err(declare_error)?;
        let follows = existing
            .and_then(|i| st.upstreams[i].follows.as_ref())
            .and_then(|f| follow(registry, &f.upstream, &counters).ok());
        let up = LuaUpstream {
            counters,
            rr: servers
                .iter()
                .map(|(_, m)| RoundRobinState::new(m.weight))
                .collect(),
            limits: servers
                .iter()
                .map(|(_, m)| (m.weight, m.max_conns))
                .collect(),
            follows,
        };
        let handle = match existing {
            Some(i) => {
                st.upstreams[i] = up;
                i
            }
            None => {
                st.upstreams.push(up);
                st.by_id.insert(id.into(), st.upstreams.len() - 1);
                st.upstreams.len() - 1
            }
        };
        i32::try_from(handle).map_err(|_| ERR_ARG)
    })
}

#[no_mangle]
pub extern "C" fn lcp_pick(
    handle: i32,
    skip: *const u64,
    skip_words: usize,
    token: *mut u64,
) -> i32 {
    if token.is_null() || (skip.is_null() && skip_words != 0) || skip_words > MAX_SERVERS / 64 {
        return ERR_ARG;
    }
    let skip = if skip_words == 0 {
        &[][..]
    } else {
        // SAFETY: non-null, `skip_words` words (the caller's contract).
        unsafe { core::slice::from_raw_parts(skip, skip_words) }
    };
    let r = STATE.with_borrow_mut(|st| pick(st, handle, skip));
    match r {
        Ok((index, t)) => {
            // SAFETY: non-null (checked), the caller's uint64_t.
            unsafe { token.write(t) };
            index
        }
        Err(code) => code,
    }
}

fn pick(st: &mut State, handle: i32, skip: &[u64]) -> Result<(i32, u64), i32> {
    // The worker is exiting and gave back what it held (a later module's
    // exit hook): nothing more is counted.
    if crate::core::table::stopped() {
        return Err(ERR_NO_ZONE);
    }
    // No token to hand out (`tokens::MAX_OUTSTANDING` picks unreleased):
    // refused before anything is counted.
    if st.picks.is_full() {
        return Err(ERR_TOO_MANY_PICKS);
    }
    let index = usize::try_from(handle).map_err(|_| ERR_UNKNOWN)?;
    let up = st.upstreams.get_mut(index).ok_or(ERR_UNKNOWN)?;
    let ramping = up.counters.ramping_now();
    let counters = up.counters.list(List::Primary);
    // Two instances of the same pick: one that reads no checks at all.
    let chosen = match &up.follows {
        None => choose_and_count(
            ArrayList {
                rr: &mut up.rr,
                limits: &up.limits,
                skip,
                count: |i: usize| counters[i].count_hint_or_local(),
                ramp: |i: usize| ramping.and_then(|now| counters[i].ramp_at(now)),
                checks: &Unchecked,
            },
            &counters,
            &up.counters,
        ),
        Some(f) => choose_and_count(
            ArrayList {
                rr: &mut up.rr,
                limits: &up.limits,
                skip,
                count: |i: usize| counters[i].count_hint_or_local(),
                ramp: |i: usize| ramping.and_then(|now| counters[i].ramp_at(now)),
                checks: &Followed {
                    keys: &f.keys,
                    seen: &f.seen,
                },
            },
            &counters,
            &up.counters,
        ),
    };
    // Every server out (skipped, full, or taken out by the checks it
    // follows): as when all are down.
    let (best, held) = chosen.ok_or(ERR_NO_PEER)?;
    counters[best].touch(now() as u32);
    let t = st.picks.issue(Pick {
        upstream: index,
        held,
    });
    match t {
        Ok(t) => Ok((best as i32, t)),
        // Not full above, and nothing issued since: cannot happen, but a
        // pick without a token must not stay counted.
        Err(p) => {
            up.counters.release(p.held, Log::cycle());
            Err(ERR_TOO_MANY_PICKS)
        }
    }
}

/// Chooses a server of `list` and counts a connection on it.
fn choose_and_count<F, R, K>(
    mut list: ArrayList<'_, F, R, K>,
    counters: &[PeerCounter],
    up: &UpstreamCounters,
) -> Option<(usize, Held)>
where
    F: Fn(usize) -> u32,
    R: Fn(usize) -> Option<(u32, u32)>,
    K: Checks + ?Sized,
{
    // A choice can lose the last max_conns place to another worker: choose
    // again, which then sees it full.
    for _ in 0..=counters.len() {
        let best = choose(&mut list)?;
        if let Some(held) = up.acquire(&counters[best], list.max_conns(best)) {
            return Some((best, held));
        }
    }
    None
}

/// Picks this worker's Lua code has not released.
pub fn unreleased_picks() -> usize {
    STATE.with_borrow(|st| st.picks.outstanding())
}

#[no_mangle]
pub extern "C" fn lcp_release(token: u64) -> i32 {
    STATE.with_borrow_mut(|st| match st.picks.redeem(token) {
        Redeem::Taken(p) => {
            if let Some(up) = st.upstreams.get(p.upstream) {
                up.counters.release(p.held, Log::cycle());
            }
            OK
        }
        Redeem::Already => ALREADY,
        Redeem::Invalid => ERR_TOKEN,
    })
}

#[no_mangle]
pub extern "C" fn lcp_count(handle: i32, index: usize) -> i64 {
    STATE.with_borrow(|st| {
        let Some(up) = st.upstream(handle) else {
            return i64::from(ERR_UNKNOWN);
        };
        match up.counters.list(List::Primary).get(index) {
            Some(pc) => pc.count().map_or(i64::from(ERR_UNKNOWN), i64::from),
            None => i64::from(ERR_ARG),
        }
    })
}

/// Links each server of Lua upstream `handle` to the key of the same
/// address of nginx upstream `upstream` (ABI 3): its picks then follow that
/// key's health checks, and `lcp_health` tells what they found.
#[no_mangle]
pub extern "C" fn lcp_follow_checks(handle: i32, upstream: *const c_char, len: usize) -> i32 {
    // SAFETY: LuaJIT passes its string's bytes and length.
    let Some(name) = (unsafe { bytes(upstream, len, MAX_NAME) }) else {
        return ERR_ARG;
    };
    let Some(registry) = workers::registry() else {
        return ERR_NO_ZONE;
    };
    STATE.with_borrow_mut(|st| {
        let Some(up) = st.upstream_mut(handle) else {
            return ERR_UNKNOWN;
        };
        match follow(registry, name, &up.counters) {
            Ok(follows) => {
                up.follows = Some(follows);
                OK
            }
            Err(code) => code,
        }
    })
}

/// The keys of nginx upstream `name` that the servers of Lua upstream `up`
/// follow, by address. `ERR_UNKNOWN`: no `least_conn_persistent` upstream
/// of that name in this configuration; `ERR_ARG`: it has no checks.
fn follow(registry: &Registry, name: &[u8], up: &UpstreamCounters) -> Result<Follows, i32> {
    let checked = registry
        .upstreams()
        .find(|u| &*u.name == name)
        .ok_or(ERR_UNKNOWN)?;
    if checked.check.is_none() {
        return Err(ERR_ARG);
    }
    let link = registry.zone().ok_or(ERR_NO_ZONE)?;
    // The nginx upstream's key for each Lua server, before the lock (its
    // lists are this worker's); found in the zone in one hold of it.
    let wanted: Vec<Option<Box<[u8]>>> = up
        .list(List::Primary)
        .iter()
        .map(|lua| key_of_address(checked, lua.server()))
        .collect();
    let mut keys = Vec::with_capacity(wanted.len());
    let locked = link.lock();
    for key in &wanted {
        let found = key.as_ref().and_then(|k| link.table.find(&locked, k));
        // Its checks then read any load the server reports, for us.
        if let Some(k) = found {
            link.table.follow_health(&locked, k);
        }
        keys.push(found);
    }
    drop(locked);
    Ok(Follows {
        upstream: name.into(),
        seen: keys.iter().map(|_| Seen::default()).collect(),
        keys,
    })
}

/// The key of `checked`'s server at `address` (primary or backup), if any.
fn key_of_address(checked: &UpstreamCounters, address: &[u8]) -> Option<Box<[u8]>> {
    [List::Primary, List::Backup].into_iter().find_map(|list| {
        checked
            .list(list)
            .iter()
            .find(|pc| pc.server() == address)
            .map(|pc| pc.key.clone())
    })
}

/// What the checks that server `index` of Lua upstream `handle` follows
/// found (ABI 3): `LCP_HEALTH_*`, or an error.
#[no_mangle]
pub extern "C" fn lcp_health(handle: i32, index: usize) -> i32 {
    STATE.with_borrow(|st| {
        let Some(up) = st.upstream(handle) else {
            return ERR_UNKNOWN;
        };
        if index >= up.limits.len() {
            return ERR_ARG;
        }
        let key = up.follows.as_ref().and_then(|f| f.keys[index]);
        match key.and_then(|k| k.health_state()) {
            None | Some((Health::Unchecked, false)) => HEALTH_UNCHECKED,
            Some((Health::Down, _)) => HEALTH_DOWN,
            Some((_, true)) => HEALTH_DRAIN,
            Some((Health::Checking, false)) => HEALTH_CHECKING,
            Some((Health::Up, false)) => HEALTH_UP,
        }
    })
}
