//! broker/redis/pace.rs: the write pace (`WSGW_WRITE_PACE_MS`). A channel (or pattern) whose
//! messages reach at least `min_sockets` sockets, and come more often than 1.5 per `every`, gets
//! at most one pass of the pub/sub reader per `every`: its next message waits until `every`
//! after the last pass that wrote one began, and what arrives meanwhile is held and goes out in
//! that pass as one burst, each socket's frames in one write. Anything slower, a channel with
//! few followers (a targeted event), and a large fan-out on another channel (other sockets,
//! nothing to share) go out at once, as without the setting.
//!
//! The rate is an average per channel of the time between its passes divided by the messages
//! each took, so a paced channel, whose passes come `every` apart, is measured by how many
//! messages each pass gathers. Starting to pace only above 1.5 messages per `every` keeps a
//! channel just below or at one per `every` (jitter included) from being held for nothing:
//! paced, each message would wait up to `every` while a pass gathered about one.
//! Pure logic; the reader (pubsub.rs) does the holding.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(super) struct Pace {
    every: Duration,
    min_sockets: usize,
    /// Channels and patterns with a large fan-out in the last two paces.
    hot: HashMap<String, Hot>,
    /// The current pass's large fan-outs, one entry per message.
    this_pass: Vec<String>,
}

struct Hot {
    /// When the last pass with a large fan-out on the channel began.
    began: Instant,
    /// The channel's average time per message (`None` until a second pass measures it).
    per_message: Option<Duration>,
}

impl Pace {
    /// `every` zero: never waits.
    pub(super) fn new(every: Duration, min_sockets: usize) -> Self {
        Self {
            every,
            min_sockets: min_sockets.max(1),
            hot: HashMap::new(),
            this_pass: Vec::new(),
        }
    }

    /// Whether the pace is on at all: off, the reader reads no clock for it.
    pub(super) fn on(&self) -> bool {
        !self.every.is_zero()
    }

