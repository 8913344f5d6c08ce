//! Health checks in the table: each key's record (`health.rs`) written and
//! read, the two bits picks read, and the lease of the one process that
//! runs the checks of the zone.
//!
//! - A block's health records are one page (`HealthBlock`), allocated the
//!   first time a key of the block is checked and linked from the block
//!   (`Block::health`); never freed, like blocks. The record of a slot sits
//!   at the slot's position in its block.
//! - Every record write happens under the zone lock, by the process holding
//!   the lease (or a configuration load forgetting a key's checks), after
//!   checking the handle's generation: a removed key's late result never
//!   lands on the slot's next key. A new key's record is zeroed before the
//!   key is published.
//! - What picks need is two bits of the slot's `flags` (`CHECK_OUT`:
//!   skip, as `down`; `CHECK_TUNED`: read the record for overrides and
//!   reported load), written after the record: a kill in between leaves
//!   bits that `reconcile_health` (repair) recomputes from the records.
//! - The lease (`Table::checker`) is taken and renewed lock-free with
//!   compare-and-swap; a holder that dies loses it when it expires, or
//!   sooner when the look for dead workers frees it.

use core::ptr;
use core::sync::atomic::Ordering;

use super::flags::{Flag, CHECK_BITS, CHECK_OUT, CHECK_TUNED};
use super::header::{Arena, Block, Table};
use super::health::{
    state_of, CheckReport, Health, HealthBlock, HealthView, Recorded, Tuned, DRAIN,
};
use super::slot::{Slot, SlotRef, SLOTS_PER_BLOCK};
use crate::core::crash;
use crate::core::health::{State, Why};

/// The longest lease a checker takes (`shared::checks::timing` of the
/// longest interval, 1 h), with room.
const MAX_LEASE_MS: u32 = 4 * 3_600_000;

/// Whether lease end `until` (ms, wrapping) has passed at `now`; an end
/// further ahead than any lease reaches is one that passed so long ago
/// that the 32-bit clock wrapped (a holder that died unseen).
pub(super) fn expired(until: u32, now: u64) -> bool {
    let now = now as u32;
    now.wrapping_sub(until) as i32 >= 0 || until.wrapping_sub(now) > MAX_LEASE_MS
}

/// The lease word's bit (of the pid half) saying the holder is paused.
/// Linux pids stay below 2^22.
const PAUSED: u32 = 1 << 31;

pub(super) fn lease(pid: u32, paused: bool, until: u64) -> u64 {
    let holder = if paused { pid | PAUSED } else { pid & !PAUSED };
    (u64::from(holder) << 32) | u64::from(until as u32)
}

/// Who holds the checks' lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub pid: u32,
    /// The holder has no connection to spare for a probe: no check runs
    /// until it has, or until a worker with room takes the lease over.
    pub paused: bool,
}

impl Lease {
    pub(super) fn of(w: u64) -> Lease {
        let holder = (w >> 32) as u32;
        Lease {
            pid: holder & !PAUSED,
            paused: holder & PAUSED != 0,
        }
    }
}

/// What a process taking the lease can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No connection to spare: it holds the lease only so that one process
    /// says the checks are paused; any worker that can check takes it over.
    Paused,
    /// It can probe: it takes a paused lease over.
    Checks,
}

impl Claim {
    /// What a process with `free` of `all` connections free, `probing` of
    /// them held by its own probes, can do. Checks leave the last
    /// sixteenth of `worker_connections` to clients; the probes' own
    /// connections count as free (they are the checks': a holder must not
    /// pause on them, cancel them and start them again, never finding a
    /// server that does not answer).
    pub fn of_room(free: usize, probing: usize, all: usize) -> Claim {
        if free.saturating_add(probing) <= all / 16 {
            Claim::Paused
        } else {
            Claim::Checks
        }
    }
}

/// The block `slot` sits in.
fn block_of(slot: &Slot) -> &Block {
    let pos = slot.id.load(Ordering::Relaxed) as usize % SLOTS_PER_BLOCK;
    let offset = core::mem::offset_of!(Block, slots) + pos * size_of::<Slot>();
    // SAFETY: slots live only in blocks (`Table::grow`), at their position
    // of their block's `slots`, which `id` records; blocks are never freed.
    unsafe { &*ptr::from_ref(slot).cast::<u8>().sub(offset).cast::<Block>() }
}

