//! Per-worker records: which worker process holds which part of each count,
//! so that counts held by a worker that died without releasing them (SIGKILL,
//! SIGSEGV, the OOM killer) can be given back.
//!
//! Every worker registers a record in the zone when it starts. For each
//! table block whose keys its configuration uses it gets a chunk of 63
//! cells, one per slot of the block (the slot's `id` says which): a cell is
//! this worker's share of that slot's count. Only the owning worker writes
//! its cells; anyone reads them only once the owner is gone.
//!
//! Counting updates the cell before the shared count on acquire, and after
//! it on release, so a worker killed between the two updates makes the
//! reclaim give back one connection too many (the count reads low until
//! that connection closes and the release stops at zero), never one too few
//! (a count that stayed high for ever).
//!
//! Memory, all from the zone: a record header (64 bytes), a directory of 8
//! bytes per table block, and 256 bytes per block of 63 keys it uses: about
//! 4 bytes per key per live worker.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::table::{Acquire, Arena, Release, SlotRef, Table, FLAG_DRAINING, SLOTS_PER_BLOCK};

/// A worker process, told apart from a later process that reuses its pid
/// by the time it started (`/proc/<pid>/stat`, field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

/// State (field 3) and start time (field 22) of a `/proc/<pid>/stat` line.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last ')'.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// Whether the process recorded as `id` still runs, given whether its pid
/// exists (`kill(pid, 0)`) and what `/proc/<pid>/stat` says (`None`:
/// unreadable). A zombie is gone (it waits for the master to reap it); a
/// different start time means the pid now belongs to another process. When
/// the pid exists but its stat cannot be read, nothing is known: alive.
pub fn is_alive(id: ProcessId, exists: bool, stat: Option<&str>) -> bool {
    if !exists {
        return false;
    }
    match stat.and_then(parse_stat) {
        Some((state, start_time)) => state != 'Z' && state != 'X' && start_time == id.start_time,
        None => true,
    }
}

#[repr(C)]
struct Chunk {
    cells: [AtomicU32; SLOTS_PER_BLOCK],
}

#[repr(C)]
#[derive(Debug)]
pub struct WorkerRecord {
    pid: AtomicI32,
    start_time: AtomicU64,
    next: AtomicPtr<WorkerRecord>,
    /// `dir_len` chunk pointers, by block index; null: nothing counted there.
    dir: AtomicPtr<AtomicPtr<Chunk>>,
    dir_len: AtomicU32,
}

/// A worker's own record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef(NonNull<WorkerRecord>);

// SAFETY: the record lives in shared memory, mapped in every process that
// holds a RecordRef; it changes only under the zone lock.
unsafe impl Send for RecordRef {}
unsafe impl Sync for RecordRef {}

/// A worker's share of one slot's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellRef(NonNull<AtomicU32>);

// SAFETY: as for RecordRef; only the owning worker writes the cell.
unsafe impl Send for CellRef {}
unsafe impl Sync for CellRef {}

/// Where a worker counts its share when the zone had no room for it: a cell
/// in the process's own memory, which no reclaim ever reads.
static UNRECORDED: AtomicU32 = AtomicU32::new(0);

impl CellRef {
    /// The cell for counts that cannot be recorded in the zone.
    pub fn unrecorded() -> CellRef {
        CellRef(NonNull::from(&UNRECORDED))
    }

    fn cell(&self) -> &AtomicU32 {
        // SAFETY: chunks are freed only when their worker is gone.
        unsafe { self.0.as_ref() }
    }

    /// Only the owner writes: a load and a store, no locked instruction.
    #[inline]
    fn add(&self, n: i32) {
        let c = self.cell();
        c.store(
            c.load(Ordering::Relaxed).saturating_add_signed(n),
            Ordering::Relaxed,
        );
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
        self.mine.add(1);
        let r = self.slot.acquire(max_conns);
        if r != Acquire::Taken {
            self.mine.add(-1);
        }
        r
    }

    #[inline]
    pub fn release(&self) -> Release {
        let r = self.slot.release();
        self.mine.add(-1);
        r
    }
}

/// What a reclaim gave back for one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub worker: ProcessId,
    /// Connections subtracted from the shared counts.
    pub connections: u64,
    /// The keys they were counted under, with how many each.
    pub keys: Vec<(Vec<u8>, u32)>,
}

/// A live record as the status page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerView {
    pub worker: ProcessId,
    pub connections: u64,
}

impl WorkerRecord {
    fn id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid.load(Ordering::Relaxed),
            start_time: self.start_time.load(Ordering::Relaxed),
        }
    }

    fn dir(&self) -> &[AtomicPtr<Chunk>] {
        let dir = self.dir.load(Ordering::Relaxed);
        if dir.is_null() {
            return &[];
        }
        // SAFETY: `dir_len` pointers, allocated with the record or grown
        // under the lock.
        unsafe { core::slice::from_raw_parts(dir, self.dir_len.load(Ordering::Relaxed) as usize) }
    }

    /// (block index, chunk) for every chunk.
    fn chunks(&self) -> impl Iterator<Item = (usize, &Chunk)> {
        self.dir().iter().enumerate().filter_map(|(i, c)| {
            // SAFETY: null or a chunk of this record.
            unsafe { c.load(Ordering::Relaxed).as_ref() }.map(|c| (i, c))
        })
    }

    fn connections(&self) -> u64 {
        self.chunks()
            .flat_map(|(_, c)| c.cells.iter())
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }
}

