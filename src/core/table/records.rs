//! Per-worker records: which worker process holds which part of each count,
//! so that counts held by a worker that died without releasing them (SIGKILL,
//! SIGSEGV, the OOM killer) can be given back.
//!
//! Every worker registers a record in the zone when it starts. For each
//! table block whose keys it counts on it gets a chunk of 63 cells, one per
//! slot of the block (the slot's `id` says which), allocated the first time
//! it counts on one of them: a cell is this worker's share of that slot's
//! count, and the record keeps the running total of its cells (the status
//! page reads that, not every cell). Only the owning worker writes its
//! cells; anyone reads them only once the owner is gone.
//!
//! Counting updates the cell before the shared count on acquire, and after
//! it on release, so a worker killed between the two updates makes the
//! reclaim give back one connection too many (the count reads low until
//! that connection closes and the release stops at zero), never one too few
//! (a count that stayed high for ever).
//!
//! Crash consistency follows the table's discipline (`mod.rs`): a record
//! is linked with one store, its memory goes through the journal, and the
//! give-back of a dead worker's cell is journalled, so a process that dies
//! giving it back leaves the next lock holder to finish exactly that cell.
//!
//! Memory, all from the zone: a record header (64 bytes), a directory of 8
//! bytes per table block, and 256 bytes per block of 63 keys it counts on:
//! at most about 4 bytes per key per live worker.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::flags::Flag;
use super::header::{Arena, Table};
use super::slot::{Acquire, Release, Slot, SlotRef, SLOTS_PER_BLOCK};
use crate::core::crash;
use crate::core::liveness::ProcessId;

#[repr(C)]
struct Chunk {
    cells: [AtomicU32; SLOTS_PER_BLOCK],
}

#[repr(C)]
#[derive(Debug)]
pub struct WorkerRecord {
    pub(super) pid: AtomicI32,
    pub(super) uid: AtomicU32,
    pub(super) start_time: AtomicU64,
    pub(super) next: AtomicPtr<WorkerRecord>,
    /// `dir_len` chunk pointers, by block index; null: nothing counted there.
    dir: AtomicPtr<AtomicPtr<Chunk>>,
    dir_len: AtomicU32,
    /// The sum of the cells, kept by the owner as it counts.
    total: AtomicU32,
}

/// A worker's own record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef(NonNull<WorkerRecord>);

// SAFETY: the record lives in shared memory, mapped in every process that
// holds a RecordRef; its links and directory change under the zone lock; the
// owner writes its cells lock-free, and a reclaim or repair zeroes a dead
// worker's cells under the lock.
unsafe impl Send for RecordRef {}
unsafe impl Sync for RecordRef {}

/// A worker's share of one slot's count, and its record's running total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellRef {
    pub(super) cell: NonNull<AtomicU32>,
    total: NonNull<AtomicU32>,
}

// SAFETY: as for RecordRef; only the owning worker writes the cell.
unsafe impl Send for CellRef {}
unsafe impl Sync for CellRef {}

/// Where a worker counts its share when the zone had no room for it: cells
/// in the process's own memory, which no reclaim ever reads.
static UNRECORDED: AtomicU32 = AtomicU32::new(0);
static UNRECORDED_TOTAL: AtomicU32 = AtomicU32::new(0);

/// Set when this process has given back what it holds (`stop_counting`):
/// a release after that (a later module's exit hook) must not give back
/// again, nor write cells that are freed.
#[cfg(not(test))]
static STOPPED: AtomicBool = AtomicBool::new(false);
#[cfg(test)]
std::thread_local! {
    // Per test thread: a test that stops counting leaves the others be.
    static STOPPED: AtomicBool = const { AtomicBool::new(false) };
}

/// Whether this process has stopped counting (`stop_counting`).
pub fn stopped() -> bool {
    #[cfg(not(test))]
    return STOPPED.load(Ordering::Relaxed);
    #[cfg(test)]
    STOPPED.with(|s| s.load(Ordering::Relaxed))
}

