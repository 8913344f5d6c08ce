//! Least-connections indexes in the zone (`core::least_index`), one per
//! upstream list a configuration load indexes: picks over large lists take
//! the least loaded server from one, in O(log n), under the zone lock.
//!
//! An index is an entry, found by the upstream's name and the list (primary
//! or backup), and a body: the tree, each leaf's slot, and a map from a
//! slot to its leaf. Entries are never freed (a worker keeps a pointer to
//! its list's, `PickIndexRef`); a body is replaced when a load needs a bigger
//! one, and freed when a load no longer indexes the list.
//!
//! Each load rebuilds the entries of the lists it indexes, in its own peer
//! order, and stamps them with its epoch; the other entries it retires
//! (epoch 0, body freed). A worker picks from its list's entry only while
//! the entry carries its own epoch (a worker of an earlier load scans
//! instead); any worker's release updates the leaf of the key it held
//! wherever the current body has it, so the index follows every count.
//!
//! The truth is the slots: a leaf's key is read from its slot's live count
//! and metadata (`key_of`). A count changed with no index update after it
//! (a process that died between the two, a dead worker's share given
//! back) is made right by `refresh_pick_indexes`, which rebuilds every body from
//! its slots: repair and the give-backs call it.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::checks::record_of;
use super::flags::{Flag, CHECK_OUT, CHECK_TUNED};
use super::header::{Arena, Table};
use super::health::Health;
use super::slot::{count_of, generation_of, Slot, SlotRef};
use crate::core::crash;
use crate::core::least_index::{self, Best, Head, Key, Leaf, LeastIndex, Parts};
use crate::core::ramp;

/// One indexed list: found by name, its body replaced as loads need.
#[repr(C)]
#[derive(Debug)]
pub(super) struct Entry {
    next: AtomicPtr<Entry>,
    body: AtomicPtr<Body>,
    /// The load that last built the body; 0: retired (no body).
    epoch: AtomicU32,
    /// The version of the peer list the body was built for (`build_pick_index`).
    version: AtomicU64,
    /// The list: 0 primary, 1 backup.
    list: u32,
    /// The upstream's name, `name_len` bytes, follows the entry.
    name_len: u32,
}

/// A body's own header; its arrays follow it in the same allocation.
#[repr(C)]
#[derive(Debug)]
struct Body {
    head: Head,
    capacity: u32,
    /// Map buckets: a power of two, at least twice `capacity`.
    buckets: u32,
    /// The leaves of keys seen ramping (slow start), for the periodic
    /// look (`refresh_ramping_pick_indexes`): `nramping` of them, or
    /// `RAMPING_OVERFLOW`: more than fit (the look reads every leaf, once).
    /// A hint: a kill midway loses a position at worst, which the next pick
    /// or release of that key notes again.
    nramping: AtomicU32,
    ramping: [AtomicU32; RAMPING_MAX],
}

/// How many ramping leaves a body lists.
const RAMPING_MAX: usize = 32;
const RAMPING_OVERFLOW: u32 = u32::MAX;

/// A leaf's slot, as `SlotRef` keeps one, in zone memory.
#[repr(C)]
#[derive(Debug)]
struct LeafSlot {
    slot: AtomicPtr<Slot>,
    generation: AtomicU32,
}

/// A map bucket: `id << 32 | position`; `EMPTY`: none.
const EMPTY: u64 = u64::MAX;

/// Where a body's arrays are, for a capacity.
struct Layout {
    leaves: usize,
    nodes: usize,
    slots: usize,
    map: usize,
    size: usize,
}

impl Layout {
    fn of(capacity: usize) -> Layout {
        let width = least_index::width(capacity);
        let leaves = size_of::<Body>().next_multiple_of(8);
        let nodes = leaves + capacity * size_of::<Leaf>();
        let slots = (nodes + width * size_of::<AtomicU32>()).next_multiple_of(8);
        let map = slots + capacity * size_of::<LeafSlot>();
        let size = map + map_buckets(capacity) * size_of::<AtomicU64>();
        Layout {
            leaves,
            nodes,
            slots,
            map,
            size,
        }
    }
}

fn map_buckets(capacity: usize) -> usize {
    (2 * capacity).next_power_of_two().max(2)
}

/// The map bucket a slot id starts probing at.
fn bucket_of(id: u32, buckets: usize) -> usize {
    (id.wrapping_mul(0x9e37_79b9) as usize) & (buckets - 1)
}

