//! What a worker measures, in a form that merges across workers (counters add up, histograms
//! merge bucket by bucket), plus per-channel sequence accounting.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer as HdrDeserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Significant decimal digits the histograms keep: values are exact below 2048 (µs) and within
/// 0.1% above.
const SIGFIG: u8 = 3;

/// A histogram of times in µs that merges exactly across workers: an HdrHistogram for the
/// quantiles, plus the exact count, sum (for the mean), min and max. Workers ship it as JSON
/// (`count`, `sum`, `min`, `max`, and `hdr`: the HdrHistogram V2 encoding in base64).
#[derive(Clone, PartialEq)]
pub struct Hist {
    hdr: Histogram<u64>,
    sum: u64,
    min: u64,
    max: u64,
}

/// The highest value the histograms resize to.
const HDR_MAX: u64 = u64::MAX / 2;

fn new_hdr() -> Histogram<u64> {
    // Auto-resizing: it grows to whatever is recorded (or merged in).
    Histogram::new(SIGFIG).expect("3 significant digits are valid")
}

impl Default for Hist {
    fn default() -> Hist {
        Hist {
            hdr: new_hdr(),
            sum: 0,
            min: 0,
            max: 0,
        }
    }
}

impl Hist {
    pub fn record(&mut self, v: u64) {
        if self.count() == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.sum = self.sum.saturating_add(v);
        // HdrHistogram grows up to u64::MAX / 2 (a value past that counts there; min, max and
        // sum stay exact).
        if self.hdr.record(v.min(HDR_MAX)).is_err() {
            self.hdr.saturating_record(v);
        }
    }

    pub fn merge(&mut self, o: &Hist) {
        if o.count() == 0 {
            return;
        }
        let first = self.count() == 0;
        self.hdr
            .add(&o.hdr)
            .expect("an auto-resizing histogram takes any other with the same precision");
        if first || o.min < self.min {
            self.min = o.min;
        }
        self.max = self.max.max(o.max);
        self.sum = self.sum.saturating_add(o.sum);
    }

    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// The value at quantile `q` (0..=1), in the histogram's unit; exact min/max at the ends.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count() == 0 {
            return None;
        }
        if q <= 0.0 {
            return Some(self.min);
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        Some(self.hdr.value_at_quantile(q).clamp(self.min, self.max))
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.sum as f64 / self.count() as f64)
    }
}

impl fmt::Debug for Hist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hist")
            .field("count", &self.count())
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// How a [`Hist`] travels as JSON.
#[derive(Serialize, Deserialize)]
struct HistWire {
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
    /// HdrHistogram V2 encoding, base64.
    hdr: String,
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.hdr, &mut bytes)
            .map_err(|e| serde::ser::Error::custom(format!("histogram encoding: {e:?}")))?;
        HistWire {
            count: self.count(),
            sum: self.sum,
            min: self.min,
            max: self.max,
            hdr: BASE64.encode(bytes),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        use serde::de::Error;
        let w = HistWire::deserialize(d)?;
        let bytes = BASE64
            .decode(&w.hdr)
            .map_err(|e| D::Error::custom(format!("histogram base64: {e}")))?;
        let mut hdr: Histogram<u64> = HdrDeserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| D::Error::custom(format!("histogram decoding: {e:?}")))?;
        if hdr.sigfig() != SIGFIG || hdr.low() != 1 {
            return Err(D::Error::custom("histogram of another precision"));
        }
        if hdr.len() != w.count {
            return Err(D::Error::custom("histogram count does not match its counts"));
        }
        hdr.auto(true);
        Ok(Hist {
            hdr,
            sum: w.sum,
            min: w.min,
            max: w.max,
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Connect time (TCP + handshake + welcome), µs.
    pub connect: Hist,
    /// Delivery latency (receive time − `sent_us`), µs.
    pub delivery: Hist,
    /// Per VU: time from an unexpected close until it was welcomed again, µs.
    pub reconnect: Hist,
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub welcomes: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub missing: u64,
    pub unexpected_closes: u64,
    pub reconnects: u64,
    /// Replayed/resumed counts from the welcomes of reconnects.
    pub replayed: u64,
    pub not_recovered: u64,
    pub errors: u64,
    /// Messages published by VUs (client_publish) and by the publisher.
    pub published: u64,
    /// The rate the publisher achieved while it published: its publishes less one, over the
    /// time from its first publish to its last answer (`published` over the whole run is lower
    /// by the connect and drain phases).
    #[serde(default)]
    pub publisher_rate_per_s: Option<f64>,
    /// With `workload.stop_receivers`: seconds from the first publish to the gateway's last
    /// busy moment while the workers were stopped (engine/stopped.rs), and the gateway CPU in
    /// that window. Deliveries over the first are the gateway's fan-out throughput.
    #[serde(default)]
    pub stopped_fanout_s: Option<f64>,
    #[serde(default)]
    pub stopped_fanout_cpu_s: Option<f64>,
    pub publish_errors: u64,
    pub close_codes: BTreeMap<String, u64>,
    /// Gauges: summed across workers from their latest reports.
    pub vus_connected: u64,
    pub vus_target: u64,
    /// VUs that are wanted but currently down after an unexpected close.
    pub vus_down: u64,
    /// Seconds from the first unexpected close until every VU was back (max over workers).
    pub recovery_s: Option<f64>,
    /// A few sample error messages.
    pub error_samples: Vec<String>,
}

impl Figures {
    pub fn merge(&mut self, o: &Figures) {
        self.connect.merge(&o.connect);
        self.delivery.merge(&o.delivery);
        self.reconnect.merge(&o.reconnect);
        self.connect_attempts += o.connect_attempts;
        self.connect_failures += o.connect_failures;
        self.welcomes += o.welcomes;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.missing += o.missing;
        self.unexpected_closes += o.unexpected_closes;
        self.reconnects += o.reconnects;
        self.replayed += o.replayed;
        self.not_recovered += o.not_recovered;
        self.errors += o.errors;
        self.published += o.published;
        self.publisher_rate_per_s = self.publisher_rate_per_s.or(o.publisher_rate_per_s);
        self.stopped_fanout_s = self.stopped_fanout_s.or(o.stopped_fanout_s);
        self.stopped_fanout_cpu_s = self.stopped_fanout_cpu_s.or(o.stopped_fanout_cpu_s);
        self.publish_errors += o.publish_errors;
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(k.clone()).or_default() += v;
        }
        self.vus_connected += o.vus_connected;
        self.vus_target += o.vus_target;
        self.vus_down += o.vus_down;
        self.recovery_s = match (self.recovery_s, o.recovery_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for e in &o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(e) {
                self.error_samples.push(e.clone());
            }
        }
    }

    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            let s = e.to_string();
            if !self.error_samples.contains(&s) {
                self.error_samples.push(s);
            }
        }
    }
}

