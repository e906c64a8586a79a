//! A mergeable histogram with fixed log-scale buckets (values in µs, ~1.5% resolution), so
//! workers can ship theirs to the parent as JSON and the parent adds them up exactly.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS; // 64 sub-buckets per power of two
const LINEAR: u64 = 2 * SUB; // values below 128 have their own bucket
const BUCKETS: usize = (LINEAR + (63 - 7 + 1) * SUB) as usize;

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 7
    let mantissa = v >> (e - SUB_BITS); // in [64, 128)
    (LINEAR + u64::from(e - 7) * SUB + (mantissa - SUB)) as usize
}

/// The midpoint of bucket `i`'s range.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let e = (i - LINEAR) / SUB + 7;
    let mantissa = (i - LINEAR) % SUB + SUB;
    let lo = mantissa << (e - u64::from(SUB_BITS));
    let width = 1u64 << (e - u64::from(SUB_BITS));
    lo + width / 2
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Hist {
    /// Sparse (bucket, count) pairs, sorted by bucket.
    buckets: Vec<(u32, u64)>,
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
    #[serde(skip)]
    dense: Option<Box<[u64]>>,
}

impl Hist {
    fn dense(&mut self) -> &mut [u64] {
        if self.dense.is_none() {
            let mut d = vec![0u64; BUCKETS].into_boxed_slice();
            for &(i, c) in &self.buckets {
                d[i as usize] += c;
            }
            self.buckets.clear();
            self.dense = Some(d);
        }
        self.dense.as_mut().unwrap()
    }

    pub fn record(&mut self, v: u64) {
        self.dense()[index(v)] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum += v;
    }

    /// Sparse pairs, whether the histogram is dense or sparse now.
    fn pairs(&self) -> Vec<(u32, u64)> {
        match &self.dense {
            Some(d) => d
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            None => self.buckets.clone(),
        }
    }

    /// A compact copy for serialisation.
    pub fn snapshot(&self) -> Hist {
        Hist {
            buckets: self.pairs(),
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            dense: None,
        }
    }

    pub fn merge(&mut self, o: &Hist) {
        if o.count == 0 {
            return;
        }
        let pairs = o.pairs();
        let d = self.dense();
        for (i, c) in pairs {
            d[i as usize] += c;
        }
        if self.count == 0 || o.min < self.min {
            self.min = o.min;
        }
        self.max = self.max.max(o.max);
        self.count += o.count;
        self.sum += o.sum;
    }

    /// The value at quantile `q` (0..=1), in the histogram's unit; exact min/max at the ends.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        if q <= 0.0 {
            return Some(self.min);
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.pairs() {
            seen += c;
            if seen >= rank {
                return Some(value(i as usize).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_two_percent() {
        for v in [0u64, 1, 127, 128, 129, 1000, 12345, 1 << 20, 987_654_321, u64::MAX / 3] {
            let got = value(index(v));
            let err = (got as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "{v} -> {got}");
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.0), Some(1000));
        assert_eq!(h.mean(), Some(500_500.0));
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        let mut all = Hist::default();
        for v in 0..5000u64 {
            let x = v * 37 % 100_000;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        // Through JSON, as workers ship them.
        let a2: Hist = serde_json::from_str(&serde_json::to_string(&a.snapshot()).unwrap()).unwrap();
        let b2: Hist = serde_json::from_str(&serde_json::to_string(&b.snapshot()).unwrap()).unwrap();
        let mut m = Hist::default();
        m.merge(&a2);
        m.merge(&b2);
        assert_eq!(m.snapshot(), all.snapshot());
        for q in [0.5, 0.9, 0.99] {
            assert_eq!(m.quantile(q), all.quantile(q));
        }
    }
}