    /// A message on `interest` (a channel, or a pattern for a pattern message) arrived with
    /// nothing held before it: until when the reader holds before it starts the pass, if at all.
    /// `interest` is asked only while some channel has large fan-outs, `now` only when this one
    /// is fast enough to pace.
    pub(super) fn hold_until<'a>(
        &self,
        interest: impl FnOnce() -> Option<Cow<'a, str>>,
        now: impl FnOnce() -> Instant,
    ) -> Option<Instant> {
        if self.hot.is_empty() {
            return None;
        }
        let hot = self.hot.get(&*interest()?)?;
        // More than 1.5 messages per pace: per message, less than two thirds of it.
        if hot.per_message? * 3 >= self.every * 2 {
            return None;
        }
        let until = hot.began + self.every;
        (until > now()).then_some(until)
    }

    /// A message of the current pass on `interest` reached `sockets` sockets.
    pub(super) fn reached<'a>(&mut self, interest: impl FnOnce() -> Option<Cow<'a, str>>, sockets: usize) {
        if self.on()
            && sockets >= self.min_sockets
            && let Some(name) = interest()
        {
            self.this_pass.push(name.into_owned());
        }
    }

    /// The pass that began at `started` is over (`None` when the pace is off).
    pub(super) fn pass_done(&mut self, started: Option<Instant>) {
        let Some(started) = started else {
            return;
        };
        let mut names = std::mem::take(&mut self.this_pass);
        names.sort_unstable();
        for group in names.chunk_by(|a, b| a == b) {
            let n = group.len() as u32;
            match self.hot.get_mut(&group[0]) {
                Some(hot) => {
                    let sample = started.saturating_duration_since(hot.began) / n;
                    hot.per_message = Some(hot.per_message.map_or(sample, |avg| (avg * 3 + sample) / 4));
                    hot.began = started;
                }
                None => {
                    let hot = Hot {
                        began: started,
                        per_message: None,
                    };
                    self.hot.insert(group[0].clone(), hot);
                }
            }
        }
        names.clear();
        self.this_pass = names;
        let keep = self.every * 2;
        self.hot.retain(|_, hot| hot.began + keep > started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn on<'a>(name: &'a str) -> impl FnOnce() -> Option<Cow<'a, str>> {
        move || Some(Cow::Borrowed(name))
    }

    /// One pass at `at` with `n` large messages on `channel`.
    fn pass(p: &mut Pace, channel: &str, n: usize, at: Instant) {
        for _ in 0..n {
            p.reached(on(channel), 5000);
        }
        p.pass_done(Some(at));
    }

    #[test]
    fn a_fast_channel_waits_out_the_pace_and_no_longer() {
        let t0 = Instant::now();
        let mut p = Pace::new(50 * MS, 1000);
        assert_eq!(
            p.hold_until(on("news"), || t0),
            None,
            "the first message goes out at once"
        );
        pass(&mut p, "news", 1, t0);
        assert_eq!(p.hold_until(on("news"), || t0 + 20 * MS), None, "no rate measured yet");
        pass(&mut p, "news", 1, t0 + 20 * MS);
        // 20 ms per message: paced.
        assert_eq!(p.hold_until(on("news"), || t0 + 40 * MS), Some(t0 + 70 * MS));
        assert_eq!(p.hold_until(on("news"), || t0 + 70 * MS), None, "not past the pace");
        // Paced passes gather 2 to 3 messages each: still paced.
        pass(&mut p, "news", 2, t0 + 70 * MS);
        pass(&mut p, "news", 3, t0 + 120 * MS);
        assert_eq!(p.hold_until(on("news"), || t0 + 130 * MS), Some(t0 + 170 * MS));
    }

    #[test]
    fn a_channel_at_about_one_message_per_pace_is_never_held() {
        let t0 = Instant::now();
        let mut p = Pace::new(50 * MS, 1000);
        // 20 a second with jitter: passes 45 to 55 ms apart.
        let mut at = t0;
        for i in 0..40u32 {
            assert_eq!(p.hold_until(on("news"), || at), None, "message {i}");
            pass(&mut p, "news", 1, at);
            at += if i % 2 == 0 { 45 * MS } else { 55 * MS };
        }
        // 30 a second is not more than 1.5 per pace either.
        for i in 0..20 {
            pass(&mut p, "news", 1, at);
            at += 34 * MS;
            assert_eq!(p.hold_until(on("news"), || at), None, "message {i} at 30/s");
        }
    }

    #[test]
    fn small_fan_outs_and_other_channels_never_wait() {
        let t0 = Instant::now();
        let mut p = Pace::new(50 * MS, 1000);
        pass(&mut p, "news", 1, t0);
        pass(&mut p, "news", 1, t0 + 10 * MS);
        for i in 11..20 {
            assert_eq!(
                p.hold_until(on("user:7"), || t0 + i * MS),
                None,
                "a targeted event is never held"
            );
            p.reached(on("user:7"), 1);
            p.pass_done(Some(t0 + i * MS));
        }
        assert_eq!(
            p.hold_until(on("room:2"), || t0 + 20 * MS),
            None,
            "another channel's sockets"
        );
        assert_eq!(
            p.hold_until(on("news"), || t0 + 20 * MS),
            Some(t0 + 60 * MS),
            "small passes do not end a large one's pace"
        );
    }

    #[test]
    fn a_channel_quiet_for_two_paces_is_forgotten() {
        let t0 = Instant::now();
        let mut p = Pace::new(50 * MS, 1000);
        pass(&mut p, "news", 1, t0);
        pass(&mut p, "news", 1, t0 + 10 * MS);
        p.reached(on("user:7"), 1);
        p.pass_done(Some(t0 + 110 * MS));
        assert!(p.hot.is_empty());
        assert_eq!(p.hold_until(on("news"), || t0 + 120 * MS), None);
    }

    #[test]
    fn a_zero_pace_never_waits() {
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::ZERO, 1);
        pass(&mut p, "news", 1, t0);
        pass(&mut p, "news", 1, t0 + MS);
        assert_eq!(p.hold_until(on("news"), || t0 + 2 * MS), None);
    }
}
