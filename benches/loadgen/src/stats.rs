//! Percentiles of latency samples.

use serde::{Deserialize, Serialize};

/// Count, median, p90, p99, max of microsecond samples (nearest-rank).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Percentiles {
    pub(crate) count: usize,
    pub(crate) p50: u32,
    pub(crate) p90: u32,
    pub(crate) p99: u32,
    pub(crate) max: u32,
}

impl Percentiles {
    pub(crate) fn of(samples: impl IntoIterator<Item = u32>) -> Percentiles {
        let mut v: Vec<u32> = samples.into_iter().collect();
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            count: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let p = Percentiles::of(1..=100);
        assert_eq!(
            (p.count, p.p50, p.p90, p.p99, p.max),
            (100, 50, 90, 99, 100)
        );
        assert_eq!(Percentiles::of([7]).p99, 7);
        assert_eq!(Percentiles::of([]), Percentiles::default());
    }
}