impl Table {
    fn records(&self) -> impl Iterator<Item = &WorkerRecord> {
        let mut at = self.workers.load(Ordering::Acquire);
        core::iter::from_fn(move || {
            // SAFETY: the list links live records, changed under the lock.
            let r = unsafe { at.as_ref()? };
            at = r.next.load(Ordering::Relaxed);
            Some(r)
        })
    }

    /// Adds a record for the worker `id`; `None` when the zone is full.
    pub fn register_worker(&self, locked: &impl Arena, id: ProcessId) -> Option<RecordRef> {
        let rec = locked
            .alloc(size_of::<WorkerRecord>())?
            .cast::<WorkerRecord>();
        // SAFETY: fresh memory of the right size and alignment.
        unsafe {
            rec.write(WorkerRecord {
                pid: AtomicI32::new(id.pid),
                start_time: AtomicU64::new(id.start_time),
                next: AtomicPtr::new(self.workers.load(Ordering::Relaxed)),
                dir: AtomicPtr::new(ptr::null_mut()),
                dir_len: AtomicU32::new(0),
            })
        };
        self.workers.store(rec.as_ptr(), Ordering::Release);
        Some(RecordRef(rec))
    }

    /// The cell of `rec` for `slot`, allocated if needed; `None` when the
    /// zone is full.
    pub fn cell(&self, locked: &impl Arena, rec: RecordRef, slot: SlotRef) -> Option<CellRef> {
        // SAFETY: the caller's own record, live.
        let r = unsafe { rec.0.as_ref() };
        let id = slot.slot().id.load(Ordering::Relaxed) as usize;
        let (block, at) = (id / SLOTS_PER_BLOCK, id % SLOTS_PER_BLOCK);
        if block >= r.dir().len() {
            grow_dir(locked, r, block + 1)?;
        }
        let entry = &r.dir()[block];
        if entry.load(Ordering::Relaxed).is_null() {
            let chunk = locked.alloc(size_of::<Chunk>())?.cast::<Chunk>();
            // SAFETY: fresh memory; AtomicU32 zeroes are valid cells.
            unsafe { ptr::write_bytes(chunk.as_ptr(), 0, 1) };
            entry.store(chunk.as_ptr(), Ordering::Release);
        }
        // SAFETY: just checked or allocated.
        let chunk = unsafe { &*entry.load(Ordering::Relaxed) };
        Some(CellRef(NonNull::from(&chunk.cells[at])))
    }

    /// The records of live workers, with what each holds.
    pub fn workers(&self, _locked: &impl Arena) -> Vec<WorkerView> {
        self.records()
            .map(|r| WorkerView {
                worker: r.id(),
                connections: r.connections(),
            })
            .collect()
    }

    /// Connections given back so far on behalf of dead workers.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Gives back every count of each recorded worker that `alive` says is
    /// gone, and frees its record.
    pub fn reclaim_dead(
        &self,
        locked: &impl Arena,
        mut alive: impl FnMut(ProcessId) -> bool,
    ) -> Vec<Reclaimed> {
        let dead: Vec<NonNull<WorkerRecord>> = self
            .records()
            .filter(|r| !alive(r.id()))
            .map(NonNull::from)
            .collect();
        let out: Vec<Reclaimed> = dead
            .into_iter()
            .map(|r| self.reclaim(locked, RecordRef(r)))
            .collect();
        let total: u64 = out.iter().map(|r| r.connections).sum();
        self.reclaimed.fetch_add(total, Ordering::Relaxed);
        out
    }

    /// Gives back what `rec` holds and frees it: a worker exiting, or one
    /// found dead. The caller counts what a dead one gave back.
    pub fn reclaim(&self, locked: &impl Arena, rec: RecordRef) -> Reclaimed {
        // SAFETY: a record of this table, which nobody else frees while we
        // hold the lock.
        let r = unsafe { rec.0.as_ref() };
        let blocks = self.blocks_by_index();
        let mut out = Reclaimed {
            worker: r.id(),
            connections: 0,
            keys: Vec::new(),
        };
        for (index, chunk) in r.chunks() {
            for (at, cell) in chunk.cells.iter().enumerate() {
                let held = cell.swap(0, Ordering::Relaxed);
                let Some(slot) = blocks.get(index).map(|b| &b.slots[at]) else {
                    continue;
                };
                if held == 0 || !slot.is_used() {
                    continue;
                }
                let taken = slot.subtract(held);
                out.connections += u64::from(taken);
                // SAFETY: lock held; a used slot.
                out.keys.push((unsafe { slot.key() }.to_vec(), taken));
                if slot.flags.load(Ordering::Relaxed) & FLAG_DRAINING != 0 {
                    self.try_remove(locked, slot);
                }
            }
        }
        self.unlink(locked, r);
        out
    }

