//! The shared zone: nginx's shm zone and slab pool around the counter table,
//! and its directive, `least_conn_persistent_zone` (`DeclaredZone`).
//!
//! The zone is created by the master while it loads a configuration. When a
//! reload keeps the zone's name and size, nginx hands the old zone to the
//! zone's init, which keeps the table in it (the `ngx_http_limit_conn_module`
//! pattern): that is what lets counts survive reloads.

use core::ffi::c_void;
use core::ptr::NonNull;

use nginx_sys::{ngx_conf_t, ngx_int_t, ngx_shm_zone_t, ngx_str_t, NGX_LOG_ERR, NGX_LOG_NOTICE};
use ngx::core::Status;

use crate::core::crash;
use crate::core::status::ZoneInfo;
use crate::core::table::{Arena, HealthView, Meta, Table};
use crate::ngx::conf::{args, page_size, parse_size, text, ConfError};
use crate::ngx::peers;
use crate::ngx::shm::{self, mapped_zones, names_in_running_cycle, ShmZone, ZoneGuard};

/// The smallest zone: a few pages for the slab allocator, the table, and
/// some keys.
const MIN_ZONE_PAGES: usize = 8;

/// The zone a configuration load declares, and its table once nginx's init
/// has found or made it (`init_zone`). The registry of the load holds it.
#[derive(Debug, Default)]
pub struct DeclaredZone {
    declared: bool,
    opened: Option<(ShmZone, &'static Table)>,
}

impl DeclaredZone {
    pub fn is_declared(&self) -> bool {
        self.declared
    }

    /// The zone and its table, once nginx's init found or made it.
    pub fn opened(&self) -> Option<(ShmZone, &'static Table)> {
        self.opened
    }

    /// `least_conn_persistent_zone <name> <size>;`, in any front-end's main
    /// context: checks the arguments and declares the zone (`tag`: the
    /// front-end module's, so that two front-ends cannot share a name).
    pub fn directive(&mut self, cf: &mut ngx_conf_t, tag: *const c_void) -> Result<(), ConfError> {
        if self.declared {
            return Err(ConfError::Duplicate);
        }
        // NGX_CONF_TAKE2: exactly two arguments.
        let [name, size_text] = args(cf) else {
            unreachable!("nginx checks the number of arguments");
        };
        let parsed = parse_size(size_text);
        let size = checked_size(name, size_text, parsed, page_size())?;
        self.declare(cf, name, size, tag)
    }

    /// Declares the zone whose init will find the table for it.
    fn declare(
        &mut self,
        cf: &mut ngx_conf_t,
        name: &mut ngx_str_t,
        size: usize,
        tag: *const c_void,
    ) -> Result<(), ConfError> {
        // SAFETY: `self` lives in the module's main configuration (in its
        // registry), as long as the cycle whose zone this is.
        unsafe {
            shm::declare(
                cf,
                name,
                size,
                tag,
                Some(init_zone),
                core::ptr::from_mut(self).cast(),
            )?
        };
        self.declared = true;
        Ok(())
    }
}

/// The zone's size, if the directive's arguments are valid: a name, and a
/// size (`parsed`, from `size_text`) of at least `MIN_ZONE_PAGES` pages.
fn checked_size(
    name: &ngx_str_t,
    size_text: &ngx_str_t,
    parsed: Option<usize>,
    page_size: usize,
) -> Result<usize, ConfError> {
    if name.is_empty() {
        return Err(ConfError::InvalidName(text(name)));
    }
    let size = parsed.ok_or_else(|| ConfError::InvalidSize(text(size_text)))?;
    let min = MIN_ZONE_PAGES * page_size;
    if size < min {
        return Err(ConfError::TooSmall {
            name: text(name),
            min,
        });
    }
    Ok(size)
}

/// nginx's init callback for the zone: finds the table a previous load left
/// or creates one. The configuration is stamped later, by the registry's
/// `commit`.
extern "C" fn init_zone(shm_zone: *mut ngx_shm_zone_t, old_data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx calls this with its zone, mapped, whose `data` is the
    // `DeclaredZone` that declared it.
    let Some(shm) = (unsafe { ShmZone::from_ptr(shm_zone) }) else {
        return Status::NGX_ERROR.into();
    };
    // SAFETY: as above; nothing else uses it during the init.
    let zone = unsafe { &mut *shm.data().cast::<DeclaredZone>() };
    match open_table(shm, old_data.is_null(), shm.tag()) {
        Ok(table) => {
            zone.opened = Some((shm, table));
            Status::NGX_OK.into()
        }
        Err(_) => Status::NGX_ERROR.into(),
    }
}

/// The zone with its mutex held, as proof of the lock for its table's
/// methods; released on drop. Only `ZoneLink::lock` and `open_table` make
/// one: locking marks the table dirty (repairing what a dead holder left),
/// unlocking clears the mark (`Table::enter`, `Table::leave`).
pub struct Locked {
    pool: ZoneGuard,
    table: Option<&'static Table>,
    /// Last: dropped after `pool` has released the mutex.
    #[cfg(feature = "lock-stats")]
    stats: crate::ngx::lock_stats::Taken,
}

impl Locked {
    #[cfg_attr(feature = "lock-stats", track_caller)]
    fn new(shm: &ShmZone, table: Option<&'static Table>) -> Locked {
        #[cfg(not(feature = "lock-stats"))]
        let locked = Locked {
            pool: shm.lock(),
            table,
        };
        #[cfg(feature = "lock-stats")]
        let locked = {
            let (pool, stats) = crate::ngx::lock_stats::Taken::wait_for(|| shm.lock());
            Locked { pool, table, stats }
        };
        if let Some(t) = table {
            t.enter(&locked);
        }
        locked
    }