impl Body {
    fn at<T>(&self, offset: usize, n: usize) -> &[T] {
        // SAFETY: a body is one allocation of `Layout::of(capacity).size`
        // bytes, 8-aligned, whose arrays are initialised by `Body::init`.
        unsafe {
            let base = ptr::from_ref(self).cast::<u8>().add(offset);
            core::slice::from_raw_parts(base.cast::<T>(), n)
        }
    }

    fn layout(&self) -> Layout {
        Layout::of(self.capacity as usize)
    }

    fn capacity(&self) -> usize {
        self.capacity as usize
    }

    fn index(&self) -> LeastIndex<'_> {
        let l = self.layout();
        let n = self.capacity();
        LeastIndex::new(Parts {
            head: &self.head,
            leaves: self.at(l.leaves, n),
            nodes: self.at(l.nodes, least_index::width(n)),
        })
        .expect("a body laid out by Layout::of")
    }

    fn slots(&self) -> &[LeafSlot] {
        self.at(self.layout().slots, self.capacity())
    }

    fn map(&self) -> &[AtomicU64] {
        self.at(self.layout().map, self.buckets as usize)
    }

    /// Writes an empty body of `capacity` into fresh memory.
    ///
    /// # Safety
    /// `mem` is `Layout::of(capacity).size` bytes, 64-aligned, unshared.
    unsafe fn init<'a>(mem: NonNull<u8>, capacity: usize) -> &'a Body {
        // SAFETY: the caller's contract; all-zero atomics are valid, and
        // every field is then written.
        unsafe {
            ptr::write_bytes(mem.as_ptr(), 0, Layout::of(capacity).size);
            let body = mem.cast::<Body>();
            body.write(Body {
                head: Head::default(),
                capacity: capacity as u32,
                buckets: map_buckets(capacity) as u32,
                nramping: AtomicU32::new(0),
                ramping: [const { AtomicU32::new(0) }; RAMPING_MAX],
            });
            let body = &*body.as_ptr();
            for b in body.map() {
                b.store(EMPTY, Ordering::Relaxed);
            }
            body
        }
    }

    /// The leaf of `slot`, if this body has one.
    fn position_of(&self, slot: &Slot) -> Option<usize> {
        let id = slot.id.load(Ordering::Relaxed);
        let map = self.map();
        let mut at = bucket_of(id, map.len());
        for _ in 0..map.len() {
            let v = map[at].load(Ordering::Relaxed);
            if v == EMPTY {
                return None;
            }
            if (v >> 32) as u32 == id {
                let i = v as u32 as usize;
                let here = self.slots().get(i)?.slot.load(Ordering::Relaxed);
                return ptr::eq(here, slot).then_some(i);
            }
            at = (at + 1) & (map.len() - 1);
        }
        None
    }

    /// Fills leaves, slots and map from `slots` and rebuilds the tree.
    fn fill(&self, slots: impl ExactSizeIterator<Item = SlotRef>, now: Option<u32>) {
        let n = slots.len();
        for b in self.map() {
            b.store(EMPTY, Ordering::Relaxed);
        }
        let map = self.map();
        for (i, (s, leaf)) in slots.zip(self.slots()).enumerate() {
            leaf.slot.store(s.slot.as_ptr(), Ordering::Relaxed);
            leaf.generation.store(s.generation, Ordering::Relaxed);
            s.slot().flags.set_indexed(true);
            let id = s.slot().id.load(Ordering::Relaxed);
            let mut at = bucket_of(id, map.len());
            while map[at].load(Ordering::Relaxed) != EMPTY {
                at = (at + 1) & (map.len() - 1);
            }
            map[at].store(u64::from(id) << 32 | i as u64, Ordering::Relaxed);
        }
        self.rebuild(n, now);
    }

    /// Clears `Indexed` on the slots of the body's leaves: a load marks
    /// again those it indexes.
    fn unmark_slots(&self) {
        for leaf in &self.slots()[..self.index().servers()] {
            // SAFETY: slots live in blocks that are never freed.
            let slot = unsafe { &*leaf.slot.load(Ordering::Relaxed) };
            slot.flags.set_indexed(false);
        }
    }

    /// Rebuilds the tree of the first `n` leaves from their slots.
    fn rebuild(&self, n: usize, now: Option<u32>) {
        self.index().rebuild(n, |i| self.key_at(i, now));
    }

    /// The key of leaf `i`, from its slot.
    fn key_at(&self, i: usize, now: Option<u32>) -> Key {
        let leaf = &self.slots()[i];
        // SAFETY: slots live in blocks that are never freed.
        let slot = unsafe { &*leaf.slot.load(Ordering::Relaxed) };
        if now.is_some_and(|now| slot.ramp(now).is_some()) {
            self.note_ramping(i);
        }
        key_of(slot, leaf.generation.load(Ordering::Relaxed), now)
    }

    /// Lists leaf `i` as ramping, if it is not listed yet.
    fn note_ramping(&self, i: usize) {
        let n = self.nramping.load(Ordering::Relaxed);
        if n == RAMPING_OVERFLOW {
            return;
        }
        let listed = &self.ramping[..(n as usize).min(RAMPING_MAX)];
        if listed
            .iter()
            .any(|p| p.load(Ordering::Relaxed) as usize == i)
        {
            return;
        }
        match listed.len() {
            RAMPING_MAX => self.nramping.store(RAMPING_OVERFLOW, Ordering::Relaxed),
            len => {
                self.ramping[len].store(i as u32, Ordering::Relaxed);
                self.nramping.store(n + 1, Ordering::Relaxed);
            }
        }
    }

    /// Reads the listed ramping leaves again at `now` (every leaf once
    /// after an overflow), and keeps listed those still ramping.
    fn refresh_ramping(&self, now: u32) {
        let n = self.nramping.swap(0, Ordering::Relaxed);
        let index = self.index();
        let mut again = |i: usize| index.set(i, self.key_at(i, Some(now)));
        if n == RAMPING_OVERFLOW {
            (0..index.servers()).for_each(&mut again);
            return;
        }
        let mut listed = [0u32; RAMPING_MAX];
        for (to, from) in listed.iter_mut().zip(&self.ramping[..n as usize]) {
            *to = from.load(Ordering::Relaxed);
        }
        // `key_at` lists again those still ramping.
        for &i in &listed[..n as usize] {
            if (i as usize) < index.servers() {
                again(i as usize);
            }
        }
    }
}

