//! Consistent hashing: a ring of points, each target owning a number of virtual nodes
//! proportional to its weight (160 per weight unit, the gcd of the weights), placed by
//! hashing the target's URL and the node's number. A key goes to the first point at or after
//! its hash, skipping targets that are out of rotation. Points depend only on the target's
//! own URL, so adding or removing one target moves only the keys it gains or loses (about
//! 1/n of them).
//!
//! The hash is FNV-1a with murmur3's 64-bit finalizer: fixed, so every edge (and every
//! build) maps a key to the same target.

/// Virtual nodes per weight unit.
const POINTS_PER_UNIT: u64 = 160;
/// Largest ring; above it every target's share is scaled down (at least one point each).
const MAX_POINTS: u64 = 40_960;

#[derive(Debug)]
pub struct Ring {
    /// (point, target index), sorted by point.
    points: Vec<(u64, u32)>,
}

/// A stable 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // fmix64: spreads FNV's weak low-entropy differences over every bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Ring {
    /// A ring over `targets` (URL, weight); weight 0 targets get no point.
    pub fn new(targets: &[(&str, u32)]) -> Ring {
        let unit = targets
            .iter()
            .filter(|(_, w)| *w > 0)
            .fold(0, |g, (_, w)| super::wrr::gcd(g, u64::from(*w)))
            .max(1);
        let mut counts: Vec<u64> = targets
            .iter()
            .map(|(_, w)| u64::from(*w) / unit * POINTS_PER_UNIT)
            .collect();
        let total: u64 = counts.iter().sum();
        if total > MAX_POINTS {
            for c in counts.iter_mut().filter(|c| **c > 0) {
                *c = (*c * MAX_POINTS / total).max(1);
            }
        }
        let mut points = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, ((url, _), count)) in targets.iter().zip(&counts).enumerate() {
            for k in 0..*count {
                points.push((hash64(format!("{url}#{k}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The target owning `hash`: the first point clockwise from it whose target `ok` accepts.
    pub fn lookup(&self, hash: u64, mut ok: impl FnMut(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        let start = self.points.partition_point(|(p, _)| *p < hash);
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|i| ok(*i))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<u64> {
        (0..n).map(|i| hash64(format!("user-{i}").as_bytes())).collect()
    }

    #[test]
    fn spreads_keys_by_weight() {
        let ring = Ring::new(&[("http://a", 1), ("http://b", 1), ("http://c", 2), ("http://d", 0)]);
        assert_eq!(ring.len(), 4 * 160);
        let mut counts = [0usize; 4];
        for k in keys(4000) {
            counts[ring.lookup(k, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        // Expected 1000 / 1000 / 2000.
        for (i, want) in [(0, 1000), (1, 1000), (2, 2000)] {
            let got = counts[i] as f64;
            assert!((got - want as f64).abs() < want as f64 * 0.2, "{counts:?}");
        }
    }

    #[test]
    fn removing_one_of_four_targets_moves_about_a_quarter_of_the_keys() {
        let urls = [
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
            "http://10.0.0.4:80",
        ];
        let four = Ring::new(&urls.map(|u| (u, 1)));
        let three = Ring::new(&urls[..3].iter().map(|u| (*u, 1)).collect::<Vec<_>>());
        let keys = keys(1000);
        let moved = keys
            .iter()
            .filter(|k| {
                let before = urls[four.lookup(**k, |_| true).unwrap()];
                let after = urls[three.lookup(**k, |_| true).unwrap()];
                before != after
            })
            .count();
        // Only the removed target's keys move (~250 of 1000).
        assert!(moved <= 350, "{moved} of 1000 keys moved");
        let removed_owned = keys
            .iter()
            .filter(|k| four.lookup(**k, |_| true) == Some(3))
            .count();
        assert_eq!(moved, removed_owned);
    }

    #[test]
    fn skips_unavailable_targets_and_handles_extremes() {
        let ring = Ring::new(&[("http://a", 1), ("http://b", 1)]);
        for k in keys(100) {
            assert_eq!(ring.lookup(k, |i| i == 1), Some(1));
        }
        assert_eq!(ring.lookup(7, |_| false), None);
        assert_eq!(Ring::new(&[]).lookup(7, |_| true), None);
        assert_eq!(Ring::new(&[("http://a", 0)]).lookup(7, |_| true), None);
        // Huge co-prime weights are scaled down, each target keeping a point.
        let big = Ring::new(&[("http://a", 10_000), ("http://b", 9_999), ("http://c", 1)]);
        assert!(big.len() as u64 <= MAX_POINTS + 3);
        assert!((0..3).all(|t| big.points.iter().any(|(_, i)| *i as usize == t)));
        // The hash is fixed: every edge agrees on the mapping.
        assert_eq!(hash64(b""), hash64(b""));
        assert_ne!(hash64(b"a"), hash64(b"b"));
    }
}