    /// Sets the table once `open_table` found or made it.
    fn enter(&mut self, table: &'static Table) -> bool {
        self.table = Some(table);
        table.enter(self)
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if let Some(t) = self.table {
            t.leave(self);
        }
        // Before the fields drop: the mutex is still held.
        #[cfg(feature = "lock-stats")]
        self.stats.release();
    }
}

impl Arena for Locked {
    fn holds(&self, table: &Table) -> bool {
        self.table.is_some_and(|t| core::ptr::eq(t, table))
    }

    fn alloc(&self, size: usize) -> Option<NonNull<u8>> {
        if size == 0 {
            return None;
        }
        self.pool.alloc(size, if size >= 64 { 64 } else { 8 })
    }

    unsafe fn free(&self, ptr: NonNull<u8>) {
        // SAFETY: the caller's contract (Arena::free).
        unsafe { self.pool.free(ptr) };
    }
}

/// Where a configuration's keys live, and the epoch that stamped them.
#[derive(Clone, Copy, Debug)]
pub struct ZoneLink {
    pub shm: ShmZone,
    pub table: &'static Table,
    pub epoch: u32,
}

/// One key as copied for the status page.
#[derive(Clone, Copy, Debug)]
pub struct CopiedEntry {
    /// Where its key is in `Snapshot::key_bytes`.
    pub key: (usize, usize),
    pub count: u32,
    pub meta: Meta,
    /// When its slow start began (`EntryView::ramp_since`).
    pub ramp_since: u32,
    /// Rebalancing (`EntryView::shed`, `EntryView::shedding`).
    pub shed: u32,
    pub shedding: bool,
    /// What health checks found (`EntryView::health`).
    pub health: Option<HealthView>,
}

/// What the status page shows of a zone, copied in one short hold.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub info: ZoneInfo,
    pub entries: Vec<CopiedEntry>,
    pub key_bytes: Vec<u8>,
}

impl Snapshot {
    pub fn key(&self, e: &CopiedEntry) -> &[u8] {
        &self.key_bytes[e.key.0..e.key.0 + e.key.1]
    }
}

impl ZoneLink {
    #[cfg_attr(feature = "lock-stats", track_caller)]
    pub fn lock(&self) -> Locked {
        Locked::new(&self.shm, Some(self.table))
    }