/// The health record of `slot`, if its block has records.
pub(super) fn record_of(slot: &Slot) -> Option<&Health> {
    let block = block_of(slot);
    // SAFETY: null, or a HealthBlock linked once and never freed.
    let records = unsafe { block.health.load(Ordering::Acquire).as_ref()? };
    let pos = slot.id.load(Ordering::Relaxed) as usize % SLOTS_PER_BLOCK;
    Some(&records.recs[pos])
}

impl SlotRef {
    /// The checks' bits of the key (`CHECK_OUT`, `CHECK_TUNED`).
    #[inline(always)]
    pub fn check_bits(&self) -> u32 {
        self.slot().flags.check_bits()
    }

    /// When the key's last check ended (ms, monotonic; 0: never), read
    /// lock-free: the checker keeps the cadence across takeovers.
    pub fn last_check_ms(&self) -> u64 {
        record_of(self.slot()).map_or(0, |h| h.last_ms.load(Ordering::Relaxed))
    }

    /// What the checks found of the key: its state and whether its answer
    /// drains it; `None` when the key is not checked, has no record yet, or
    /// the handle is stale. Lock-free (a Lua balancer following the checks
    /// asks from any phase): the status word is one load.
    pub fn health_state(&self) -> Option<(State, bool)> {
        let slot = self.slot();
        if !slot.flags.has(Flag::Checked) {
            return None;
        }
        let status = record_of(slot)?.status.load(Ordering::Relaxed);
        self.count()?;
        Some((state_of(status), status & DRAIN != 0))
    }

    /// Overrides and reported load, for a key with `CHECK_TUNED`.
    /// Lock-free: fields may come from two checks.
    #[cold]
    pub fn tuned(&self) -> Tuned {
        record_of(self.slot())
            .map(Health::tuned)
            .unwrap_or_default()
    }
}

impl Table {
    /// Zeroes the record of `slot` (a new key, or checks removed); under
    /// the lock.
    pub(super) fn forget_health(&self, slot: &Slot) {
        if let Some(h) = record_of(slot) {
            h.reset();
        }
        self.drop_check_bits(slot);
    }

    /// Clears `slot`'s check bits (the key goes, or its checks do); under
    /// the lock.
    pub(super) fn drop_check_bits(&self, slot: &Slot) {
        self.set_check_bits(slot, 0);
    }

    /// Whether some key of the zone has a check bit set: else a checked
    /// upstream's pick need not read them. Lock-free.
    #[inline]
    pub fn checks_flagged(&self) -> bool {
        self.check_flagged.load(Ordering::Relaxed) != 0
    }

    /// What the checks found of `slot`, for the status page; under the lock.
    pub(super) fn health_view(&self, slot: &Slot) -> Option<HealthView> {
        if !slot.flags.has(Flag::Checked) {
            return None;
        }
        let bits = slot.flags.bits();
        let view = record_of(slot).map_or(
            HealthView {
                state: State::Unchecked,
                drain: false,
                passes: 0,
                fails: 0,
                why: Why::Ok,
                http_status: 0,
                duration_ms: 0,
                last_ms: 0,
                weight: None,
                max_conns: None,
                reported: None,
                excess: 0,
                out: false,
                tuned: false,
            },
            Health::view,
        );
        Some(HealthView {
            out: bits & CHECK_OUT != 0,
            tuned: bits & CHECK_TUNED != 0,
            ..view
        })
    }

    /// Marks `at` as followed by a Lua upstream (`array_list::Followed`):
    /// its picks then read any load the server reports. For good (a Lua
    /// upstream that stops following costs the key's picks a read of the
    /// record while the server reports a load at or below their count),
    /// until the key's checks are forgotten. Under the lock.
    pub fn follow_health(&self, locked: &impl Arena, at: SlotRef) {
        self.assert_locked(locked);
        if at.count().is_none() {
            return;
        }
        let slot = at.slot();
        if !slot.flags.has(Flag::Checked) {
            return;
        }
        // Followed before the checker's first look at the key (a Lua
        // upstream following from init_worker): the record is made here,
        // or the mark would have nowhere to go.
        if !self.ensure_health(locked, at) {
            return;
        }
        let Some(h) = record_of(slot) else {
            return;
        };
        h.followed.store(1, Ordering::Relaxed);
        // A kill before the bits: repair recomputes them from the record.
        self.set_check_bits(slot, h.bits());
    }

