//! Health records in the table (issue 19): what active checks found of each
//! key, beside the key's slot, and the lease of the one process that runs
//! the checks of the zone.
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
//! - What picks need is two bits of the slot's `flags` (`FLAG_CHECK_OUT`:
//!   skip, as `down`; `FLAG_CHECK_TUNED`: read the record for overrides and
//!   reported load), written after the record: a kill in between leaves
//!   bits that `reconcile_health` (repair) recomputes from the records.
//! - The lease (`Table::checker`) is taken and renewed lock-free with
//!   compare-and-swap; a holder that dies loses it when it expires, or
//!   sooner when the look for dead workers frees it.

use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::check_answer::Capacity;
use super::crash;
use super::health::{next, Counters, State, Why};
use super::table::{
    Arena, Block, Slot, SlotRef, Table, CHECK_BITS, FLAG_CHECKED, FLAG_CHECK_OUT, FLAG_CHECK_TUNED,
    SLOTS_PER_BLOCK,
};

/// One key's health, 64 bytes. Zero is "never checked".
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Health {
    /// `state | drain << 2 | why << 4 | passes << 8 | fails << 16`.
    status: AtomicU32,
    /// The last answer's HTTP status (0: none, or a tcp check).
    http_status: AtomicU32,
    duration_ms: AtomicU32,
    /// Capacity answer: weight (0: none), max_conns + 1 (0: none).
    weight: AtomicU32,
    max_conns: AtomicU32,
    /// The load the server reported + 1 (0: none), and how much more than
    /// our count it was when it came: what picks add to our count.
    reported: AtomicU32,
    excess: AtomicU32,
    /// Hash of the last malformed answer warned about (0: none).
    warned: AtomicU32,
    /// When the last check ended (ms of the monotonic clock; 0: never).
    last_ms: AtomicU64,
    /// Answers that reported a load, counted (wrapping): which answer
    /// `reported` is, for counts that the checker does not know (a Lua
    /// key's, `array_list::Followed`). In what was padding: a zone made by
    /// an older build reads 0 here, as a record never reported to.
    loads: AtomicU32,
    /// 1 once a Lua upstream follows the key (`Table::follow_health`): a
    /// load reported at or below the key's count is then still read. Also
    /// in what was padding.
    followed: AtomicU32,
}

/// The health records of one block's slots: one page.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct HealthBlock {
    _header: [u8; 64],
    recs: [Health; SLOTS_PER_BLOCK],
}

const DRAIN: u32 = 1 << 2;

fn pack(c: Counters, drain: bool, why: Why) -> u32 {
    c.state as u32
        | if drain { DRAIN } else { 0 }
        | (why as u32) << 4
        | u32::from(c.passes) << 8
        | u32::from(c.fails) << 16
}

fn state_of(status: u32) -> State {
    match status & 3 {
        0 => State::Unchecked,
        1 => State::Checking,
        2 => State::Up,
        _ => State::Down,
    }
}

fn why_of(status: u32) -> Why {
    match (status >> 4) & 15 {
        0 => Why::Ok,
        1 => Why::Refused,
        2 => Why::Reset,
        3 => Why::ClosedEarly,
        4 => Why::Timeout,
        5 => Why::BadStatus,
        6 => Why::BadResponse,
        _ => Why::NoConnection,
    }
}

fn counters_of(status: u32) -> Counters {
    Counters {
        state: state_of(status),
        passes: (status >> 8) as u8,
        fails: (status >> 16) as u8,
    }
}

/// What the status page shows of a checked key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthView {
    pub state: State,
    pub drain: bool,
    pub passes: u8,
    pub fails: u8,
    pub why: Why,
    pub http_status: u16,
    pub duration_ms: u32,
    /// When the last check ended (ms, monotonic; 0: never).
    pub last_ms: u64,
    pub weight: Option<u32>,
    pub max_conns: Option<u32>,
    pub reported: Option<u32>,
    pub excess: u32,
    /// The key's bits as picks see them: skipped (down, or draining by its
    /// answer), and tuned (overrides or reported load in its compare).
    pub out: bool,
    pub tuned: bool,
}