/// The sequence numbers one VU saw on one channel. Tolerates reordering; the first number seen
/// is the baseline (a VU that joins mid-stream expects only what follows).
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    base: u64,
    bits: Vec<u64>,
    max: Option<u64>,
    distinct: u64,
}

pub enum Seen {
    New,
    Duplicate,
}

impl SeqTracker {
    pub fn see(&mut self, seq: u64) -> Seen {
        if self.max.is_none() {
            self.base = seq;
        } else if seq < self.base {
            // Arrived out of order before the first one seen: move the baseline down.
            let shift = self.base - seq;
            let mut nb = vec![0u64; (shift as usize).div_ceil(64) + self.bits.len() + 1];
            for i in 0..self.bits.len() * 64 {
                if self.bits[i / 64] >> (i % 64) & 1 == 1 {
                    let j = i + shift as usize;
                    nb[j / 64] |= 1 << (j % 64);
                }
            }
            self.bits = nb;
            self.base = seq;
        }
        let off = (seq - self.base) as usize;
        if off / 64 >= self.bits.len() {
            self.bits.resize(off / 64 + 1, 0);
        }
        let (w, b) = (off / 64, off % 64);
        if self.bits[w] >> b & 1 == 1 {
            return Seen::Duplicate;
        }
        self.bits[w] |= 1 << b;
        self.distinct += 1;
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        Seen::New
    }

    /// Gaps between the first and the highest number seen, plus those after it up to `last`
    /// (the publisher's last number on the channel) when given.
    pub fn missing(&self, last: Option<u64>) -> u64 {
        let Some(max) = self.max else { return 0 };
        let inside = (max - self.base + 1) - self.distinct;
        inside + last.map_or(0, |l| l.saturating_sub(max))
    }

    pub fn highest(&self) -> Option<u64> {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: &[u64]) -> (SeqTracker, u64) {
        let mut t = SeqTracker::default();
        let mut dups = 0;
        for &s in seqs {
            if let Seen::Duplicate = t.see(s) {
                dups += 1;
            }
        }
        (t, dups)
    }