    /// Gives `at`'s block its health records if it has none; false when the
    /// zone has no room (the key then goes unchecked).
    pub fn ensure_health(&self, locked: &impl Arena, at: SlotRef) -> bool {
        self.assert_locked(locked);
        let block = block_of(at.slot());
        if !block.health.load(Ordering::Relaxed).is_null() {
            return true;
        }
        let Some(page) = locked.alloc(size_of::<HealthBlock>()) else {
            return false;
        };
        self.journal.alloc.store(page.as_ptr(), Ordering::Relaxed);
        crash::point("health.allocated");
        // SAFETY: fresh zone memory, 64-byte aligned, the size of a
        // HealthBlock: all zero is a valid one (atomics, bytes).
        unsafe { ptr::write_bytes(page.as_ptr(), 0, size_of::<HealthBlock>()) };
        block
            .health
            .store(page.as_ptr().cast::<HealthBlock>(), Ordering::Release);
        self.journal.alloc.store(ptr::null_mut(), Ordering::Relaxed);
        crash::point("health.linked");
        true
    }

    /// Records one check of `at`; `None` if the key is gone (a late result)
    /// or has no record (`ensure_health` failed). Under the lock: the
    /// generation check and the write are one step for removals.
    pub fn record_check(
        &self,
        locked: &impl Arena,
        at: SlotRef,
        report: &CheckReport,
    ) -> Option<Recorded> {
        self.assert_locked(locked);
        let count = at.count()?;
        let slot = at.slot();
        if !slot.flags.has(Flag::Checked) {
            return None;
        }
        let h = record_of(slot)?;
        let outcome = h.outcome(report);
        let was_out = slot.flags.has(Flag::CheckOut);
        if was_out && outcome.0.state != State::Down && !outcome.1 {
            // Back: slow start ramps it, as a server back from `down`.
            // Before the record: a kill in between leaves a ramp on a key
            // still out (which its next stamp or check starts again), never
            // a key back up that did not ramp (repair has no clock to start
            // one with).
            self.begin_ramp_checked(slot, report.now_ds);
        }
        let done = h.write(report, count, outcome);
        crash::point("health.recorded");
        self.set_check_bits(slot, h.bits());
        Some(done)
    }

    /// Sets `slot`'s check bits, and the count of keys with some; under the
    /// lock (repair counts again from the bits).
    pub(super) fn set_check_bits(&self, slot: &Slot, bits: u32) {
        // Only lock holders change these bits (the lock-free writers of
        // `flags` touch others): what is read here stays until the write.
        let had = slot.flags.any(CHECK_BITS);
        let has = bits != 0;
        // Counted before the bits are set, uncounted after they are
        // cleared: a kill in between leaves the count too high (picks read
        // bits they need not, until repair counts again), never too low
        // (picks skipping a key that is out).
        if has && !had {
            self.check_flagged.fetch_add(1, Ordering::Relaxed);
        }
        slot.flags.set_check_bits(bits);
        if had && !has {
            self.check_flagged.fetch_sub(1, Ordering::Relaxed);
        }
        // What the checks found (out, or tuned) is in the key's leaf.
        self.pick_index_slot_changed(slot, None);
    }

    /// Repair: the checks' bits of every key, from the records (a holder
    /// may have died between a record and its bits).
    pub(super) fn reconcile_health(&self) {
        let mut flagged = 0;
        for block in self.blocks() {
            for slot in block.slots.iter() {
                let checked = slot.flags.has(Flag::Checked);
                let bits = match record_of(slot) {
                    Some(h) if checked && slot.is_used() => h.bits(),
                    _ => 0,
                };
                slot.flags.set_check_bits(bits);
                flagged += u32::from(bits != 0);
            }
        }
        self.check_flagged.store(flagged, Ordering::Relaxed);
    }

