//! One configuration's view of the shared counters: a key and a handle per
//! peer, in the order of nginx's peer lists, built once at configuration
//! time so that a pick builds no strings and searches nothing.

use nginx_sys::{
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, NGX_LOG_ERR, NGX_LOG_NOTICE,
};
use ngx::ngx_log_error;

use crate::key;
use crate::table::{Acquire, Meta, Release, SlotRef, Table, FLAG_BACKUP, FLAG_DOWN, FLAG_DRAINING};
use crate::zone::{str_bytes, Zone};

#[derive(Debug)]
pub struct PeerCounter {
    pub key: Box<[u8]>,
    pub upstream_len: usize,
    pub meta: Meta,
    /// `None`: no zone, or the zone was full; count per worker instead.
    pub handle: Option<SlotRef>,
    /// This worker's connections to a peer without a handle (status page).
    pub local: u32,
}

#[derive(Debug, Default)]
pub struct UpstreamCounters {
    pub name: Box<[u8]>,
    pub primary: Vec<PeerCounter>,
    pub backup: Vec<PeerCounter>,
    link: Option<ZoneLink>,
}

/// Where this configuration's keys live, and the epoch that stamped them.
#[derive(Clone, Copy, Debug)]
pub struct ZoneLink {
    zone: Zone,
    table: &'static Table,
    epoch: u32,
}

/// What a pick took, so that `free` gives back exactly that.
#[derive(Clone, Copy, Debug, Default)]
pub enum Held {
    #[default]
    Nothing,
    Shared(SlotRef),
    Local(*mut PeerCounter),
}

impl PeerCounter {
    fn new(upstream: &[u8], peer: &ngx_http_upstream_rr_peer_t, flags: u32) -> PeerCounter {
        // SAFETY: the peer's name lives in the configuration pool.
        let server = unsafe { str_bytes(&peer.name) };
        let mut k = vec![0; key::key_len(upstream, server)];
        key::write_key(&mut k, upstream, server);
        PeerCounter {
            key: k.into_boxed_slice(),
            upstream_len: upstream.len(),
            meta: Meta {
                weight: peer.weight as u32,
                max_conns: peer.max_conns as u32,
                flags: flags | if peer.down != 0 { FLAG_DOWN } else { 0 },
            },
            handle: None,
            local: 0,
        }
    }

    /// Counts a connection and records it in `held`. `false`: at
    /// `max_conns` (another worker may just have taken the last place),
    /// pick again.
    #[inline]
    pub fn acquire(&mut self, link: Option<&ZoneLink>, max_conns: u32, held: &mut Held) -> bool {
        if let Some(h) = self.handle {
            match h.acquire(max_conns) {
                Acquire::Taken => {
                    *held = Held::Shared(h);
                    return true;
                }
                Acquire::AtLimit => return false,
                Acquire::Stale => {}
            }
        }
        self.acquire_slow(link, max_conns, held)
    }

    /// No handle (per-worker counting), or a stale one to look up again.
    #[cold]
    #[inline(never)]
    fn acquire_slow(&mut self, link: Option<&ZoneLink>, max_conns: u32, held: &mut Held) -> bool {
        if self.handle.is_some() {
            self.handle = self.refresh(link);
        }
        let Some(h) = self.handle else {
            self.local += 1;
            *held = Held::Local(self);
            return true;
        };
        // A key just looked up again cannot be stale again: like full.
        let taken = h.acquire(max_conns) == Acquire::Taken;
        if taken {
            *held = Held::Shared(h);
        }
        taken
    }

    /// A handle went stale: a newer configuration removed the key while this
    /// (older) worker still uses it. Put it back as draining, so that it is
    /// counted until this worker is done with it and then removed.
    fn refresh(&self, link: Option<&ZoneLink>) -> Option<SlotRef> {
        let &ZoneLink { zone, table, epoch } = link?;
        let locked = zone.lock();
        if let Some(h) = table.find(&locked, &self.key) {
            return Some(h);
        }
        let draining = if epoch == table.epoch() {
            0
        } else {
            FLAG_DRAINING
        };
        let meta = Meta {
            flags: self.meta.flags | draining,
            ..self.meta
        };
        let handle = table
            .upsert(&locked, &self.key, self.upstream_len, meta, epoch)
            .ok();
        drop(locked);
        ngx_log_error!(
            NGX_LOG_NOTICE,
            ngx::log::ngx_cycle_log().as_ptr(),
            "least_conn_persistent: \"{}\" {} for a worker of an earlier configuration",
            String::from_utf8_lossy(&self.key),
            if handle.is_none() {
                "could not be re-added (zone full)"
            } else {
                "re-added as draining"
            }
        );
        handle
    }

