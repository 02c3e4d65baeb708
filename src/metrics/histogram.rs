//! A latency histogram with fixed buckets, as Prometheus histograms are
//! exported: a count per bucket, the sum and the count of observations.
//!
//! Fixed buckets cost nothing to merge (several cores' histograms are added
//! bucket by bucket) and a fixed few words to copy, which is what a core can
//! afford to hand to the metrics thread; quantiles are left to Prometheus
//! (`histogram_quantile`), as for any exporter.

/// Upper bounds of the buckets, in nanoseconds; one more bucket takes what
/// is above the last. A write into the page cache takes tens of
/// microseconds and a data sync from a fraction of a millisecond (an SSD)
/// to tens of milliseconds (a spinning disk, a network volume), so the
/// bounds run from 25 µs to 2.5 s in steps of about 2.5.
pub const BUCKET_BOUNDS_NS: [u64; 16] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every
    /// bound.
    counts: [u64; BUCKETS],
    sum_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, ns: u64) {
        let bucket = BUCKET_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.counts[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Adds another histogram's observations to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// The cumulative counts Prometheus exports: for each bound, the
    /// observations at most that long (`le`), then all of them (`+Inf`).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = BUCKET_BOUNDS_NS.iter().map(|&b| Some(b)).chain(std::iter::once(None));
        bounds.zip(self.counts.iter().scan(0, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::default();
        for ns in [1, 25_000, 25_001, 3_000_000, 2_500_000_000, 9_000_000_000] {
            h.observe(ns);
        }
        let cumulative: Vec<(Option<u64>, u64)> = h.cumulative().collect();
        assert_eq!(cumulative.len(), BUCKETS);
        // le is inclusive: 25 µs exactly is in the first bucket.
        assert_eq!(cumulative[0], (Some(25_000), 2));
        assert_eq!(cumulative[1], (Some(50_000), 3));
        assert_eq!(cumulative[6], (Some(2_500_000), 3));
        assert_eq!(cumulative[7], (Some(5_000_000), 4));
        assert_eq!(cumulative[15], (Some(2_500_000_000), 5));
        assert_eq!(cumulative[16], (None, 6));
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum_ns(), 1 + 25_000 + 25_001 + 3_000_000 + 2_500_000_000 + 9_000_000_000);
        let mut twice = h;
        twice.merge(&h);
        assert_eq!(twice.count(), 12);
        assert_eq!(twice.sum_ns(), 2 * h.sum_ns());
        assert_eq!(twice.cumulative().nth(7), Some((Some(5_000_000), 8)));
    }
}