/// Makes every later release of this process a no-op: call before giving
/// back what it holds at exit.
pub fn stop_counting() {
    #[cfg(not(test))]
    STOPPED.store(true, Ordering::Release);
    #[cfg(test)]
    STOPPED.with(|s| s.store(true, Ordering::Release));
}

impl CellRef {
    /// The cell for counts that cannot be recorded in the zone.
    pub fn unrecorded() -> CellRef {
        CellRef {
            cell: NonNull::from(&UNRECORDED),
            total: NonNull::from(&UNRECORDED_TOTAL),
        }
    }

    pub fn is_recorded(&self) -> bool {
        !ptr::eq(self.cell.as_ptr(), &UNRECORDED)
    }

    pub(super) fn cell(&self) -> &AtomicU32 {
        // SAFETY: chunks are freed only when their worker is done counting.
        unsafe { self.cell.as_ref() }
    }

    fn total(&self) -> &AtomicU32 {
        // SAFETY: as for the cell: records outlive their worker's counting.
        unsafe { self.total.as_ref() }
    }

    /// One more, in the cell and the total. Only the owner writes: loads
    /// and stores, no locked instruction. A share never reaches 2^32 (the
    /// shared count, which holds it, stops there).
    #[inline]
    fn increment(&self) {
        let (cell, total) = (self.cell(), self.total());
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        total.store(
            total.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// One less, never below zero (a count given back at exit, then
    /// released: see `Counted::release`).
    #[inline]
    pub(super) fn decrement(&self) {
        for c in [self.cell(), self.total()] {
            c.store(
                c.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Relaxed,
            );
        }
    }

    pub fn get(&self) -> u32 {
        self.cell().load(Ordering::Relaxed)
    }
}

/// A shared counter and this worker's share of it: counting through it
/// keeps the two in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    pub slot: SlotRef,
    pub mine: CellRef,
}

impl Counted {
    #[inline]
    pub fn acquire(&self, max_conns: u32) -> Acquire {
        self.mine.increment();
        let r = self.slot.acquire(max_conns);
        if r != Acquire::Taken {
            self.mine.decrement();
        }
        r
    }

    #[inline]
    pub fn release(&self) -> Release {
        // A count the exit gave back is not released again; one it could
        // not give back (no cell in the zone) still is.
        if self.mine.is_recorded() && stopped() {
            return Release::Released {
                now_idle_draining: false,
            };
        }
        let r = self.slot.release();
        self.mine.decrement();
        r
    }
}

/// Room for the keys a give-back names in its log line, filled under the
/// lock without allocating.
pub const KEYS_TEXT_LEN: usize = 480;

/// "key (n), key (n)" of the keys given back, as many as fit.
#[derive(Clone, Debug)]
pub struct KeysText {
    buf: [u8; KEYS_TEXT_LEN],
    pub(super) len: usize,
    /// Keys that did not fit.
    pub more: u32,
}

impl Default for KeysText {
    fn default() -> Self {
        KeysText {
            buf: [0; KEYS_TEXT_LEN],
            len: 0,
            more: 0,
        }
    }
}

impl KeysText {
    pub(super) fn push(&mut self, key: &[u8], n: u32) {
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut v = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let sep: &[u8] = if self.len == 0 { b"" } else { b", " };
        let parts: [&[u8]; 5] = [sep, key, b" (", &digits[at..], b")"];
        let need: usize = parts.iter().map(|p| p.len()).sum();
        if self.more > 0 || self.len + need > KEYS_TEXT_LEN {
            self.more += 1;
            return;
        }
        for p in parts {
            self.buf[self.len..self.len + p.len()].copy_from_slice(p);
            self.len += p.len();
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.more == 0
    }
}

/// What a reclaim gave back for one worker.
#[derive(Clone, Debug)]
pub struct Reclaimed {
    pub worker: ProcessId,
    /// Connections subtracted from the shared counts.
    pub connections: u64,
    /// The keys they were counted under, with how many each.
    pub keys: KeysText,
}

/// A live record as the status page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerView {
    pub worker: ProcessId,
    pub connections: u64,
}

/// A record as a look for dead workers saw it: probed without the lock,
/// given back (`Table::reclaim_seen`) only if still there unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSeen {
    pub worker: ProcessId,
    rec: RecordRef,
}