/// What the index orders a server by, from its slot: out when the key is
/// gone (another generation), down, draining, taken out by the checks or
/// at its `max_conns`; else its count per weight, with what the checks
/// tuned (`core::eligible`'s rule: the capacity answer's weight and
/// `max_conns`, the load its server reported beyond the count); a ramping
/// key (slow start) by its virtual count at `now` (deciseconds; `None`, no
/// clock at hand (repair, a give-back): as if its ramp were over, until
/// its next pick or release reads it again).
fn key_of(slot: &Slot, generation: u32, now: Option<u32>) -> Key {
    let word = slot.word.load(Ordering::Acquire);
    let conns = count_of(word);
    let bits = slot.flags.check_bits();
    let out = generation_of(word) != generation
        || slot.flags.has(Flag::Down)
        || slot.flags.has(Flag::Draining)
        || bits & CHECK_OUT != 0;
    if out {
        return Key::OUT;
    }
    let mut weight = slot.weight.load(Ordering::Relaxed);
    let mut max_conns = slot.max_conns.load(Ordering::Relaxed);
    let mut load = conns;
    if bits & CHECK_TUNED != 0 {
        let tuned = record_of(slot).map(Health::tuned).unwrap_or_default();
        weight = tuned.weight.unwrap_or(weight);
        max_conns = tuned.max_conns.unwrap_or(max_conns);
        load = conns.saturating_add(tuned.excess);
    }
    if max_conns != 0 && conns >= max_conns {
        return Key::OUT;
    }
    if let Some((elapsed, window)) = now.and_then(|now| slot.ramp(now)) {
        load = ramp::virtual_count(load, elapsed, window);
    }
    Key {
        conns: load,
        weight: weight.max(1),
    }
}

impl Entry {
    fn name(&self) -> &[u8] {
        // SAFETY: `name_len` bytes follow the entry, written with it.
        unsafe {
            core::slice::from_raw_parts(
                ptr::from_ref(self).cast::<u8>().add(size_of::<Entry>()),
                self.name_len as usize,
            )
        }
    }

    fn body(&self) -> Option<&Body> {
        // SAFETY: null or a body this entry owns, replaced and freed only
        // under the lock the caller holds.
        unsafe { self.body.load(Ordering::Relaxed).as_ref() }
    }
}

/// Which list an index is built for: an upstream's (by name) primary (0)
/// or backup (1) list, by the load `epoch`, at `version` of the list (of a
/// list DNS changes; 0 for one it never changes).
#[derive(Clone, Copy, Debug)]
pub struct IndexedList<'a> {
    pub upstream: &'a [u8],
    pub list: u32,
    pub epoch: u32,
    pub version: u64,
}

