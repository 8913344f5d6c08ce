//! The shared zone: nginx's shm zone and slab pool around the counter table.
//!
//! The zone is created by the master while it loads a configuration. When a
//! reload keeps the zone's name and size, nginx hands the old zone to the
//! zone's init, which keeps the table in it (the `ngx_http_limit_conn_module`
//! pattern): that is what lets counts survive reloads.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::NonNull;

use nginx_sys::{NGX_LOG_ERR, NGX_LOG_NOTICE};
use ngx::allocator::Allocator;
use ngx::core::slab::LockedSlabPool;

use crate::core::status::ZoneInfo;
use crate::core::table::{Arena, Table};
use crate::ngx::conf::page_size;
use crate::ngx::shm::{mapped_zones, names_in_running_cycle, ShmZone};

/// The zone with its mutex held; released on drop.
pub struct Locked(
    LockedSlabPool,
    #[cfg(feature = "lock-stats")] crate::ngx::lock_stats::Taken,
);

impl Locked {
    #[cfg(not(feature = "lock-stats"))]
    pub fn new(shm: &ShmZone) -> Locked {
        Locked(shm.lock())
    }
}

impl Arena for Locked {
    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        let align = if size >= 64 { 64 } else { 8 };
        let layout = Layout::from_size_align(size, align).ok()?;
        self.0.allocate(layout).ok().map(|p| p.cast())
    }

    unsafe fn free(&self, ptr: NonNull<u8>) {
        // Slab frees ignore the layout; any non-zero size does.
        let layout = Layout::from_size_align(1, 1).expect("a valid layout");
        // SAFETY: the caller's contract (Arena::free).
        unsafe { self.0.deallocate(ptr, layout) };
    }
}

/// Where a configuration's keys live, and the epoch that stamped them.
#[derive(Clone, Copy, Debug)]
pub struct ZoneLink {
    pub shm: ShmZone,
    pub table: &'static Table,
    pub epoch: u32,
}

impl ZoneLink {
    #[cfg_attr(feature = "lock-stats", track_caller)]
    pub fn lock(&self) -> Locked {
        Locked::new(&self.shm)
    }

    pub fn info(&self) -> ZoneInfo {
        let workers = self.table.workers(&self.lock());
        ZoneInfo {
            name: String::from_utf8_lossy(self.shm.name()).into_owned(),
            size: self.shm.size(),
            used: self.shm.used(page_size()),
            keys: self.table.keys(),
            reclaimed: self.table.reclaimed(),
            workers: workers
                .iter()
                .map(|w| (w.worker.pid, w.connections))
                .collect(),
        }
    }
}

/// The counter tables in zones of other modules of ours (`own_tag`: the
/// asking module's): the http status page shows the stream module's zone
/// this way, as the two are separate `.so` files that share no symbol.
pub fn tables_of_other_modules(own_tag: *const c_void) -> Vec<ZoneLink> {
    mapped_zones()
        .into_iter()
        .filter(|shm| !core::ptr::eq(shm.tag(), own_tag))
        .filter_map(|shm| {
            let root = shm.root_inside(size_of::<Table>())?;
            // SAFETY: an 8-aligned pointer inside the zone with room for a
            // table header, which `existing` recognises by its magic.
            let table = unsafe { Table::existing(root.as_ptr()) }?;
            Some(ZoneLink {
                shm,
                table,
                epoch: table.epoch(),
            })
        })
        .collect()
}

/// The zone cannot even hold the table's header and buckets.
#[derive(Debug)]
pub struct TooSmall;

/// Finds the table a previous load left in the zone, or creates one.
/// `fresh`: nginx created the zone for this load (nothing to reuse).
pub fn open_table(
    shm: ShmZone,
    fresh: bool,
    tag: *const c_void,
) -> Result<&'static Table, TooSmall> {
    let locked = Locked::new(&shm);
    // SAFETY: the root is null or the table a load of ours put there; the
    // table lives as long as the mapping, which outlives every cycle using it.
    if let Some(t) = unsafe { Table::existing(shm.root().cast()) } {
        return Ok(t);
    }
    if fresh {
        note_new_zone(&shm, tag);
    }
    shm.quiet_when_full(&locked.0);
    let Some(table) = Table::create(&locked, Table::buckets_for(shm.size())) else {
        shm.log().zone(
            NGX_LOG_ERR,
            shm.name(),
            format_args!(" is too small for its table"),
        );
        return Err(TooSmall);
    };
    shm.set_root(&locked.0, table.as_ptr().cast());
    // SAFETY: just created in the zone, as above.
    Ok(unsafe { &*table.as_ptr() })
}

/// A fresh zone while a zone of ours runs: its counts do not carry over.
fn note_new_zone(shm: &ShmZone, tag: *const c_void) {
    let running = names_in_running_cycle(tag);
    let Some(old) = running.first() else {
        return;
    };
    if old.as_slice() == shm.name() {
        shm.log().zone(
            NGX_LOG_NOTICE,
            shm.name(),
            format_args!(" changed size: connection counts restart from 0"),
        );
    } else {
        shm.log().zone(
            NGX_LOG_NOTICE,
            shm.name(),
            format_args!(
                " replaces \"{}\": connection counts restart from 0",
                String::from_utf8_lossy(old)
            ),
        );
    }
}

// The `lock-stats` feature (benchmarks only, src/ngx/lock_stats.rs): the
// guard times the wait for the mutex and, as it is dropped, the hold, per
// place in the code that asked for it.

#[cfg(feature = "lock-stats")]
impl Locked {
    #[track_caller]
    pub fn new(shm: &ShmZone) -> Locked {
        let (pool, taken) = crate::ngx::lock_stats::Taken::wait_for(|| shm.lock());
        Locked(pool, taken)
    }
}

#[cfg(feature = "lock-stats")]
impl Drop for Locked {
    fn drop(&mut self) {
        // Before the fields drop: the mutex is still held.
        self.1.release();
    }
}