impl WorkerRecord {
    pub(super) fn id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid.load(Ordering::Relaxed),
            start_time: self.start_time.load(Ordering::Relaxed),
            uid: self.uid.load(Ordering::Relaxed),
        }
    }

    fn dir(&self) -> &[AtomicPtr<Chunk>] {
        let dir = self.dir.load(Ordering::Relaxed);
        if dir.is_null() {
            return &[];
        }
        // SAFETY: at least `dir_len` pointers (the directory is replaced
        // before its length grows), allocated under the lock.
        unsafe { core::slice::from_raw_parts(dir, self.dir_len.load(Ordering::Relaxed) as usize) }
    }

    /// (block index, chunk) for every chunk.
    fn chunks(&self) -> impl Iterator<Item = (usize, &Chunk)> {
        self.dir().iter().enumerate().filter_map(|(i, c)| {
            // SAFETY: null or a chunk of this record.
            unsafe { c.load(Ordering::Relaxed).as_ref() }.map(|c| (i, c))
        })
    }

    pub(super) fn reaches(&self, chunk: *mut u8) -> bool {
        ptr::eq(self, chunk.cast())
            || self.dir.load(Ordering::Relaxed).cast() == chunk
            || self.chunks().any(|(_, c)| ptr::eq(c, chunk.cast()))
    }
}

impl Table {
    pub(super) fn records(&self) -> impl Iterator<Item = &WorkerRecord> {
        let mut at = self.workers.load(Ordering::Acquire).cast::<WorkerRecord>();
        core::iter::from_fn(move || {
            // SAFETY: the list links live records, changed under the lock.
            let r = unsafe { at.as_ref()? };
            at = r.next.load(Ordering::Relaxed);
            Some(r)
        })
    }

    /// Records on the list (read without the lock: a hint for sizing).
    pub fn nrecords(&self) -> usize {
        self.nrecords.load(Ordering::Relaxed) as usize
    }

    /// Adds a record for the worker `id`; `None` when the zone is full.
    pub fn register_worker(&self, locked: &impl Arena, id: ProcessId) -> Option<RecordRef> {
        self.assert_locked(locked);
        let rec = locked
            .alloc(size_of::<WorkerRecord>())?
            .cast::<WorkerRecord>();
        self.journal
            .alloc
            .store(rec.as_ptr().cast(), Ordering::Relaxed);
        // SAFETY: fresh memory of the right size and alignment.
        unsafe {
            rec.write(WorkerRecord {
                pid: AtomicI32::new(id.pid),
                uid: AtomicU32::new(id.uid),
                start_time: AtomicU64::new(id.start_time),
                next: AtomicPtr::new(self.workers.load(Ordering::Relaxed).cast()),
                dir: AtomicPtr::new(ptr::null_mut()),
                dir_len: AtomicU32::new(0),
                total: AtomicU32::new(0),
            })
        };
        crash::point("register.allocated");
        self.workers.store(rec.as_ptr().cast(), Ordering::Release);
        self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        self.nrecords.fetch_add(1, Ordering::Relaxed);
        Some(RecordRef(rec))
    }

    /// The cell of `rec` for `slot`, allocated if needed; `None` when the
    /// zone is full.
    pub fn cell(&self, locked: &impl Arena, rec: RecordRef, slot: SlotRef) -> Option<CellRef> {
        if !self.make_chunks(locked, rec, &[slot.block()]) {
            return None;
        }
        self.made_cell(rec, slot)
    }