    #[test]
    fn gaps_and_duplicates() {
        let (t, d) = feed(&[0, 1, 2, 3]);
        assert_eq!((t.missing(None), d), (0, 0));
        assert_eq!(t.missing(Some(3)), 0);
        assert_eq!(t.missing(Some(6)), 3, "tail after the last seen counts");
        let (t, d) = feed(&[5, 6, 9, 6, 10, 10]);
        assert_eq!((t.missing(None), d), (2, 2), "7 and 8 missing; 6 and 10 twice");
        // Joining mid-stream: the baseline is the first number seen.
        let (t, _) = feed(&[100, 101]);
        assert_eq!(t.missing(Some(101)), 0);
        // Reordering across the baseline and across words.
        let (t, d) = feed(&[70, 3, 200, 4, 5]);
        assert_eq!(d, 0);
        assert_eq!(t.missing(None), (200 - 3 + 1) - 5);
        let (t, d) = feed(&(0..300).rev().collect::<Vec<_>>());
        assert_eq!((t.missing(Some(299)), d), (0, 0));
        assert_eq!(
            SeqTracker::default().missing(Some(10)),
            0,
            "nothing seen: nothing expected"
        );
    }

    #[test]
    fn figures_merge() {
        let mut a = Figures::default();
        let mut b = Figures::default();
        a.connect.record(1000);
        b.connect.record(3000);
        a.delivered = 10;
        b.delivered = 5;
        a.missing = 1;
        b.duplicates = 2;
        a.close_codes.insert("1006".into(), 3);
        b.close_codes.insert("1006".into(), 1);
        b.close_codes.insert("4008".into(), 1);
        a.recovery_s = Some(1.5);
        b.recovery_s = Some(2.5);
        a.vus_connected = 7;
        b.vus_connected = 8;
        b.error("boom");
        // Through JSON, as workers ship them.
        let b: Figures = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut m = Figures::default();
        m.merge(&a);
        m.merge(&b);
        assert_eq!(m.delivered, 15);
        assert_eq!((m.missing, m.duplicates, m.errors), (1, 2, 1));
        assert_eq!(m.connect.count(), 2);
        assert_eq!((m.connect.min, m.connect.max), (1000, 3000));
        assert_eq!(m.close_codes["1006"], 4);
        assert_eq!(m.close_codes["4008"], 1);
        assert_eq!(m.recovery_s, Some(2.5));
        assert_eq!(m.vus_connected, 15);
        assert_eq!(m.error_samples, ["boom"]);
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::default();
        assert_eq!((h.quantile(0.5), h.mean(), h.count()), (None, None, 0));
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.002, "{p50}");
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.002, "{p99}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.0), Some(1000));
        assert_eq!(h.mean(), Some(500_500.0));
        assert_eq!(h.count(), 1000);
        // Small values are exact; quantiles stay within [min, max].
        let mut h = Hist::default();
        for v in [0u64, 7, 7, 1500, 2047] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.2), Some(0));
        assert_eq!(h.quantile(0.5), Some(7));
        assert_eq!(h.quantile(0.8), Some(1500));
        assert_eq!(h.quantile(0.99), Some(2047));
        let mut h = Hist::default();
        h.record(123_456_789);
        assert_eq!(h.quantile(0.5), Some(123_456_789), "clamped to the exact min/max");
    }

    #[test]
    fn huge_values_are_counted() {
        let mut h = Hist::default();
        h.record(5);
        h.record(u64::MAX);
        h.record(1_700_000_000_000_000);
        assert_eq!(h.count(), 3);
        assert_eq!((h.quantile(0.0), h.quantile(1.0)), (Some(5), Some(u64::MAX)));
        let back: Hist = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        let mut all = Hist::default();
        for v in 0..5000u64 {
            let x = v * 37 % 100_000 + if v % 7 == 0 { 50_000_000 } else { 0 };
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        // Through JSON, as workers ship them.
        let a2: Hist = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let b2: Hist = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!((&a2, &b2), (&a, &b));
        let mut m = Hist::default();
        m.merge(&b2);
        m.merge(&Hist::default());
        m.merge(&a2);
        assert_eq!(m, all);
        assert_eq!(
            (m.count(), m.sum, m.min, m.max),
            (all.count(), all.sum, all.min, all.max)
        );
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(m.quantile(q), all.quantile(q));
        }
        // A deserialized histogram keeps growing.
        let mut small: Hist = serde_json::from_str(&serde_json::to_string(&Hist::default()).unwrap()).unwrap();
        small.merge(&all);
        small.record(u64::MAX / 4);
        assert_eq!(small.count(), all.count() + 1);
    }

    #[test]
    fn json_shape() {
        let mut h = Hist::default();
        h.record(10);
        h.record(30);
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!((v["count"].as_u64(), v["sum"].as_u64()), (Some(2), Some(40)));
        assert_eq!((v["min"].as_u64(), v["max"].as_u64()), (Some(10), Some(30)));
        assert!(v["hdr"].is_string());
        let mut bad = v.clone();
        bad["count"] = 3.into();
        assert!(serde_json::from_value::<Hist>(bad).is_err());
        let mut bad = v;
        bad["hdr"] = "not base64!".into();
        assert!(serde_json::from_value::<Hist>(bad).is_err());
    }
}