    /// Everything the status page shows, copied in one hold of the lock into
    /// room reserved before it (nothing is allocated or logged under it);
    /// if keys were added meanwhile and do not fit, again with more room.
    pub fn snapshot(&self) -> Snapshot {
        let mut room = (self.table.keys() as usize + 16, self.table.nrecords() + 8);
        loop {
            // Room written once before locking: the first touch of fresh
            // memory (page faults) happens here, not under the lock.
            let empty = CopiedEntry {
                key: (0, 0),
                count: 0,
                meta: Meta::default(),
                ramp_since: 0,
                shed: 0,
                shedding: false,
                health: None,
            };
            let mut entries = vec![empty; room.0];
            // Not zeroes: a zeroed allocation may be pages not yet touched.
            let mut key_bytes = vec![b' '; room.0 * 64];
            let mut workers = Vec::with_capacity(room.1);
            let (mut n, mut at, mut fits) = (0, 0, true);
            let used = {
                let locked = self.lock();
                crash::point("status.locked");
                self.table.for_each(&locked, |e| {
                    let end = at + e.key.len();
                    if n == entries.len() || end > key_bytes.len() {
                        fits = false;
                        return;
                    }
                    key_bytes[at..end].copy_from_slice(e.key);
                    entries[n] = CopiedEntry {
                        key: (at, e.key.len()),
                        count: e.count,
                        meta: e.meta,
                        ramp_since: e.ramp_since,
                        shed: e.shed,
                        shedding: e.shedding,
                        health: e.health,
                    };
                    (n, at) = (n + 1, end);
                });
                self.table.workers_into(&locked, &mut workers);
                self.shm.used_locked(&locked.pool, page_size())
            };
            if !fits {
                room = (room.0 * 2, room.1 * 2);
                continue;
            }
            entries.truncate(n);
            key_bytes.truncate(at);
            let lease = self.table.checker(peers::now_ms());
            let info = ZoneInfo {
                name: String::from_utf8_lossy(self.shm.name()).into_owned(),
                size: self.shm.size(),
                used,
                keys: n as u32,
                reclaimed: self.table.reclaimed(),
                checker: lease.map_or(0, |l| l.pid),
                checks_paused: lease.is_some_and(|l| l.paused),
                workers: workers
                    .iter()
                    .map(|w| (w.worker.pid, w.connections))
                    .collect(),
            };
            return Snapshot {
                info,
                entries,
                key_bytes,
            };
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
fn open_table(shm: ShmZone, fresh: bool, tag: *const c_void) -> Result<&'static Table, TooSmall> {
    let mut locked = Locked::new(&shm, None);
    // SAFETY: the root is null or the table a load of ours put there; the
    // table lives as long as the mapping, which outlives every cycle using it.
    if let Some(t) = unsafe { Table::existing(shm.root().cast()) } {
        let repaired = locked.enter(t);
        drop(locked);
        if repaired {
            shm.log().zone(
                NGX_LOG_NOTICE,
                shm.name(),
                format_args!(
                    " was left locked by a process that died: its table is repaired \
                     ({} repair(s) so far)",
                    t.repairs()
                ),
            );
        }
        return Ok(t);
    }
    shm.quiet_when_full(&locked.pool);
    let Some(table) = Table::create(&locked, Table::buckets_for(shm.size())) else {
        drop(locked);
        shm.log().zone(
            NGX_LOG_ERR,
            shm.name(),
            format_args!(" is too small for its table"),
        );
        return Err(TooSmall);
    };
    shm.set_root(&locked.pool, table.as_ptr().cast());
    // SAFETY: just created in the zone, as above.
    let table = unsafe { &*table.as_ptr() };
    locked.enter(table);
    drop(locked);
    if fresh {
        note_new_zone(&shm, tag);
    }
    Ok(table)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ngx_str(s: &'static str) -> ngx_str_t {
        ngx_str_t {
            len: s.len(),
            data: s.as_ptr().cast_mut(),
        }
    }

    const PAGE: usize = 4096;

    #[test]
    fn a_zone_needs_a_name() {
        let r = checked_size(&ngx_str(""), &ngx_str("1m"), Some(1 << 20), PAGE);
        assert_eq!(r, Err(ConfError::InvalidName(String::new())));
    }

    #[test]
    fn a_size_nginx_cannot_parse_is_named() {
        let r = checked_size(&ngx_str("lc"), &ngx_str("1q"), None, PAGE);
        assert_eq!(r, Err(ConfError::InvalidSize("1q".into())));
    }

    #[test]
    fn a_zone_holds_eight_pages_at_least() {
        let (name, text) = (ngx_str("lc"), ngx_str("32k"));
        assert_eq!(
            checked_size(&name, &text, Some(8 * PAGE), PAGE),
            Ok(8 * PAGE)
        );
        assert_eq!(
            checked_size(&name, &text, Some(8 * PAGE - 1), PAGE),
            Err(ConfError::TooSmall {
                name: "lc".into(),
                min: 8 * PAGE
            })
        );
        // The minimum follows the page size.
        assert!(checked_size(&name, &text, Some(8 * PAGE), 2 * PAGE).is_err());
    }
}