    /// Gives `rec` the chunk of cells for each of `blocks` (block indexes,
    /// `SlotRef::block`) it has none for: the work under the lock is per
    /// block, not per key. The directory grows once, to the highest block.
    /// `false` when the zone had no room for some (every block is tried: a
    /// chunk may fit where a longer directory does not).
    pub fn make_chunks(&self, locked: &impl Arena, rec: RecordRef, blocks: &[usize]) -> bool {
        self.assert_locked(locked);
        // SAFETY: the caller's own record, live.
        let r = unsafe { rec.0.as_ref() };
        if let Some(&last) = blocks.iter().max() {
            if last >= r.dir().len() && self.grow_dir(locked, r, last + 1).is_none() {
                return false;
            }
        }
        let mut made = true;
        for &block in blocks {
            made &= self.make_chunk(locked, r, block).is_some();
        }
        made
    }

    fn make_chunk(&self, locked: &impl Arena, r: &WorkerRecord, block: usize) -> Option<()> {
        if block >= r.dir().len() {
            self.grow_dir(locked, r, block + 1)?;
        }
        let entry = &r.dir()[block];
        if entry.load(Ordering::Relaxed).is_null() {
            let chunk = locked.alloc(size_of::<Chunk>())?.cast::<Chunk>();
            self.journal
                .alloc
                .store(chunk.as_ptr().cast(), Ordering::Relaxed);
            // SAFETY: fresh memory; AtomicU32 zeroes are valid cells.
            unsafe { ptr::write_bytes(chunk.as_ptr(), 0, 1) };
            crash::point("cell.allocated");
            entry.store(chunk.as_ptr(), Ordering::Release);
            self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        }
        Some(())
    }

    /// The cell of `rec` for `slot` if its chunk was made (`make_chunks`).
    /// Needs no lock: only the record's own worker changes its directory
    /// and chunks while it lives, and this is that worker.
    pub fn made_cell(&self, rec: RecordRef, slot: SlotRef) -> Option<CellRef> {
        // SAFETY: the caller's own record, live.
        let r = unsafe { rec.0.as_ref() };
        let at = slot.slot().id.load(Ordering::Relaxed) as usize % SLOTS_PER_BLOCK;
        let chunk = r.dir().get(slot.block())?.load(Ordering::Acquire);
        // SAFETY: a chunk of this record's directory, freed only when the
        // record is given back (its worker is done counting).
        let chunk = unsafe { chunk.as_ref()? };
        Some(CellRef {
            cell: NonNull::from(&chunk.cells[at]),
            total: NonNull::from(&r.total),
        })
    }

    /// Makes room in `r`'s directory for `len` blocks.
    fn grow_dir(&self, locked: &impl Arena, r: &WorkerRecord, len: usize) -> Option<()> {
        let old = r.dir();
        let len = len.max(old.len() * 2).max(8);
        let new = locked
            .alloc(len * size_of::<AtomicPtr<Chunk>>())?
            .cast::<AtomicPtr<Chunk>>();
        self.journal
            .alloc
            .store(new.as_ptr().cast(), Ordering::Relaxed);
        // SAFETY: fresh memory for `len` pointers.
        unsafe {
            for i in 0..len {
                let p = old
                    .get(i)
                    .map_or(ptr::null_mut(), |c| c.load(Ordering::Relaxed));
                new.add(i).write(AtomicPtr::new(p));
            }
        }
        let old_ptr = r.dir.load(Ordering::Relaxed);
        self.journal
            .freeing
            .store(old_ptr.cast(), Ordering::Relaxed);
        // The longer directory first, then its length: a reader never
        // reads past the directory it finds.
        r.dir.store(new.as_ptr(), Ordering::Release);
        r.dir_len.store(len as u32, Ordering::Release);
        self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        if let Some(o) = NonNull::new(old_ptr) {
            // SAFETY: the old directory, replaced above.
            unsafe { locked.free(o.cast()) };
        }
        self.journal
            .freeing
            .store(ptr::null_mut(), Ordering::Relaxed);
        Some(())
    }

    /// Copies the live records, with what each holds, into `out`, as many
    /// as its capacity allows (reserved before locking: nothing is
    /// allocated under the lock).
    pub fn workers_into(&self, locked: &impl Arena, out: &mut Vec<WorkerView>) {
        self.assert_locked(locked);
        for r in self.records() {
            if out.len() == out.capacity() {
                break;
            }
            out.push(WorkerView {
                worker: r.id(),
                connections: u64::from(r.total.load(Ordering::Relaxed)),
            });
        }
    }

