//! Shared memory zones: declaring one at configuration time, and the mapped
//! zone's slab pool once nginx has created it.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use nginx_sys::{
    ngx_conf_t, ngx_cycle, ngx_list_part_t, ngx_list_t, ngx_pid_t, ngx_shared_memory_add,
    ngx_shm_zone_init_pt, ngx_shm_zone_t, ngx_shmtx_force_unlock, ngx_shmtx_lock, ngx_shmtx_t,
    ngx_shmtx_trylock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_free_locked,
    ngx_slab_pool_t, ngx_str_t, NGX_LOG_ALERT,
};

use crate::core::liveness::{parse_stat, Signal};

use super::conf::{text, ConfError};
use super::log::Log;
use super::process;

/// The zones of one cycle's `shared_memory` list.
fn zones(list: &ngx_list_t) -> impl Iterator<Item = &ngx_shm_zone_t> {
    let mut part: *const ngx_list_part_t = &list.part;
    core::iter::from_fn(move || {
        // SAFETY: an nginx list: parts chained by `next`, each holding
        // `nelts` zones; the list outlives the borrow of `list`.
        let p = unsafe { part.as_ref()? };
        part = p.next;
        let elts = unsafe { core::slice::from_raw_parts(p.elts.cast::<ngx_shm_zone_t>(), p.nelts) };
        Some(elts.iter())
    })
    .flatten()
}

/// Declares a zone of `size` bytes for the module `tag` in the configuration
/// being parsed; `init` will be called with `data` once it is mapped.
///
/// # Safety
/// `data` lives as long as the configuration's cycle.
pub unsafe fn declare(
    cf: &mut ngx_conf_t,
    name: &mut ngx_str_t,
    size: usize,
    tag: *const c_void,
    init: ngx_shm_zone_init_pt,
    data: *mut c_void,
) -> Result<(), ConfError> {
    // SAFETY: during parsing `cf.cycle` is the cycle being built.
    let cycle = unsafe { &*cf.cycle };
    let same_name = zones(&cycle.shared_memory).find(|z| z.shm.name.as_bytes() == name.as_bytes());
    if same_name.is_some_and(|z| !ptr::eq(z.tag, tag)) {
        // nginx would say so too, and then we would add a second, misleading
        // line about memory: say it once, here.
        return Err(ConfError::NameTaken(text(name)));
    }
    // SAFETY: `name` lives in the configuration pool, as nginx requires.
    let shm = unsafe { ngx_shared_memory_add(cf, name, size, tag.cast_mut()) };
    // SAFETY: nginx returns null or its new list entry.
    let shm = unsafe { shm.as_mut() }.ok_or(ConfError::NoMemory)?;
    if !shm.data.is_null() {
        return Err(ConfError::Duplicate);
    }
    shm.init = init;
    shm.data = data;
    Ok(())
}

/// The names of the zones of module `tag` in the running cycle (the one a
/// reload replaces).
pub fn names_in_running_cycle(tag: *const c_void) -> Vec<Vec<u8>> {
    // SAFETY: while a configuration loads, `ngx_cycle` is the running cycle
    // (at startup nginx's zeroed initial cycle, whose list is empty).
    let running = unsafe { &*ngx_cycle };
    zones(&running.shared_memory)
        .filter(|z| ptr::eq(z.tag, tag))
        .map(|z| z.shm.name.as_bytes().to_vec())
        .collect()
}

/// The mapped zones of this process's cycle (a worker's), of any module.
pub fn mapped_zones() -> Vec<ShmZone> {
    // SAFETY: in a worker `ngx_cycle` is its cycle, whose zones stay mapped
    // while it runs.
    let cycle = unsafe { &*ngx_cycle };
    zones(&cycle.shared_memory)
        // SAFETY: as above.
        .filter_map(|z| unsafe { ShmZone::from_ptr(ptr::from_ref(z).cast_mut()) })
        .collect()
}

/// A zone nginx has mapped.
#[derive(Clone, Copy, Debug)]
pub struct ShmZone {
    zone: NonNull<ngx_shm_zone_t>,
    pool: NonNull<ngx_slab_pool_t>,
}

impl ShmZone {
    /// # Safety
    /// `zone` is null or an nginx zone whose memory is mapped for as long as
    /// the result is used (the zone's init, or a worker of its cycle).
    pub unsafe fn from_ptr(zone: *mut ngx_shm_zone_t) -> Option<ShmZone> {
        let zone = NonNull::new(zone)?;
        let pool = NonNull::new(unsafe { zone.as_ref() }.shm.addr)?.cast();
        Some(ShmZone { zone, pool })
    }

    fn zone(&self) -> &ngx_shm_zone_t {
        // SAFETY: from_ptr's contract.
        unsafe { self.zone.as_ref() }
    }

    pub fn name(&self) -> &[u8] {
        self.zone().shm.name.as_bytes()
    }

    pub fn size(&self) -> usize {
        self.zone().shm.size
    }

    /// The module that declared the zone.
    pub fn tag(&self) -> *const c_void {
        self.zone().tag
    }

    pub fn log(&self) -> Log {
        // SAFETY: the zone's log is the cycle's.
        unsafe { Log::from_ptr(self.zone().shm.log) }
    }

    /// What `declare` was given as `data`.
    pub fn data(&self) -> *mut c_void {
        self.zone().data
    }