    fn unlink(&self, locked: &impl Arena, r: &WorkerRecord) {
        let mut link = &self.workers;
        // SAFETY: lock held; `r` is on the list.
        unsafe {
            while !ptr::eq(link.load(Ordering::Relaxed), r) {
                link = &(*link.load(Ordering::Relaxed)).next;
            }
            link.store(r.next.load(Ordering::Relaxed), Ordering::Release);
            for c in r.dir() {
                if let Some(c) = NonNull::new(c.load(Ordering::Relaxed)) {
                    locked.free(c.cast());
                }
            }
            if let Some(d) = NonNull::new(r.dir.load(Ordering::Relaxed)) {
                locked.free(d.cast());
            }
            locked.free(NonNull::from(r).cast());
        }
    }
}

/// Makes room in `r`'s directory for `len` blocks.
fn grow_dir(locked: &impl Arena, r: &WorkerRecord, len: usize) -> Option<()> {
    let old = r.dir();
    let len = len.max(old.len() * 2).max(8);
    let new = locked
        .alloc(len * size_of::<AtomicPtr<Chunk>>())?
        .cast::<AtomicPtr<Chunk>>();
    // SAFETY: fresh memory for `len` pointers.
    unsafe {
        for i in 0..len {
            let p = old
                .get(i)
                .map_or(ptr::null_mut(), |c| c.load(Ordering::Relaxed));
            new.add(i).write(AtomicPtr::new(p));
        }
    }
    let old_ptr = r.dir.swap(new.as_ptr(), Ordering::Release);
    r.dir_len.store(len as u32, Ordering::Relaxed);
    if let Some(o) = NonNull::new(old_ptr) {
        // SAFETY: the old directory, replaced above.
        unsafe { locked.free(o.cast()) };
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::tests::HeapArena;
    use crate::core::table::Meta;

    const M: Meta = Meta {
        weight: 1,
        max_conns: 0,
        flags: 0,
    };

    fn table(a: &HeapArena) -> &'static Table {
        // SAFETY: the arena outlives the test's use of the table.
        unsafe { &*Table::create(a, 64).unwrap().as_ptr() }
    }

    fn worker(pid: i32) -> ProcessId {
        ProcessId {
            pid,
            start_time: 1000 + pid as u64,
        }
    }

    fn counted(t: &Table, a: &HeapArena, rec: RecordRef, key: &[u8]) -> Counted {
        let slot = t.upsert(a, key, 0, M, t.epoch()).unwrap();
        Counted {
            slot,
            mine: t.cell(a, rec, slot).unwrap(),
        }
    }

    fn stat(pid: i32, comm: &str, state: char, start: u64) -> String {
        format!(
            "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 200"
        )
    }

    #[test]
    fn stat_lines_are_read_past_odd_command_names() {
        assert_eq!(parse_stat(&stat(7, "nginx", 'S', 4242)), Some(('S', 4242)));
        assert_eq!(parse_stat(&stat(7, "a) b (c", 'R', 17)), Some(('R', 17)));
        assert_eq!(parse_stat("7 (nginx) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn liveness_tells_dead_zombie_and_reused_pids_apart() {
        let w = worker(7);
        let me = stat(7, "nginx", 'S', w.start_time);
        assert!(is_alive(w, true, Some(&me)));
        assert!(!is_alive(w, false, None), "no such pid");
        assert!(!is_alive(w, false, Some(&me)), "kill(0) decides first");
        let zombie = stat(7, "nginx", 'Z', w.start_time);
        assert!(!is_alive(w, true, Some(&zombie)), "a zombie is gone");
        let reused = stat(7, "bash", 'S', w.start_time + 1);
        assert!(
            !is_alive(w, true, Some(&reused)),
            "a reused pid is not the worker"
        );
        assert!(is_alive(w, true, None), "unreadable stat: assume alive");
        assert!(
            is_alive(w, true, Some("garbage")),
            "unparsable stat: assume alive"
        );
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
            t.workers(&a),
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

        let gone = t.reclaim_dead(&a, |id| id.pid == 2);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].worker, worker(1));
        assert_eq!(gone[0].connections, 4);
        let mut keys = gone[0].keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                (b"conn_count:u:a".to_vec(), 3),
                (b"conn_count:u:b".to_vec(), 1)
            ]
        );
        assert_eq!(c1.slot.count(), Some(2), "the live worker's 2 remain");
        assert_eq!(other.slot.count(), Some(0));
        assert_eq!(t.reclaimed(), 4);
        assert_eq!(t.workers(&a).len(), 1);
        // Nothing more to give back: the record is gone.
        assert!(t.reclaim_dead(&a, |id| id.pid == 2).is_empty());
        assert_eq!(t.reclaimed(), 4);
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
        t.reclaim_dead(&a, |_| false);
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
        assert!(t.workers(&a).is_empty());
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