    /// Copies the records into `out`, as many as its capacity allows, for
    /// a look for dead workers that probes them without the lock.
    pub fn records_into(&self, locked: &impl Arena, out: &mut Vec<RecordSeen>) {
        self.assert_locked(locked);
        for r in self.records() {
            if out.len() == out.capacity() {
                break;
            }
            out.push(RecordSeen {
                worker: r.id(),
                rec: RecordRef(NonNull::from(r)),
            });
        }
    }

    /// Connections given back so far on behalf of dead workers.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Gives back what a worker found dead held, if its record is still on
    /// the list as `seen` saw it (another worker may have done it since).
    pub fn reclaim_seen(&self, locked: &impl Arena, seen: RecordSeen) -> Option<Reclaimed> {
        self.assert_locked(locked);
        let listed = self
            .records()
            .any(|r| ptr::eq(r, seen.rec.0.as_ptr()) && r.id() == seen.worker);
        if !listed {
            return None;
        }
        Some(self.give_back_record(locked, seen.rec, true))
    }

    /// Gives back what this exiting worker's `rec` holds and frees it (a
    /// dead worker's: `reclaim_seen`). Cell by cell, each give-back journalled; the record is
    /// unlinked last, so a reclaim cut short is taken up again.
    pub fn reclaim(&self, locked: &impl Arena, rec: RecordRef) -> Reclaimed {
        self.give_back_record(locked, rec, false)
    }

    /// `reclaim`; `dead`: on behalf of a dead worker, counted in `reclaimed`.
    fn give_back_record(&self, locked: &impl Arena, rec: RecordRef, dead: bool) -> Reclaimed {
        self.assert_locked(locked);
        // SAFETY: a record of this table, which nobody else frees while we
        // hold the lock.
        let r = unsafe { rec.0.as_ref() };
        let mut out = Reclaimed {
            worker: r.id(),
            connections: 0,
            keys: KeysText::default(),
        };
        for (index, chunk) in r.chunks() {
            let block = self.block(index);
            for (at, cell) in chunk.cells.iter().enumerate() {
                let held = cell.load(Ordering::Relaxed);
                if held == 0 {
                    continue;
                }
                let Some(slot) = block.map(|b| &b.slots[at]).filter(|s| s.is_used()) else {
                    cell.store(0, Ordering::Relaxed);
                    continue;
                };
                let taken = self.give_back(cell, slot, held, dead);
                self.pick_index_slot_changed(slot, None);
                out.connections += u64::from(taken);
                // SAFETY: lock held; a used slot.
                out.keys.push(unsafe { slot.key() }, taken);
                if slot.flags.has(Flag::Draining) {
                    self.try_remove(locked, slot);
                }
            }
        }
        self.free_record(locked, r);
        if dead {
            // A release it made may have lowered a count without updating
            // the index (killed in between): every leaf from its slot.
            self.rebuild_pick_indexes();
        }
        out
    }

    /// Subtracts a worker's share `held` (`dead`: counted in `reclaimed`) of `slot` and clears its
    /// cell, journalled so that a kill in between is finished by repair
    /// (`finish_give_back`) rather than lost or done twice.
    fn give_back(&self, cell: &AtomicU32, slot: &Slot, held: u32, dead: bool) -> u32 {
        let j = &self.journal;
        j.cell_slot
            .store(ptr::from_ref(slot).cast_mut(), Ordering::Relaxed);
        j.cell_held.store(held, Ordering::Relaxed);
        j.cell_dead.store(u32::from(dead), Ordering::Relaxed);
        j.cell_subtracted.store(0, Ordering::Relaxed);
        j.cell
            .store(ptr::from_ref(cell).cast_mut(), Ordering::Release);
        crash::point("reclaim.journalled");
        let taken = slot.subtract(held);
        if dead {
            self.reclaimed
                .fetch_add(u64::from(taken), Ordering::Relaxed);
        }
        j.cell_subtracted.store(1, Ordering::Release);
        crash::point("reclaim.subtracted");
        cell.store(0, Ordering::Relaxed);
        j.cell.store(ptr::null_mut(), Ordering::Release);
        taken
    }