/// What a pick takes from a record whose key has `FLAG_CHECK_TUNED`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuned {
    pub weight: Option<u32>,
    pub max_conns: Option<u32>,
    /// Added to the key's count: how far the server's own count was above
    /// the key's when the answer came.
    pub excess: u32,
    /// The load the server reported (what `excess` was taken from), and
    /// which answer said it (a number that changes with each answer that
    /// reports a load): another count compared with it (a Lua key's, which
    /// the checker does not know) takes its own excess from these.
    pub reported: Option<u32>,
    pub answer: u32,
}

/// The state the log and the picks care about, before and after a check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub state: Option<State>,
    pub drain: bool,
    pub weight: Option<u32>,
    pub max_conns: Option<u32>,
}

/// One check's result, as the checker hands it to `record_check`.
#[derive(Clone, Copy, Debug)]
pub struct CheckReport {
    pub why: Why,
    pub http_status: u16,
    pub duration_ms: u32,
    pub now_ms: u64,
    /// Slow start's clock (deciseconds): a key back up ramps from here.
    pub now_ds: u32,
    pub rise: u8,
    pub fall: u8,
    /// A well-formed capacity answer (none in the answer: `Capacity::default()`);
    /// `None` keeps what the record has (a failed check, a malformed line).
    pub capacity: Option<Capacity>,
    /// The load the server reported: `Some(None)` clears it, `None` keeps it.
    pub reported: Option<Option<u32>>,
    /// The hash of a malformed answer (`check_answer::Malformed::hash`), or
    /// 0 when the answer was well-formed (which forgets the last warning).
    pub malformed: u32,
}

/// What `record_check` did, for the checker's log lines (written after the
/// lock is released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub before: Verdict,
    pub after: Verdict,
    pub passes: u8,
    pub fails: u8,
    /// A malformed answer not warned about yet for this key.
    pub warn: bool,
}

/// The longest lease a checker takes (`shared::checks::timing` of the
/// longest interval, 1 h), with room.
const MAX_LEASE_MS: u32 = 4 * 3_600_000;

/// Whether lease end `until` (ms, wrapping) has passed at `now`; an end
/// further ahead than any lease reaches is one that passed so long ago
/// that the 32-bit clock wrapped (a holder that died unseen).
fn expired(until: u32, now: u64) -> bool {
    let now = now as u32;
    now.wrapping_sub(until) as i32 >= 0 || until.wrapping_sub(now) > MAX_LEASE_MS
}

/// The lease word's bit (of the pid half) saying the holder is paused.
/// Linux pids stay below 2^22.
const PAUSED: u32 = 1 << 31;

