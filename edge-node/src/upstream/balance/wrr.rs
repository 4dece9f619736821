//! Weighted round robin without locks: interleaved (each round visits every target whose
//! weight is above the round number), indexed by one atomic counter.
//!
//! Weights `[3, 1]` give `A B A A`; `[2, 2, 1]` give `A B C A B`. Targets of weight 0 are
//! never picked. Picking costs one atomic add and a walk over the distinct weights.

use std::sync::atomic::{AtomicU64, Ordering};

/// A run of rounds in which the same targets take part.
#[derive(Debug)]
struct Segment {
    rounds: u64,
    members: Vec<usize>,
}

#[derive(Debug)]
pub struct WeightedRoundRobin {
    segments: Vec<Segment>,
    total: u64,
    next: AtomicU64,
}

impl WeightedRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let divisor = weights
            .iter()
            .filter(|w| **w > 0)
            .fold(0, |g, w| gcd(g, u64::from(*w)))
            .max(1);
        let scaled: Vec<u64> = weights.iter().map(|w| u64::from(*w) / divisor).collect();
        let mut distinct: Vec<u64> = scaled.iter().copied().filter(|w| *w > 0).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let mut segments = Vec::with_capacity(distinct.len());
        let mut prev = 0;
        for w in distinct {
            let members: Vec<usize> = (0..scaled.len()).filter(|i| scaled[*i] >= w).collect();
            segments.push(Segment {
                rounds: w - prev,
                members,
            });
            prev = w;
        }
        let total = scaled.iter().sum();
        Self {
            segments,
            total,
            next: AtomicU64::new(0),
        }
    }

    /// The index of the next target, or `None` when every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        for seg in &self.segments {
            let len = seg.members.len() as u64;
            let span = seg.rounds * len;
            if n < span {
                return Some(seg.members[(n % len) as usize]);
            }
            n -= span;
        }
        None
    }
}

pub fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let wrr = WeightedRoundRobin::new(weights);
        (0..n).map(|_| wrr.pick().unwrap()).collect()
    }

    #[test]
    fn interleaves_by_weight() {
        assert_eq!(sequence(&[3, 1], 8), [0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!(sequence(&[2, 2, 1], 5), [0, 1, 2, 0, 1]);
        assert_eq!(sequence(&[1], 3), [0, 0, 0]);
        // Common factors do not make runs longer.
        assert_eq!(sequence(&[300, 100], 4), [0, 1, 0, 0]);
    }

    #[test]
    fn zero_weights_are_skipped() {
        assert_eq!(sequence(&[0, 5, 0], 3), [1, 1, 1]);
        assert_eq!(WeightedRoundRobin::new(&[0, 0]).pick(), None);
        assert_eq!(WeightedRoundRobin::new(&[]).pick(), None);
    }

    #[test]
    fn shares_match_weights_over_a_cycle() {
        let picks = sequence(&[5, 3, 2], 1000);
        let count = |i| picks.iter().filter(|p| **p == i).count();
        assert_eq!((count(0), count(1), count(2)), (500, 300, 200));
    }
}