    /// Frees `r`'s chunks, its directory and then the record itself, each
    /// named in the journal while it is freed.
    fn free_record(&self, locked: &impl Arena, r: &WorkerRecord) {
        for c in r.dir() {
            if let Some(chunk) = NonNull::new(c.load(Ordering::Relaxed)) {
                self.free_reachable_once(locked, chunk.cast(), || {
                    c.store(ptr::null_mut(), Ordering::Relaxed)
                });
            }
        }
        if let Some(d) = NonNull::new(r.dir.load(Ordering::Relaxed)) {
            self.free_reachable_once(locked, d.cast(), || {
                r.dir_len.store(0, Ordering::Relaxed);
                r.dir.store(ptr::null_mut(), Ordering::Relaxed);
            });
        }
        self.free_reachable_once(locked, NonNull::from(r).cast(), || {
            self.unlink(r);
            crash::point("reclaim.unlinked");
        });
    }

    /// Frees `chunk` once `unlink` has made it unreachable, with the
    /// journal naming it meanwhile.
    fn free_reachable_once(&self, locked: &impl Arena, chunk: NonNull<u8>, unlink: impl FnOnce()) {
        self.journal
            .freeing
            .store(chunk.as_ptr(), Ordering::Relaxed);
        unlink();
        // SAFETY: zone memory of this table, just made unreachable.
        unsafe { locked.free(chunk) };
        self.journal
            .freeing
            .store(ptr::null_mut(), Ordering::Relaxed);
    }

