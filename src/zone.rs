//! The shared zone: nginx's shm zone and slab pool around the counter table.
//!
//! The zone is created by the master while it loads a configuration. When a
//! reload keeps the zone's name and size, nginx hands the old zone to `init`,
//! which keeps the table in it (the `ngx_http_limit_conn_module` pattern):
//! that is what lets counts survive reloads.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use nginx_sys::{
    ngx_cycle, ngx_int_t, ngx_list_part_t, ngx_log_t, ngx_pagesize, ngx_shm_zone_t,
    ngx_slab_pool_t, ngx_str_t, NGX_LOG_ERR, NGX_LOG_NOTICE,
};
use ngx::allocator::{AllocError, Allocator};
use ngx::core::slab::LockedSlabPool;
use ngx::core::{SlabPool, Status};
use ngx::ngx_log_error;

use crate::config::MainConf;
use crate::counters::UpstreamCounters;
use crate::status::ZoneInfo;
use crate::table::{Arena, Full, Table};

/// An initialised zone, as workers and the master's init see it.
#[derive(Clone, Copy, Debug)]
pub struct Zone {
    shm: NonNull<ngx_shm_zone_t>,
}

/// The zone with its mutex held; released on drop.
pub struct Locked(LockedSlabPool);

impl Arena for Locked {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        let align = if size >= 64 { 64 } else { 8 };
        let layout = core::alloc::Layout::from_size_align(size, align).ok()?;
        self.0.allocate(layout).ok().map(|p| p.cast())
    }

    unsafe fn free(&self, ptr: NonNull<u8>) {
        // Slab frees ignore the layout; any non-zero size does.
        let layout = core::alloc::Layout::from_size_align_unchecked(1, 1);
        self.0.deallocate(ptr, layout);
    }
}

impl Zone {
    /// # Safety
    /// `shm` is a zone of this module whose memory is mapped.
    pub unsafe fn new(shm: NonNull<ngx_shm_zone_t>) -> Zone {
        Zone { shm }
    }

    fn shm(&self) -> &ngx_shm_zone_t {
        // SAFETY: nginx keeps the zone struct for the cycle's lifetime.
        unsafe { self.shm.as_ref() }
    }

    fn pool(&self) -> NonNull<ngx_slab_pool_t> {
        // SAFETY: Zone::new's contract: the memory is mapped.
        let slab = unsafe { SlabPool::from_shm_zone(self.shm()) }.expect("mapped zone");
        NonNull::from(slab.as_ref())
    }

    pub fn lock(&self) -> Locked {
        // SAFETY: Zone::new's contract.
        Locked(
            unsafe { SlabPool::from_shm_zone(self.shm()) }
                .expect("mapped zone")
                .lock(),
        )
    }

    /// The table, once `init` has run.
    pub fn table(&self) -> Option<&Table> {
        // SAFETY: `data` is null or the table `init` put there.
        unsafe { Table::existing((*self.pool().as_ptr()).data.cast()) }
    }

    pub fn name(&self) -> &[u8] {
        // SAFETY: the name lives in the configuration pool.
        unsafe { str_bytes(&self.shm().shm.name) }
    }

    pub fn info(&self) -> ZoneInfo {
        let size = self.shm().shm.size;
        // SAFETY: reading a counter the slab allocator maintains under the lock.
        let free_pages = {
            let _locked = self.lock();
            unsafe { (*self.pool().as_ptr()).pfree }
        };
        ZoneInfo {
            name: String::from_utf8_lossy(self.name()).into_owned(),
            size,
            used: size.saturating_sub(free_pages * unsafe { ngx_pagesize }),
            keys: self.table().map_or(0, Table::keys),
        }
    }
}

/// # Safety
/// `s` describes readable memory.
pub unsafe fn str_bytes(s: &ngx_str_t) -> &[u8] {
    if s.len == 0 {
        return &[];
    }
    core::slice::from_raw_parts(s.data, s.len)
}