    /// The lease of the checks at `now` (ms), if a process holds one.
    pub fn checker(&self, now: u64) -> Option<Lease> {
        let w = self.checker.load(Ordering::Acquire);
        (w != 0 && !expired(w as u32, now)).then(|| Lease::of(w))
    }

    /// Whether `pid` holds the lease at `now` and may check (not paused).
    pub fn checks_here(&self, pid: u32, now: u64) -> bool {
        self.checker(now) == Some(Lease { pid, paused: false })
    }

    /// Takes or renews the checks' lease for `pid` until `now + lease_ms`:
    /// true if `pid` holds it now. Lock-free. `claim` says what the taker
    /// can do: a paused lease (its holder has no connection to spare) is
    /// taken over at once by a process with room, and only by one.
    pub fn take_checker(&self, pid: u32, now: u64, lease_ms: u32, claim: Claim) -> bool {
        let w = self.checker.load(Ordering::Acquire);
        if w != 0 && !expired(w as u32, now) {
            let held = Lease::of(w);
            let ours = held.pid == pid;
            let stealable = held.paused && claim == Claim::Checks;
            if !ours && !stealable {
                return false;
            }
        }
        let paused = claim == Claim::Paused;
        self.checker
            .compare_exchange(
                w,
                lease(pid, paused, now + u64::from(lease_ms)),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Gives up `pid`'s lease (a worker exiting, or a dead one's): the next
    /// taker need not wait for it to expire.
    pub fn release_checker(&self, pid: u32) {
        let w = self.checker.load(Ordering::Acquire);
        if w != 0 && Lease::of(w).pid == pid {
            let _ = self
                .checker
                .compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Health pages allocated (the status page's zone figures).
    pub fn health_blocks(&self) -> usize {
        self.blocks()
            .filter(|b| !b.health.load(Ordering::Relaxed).is_null())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::check_answer::Capacity;
    use crate::core::table::tests::HeapArena;
    use crate::core::table::{Meta, FLAG_CHECKED};
    use core::ptr::NonNull;

    fn checked() -> Meta {
        Meta {
            weight: 1,
            max_conns: 0,
            flags: FLAG_CHECKED,
            slow_start: 0,
        }
    }

    fn report(why: Why) -> CheckReport {
        CheckReport {
            why,
            http_status: if why == Why::Ok { 200 } else { 503 },
            duration_ms: 3,
            now_ms: 1000,
            now_ds: 10,
            rise: 2,
            fall: 3,
            capacity: (why == Why::Ok).then(Capacity::default),
            reported: None,
            malformed: 0,
        }
    }

    /// Key `u:a` of a checked upstream, with its health records.
    fn checked_key(t: &Table, a: &HeapArena) -> SlotRef {
        let k = t.upsert(a, b"u:a", 1, checked(), 1).unwrap();
        assert!(t.ensure_health(a, k));
        k
    }

    /// Three failed checks (`fall`): the key is down.
    fn take_down(t: &Table, a: &HeapArena, k: SlotRef) {
        for _ in 0..3 {
            t.record_check(a, k, &report(Why::Refused)).unwrap();
        }
    }

    fn setup() -> (HeapArena, NonNull<Table>) {
        let a = HeapArena::new(1 << 20);
        let t = Table::create(&a, 64).unwrap();
        (a, t)
    }

    #[test]
    fn fall_marks_out_and_rise_brings_back() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        let first = t.record_check(&a, k, &report(Why::Ok)).unwrap();
        assert_eq!(first.after.state, Some(State::Up));
        for i in 1..=3 {
            let r = t.record_check(&a, k, &report(Why::Timeout)).unwrap();
            assert_eq!(r.fails, i);
            assert_eq!(k.check_bits() & CHECK_OUT != 0, i == 3, "after {i} fails");
        }
        assert!(t.checks_flagged(), "picks read the bits");
        t.record_check(&a, k, &report(Why::Ok)).unwrap();
        assert_ne!(k.check_bits() & CHECK_OUT, 0, "one pass is below rise");
        let back = t.record_check(&a, k, &report(Why::Ok)).unwrap();
        assert_eq!(back.before.state, Some(State::Down));
        assert_eq!(back.after.state, Some(State::Up));
        assert_eq!(k.check_bits(), 0);
        assert!(!t.checks_flagged(), "all up: picks skip the bits");
    }

    #[test]
    fn no_connection_is_no_verdict() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        for _ in 0..5 {
            t.record_check(&a, k, &report(Why::NoConnection)).unwrap();
        }
        assert_eq!(k.check_bits(), 0);
        assert_eq!(t.health_view(k.slot()).unwrap().fails, 0);
    }

    #[test]
    fn drain_overrides_and_excess_tune_the_pick() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        let mut r = report(Why::Ok);
        r.capacity = Some(Capacity {
            drain: true,
            weight: None,
            max_conns: None,
        });
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), CHECK_OUT);
        r.capacity = Some(Capacity {
            drain: false,
            weight: Some(5),
            max_conns: Some(0),
        });
        k.acquire(0);
        k.acquire(0);
        r.reported = Some(Some(10));
        let done = t.record_check(&a, k, &r).unwrap();
        assert!(done.before.drain && !done.after.drain);
        assert_eq!(k.check_bits(), CHECK_TUNED);
        let tuned = k.tuned();
        assert_eq!(tuned.weight, Some(5));
        assert_eq!(tuned.max_conns, Some(0), "maxconn=0: no limit, overridden");
        assert_eq!(tuned.excess, 8, "reported 10 while we held 2");
        assert_eq!((tuned.reported, tuned.answer), (Some(10), 1));
        // A malformed line keeps what was there.
        r.capacity = None;
        r.reported = None;
        r.malformed = 42;
        let warned = t.record_check(&a, k, &r).unwrap();
        assert!(warned.warn);
        assert!(!t.record_check(&a, k, &r).unwrap().warn, "once per text");
        assert_eq!(k.tuned().weight, Some(5));
        // A plain answer ends every override.
        r.capacity = Some(Capacity::default());
        r.reported = Some(None);
        r.malformed = 0;
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), 0);
    }

    /// A load at or below the key's count adds nothing to the key's picks;
    /// once a Lua upstream follows the key it is still read (the Lua picks
    /// compare their own count with it). Each answer with a load is a new
    /// one.
    #[test]
    fn a_reported_load_is_read_even_with_no_excess() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        for _ in 0..3 {
            k.acquire(0);
        }
        let mut r = report(Why::Ok);
        r.reported = Some(Some(3));
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(
            k.check_bits(),
            0,
            "no excess, and no Lua upstream follows it"
        );
        t.follow_health(&a, k);
        assert_eq!(k.check_bits(), CHECK_TUNED, "followed: read at once");
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), CHECK_TUNED);
        let first = k.tuned();
        assert_eq!((first.excess, first.reported), (0, Some(3)));
        t.record_check(&a, k, &r).unwrap();
        assert_ne!(k.tuned().answer, first.answer, "another answer");
        // A check that says nothing of the load keeps it, and its answer.
        r.reported = None;
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.tuned().answer, first.answer.wrapping_add(1));
        // Reported 0: nothing to read.
        r.reported = Some(Some(0));
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), 0);
        r.reported = Some(Some(2));
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), CHECK_TUNED);
        r.reported = Some(None);
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), 0, "forgotten");
        assert_eq!(k.tuned().reported, None);
        // Checks removed and back: followed no more until followed again.
        let plain = Meta {
            flags: 0,
            ..checked()
        };
        t.upsert(&a, b"u:a", 1, plain, 2).unwrap();
        t.upsert(&a, b"u:a", 1, checked(), 3).unwrap();
        r.reported = Some(Some(2));
        t.record_check(&a, k, &r).unwrap();
        assert_eq!(k.check_bits(), 0);
    }

    #[test]
    fn a_removed_key_takes_no_late_result_and_its_slot_starts_clean() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        take_down(t, &a, k);
        assert!(t.checks_flagged());
        assert!(t.remove_idle(&a, k));
        assert!(!t.checks_flagged(), "the key went with its bits");
        assert!(t.record_check(&a, k, &report(Why::Refused)).is_none());
        let k2 = t.upsert(&a, b"u:b", 1, checked(), 1).unwrap();
        assert_eq!(k2.slot() as *const _, k.slot() as *const _, "slot reused");
        assert_eq!(k2.check_bits(), 0);
        assert_eq!(t.health_view(k2.slot()).unwrap().state, State::Unchecked);
    }

    #[test]
    fn a_configuration_without_checks_forgets_them() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        take_down(t, &a, k);
        // A reload keeping the checks keeps the verdict.
        t.upsert(&a, b"u:a", 1, checked(), 2).unwrap();
        assert_eq!(k.check_bits(), CHECK_OUT);
        let plain = Meta {
            flags: 0,
            ..checked()
        };
        t.upsert(&a, b"u:a", 1, plain, 3).unwrap();
        assert_eq!(k.check_bits(), 0);
        assert!(!t.checks_flagged());
        assert!(t.health_view(k.slot()).is_none());
        t.upsert(&a, b"u:a", 1, checked(), 4).unwrap();
        assert_eq!(t.health_view(k.slot()).unwrap().state, State::Unchecked);
    }

    #[test]
    fn repair_recomputes_the_bits() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = checked_key(t, &a);
        take_down(t, &a, k);
        t.set_check_bits(k.slot(), 0);
        t.check_flagged.store(7, Ordering::Relaxed);
        t.reconcile_health();
        assert_eq!(k.check_bits(), CHECK_OUT);
        assert_eq!(t.check_flagged.load(Ordering::Relaxed), 1, "counted again");
        assert!(t.slots_reach(block_of(k.slot()).health.load(Ordering::Relaxed).cast()));
    }

    #[test]
    fn health_state_reads_the_record_of_a_live_checked_key() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let plain = Meta {
            flags: 0,
            ..checked()
        };
        let p = t.upsert(&a, b"u:p", 1, plain, 1).unwrap();
        assert!(t.ensure_health(&a, p));
        assert_eq!(p.health_state(), None, "not checked");
        let k = t.upsert(&a, b"u:a", 1, checked(), 1).unwrap();
        assert_eq!(k.health_state(), Some((State::Unchecked, false)));
        t.record_check(&a, k, &report(Why::Refused)).unwrap();
        assert_eq!(k.health_state(), Some((State::Checking, false)));
        for _ in 0..2 {
            t.record_check(&a, k, &report(Why::Refused)).unwrap();
        }
        assert_eq!(k.health_state(), Some((State::Down, false)));
        let mut r = report(Why::Ok);
        r.capacity = Some(Capacity {
            drain: true,
            weight: None,
            max_conns: None,
        });
        for _ in 0..2 {
            t.record_check(&a, k, &r).unwrap();
        }
        assert_eq!(k.health_state(), Some((State::Up, true)));
        assert!(t.remove_idle(&a, k));
        assert_eq!(k.health_state(), None, "stale handle");
    }

    #[test]
    fn one_lease_holder_until_it_expires_or_gives_up() {
        let (_a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        assert_eq!(t.checker(0), None);
        assert!(t.take_checker(10, 1000, 500, Claim::Checks));
        assert!(!t.take_checker(11, 1400, 500, Claim::Checks));
        assert!(t.take_checker(10, 1400, 500, Claim::Checks), "renewed");
        assert_eq!(
            t.checker(1800),
            Some(Lease {
                pid: 10,
                paused: false
            })
        );
        assert!(!t.take_checker(11, 1899, 500, Claim::Checks));
        assert!(t.take_checker(11, 1900, 500, Claim::Checks), "expired");
        t.release_checker(10);
        assert_eq!(
            t.checker(2000),
            Some(Lease {
                pid: 11,
                paused: false
            }),
            "not 10's to give up"
        );
        t.release_checker(11);
        assert_eq!(t.checker(2000), None);
        // Wrapping clocks.
        assert!(t.take_checker(12, u64::from(u32::MAX) - 100, 500, Claim::Checks));
        assert!(!t.take_checker(13, u64::from(u32::MAX) + 300, 500, Claim::Checks));
        assert!(t.take_checker(13, u64::from(u32::MAX) + 401, 500, Claim::Checks));
        // A lease left by a holder that died unseen, 25 days ago: past,
        // though the 32-bit difference says ahead.
        let later = u64::from(u32::MAX) + 401 + 25 * 86_400_000;
        assert_eq!(t.checker(later), None);
        assert!(t.take_checker(14, later, 500, Claim::Checks));
    }

    #[test]
    fn a_paused_lease_goes_to_a_worker_with_room_at_once() {
        let (_a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        assert!(t.take_checker(10, 1000, 500, Claim::Paused));
        assert_eq!(
            t.checker(1000),
            Some(Lease {
                pid: 10,
                paused: true
            })
        );
        assert!(!t.checks_here(10, 1000), "paused: no checks");
        assert!(
            !t.take_checker(11, 1100, 500, Claim::Paused),
            "another busy worker waits"
        );
        assert!(
            t.take_checker(11, 1100, 500, Claim::Checks),
            "one that can check takes it over at once"
        );
        assert!(t.checks_here(11, 1100));
        assert!(!t.take_checker(10, 1200, 500, Claim::Checks), "not paused");
        // The holder pauses and resumes its own lease.
        assert!(t.take_checker(11, 1200, 500, Claim::Paused));
        assert!(!t.checks_here(11, 1200));
        assert!(t.take_checker(11, 1300, 500, Claim::Checks));
        assert!(t.checks_here(11, 1300));
        // A paused holder's pid bit is not part of the pid.
        assert!(t.take_checker(11, 1400, 500, Claim::Paused));
        t.release_checker(11);
        assert_eq!(t.checker(1400), None);
    }

    /// A Lua upstream following a key before the checker made its record
    /// (at init_worker): the mark is kept, and a load reported later at or
    /// below the key's count is still read.
    #[test]
    fn a_key_followed_before_its_first_check_keeps_the_mark() {
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let k = t.upsert(&a, b"u:a", 1, checked(), 1).unwrap();
        t.follow_health(&a, k);
        assert!(
            t.ensure_health(&a, k),
            "the checker's look finds the record"
        );
        for _ in 0..3 {
            k.acquire(0);
        }
        let mut r = report(Why::Ok);
        r.reported = Some(Some(3));
        t.record_check(&a, k, &r).unwrap();
        assert_ne!(
            k.check_bits() & CHECK_TUNED,
            0,
            "followed: the load is read"
        );
        assert_eq!(k.tuned().reported, Some(3));
    }

    #[test]
    fn the_room_for_checks_counts_the_probes_own_connections_as_free() {
        assert_eq!(Claim::of_room(64, 0, 1024), Claim::Paused, "the last 1/16");
        assert_eq!(Claim::of_room(65, 0, 1024), Claim::Checks);
        assert_eq!(
            Claim::of_room(10, 60, 1024),
            Claim::Checks,
            "its own probes hold 60: not the clients'"
        );
        assert_eq!(Claim::of_room(2, 6, 128), Claim::Paused);
        assert_eq!(Claim::of_room(0, 0, 0), Claim::Paused);
    }

    #[test]
    fn a_stalled_holder_past_its_lease_checks_no_more() {
        let (_a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        assert!(t.take_checker(10, 1000, 500, Claim::Checks));
        assert!(t.checks_here(10, 1499));
        assert!(!t.checks_here(10, 1500), "expired, though nobody took it");
        assert!(t.take_checker(11, 1600, 500, Claim::Checks));
        assert!(!t.checks_here(10, 1600));
    }

    #[test]
    fn a_server_back_up_ramps_even_if_its_checker_dies_before_the_bits() {
        use crate::core::crash::testing::die_at;
        let (a, t) = setup();
        // SAFETY: the test's own table.
        let t = unsafe { t.as_ref() };
        let slow = Meta {
            slow_start: 300,
            ..checked()
        };
        let k = t.upsert(&a, b"u:a", 1, slow, 1).unwrap();
        assert!(t.ensure_health(&a, k));
        take_down(t, &a, k);
        t.record_check(&a, k, &report(Why::Ok)).unwrap();
        let mut back = report(Why::Ok);
        back.now_ds = 20;
        assert!(die_at("health.recorded", 1, || {
            t.record_check(&a, k, &back);
        }));
        t.reconcile_health();
        assert_eq!(k.check_bits(), 0, "up");
        assert!(k.ramp(25).is_some(), "and ramping");
    }
}