    fn unlink(&self, r: &WorkerRecord) {
        let next = r.next.load(Ordering::Relaxed);
        let at = ptr::from_ref(r).cast_mut();
        let unlinked = if self.workers.load(Ordering::Relaxed) == at.cast() {
            self.workers.store(next.cast(), Ordering::Release);
            true
        } else if let Some(before) = self
            .records()
            .find(|b| b.next.load(Ordering::Relaxed) == at)
        {
            before.next.store(next, Ordering::Release);
            true
        } else {
            false
        };
        if unlinked {
            self.nrecords.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub(crate) fn records_count(&self) -> usize {
        self.records().count()
    }

    /// Repair: recounts the records.
    pub(super) fn repair_records(&self, _locked: &impl Arena) {
        let n = self.records().count() as u32;
        self.nrecords.store(n, Ordering::Relaxed);
    }

    /// Whether a record, its directory or one of its chunks is `chunk`.
    pub(super) fn record_reaches(&self, chunk: *mut u8) -> bool {
        self.records().any(|r| r.reaches(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::liveness::tests::worker;
    use crate::core::table::tests::{table, HeapArena, M};

    fn workers(t: &Table, a: &HeapArena) -> Vec<WorkerView> {
        let mut out = Vec::with_capacity(64);
        t.workers_into(a, &mut out);
        out
    }

    /// The look for dead workers as workers.rs does it: copy, probe
    /// outside the lock, give back what is still there.
    fn reclaim_dead(t: &Table, a: &HeapArena, alive: impl Fn(ProcessId) -> bool) -> Vec<Reclaimed> {
        let mut seen = Vec::with_capacity(t.nrecords());
        t.records_into(a, &mut seen);
        seen.into_iter()
            .filter(|s| !alive(s.worker))
            .filter_map(|s| t.reclaim_seen(a, s))
            .collect()
    }

    fn counted(t: &Table, a: &HeapArena, rec: RecordRef, key: &[u8]) -> Counted {
        let slot = t.upsert(a, key, 0, M, t.epoch()).unwrap();
        Counted {
            slot,
            mine: t.cell(a, rec, slot).unwrap(),
        }
    }

    #[test]
    fn counts_are_attributed_and_a_dead_workers_share_given_back() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        t.begin_epoch(&a);
        let w1 = t.register_worker(&a, worker(1)).unwrap();
        let w2 = t.register_worker(&a, worker(2)).unwrap();
        let c1 = counted(t, &a, w1, b"conn_count:u:a");
        let c2 = counted(t, &a, w2, b"conn_count:u:a");
        let other = counted(t, &a, w1, b"conn_count:u:b");
        for _ in 0..3 {
            assert_eq!(c1.acquire(0), Acquire::Taken);
        }
        for _ in 0..2 {
            assert_eq!(c2.acquire(0), Acquire::Taken);
        }
        assert_eq!(other.acquire(0), Acquire::Taken);
        assert_eq!(c1.slot.count(), Some(5));
        assert_eq!((c1.mine.get(), c2.mine.get()), (3, 2));
        assert_eq!(
            workers(t, &a),
            vec![
                WorkerView {
                    worker: worker(2),
                    connections: 2
                },
                WorkerView {
                    worker: worker(1),
                    connections: 4
                },
            ]
        );

        let gone = reclaim_dead(t, &a, |id| id.pid == 2);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].worker, worker(1));
        assert_eq!(gone[0].connections, 4);
        assert_eq!(
            gone[0].keys.as_bytes(),
            b"conn_count:u:a (3), conn_count:u:b (1)"
        );
        assert_eq!(c1.slot.count(), Some(2), "the live worker's 2 remain");
        assert_eq!(other.slot.count(), Some(0));
        assert_eq!(t.reclaimed(), 4);
        assert_eq!(workers(t, &a).len(), 1);
        // Nothing more to give back: the record is gone.
        assert!(reclaim_dead(t, &a, |id| id.pid == 2).is_empty());
        assert_eq!(t.reclaimed(), 4);
    }

    #[test]
    fn releases_after_the_worker_gave_everything_back_do_nothing() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        t.begin_epoch(&a);
        let w = t.register_worker(&a, worker(1)).unwrap();
        let c = counted(t, &a, w, b"k");
        let other = t.register_worker(&a, worker(2)).unwrap();
        let o = counted(t, &a, other, b"k");
        c.acquire(0);
        o.acquire(0);
        // Exit: stop counting, then give back (and free the cells).
        stop_counting();
        assert_eq!(t.reclaim(&a, w).connections, 1);
        // A later module's exit hook releases the connection again.
        assert!(matches!(c.release(), Release::Released { .. }));
        assert_eq!(c.slot.count(), Some(1), "the other worker's stays");
    }

    #[test]
    fn a_refused_acquire_leaves_the_share_alone() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        t.begin_epoch(&a);
        let w = t.register_worker(&a, worker(1)).unwrap();
        let c = counted(t, &a, w, b"k");
        assert_eq!(c.acquire(1), Acquire::Taken);
        assert_eq!(c.acquire(1), Acquire::AtLimit);
        assert_eq!(c.mine.get(), 1);
        assert!(matches!(c.release(), Release::Released { .. }));
        assert_eq!(c.mine.get(), 0);
        assert_eq!(c.slot.count(), Some(0));
    }

