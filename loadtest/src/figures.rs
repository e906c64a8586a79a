//! What a worker measures, in a form that merges across workers (counters add up, histograms
//! merge bucket by bucket), plus per-channel sequence accounting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::Hist;

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

    pub fn snapshot(&self) -> Figures {
        let mut f = self.clone();
        f.connect = self.connect.snapshot();
        f.delivery = self.delivery.snapshot();
        f.reconnect = self.reconnect.snapshot();
        f
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
        let b: Figures = serde_json::from_str(&serde_json::to_string(&b.snapshot()).unwrap()).unwrap();
        let mut m = Figures::default();
        m.merge(&a.snapshot());
        m.merge(&b);
        assert_eq!(m.delivered, 15);
        assert_eq!((m.missing, m.duplicates, m.errors), (1, 2, 1));
        assert_eq!(m.connect.count, 2);
        assert_eq!((m.connect.min, m.connect.max), (1000, 3000));
        assert_eq!(m.close_codes["1006"], 4);
        assert_eq!(m.close_codes["4008"], 1);
        assert_eq!(m.recovery_s, Some(2.5));
        assert_eq!(m.vus_connected, 15);
        assert_eq!(m.error_samples, ["boom"]);
    }
}
