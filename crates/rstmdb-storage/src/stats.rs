//! Lock-free histograms for the engine's and the server's metrics: fixed upper bounds, one
//! atomic counter per bucket, observed with a few relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram of `u64` observations (microseconds, counts, …) over fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, plus the overflow bucket (+Inf). Not cumulative.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough copy for rendering: cumulative counts per bound, then +Inf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [u64],
    /// `cumulative[i]` = observations ≤ `bounds[i]`; the last entry is the total (+Inf).
    pub cumulative: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl Histogram {
    /// `bounds` must be ascending.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: self.sum.load(Ordering::Relaxed),
            count: acc,
        }
    }
}

/// Latency bounds in microseconds: 100 µs … 1 s.
pub const LATENCY_MICROS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Records per group commit.
pub const GROUP_SIZES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[1, 10]);
        for v in [0, 1, 2, 10, 11, 500] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 4, 6]);
        assert_eq!((s.count, s.sum), (6, 524));
    }
}
