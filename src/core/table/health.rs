//! A key's health record: what active checks found of it (64 bytes, beside
//! its slot: a block's records are one page, `HealthBlock`), and the
//! values read from and written to it.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::flags::{CHECK_OUT, CHECK_TUNED};
use super::slot::SLOTS_PER_BLOCK;
use crate::core::check_answer::Capacity;
use crate::core::health::{next, Counters, State, Why};

/// One key's health, 64 bytes. Zero is "never checked".
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Health {
    /// `state | drain << 2 | why << 4 | passes << 8 | fails << 16`.
    pub(super) status: AtomicU32,
    /// The last answer's HTTP status (0: none, or a tcp check).
    pub(super) http_status: AtomicU32,
    pub(super) duration_ms: AtomicU32,
    /// Capacity answer: weight (0: none), max_conns + 1 (0: none).
    pub(super) weight: AtomicU32,
    pub(super) max_conns: AtomicU32,
    /// The load the server reported + 1 (0: none), and how much more than
    /// our count it was when it came: what picks add to our count.
    pub(super) reported: AtomicU32,
    pub(super) excess: AtomicU32,
    /// Hash of the last malformed answer warned about (0: none).
    pub(super) warned: AtomicU32,
    /// When the last check ended (ms of the monotonic clock; 0: never).
    pub(super) last_ms: AtomicU64,
    /// Answers that reported a load, counted (wrapping): which answer
    /// `reported` is, for counts that the checker does not know (a Lua
    /// key's, `array_list::Followed`). In what was padding: a zone made by
    /// an older build reads 0 here, as a record never reported to.
    pub(super) loads: AtomicU32,
    /// 1 once a Lua upstream follows the key (`Table::follow_health`): a
    /// load reported at or below the key's count is then still read. Also
    /// in what was padding.
    pub(super) followed: AtomicU32,
}

/// The health records of one block's slots: one page.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct HealthBlock {
    _header: [u8; 64],
    pub(super) recs: [Health; SLOTS_PER_BLOCK],
}

pub(super) const DRAIN: u32 = 1 << 2;

pub(super) fn pack(c: Counters, drain: bool, why: Why) -> u32 {
    c.state as u32
        | if drain { DRAIN } else { 0 }
        | (why as u32) << 4
        | u32::from(c.passes) << 8
        | u32::from(c.fails) << 16
}

pub(super) fn state_of(status: u32) -> State {
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

/// What a pick takes from a record whose key has `CHECK_TUNED`.
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

impl Health {
    pub(super) fn reset(&self) {
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

    pub(super) fn verdict(&self) -> Verdict {
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
    pub(super) fn bits(&self) -> u32 {
        let v = self.verdict();
        let out = v.state == Some(State::Down) || v.drain;
        let followed = self.followed.load(Ordering::Relaxed) != 0;
        let tuned = v.weight.is_some()
            || v.max_conns.is_some()
            || self.excess.load(Ordering::Relaxed) != 0
            || (followed && self.reported.load(Ordering::Relaxed) > 1);
        (if out { CHECK_OUT } else { 0 }) | (if tuned { CHECK_TUNED } else { 0 })
    }

    pub(super) fn view(&self) -> HealthView {
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

    pub(super) fn tuned(&self) -> Tuned {
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
    pub(super) fn outcome(&self, r: &CheckReport) -> (Counters, bool) {
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
    pub(super) fn write(
        &self,
        r: &CheckReport,
        count: u32,
        (c, drain): (Counters, bool),
    ) -> Recorded {
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

#[allow(dead_code)]
fn _assert_sizes() {
    const _: () = assert!(size_of::<Health>() == 64);
    const _: () = assert!(size_of::<HealthBlock>() == 4096);
}