    /// Locks the zone's mutex. In the master, loading a configuration, a
    /// holder that died is unlocked here (`lock_as_master`).
    pub fn lock(&self) -> ZoneGuard {
        // SAFETY: the pool header at the start of the mapped zone, whose
        // mutex nginx set up when it created the zone.
        let mtx = unsafe { &mut (*self.pool.as_ptr()).mutex };
        if process::is_master() {
            self.lock_as_master(mtx);
        } else {
            // SAFETY: as above.
            unsafe { ngx_shmtx_lock(mtx) };
        }
        ZoneGuard { pool: self.pool }
    }

    /// nginx's master unlocks the mutex of a worker that died holding it
    /// when it reaps the worker, but it reaps only while it waits for
    /// signals, not while it loads a configuration (signals are blocked
    /// then): a load that waited for a worker killed meanwhile would wait
    /// for ever. So the master, waiting, unlocks the mutex itself once its
    /// holder is dead (a zombie not reaped yet, or gone), as reaping would.
    fn lock_as_master(&self, mtx: &mut ngx_shmtx_t) {
        // SAFETY: the zone's mutex (`lock`); `mtx.lock` points at the word
        // holding the holder's pid, in the zone.
        while unsafe { ngx_shmtx_trylock(mtx) } == 0 {
            let holder = unsafe { ptr::read_volatile(mtx.lock) } as ngx_pid_t;
            if holder != 0 && is_dead(holder) {
                // SAFETY: as above; unlocks only if `holder` still holds it.
                if unsafe { ngx_shmtx_force_unlock(mtx, holder) } != 0 {
                    self.log().zone(
                        NGX_LOG_ALERT,
                        self.name(),
                        format_args!(
                            ": shared memory zone \"{}\" was locked by {holder}, which died: \
                             unlocked while loading a configuration",
                            String::from_utf8_lossy(self.name())
                        ),
                    );
                }
                continue;
            }
            // A live holder's hold is short (microseconds).
            // SAFETY: a plain syscall.
            unsafe { libc::usleep(1000) };
        }
    }

    /// The pool's `data` pointer, where the zone's owner keeps its root.
    pub fn root(&self) -> *mut c_void {
        // SAFETY: the pool header is at the start of the mapped zone.
        unsafe { (*self.pool.as_ptr()).data }
    }

    /// The root, if it points inside the zone with room for `len` bytes
    /// after it, 8-aligned: a zone of another module may keep anything
    /// there, and only such a pointer may be read to look for a table.
    pub fn root_inside(&self, len: usize) -> Option<NonNull<u8>> {
        let root = self.root() as usize;
        let start = self.zone().shm.addr as usize;
        let end = start.checked_add(self.size())?;
        let inside = root >= start && root.checked_add(len)? <= end && root.is_multiple_of(8);
        inside.then(|| NonNull::new(root as *mut u8)).flatten()
    }

    /// Sets the root, with the zone locked.
    pub fn set_root(&self, _locked: &ZoneGuard, root: *mut c_void) {
        // SAFETY: the pool header, written under the zone's lock.
        unsafe { (*self.pool.as_ptr()).data = root };
    }

    /// Silences the slab allocator's own "no memory" line: a full zone is
    /// reported by the zone's owner in its own words, not as a `[crit]` per
    /// allocation.
    pub fn quiet_when_full(&self, _locked: &ZoneGuard) {
        // SAFETY: the pool header, written under the zone's lock.
        unsafe { (*self.pool.as_ptr()).set_log_nomem(0) };
    }

    /// Bytes of the zone the slab allocator has handed out (whole pages),
    /// with the zone locked by the caller.
    pub fn used_locked(&self, _locked: &ZoneGuard, page_size: usize) -> usize {
        // SAFETY: `pfree` is maintained by the allocator under the lock.
        let free_pages = unsafe { (*self.pool.as_ptr()).pfree };
        self.size().saturating_sub(free_pages * page_size)
    }
}

/// Whether process `pid` is dead: gone, or a zombie its parent has not
/// reaped (whose pid no other process can have meanwhile).
fn is_dead(pid: ngx_pid_t) -> bool {
    match process::signal(pid) {
        Signal::Gone => true,
        Signal::Foreign => false,
        Signal::Ours => process::proc_stat(pid)
            .and_then(|stat| parse_stat(&stat))
            .is_some_and(|(state, _)| state == 'Z' || state == 'X'),
    }
}

/// A zone with its mutex held: allocations from its slab pool; the mutex
/// is released on drop.
pub struct ZoneGuard {
    pool: NonNull<ngx_slab_pool_t>,
}

impl ZoneGuard {
    /// `size` bytes aligned to `align` (a power of two). Slab chunks of up
    /// to half a page are aligned to their size rounded up to a power of
    /// two: asking for at least `align` bytes gives that alignment.
    pub fn alloc(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        // SAFETY: the pool, locked by this guard.
        let p = unsafe { ngx_slab_alloc_locked(self.pool.as_ptr(), size.max(align)) };
        let p = NonNull::new(p.cast::<u8>())?;
        if p.align_offset(align) != 0 {
            // SAFETY: just allocated from this pool.
            unsafe { self.free(p) };
            return None;
        }
        Some(p)
    }

    /// # Safety
    /// `ptr` came from `alloc` of this pool and is not used afterwards.
    pub unsafe fn free(&self, ptr: NonNull<u8>) {
        ngx_slab_free_locked(self.pool.as_ptr(), ptr.as_ptr().cast());
    }
}

impl Drop for ZoneGuard {
    fn drop(&mut self) {
        // SAFETY: the pool's mutex, held by this guard.
        unsafe { ngx_shmtx_unlock(&mut (*self.pool.as_ptr()).mutex) };
    }
}