    #[test]
    fn a_draining_key_held_only_by_the_dead_is_freed() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        t.begin_epoch(&a);
        let w = t.register_worker(&a, worker(9)).unwrap();
        let c = counted(t, &a, w, b"conn_count:u:gone");
        c.acquire(0);
        let e2 = t.begin_epoch(&a);
        t.sweep(&a, e2);
        assert!(c.slot.is_draining());
        reclaim_dead(t, &a, |_| false);
        assert_eq!(c.slot.count(), None, "the key was removed");
        assert_eq!(t.keys(), 0);
    }

    #[test]
    fn a_worker_exiting_gives_back_what_it_holds_and_its_memory() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        t.begin_epoch(&a);
        let before = a.budget.get();
        let w = t.register_worker(&a, worker(3)).unwrap();
        // Keys in several blocks, so the directory grows.
        let cs: Vec<Counted> = (0..300)
            .map(|i| counted(t, &a, w, format!("conn_count:u:10.0.0.{i}:80").as_bytes()))
            .collect();
        cs[0].acquire(0);
        cs[299].acquire(0);
        let r = t.reclaim(&a, w);
        assert_eq!(r.connections, 2);
        assert_eq!(cs[0].slot.count(), Some(0));
        assert_eq!(cs[299].slot.count(), Some(0));
        assert!(workers(t, &a).is_empty());
        // Freed: the record, its directory and chunks; the keys remain.
        let keys_cost = before - a.budget.get();
        let w2 = t.register_worker(&a, worker(4)).unwrap();
        for c in &cs {
            t.cell(&a, w2, c.slot).unwrap();
        }
        let record_cost = before - a.budget.get() - keys_cost;
        // 300 keys span 5 blocks: a header, a directory of 8 pointers and
        // 5 chunks of 63 cells.
        assert_eq!(
            record_cost,
            size_of::<WorkerRecord>() + 8 * 8 + 5 * size_of::<Chunk>()
        );
        assert!(record_cost <= 300 * 5, "about 4 bytes per key");
    }

    #[test]
    fn chunks_are_made_per_block_under_the_lock_and_cells_found_without_it() {
        let a = HeapArena::new(1 << 22);
        let t = table(&a);
        t.begin_epoch(&a);
        let slots: Vec<SlotRef> = (0..100)
            .map(|i| {
                t.upsert(&a, format!("k{i}").as_bytes(), 0, M, t.epoch())
                    .unwrap()
            })
            .collect();
        let w = t.register_worker(&a, worker(1)).unwrap();
        assert!(t.made_cell(w, slots[0]).is_none(), "no chunk yet");
        let mut blocks: Vec<usize> = slots.iter().map(SlotRef::block).collect();
        blocks.dedup();
        assert_eq!(blocks, [0, 1], "100 keys in two blocks of 63");
        let before = a.budget.get();
        assert!(t.make_chunks(&a, w, &blocks));
        assert!(t.make_chunks(&a, w, &blocks), "again: nothing more");
        assert_eq!(before - a.budget.get(), 8 * 8 + 2 * size_of::<Chunk>());
        let cells: Vec<CellRef> = slots.iter().map(|s| t.made_cell(w, *s).unwrap()).collect();
        // The same cells as `cell` gives, each its own.
        for (s, c) in slots.iter().zip(&cells) {
            assert_eq!(t.cell(&a, w, *s), Some(*c));
        }
        let mut distinct = cells.clone();
        distinct.sort_by_key(|c| c.cell.as_ptr() as usize);
        distinct.dedup();
        assert_eq!(distinct.len(), 100);
        // A zone with no room left makes no chunk, and no cell is found.
        let w2 = t.register_worker(&a, worker(2)).unwrap();
        a.budget.set(0);
        assert!(!t.make_chunks(&a, w2, &blocks));
        assert!(t.made_cell(w2, slots[0]).is_none());
    }

    #[test]
    fn a_full_zone_refuses_records_without_harm() {
        let a = HeapArena::new(1 << 20);
        let t = table(&a);
        t.begin_epoch(&a);
        let slot = t.upsert(&a, b"k", 0, M, t.epoch()).unwrap();
        a.budget.set(0);
        assert!(t.register_worker(&a, worker(1)).is_none());
        a.budget.set(size_of::<WorkerRecord>());
        let w = t.register_worker(&a, worker(1)).unwrap();
        assert!(t.cell(&a, w, slot).is_none(), "no room for the chunk");
        // Counting through the unrecorded cell still counts the slot.
        let c = Counted {
            slot,
            mine: CellRef::unrecorded(),
        };
        assert_eq!(c.acquire(0), Acquire::Taken);
        assert_eq!(slot.count(), Some(1));
        assert_eq!(t.reclaim(&a, w).connections, 0);
        assert_eq!(
            slot.count(),
            Some(1),
            "an unrecorded count is not given back"
        );
    }
}