/// A worker's handle on its list's index: the entry, and the load it was
/// built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickIndexRef {
    entry: NonNull<Entry>,
    epoch: u32,
}

// SAFETY: entries live in the zone for good and change only under its lock.
unsafe impl Send for PickIndexRef {}
unsafe impl Sync for PickIndexRef {}

impl PickIndexRef {
    fn entry(&self) -> &Entry {
        // SAFETY: entries are never freed.
        unsafe { self.entry.as_ref() }
    }

    /// The body, while it is the one this handle's load built.
    fn own_body(&self) -> Option<&Body> {
        let e = self.entry();
        (e.epoch.load(Ordering::Relaxed) == self.epoch)
            .then(|| e.body())
            .flatten()
    }

    /// The least loaded server of the list that `out` does not rule out
    /// (see `LeastIndex::best`), for a worker whose list is at `version`;
    /// `GaveUp` too when the index is not this load's any more (a later
    /// load rebuilt or retired it) or not of that version (DNS changed the
    /// list, and the worker or the index has not followed yet): scan then.
    pub fn best(
        &self,
        table: &Table,
        locked: &impl Arena,
        version: u64,
        out: impl FnMut(usize) -> bool,
        budget: u32,
    ) -> Best {
        table.assert_locked(locked);
        let same_list = self.entry().version.load(Ordering::Relaxed) == version;
        match self.own_body().filter(|_| same_list) {
            Some(body) => body.index().best(out, budget),
            None => Best::GaveUp,
        }
    }

    /// Records a pick of the server at `position`, just counted, at `now`
    /// (deciseconds, `ramp::now_ds`).
    pub fn picked(&self, table: &Table, locked: &impl Arena, position: usize, now: u32) {
        table.assert_locked(locked);
        if let Some(body) = self.own_body() {
            crash::point("index.picked");
            let key = body.key_at(position, Some(now));
            body.index().picked(position, key);
        }
    }

    /// Whether the leaf of the server at `position` holds what its slot
    /// says at `now`; if not (its count changed with no index update: a
    /// pick that scanned), the leaf is read again. A pick through the index
    /// asks this of its winner before it counts it.
    #[inline]
    pub fn is_true(&self, table: &Table, locked: &impl Arena, position: usize, now: u32) -> bool {
        table.assert_locked(locked);
        let Some(body) = self.own_body() else {
            return false;
        };
        let truth = body.key_at(position, Some(now));
        let index = body.index();
        if index.key(position) == truth {
            return true;
        }
        index.set(position, truth);
        false
    }

    /// Records that the server at `position` could not be counted (at its
    /// `max_conns`, another worker took the last place): its leaf is read
    /// again.
    pub fn refresh(&self, table: &Table, locked: &impl Arena, position: usize, now: u32) {
        table.assert_locked(locked);
        if let Some(body) = self.own_body() {
            body.index().set(position, body.key_at(position, Some(now)));
        }
    }

    /// Records that the count of `slot` changed (a release), whichever load
    /// counted it: the current body's leaf for the key, if any, is read
    /// again.
    /// Returns whether the body had the key.
    pub fn released(&self, table: &Table, locked: &impl Arena, slot: SlotRef, now: u32) -> bool {
        table.assert_locked(locked);
        let e = self.entry();
        if e.epoch.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Some(body) = e.body() else {
            return false;
        };
        let Some(i) = body.position_of(slot.slot()) else {
            return false;
        };
        body.index().set(i, body.key_at(i, Some(now)));
        true
    }

    /// Whether this handle's load still owns the index (for tests and the
    /// status page).
    pub fn is_current(&self) -> bool {
        self.own_body().is_some()
    }
}

impl Table {
    fn entries(&self) -> impl Iterator<Item = &Entry> {
        let mut at = self.pick_indexes.load(Ordering::Acquire).cast::<Entry>();
        core::iter::from_fn(move || {
            // SAFETY: entries are never freed, linked under the lock.
            let e = unsafe { at.as_ref()? };
            at = e.next.load(Ordering::Relaxed);
            Some(e)
        })
    }