fn lease(pid: u32, paused: bool, until: u64) -> u64 {
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
    fn of(w: u64) -> Lease {
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

impl Health {
    fn reset(&self) {
        for w in [
            &self.status,
            &self.http_status,
            &self.duration_ms,
            &self.weight,
            &self.max_conns,
            &self.reported,
            &self.excess,
            &self.warned,
            &self.loads,
            &self.followed,
        ] {
            w.store(0, Ordering::Relaxed);
        }
        self.last_ms.store(0, Ordering::Relaxed);
    }

    fn verdict(&self) -> Verdict {
        let status = self.status.load(Ordering::Relaxed);
        let state = state_of(status);
        Verdict {
            state: (state != State::Unchecked).then_some(state),
            drain: status & DRAIN != 0,
            weight: non_zero(self.weight.load(Ordering::Relaxed)),
            max_conns: non_zero(self.max_conns.load(Ordering::Relaxed)).map(|n| n - 1),
        }
    }

    /// The slot bits this record asks for. Tuned: an override, or a load
    /// reported above the key's count; or, for a key a Lua upstream
    /// follows, any load reported (above 0): no excess for the key's picks,
    /// but the Lua picks compare their own count with it. (Not for every
    /// key: the key's picks would read the record for nothing.)
    fn bits(&self) -> u32 {
        let v = self.verdict();
        let out = v.state == Some(State::Down) || v.drain;
        let followed = self.followed.load(Ordering::Relaxed) != 0;
        let tuned = v.weight.is_some()
            || v.max_conns.is_some()
            || self.excess.load(Ordering::Relaxed) != 0
            || (followed && self.reported.load(Ordering::Relaxed) > 1);
        (if out { FLAG_CHECK_OUT } else { 0 }) | (if tuned { FLAG_CHECK_TUNED } else { 0 })
    }

    fn view(&self) -> HealthView {
        let status = self.status.load(Ordering::Relaxed);
        let v = self.verdict();
        let c = counters_of(status);
        HealthView {
            state: c.state,
            drain: v.drain,
            passes: c.passes,
            fails: c.fails,
            why: why_of(status),
            http_status: self.http_status.load(Ordering::Relaxed) as u16,
            duration_ms: self.duration_ms.load(Ordering::Relaxed),
            last_ms: self.last_ms.load(Ordering::Relaxed),
            weight: v.weight,
            max_conns: v.max_conns,
            reported: non_zero(self.reported.load(Ordering::Relaxed)).map(|n| n - 1),
            excess: self.excess.load(Ordering::Relaxed),
            out: false,
            tuned: false,
        }
    }

    fn tuned(&self) -> Tuned {
        let v = self.verdict();
        Tuned {
            weight: v.weight,
            max_conns: v.max_conns,
            excess: self.excess.load(Ordering::Relaxed),
            reported: non_zero(self.reported.load(Ordering::Relaxed)).map(|n| n - 1),
            answer: self.loads.load(Ordering::Relaxed),
        }
    }

    /// Where one check's result takes the key: its counters, and whether
    /// it drains. Nothing written.
    fn outcome(&self, r: &CheckReport) -> (Counters, bool) {
        let old = self.status.load(Ordering::Relaxed);
        let mut c = counters_of(old);
        if c.state == State::Unchecked {
            c.state = State::Checking;
        }
        let drain = match r.capacity {
            Some(cap) => cap.drain,
            None => old & DRAIN != 0,
        };
        (next(c, r.why, r.rise, r.fall), drain)
    }

    /// Writes one check's result, whose `outcome` is `(c, drain)`;
    /// `count`: our count of the key now.
    fn write(&self, r: &CheckReport, count: u32, (c, drain): (Counters, bool)) -> Recorded {
        let before = self.verdict();
        if let Some(cap) = r.capacity {
            self.weight
                .store(cap.weight.unwrap_or(0), Ordering::Relaxed);
            let conns = cap.max_conns.map_or(0, |n| n.saturating_add(1));
            self.max_conns.store(conns, Ordering::Relaxed);
        }
        match r.reported {
            Some(Some(n)) => {
                self.reported.store(n.saturating_add(1), Ordering::Relaxed);
                self.excess
                    .store(n.saturating_sub(count), Ordering::Relaxed);
                let seq = self.loads.load(Ordering::Relaxed).wrapping_add(1);
                self.loads.store(seq, Ordering::Relaxed);
            }
            Some(None) => {
                self.reported.store(0, Ordering::Relaxed);
                self.excess.store(0, Ordering::Relaxed);
            }
            None => {}
        }
        let warn = r.malformed != 0 && self.warned.load(Ordering::Relaxed) != r.malformed;
        if r.why != Why::NoConnection {
            self.warned.store(r.malformed, Ordering::Relaxed);
            self.http_status
                .store(u32::from(r.http_status), Ordering::Relaxed);
            self.duration_ms.store(r.duration_ms, Ordering::Relaxed);
            self.last_ms.store(r.now_ms, Ordering::Relaxed);
        }
        self.status.store(pack(c, drain, r.why), Ordering::Relaxed);
        Recorded {
            before,
            after: self.verdict(),
            passes: c.passes,
            fails: c.fails,
            warn,
        }
    }
}

fn non_zero(n: u32) -> Option<u32> {
    (n != 0).then_some(n)
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
fn record_of(slot: &Slot) -> Option<&Health> {
    let block = block_of(slot);
    // SAFETY: null, or a HealthBlock linked once and never freed.
    let records = unsafe { block.health.load(Ordering::Acquire).as_ref()? };
    let pos = slot.id.load(Ordering::Relaxed) as usize % SLOTS_PER_BLOCK;
    Some(&records.recs[pos])
}

impl SlotRef {
    /// The checks' bits of the key (`FLAG_CHECK_OUT`, `FLAG_CHECK_TUNED`).
    #[inline(always)]
    pub fn check_bits(&self) -> u32 {
        self.slot().flags.load(Ordering::Relaxed) & CHECK_BITS
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
        if slot.flags.load(Ordering::Relaxed) & FLAG_CHECKED == 0 {
            return None;
        }
        let status = record_of(slot)?.status.load(Ordering::Relaxed);
        self.count()?;
        Some((state_of(status), status & DRAIN != 0))
    }

    /// Overrides and reported load, for a key with `FLAG_CHECK_TUNED`.
    /// Lock-free: fields may come from two checks.
    #[cold]
    pub fn tuned(&self) -> Tuned {
        record_of(self.slot())
            .map(Health::tuned)
            .unwrap_or_default()
    }
}

/// The pick's view of the checks' bits.
pub const CHECK_OUT: u32 = FLAG_CHECK_OUT;
pub const CHECK_TUNED: u32 = FLAG_CHECK_TUNED;

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
        if slot.flags.load(Ordering::Relaxed) & FLAG_CHECKED == 0 {
            return None;
        }
        let bits = slot.flags.load(Ordering::Relaxed);
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
            out: bits & FLAG_CHECK_OUT != 0,
            tuned: bits & FLAG_CHECK_TUNED != 0,
            ..view
        })
    }

    /// Marks `at` as followed by a Lua upstream (`array_list::Followed`):
    /// its picks then read any load the server reports. For good (a Lua
    /// upstream that stops following costs the key's picks a read of the
    /// record while the server reports a load at or below their count),
    /// until the key's checks are forgotten. Under the lock.
    pub fn follow_health(&self, locked: &impl Arena, at: SlotRef) {
        self.check(locked);
        if at.count().is_none() {
            return;
        }
        let slot = at.slot();
        if slot.flags.load(Ordering::Relaxed) & FLAG_CHECKED == 0 {
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
        self.check(locked);
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
        self.check(locked);
        let count = at.count()?;
        let slot = at.slot();
        if slot.flags.load(Ordering::Relaxed) & FLAG_CHECKED == 0 {
            return None;
        }
        let h = record_of(slot)?;
        let outcome = h.outcome(report);
        let was_out = slot.flags.load(Ordering::Relaxed) & FLAG_CHECK_OUT != 0;
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
    fn set_check_bits(&self, slot: &Slot, bits: u32) {
        // Only lock holders change these bits (the lock-free writers of
        // `flags` touch others): what is read here stays until the write.
        let had = slot.flags.load(Ordering::Relaxed) & CHECK_BITS != 0;
        let has = bits != 0;
        // Counted before the bits are set, uncounted after they are
        // cleared: a kill in between leaves the count too high (picks read
        // bits they need not, until repair counts again), never too low
        // (picks skipping a key that is out).
        if has && !had {
            self.check_flagged.fetch_add(1, Ordering::Relaxed);
        }
        let _ = slot
            .flags
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some((f & !CHECK_BITS) | bits)
            });
        if had && !has {
            self.check_flagged.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Repair: the checks' bits of every key, from the records (a holder
    /// may have died between a record and its bits).
    pub(super) fn reconcile_health(&self) {
        let mut flagged = 0;
        for block in self.blocks() {
            for slot in block.slots.iter() {
                let checked = slot.flags.load(Ordering::Relaxed) & FLAG_CHECKED != 0;
                let bits = match record_of(slot) {
                    Some(h) if checked && slot.is_used() => h.bits(),
                    _ => 0,
                };
                let _ = slot
                    .flags
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                        Some((f & !CHECK_BITS) | bits)
                    });
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

#[allow(dead_code)]
fn _assert_sizes() {
    const _: () = assert!(size_of::<Health>() == 64);
    const _: () = assert!(size_of::<HealthBlock>() == 4096);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::table::tests::HeapArena;
    use crate::core::table::Meta;
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