/// nginx's `init` callback for the zone: finds or creates the table, then
/// reconciles it with the configuration being loaded.
pub extern "C" fn init(shm_zone: *mut ngx_shm_zone_t, old_data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this with its zone, mapped, whose `data` we set to
    // the main configuration in `config::add_zone`.
    let (zone, mcf, log) = unsafe {
        let shm = &mut *shm_zone;
        (
            Zone::new(NonNull::from(&mut *shm)),
            &mut *shm.data.cast::<MainConf>(),
            shm.shm.log,
        )
    };
    match init_table(zone, old_data.is_null(), log) {
        Ok(table) => {
            reconcile(zone, table, mcf.upstreams_mut(), log);
            Status::NGX_OK.into()
        }
        Err(AllocError) => {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "least_conn_persistent_zone \"{}\" is too small for its table",
                String::from_utf8_lossy(zone.name())
            );
            Status::NGX_ERROR.into()
        }
    }
}

fn init_table(zone: Zone, fresh: bool, log: *mut ngx_log_t) -> Result<&'static Table, AllocError> {
    let pool = zone.pool().as_ptr();
    let locked = zone.lock();
    // SAFETY: the pool header is ours to read and write under the lock; the
    // table lives as long as the mapping.
    unsafe {
        if let Some(t) = Table::existing((*pool).data.cast()) {
            return Ok(&*ptr::from_ref(t));
        }
        if fresh && was_declared_before(zone) {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "least_conn_persistent_zone \"{}\" changed size: connection counts restart from 0",
                String::from_utf8_lossy(zone.name())
            );
        }
        // A full zone is expected and reported once per reload by us; the
        // slab allocator's own "no memory" line would be a [crit] per attempt.
        (*pool).set_log_nomem(0);
        let t =
            Table::create(&locked, Table::buckets_for(zone.shm().shm.size)).ok_or(AllocError)?;
        (*pool).data = t.as_ptr().cast();
        Ok(&*t.as_ptr())
    }
}

/// Whether the running configuration (the one being replaced) has a zone of
/// ours with this name: then a fresh zone means its size changed.
fn was_declared_before(zone: Zone) -> bool {
    // SAFETY: during init, `ngx_cycle` is still the running cycle (or nginx's
    // zeroed startup cycle, whose list is empty).
    unsafe {
        let mut part: *const ngx_list_part_t = &(*ngx_cycle).shared_memory.part;
        while let Some(p) = part.as_ref() {
            let zones = p.elts.cast::<ngx_shm_zone_t>();
            for i in 0..p.nelts {
                let z = &*zones.add(i);
                if z.tag == zone.shm().tag && str_bytes(&z.shm.name) == zone.name() {
                    return true;
                }
            }
            part = p.next;
        }
    }
    false
}

/// Stamps every key of the new configuration, hands its handles to the
/// configuration's counters, and removes or drains keys that are gone.
fn reconcile<'a>(
    zone: Zone,
    table: &'static Table,
    upstreams: impl Iterator<Item = &'a mut UpstreamCounters>,
    log: *mut ngx_log_t,
) {
    let started = std::time::Instant::now();
    let locked = zone.lock();
    let epoch = table.begin_epoch(&locked);
    let (mut servers, mut full) = (0u32, 0u32);
    for up in upstreams {
        up.attach(zone, table, epoch);
        for pc in up.peers_mut() {
            servers += 1;
            pc.handle = match table.upsert(&locked, &pc.key, pc.upstream_len, pc.meta, epoch) {
                Ok(h) => Some(h),
                Err(Full) => {
                    full += 1;
                    None
                }
            };
        }
    }
    let sweep = table.sweep(&locked, epoch);
    drop(locked);
    let name = String::from_utf8_lossy(zone.name());
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "least_conn_persistent_zone \"{}\": {} servers, {} keys, {} removed, {} draining, in {:.3} ms",
        name,
        servers,
        table.keys(),
        sweep.removed,
        sweep.draining,
        started.elapsed().as_secs_f64() * 1000.0
    );
    if full > 0 {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "least_conn_persistent_zone \"{}\" is full: {} of {} servers fall back to per-worker counting",
            name,
            full,
            servers
        );
    }
}