    /// The entry of `name`'s `list`, made if it has none; `None`: no room.
    fn entry_for(&self, locked: &impl Arena, name: &[u8], list: u32) -> Option<&Entry> {
        if let Some(e) = self.entries().find(|e| e.list == list && e.name() == name) {
            return Some(e);
        }
        let mem = locked.alloc(size_of::<Entry>() + name.len())?;
        self.journal.alloc.store(mem.as_ptr(), Ordering::Relaxed);
        crash::point("index.entry");
        // SAFETY: fresh zone memory for an entry and its name.
        let entry = unsafe {
            let e = mem.cast::<Entry>();
            e.write(Entry {
                next: AtomicPtr::new(self.pick_indexes.load(Ordering::Relaxed).cast()),
                body: AtomicPtr::new(ptr::null_mut()),
                epoch: AtomicU32::new(0),
                version: AtomicU64::new(0),
                list,
                name_len: name.len() as u32,
            });
            ptr::copy_nonoverlapping(
                name.as_ptr(),
                mem.as_ptr().add(size_of::<Entry>()),
                name.len(),
            );
            &*e.as_ptr()
        };
        self.pick_indexes
            .store(ptr::from_ref(entry).cast_mut().cast(), Ordering::Release);
        self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        Some(entry)
    }

    /// Starts a load's indexes: every entry retired until the load builds
    /// it again (`build_pick_index`), and `finish_pick_indexes` frees the bodies of
    /// those it did not.
    pub fn begin_pick_indexes(&self, locked: &impl Arena) {
        self.assert_locked(locked);
        for e in self.entries() {
            e.epoch.store(0, Ordering::Relaxed);
            if let Some(body) = e.body() {
                body.unmark_slots();
            }
        }
    }

    /// Frees the bodies of the entries this load did not build.
    pub fn finish_pick_indexes(&self, locked: &impl Arena) {
        self.assert_locked(locked);
        for e in self.entries() {
            if e.epoch.load(Ordering::Relaxed) == 0 {
                self.drop_body(locked, e);
            }
        }
    }

    /// Builds the index of `name`'s `list` for the load `epoch`, over
    /// `slots` in the front-end's peer order at `version` (of a list DNS
    /// changes; 0 for one it never changes). `None`: no room in the zone
    /// (the list is scanned).
    pub fn build_pick_index(
        &self,
        locked: &impl Arena,
        of: IndexedList<'_>,
        now: u32,
        slots: impl ExactSizeIterator<Item = SlotRef>,
    ) -> Option<PickIndexRef> {
        let IndexedList {
            upstream: name,
            list,
            epoch,
            version,
        } = of;
        self.assert_locked(locked);
        if slots.len() == 0 || slots.len() > least_index::MAX_SERVERS {
            return None;
        }
        let entry = self.entry_for(locked, name, list)?;
        let built = PickIndexRef {
            entry: NonNull::from(entry),
            epoch,
        };
        // Another worker of this load followed DNS to this version first:
        // the same list (an upstream zone's, shared), built already.
        let current = entry.epoch.load(Ordering::Relaxed) == epoch
            && entry.version.load(Ordering::Relaxed) == version
            && entry
                .body()
                .is_some_and(|b| b.index().servers() == slots.len());
        if current {
            return Some(built);
        }
        // Retired while it is filled: a kill midway leaves it unused (and
        // the list scanned) until the next build, not half made.
        entry.epoch.store(0, Ordering::Relaxed);
        let body = match entry.body() {
            Some(b) if b.capacity() >= slots.len() => b,
            _ => self.new_body(locked, entry, slots.len())?,
        };
        body.fill(slots, Some(now));
        entry.version.store(version, Ordering::Relaxed);
        entry.epoch.store(epoch, Ordering::Release);
        Some(built)
    }

