//! A histogram of durations in nanoseconds, for the `lock-stats` feature
//! (`src/ngx/lock_stats.rs`): how long the zone mutex is held and waited
//! for, per process, dumped as text the benchmark merges across processes.
//!
//! Buckets are log-linear: exact below 8 ns, then 8 buckets per power of
//! two, so a bucket is at most 1/8 (12.5%) of its values wide. Recording is
//! a few relaxed atomic adds: it runs with the zone mutex held, and must not
//! allocate, log or make a system call there.

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two, as a number of bits.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any u64.
pub const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// The bucket a duration falls in.
pub fn bucket_of(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (ns >> shift) & (SUB - 1);
    ((shift + 1) as usize) * SUB as usize + sub as usize
}

/// The largest duration in bucket `i` (inclusive).
pub fn upper_bound(i: usize) -> u64 {
    let sub = SUB as usize;
    if i < sub {
        return i as u64;
    }
    let shift = (i / sub - 1) as u32;
    let low = (SUB + (i % sub) as u64) << shift;
    low + ((1u64 << shift) - 1)
}

/// Counts of durations per bucket, their sum and their maximum.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(ns, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// Forgets everything (a forked process starts from nothing).
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
        self.sum.store(0, Ordering::Relaxed);
        self.max.store(0, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding the `q`-quantile (0 < q <= 1):
    /// at least that fraction of the durations is at most this.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return upper_bound(i).min(self.max());
            }
        }
        self.max()
    }

    /// `n <count>, sum <ns> ns, max <ns> ns, buckets from <i>: c,c,...`:
    /// every bucket from the first non-empty one to the last, dense (an
    /// empty one is an empty field), so the line stays short; a reader
    /// gets each bucket's bounds from `upper_bound`.
    pub fn summary(&self) -> String {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
        let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        let mut out = format!(
            "n {}, sum {} ns, max {} ns, buckets from {first}:",
            self.count(),
            self.sum.load(Ordering::Relaxed),
            self.max()
        );
        for (i, &c) in counts[first..=last].iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            if c > 0 {
                let _ = write!(out, "{c}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        for ns in 0..SUB {
            assert_eq!(upper_bound(bucket_of(ns)), ns);
        }
    }

    #[test]
    fn every_value_is_within_its_bucket() {
        let mut v = 1u64;
        while v < u64::MAX / 3 {
            for ns in [v, v + 1, v * 3 / 2, v * 2 - 1] {
                let i = bucket_of(ns);
                assert!(ns <= upper_bound(i), "{ns} above bucket {i}");
                assert!(i == 0 || ns > upper_bound(i - 1), "{ns} below bucket {i}");
                assert!(i < BUCKETS);
            }
            v *= 2;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn buckets_are_at_most_an_eighth_wide() {
        for i in SUB as usize..BUCKETS - 1 {
            let low = upper_bound(i - 1) + 1;
            let width = upper_bound(i) - low + 1;
            assert!(width * SUB <= low, "bucket {i}: {low} + {width}");
        }
    }

    #[test]
    fn quantiles_and_max() {
        let h = Histogram::new();
        for ns in 1..=1000 {
            h.record(ns * 1000);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1_000_000);
        let p99 = h.quantile(0.99);
        assert!((990_000..=990_000 * 9 / 8).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        h.reset();
        assert_eq!((h.count(), h.max(), h.quantile(0.99)), (0, 0, 0));
    }

    #[test]
    fn summary_is_dense_from_the_first_bucket() {
        let h = Histogram::new();
        h.record(5);
        h.record(5);
        h.record(7);
        assert_eq!(
            h.summary(),
            "n 3, sum 17 ns, max 7 ns, buckets from 5: 2,,1"
        );
        assert_eq!(
            Histogram::new().summary(),
            "n 0, sum 0 ns, max 0 ns, buckets from 0: "
        );
    }
}