    /// Live connections as this worker should compare them.
    /// The count a pick compares (see `SlotRef::count_hint`). Per-worker
    /// counts (the fallback) never approach 2^32.
    pub fn count(&self, peer: &ngx_http_upstream_rr_peer_t) -> u32 {
        match self.handle {
            Some(h) => h.count_hint(),
            None => peer.conns as u32,
        }
    }
}

fn peer_list(
    upstream: &[u8],
    peers: *const ngx_http_upstream_rr_peers_t,
    flags: u32,
) -> Result<Vec<PeerCounter>, String> {
    let mut out = Vec::new();
    // SAFETY: round-robin init built these lists in the configuration pool.
    unsafe {
        if let Some(peers) = peers.as_ref() {
            let mut p = peers.peer;
            while let Some(peer) = p.as_ref() {
                // The balancer compares 32-bit counts and weights.
                if u32::try_from(peer.weight).is_err() {
                    return Err(format!(
                        "weight {} of server \"{}\" in upstream \"{}\" is too large",
                        peer.weight,
                        String::from_utf8_lossy(str_bytes(&peer.name)),
                        String::from_utf8_lossy(upstream)
                    ));
                }
                out.push(PeerCounter::new(upstream, peer, flags));
                p = peer.next;
            }
        }
    }
    Ok(out)
}

impl UpstreamCounters {
    /// # Safety
    /// `peers` is what `ngx_http_upstream_init_round_robin` left in `peer.data`.
    pub unsafe fn new(
        name: &[u8],
        peers: *const ngx_http_upstream_rr_peers_t,
    ) -> Result<UpstreamCounters, String> {
        let backup = peers
            .as_ref()
            .map_or(core::ptr::null(), |p| p.next.cast_const());
        Ok(UpstreamCounters {
            name: name.into(),
            primary: peer_list(name, peers, 0)?,
            backup: peer_list(name, backup, FLAG_BACKUP)?,
            link: None,
        })
    }

    pub fn peers_mut(&mut self) -> impl Iterator<Item = &mut PeerCounter> {
        self.primary.iter_mut().chain(self.backup.iter_mut())
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerCounter> {
        self.primary.iter().chain(self.backup.iter())
    }

    /// Called by the zone's init once this configuration's keys are stored.
    pub fn attach(&mut self, zone: Zone, table: &'static Table, epoch: u32) {
        self.link = Some(ZoneLink { zone, table, epoch });
    }

    /// The peers of the primary or backup list, and the zone they count in.
    pub fn split(&mut self, backup: bool) -> (&mut [PeerCounter], Option<&ZoneLink>) {
        let list = if backup {
            &mut self.backup
        } else {
            &mut self.primary
        };
        (list, self.link.as_ref())
    }

    /// Gives back what a pick took; `log` is the request's.
    pub fn release(&self, held: Held, log: *mut nginx_sys::ngx_log_t) {
        match held {
            Held::Nothing => {}
            // SAFETY: points into this configuration's counters, which live
            // as long as the worker's cycle.
            Held::Local(pc) => unsafe { (*pc).local = (*pc).local.saturating_sub(1) },
            Held::Shared(h) => match h.release() {
                Release::Released { now_idle_draining } => {
                    if now_idle_draining {
                        if let Some(l) = self.link {
                            l.table.remove_if_drained(&l.zone.lock(), h);
                        }
                    }
                }
                Release::Underflow | Release::Stale => {
                    ngx_log_error!(
                        NGX_LOG_ERR,
                        log,
                        "least_conn_persistent: release of a counter of upstream \"{}\" that is already 0 (kept at 0)",
                        String::from_utf8_lossy(&self.name)
                    );
                }
            },
        }
    }
}