    /// Replaces `entry`'s body by an empty one for `capacity` servers.
    fn new_body<'a>(
        &self,
        locked: &impl Arena,
        entry: &'a Entry,
        capacity: usize,
    ) -> Option<&'a Body> {
        self.drop_body(locked, entry);
        let mem = locked.alloc(Layout::of(capacity).size)?;
        self.journal.alloc.store(mem.as_ptr(), Ordering::Relaxed);
        crash::point("index.allocated");
        // SAFETY: fresh zone memory of the layout's size, 64-aligned.
        let body = unsafe { Body::init(mem, capacity) };
        entry
            .body
            .store(ptr::from_ref(body).cast_mut(), Ordering::Release);
        crash::point("index.linked");
        self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        Some(body)
    }

    /// Frees `entry`'s body, if any, and retires the entry.
    fn drop_body(&self, locked: &impl Arena, entry: &Entry) {
        entry.epoch.store(0, Ordering::Relaxed);
        let body = entry.body.load(Ordering::Relaxed);
        let Some(b) = NonNull::new(body) else {
            return;
        };
        self.journal.freeing.store(body.cast(), Ordering::Relaxed);
        entry.body.store(ptr::null_mut(), Ordering::Release);
        crash::point("index.freeing");
        // SAFETY: the body was this entry's alone, now unreachable.
        unsafe { locked.free(b.cast()) };
        self.journal
            .freeing
            .store(ptr::null_mut(), Ordering::Relaxed);
    }

    /// Rebuilds every index from its slots: after counts changed with no
    /// index update (repair, a dead worker's share given back, an exit's).
    pub fn refresh_pick_indexes(&self, locked: &impl Arena) {
        self.assert_locked(locked);
        self.rebuild_pick_indexes();
    }

    /// `refresh_pick_indexes` for repair (which holds the lock already).
    pub(super) fn rebuild_pick_indexes(&self) {
        for e in self.entries() {
            if let (Some(body), true) = (e.body(), e.epoch.load(Ordering::Relaxed) != 0) {
                body.rebuild(body.index().servers(), None);
            }
        }
    }

    /// Records a release of `slot`, a key of upstream `name` that is
    /// `Indexed`, for a worker whose load did not index it (a later load
    /// did): its leaf, wherever a current body has it, is read again.
    pub fn pick_index_released(&self, locked: &impl Arena, name: &[u8], slot: SlotRef, now: u32) {
        self.assert_locked(locked);
        for e in self.entries().filter(|e| e.name() == name) {
            let r = PickIndexRef {
                entry: NonNull::from(e),
                epoch: 0,
            };
            if r.released(self, locked, slot, now) {
                return;
            }
        }
    }

    /// Reads the leaf of `slot` again, in every current body that has it:
    /// its count changed with the lock held (a worker's share given back).
    pub(super) fn pick_index_slot_changed(&self, slot: &Slot, now: Option<u32>) {
        if !slot.flags.has(Flag::Indexed) {
            return;
        }
        for e in self
            .entries()
            .filter(|e| e.epoch.load(Ordering::Relaxed) != 0)
        {
            if let Some((body, i)) = e.body().and_then(|b| Some((b, b.position_of(slot)?))) {
                body.index().set(i, body.key_at(i, now));
            }
        }
    }

    /// Reads again the leaves of the keys that ramp (slow start) at `now`:
    /// their virtual counts fall as their ramps go on. For the look a worker
    /// makes every period while some key ramps: O(the ramping keys, at most
    /// 32 a list) but after an overflow (every leaf of that list, once).
    pub fn refresh_ramping_pick_indexes(&self, locked: &impl Arena, now: u32) {
        self.assert_locked(locked);
        for e in self
            .entries()
            .filter(|e| e.epoch.load(Ordering::Relaxed) != 0)
        {
            if let Some(body) = e.body() {
                body.refresh_ramping(now);
            }
        }
    }

    /// Whether `chunk` is an index's entry or body (repair's journal).
    pub(super) fn pick_indexes_reach(&self, chunk: *mut u8) -> bool {
        self.entries().any(|e| {
            ptr::eq(ptr::from_ref(e).cast::<u8>(), chunk)
                || e.body.load(Ordering::Relaxed).cast::<u8>() == chunk
        })
    }
}

#[cfg(test)]
impl Table {
    /// Every index in use holds what its slots say, and a valid tree.
    pub(crate) fn validate_pick_indexes(&self) {
        for e in self.entries() {
            let Some(body) = e.body() else {
                assert_eq!(e.epoch.load(Ordering::Relaxed), 0, "an epoch with no body");
                continue;
            };
            let index = body.index();
            assert!(index.is_valid(), "an index tree out of step");
            for i in 0..index.servers() {
                assert_eq!(
                    index.key(i),
                    body.key_at(i, None),
                    "leaf {i} differs from its slot"
                );
                assert_eq!(body.position_of(body.slots()[i].slot()), Some(i));
            }
        }
    }

    /// How many entries the table has, and how many have a body.
    pub(crate) fn pick_index_counts(&self) -> (usize, usize) {
        let bodies = self.entries().filter(|e| e.body().is_some()).count();
        (self.entries().count(), bodies)
    }
}

#[cfg(test)]
impl LeafSlot {
    fn slot(&self) -> &Slot {
        // SAFETY: slots live in blocks that are never freed.
        unsafe { &*self.slot.load(Ordering::Relaxed) }
    }
}
