//! broker/redis/pubsub.rs: the node's one pub/sub connection: it follows local interest
//! (`listen` resolves once Redis confirmed the SUBSCRIBE), hands each frame's bytes to the hub,
//! answers `sync` markers, watches the canary, and after any interruption resubscribes and
//! has the gap repaired before delivering live frames again.

use std::borrow::Cow;
use std::task::Poll;
use std::time::Instant;

use tokio::task::JoinSet;

use super::canary::CanaryWatch;
use super::control::Control;
use super::head;
use super::header::{self, Header};
use super::pace::Pace;
use super::sub::{Change, Sub};
use super::sub_conn::PubMsg;
use super::*;
use crate::hub::Burst;

pub(super) enum SubCmd {
    Listen(Vec<Arc<str>>, oneshot::Sender<Result<(), BrokerError>>),
    Unlisten(Vec<Arc<str>>),
    /// The primary moved (`+switch-master`): reconnect now, through the Sentinels.
    Reconnect,
}

/// What woke the pub/sub reader (`next_wake`).
enum Wake {
    Tick,
    Cmd(Option<SubCmd>),
    Msg(Result<PubMsg, BrokerError>),
    Stop,
}

/// Waits for the pub/sub reader's next piece of work: the canary tick, a command, a message or
/// shutdown, polled in that order (so neither the tick nor a command waits behind a busy
/// stream). By hand rather than with `select!`, which built, polled and dropped four futures per
/// message (the shutdown watch's waiter registered and removed each time): the reader's waiting
/// was about 6% of a node's CPU at 2,000 targeted messages a second (docs/loadtest.md).
async fn next_wake(
    tick: &mut tokio::time::Interval,
    cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
    sub: &mut Sub,
    mut stop: std::pin::Pin<&mut impl Future<Output = Result<(), watch::error::RecvError>>>,
) -> Wake {
    std::future::poll_fn(|cx| {
        if tick.poll_tick(cx).is_ready() {
            return Poll::Ready(Wake::Tick);
        }
        if let Poll::Ready(cmd) = cmds.poll_recv(cx) {
            return Poll::Ready(Wake::Cmd(cmd));
        }
        if let Poll::Ready(msg) = sub.poll_next(cx) {
            return Poll::Ready(Wake::Msg(msg));
        }
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Stop);
        }
        Poll::Pending
    })
    .await
}

impl Inner {
    pub(super) fn redis_names(&self, channels: &[Arc<str>]) -> (Vec<String>, Vec<String>) {
        let mut exact = Vec::new();
        let mut patterns = Vec::new();
        for c in channels {
            if c.contains('*') {
                patterns.push(self.keys.pubsub(c));
            } else {
                exact.push(self.keys.pubsub(c));
            }
        }
        (exact, patterns)
    }

    /// The pub/sub loop: connect, subscribe to everything the hub needs, repair the gap since
    /// the last event seen, then deliver; on any failure or a missing canary, start over.
    pub(super) async fn subscriber(
        self: Arc<Self>,
        mut cmds: mpsc::UnboundedReceiver<SubCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // Capped exponential backoff with jitter, so a cluster does not reconnect in step.
        let policy = wsgw_protocol::Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            factor: 2.0,
            jitter: 0.5,
        };
        let mut attempt = 0u32;
        let mut first = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let session = self.clone().subscriber_session(&mut cmds, &mut shutdown, first).await;
            if self.ready.swap(false, Ordering::AcqRel) {
                // It was up: a new outage starts the backoff from the bottom again.
                attempt = 0;
            }
            self.metrics.redis_up.set(0);
            match session {
                Ok(true) => return,
                Ok(false) => attempt = 0,
                Err(e) => warn!(error = %e, "redis pub/sub failed"),
            }
            // Idle pooled connections may have died with the pub/sub one (a restart, a silent
            // partition the canary caught): dial afresh rather than find out one command at a time.
            if let Ok(link) = self.link() {
                link.pool.retain(|_, _| false);
            }
            first = false;
            // Markers sent on the old connection will not come back: fail their waiters now.
            self.syncs.lock().clear();
            self.metrics.redis_reconnects.inc();
            let wait = policy.delay(attempt);
            attempt = attempt.saturating_add(1);
            // Refuse listens while down instead of letting them wait.
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shutdown.changed() => return,
                    cmd = cmds.recv() => match cmd {
                        None => return,
                        Some(SubCmd::Listen(_, tx)) => { let _ = tx.send(Err(unavailable("redis pub/sub is reconnecting"))); }
                        Some(SubCmd::Unlisten(_)) => {}
                        Some(SubCmd::Reconnect) => break,
                    },
                }
            }
        }
    }

    /// One pub/sub connection's life. Ok(true): shut down; Ok(false): reconnect now.
    pub(super) async fn subscriber_session(
        self: Arc<Self>,
        cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
        shutdown: &mut watch::Receiver<bool>,
        first: bool,
    ) -> Result<bool, BrokerError> {
        if !first {
            // With Sentinels the primary may have moved: follow it first.
            self.relink().await?;
            // A Redis that restarted without persistence (or a new primary) may lack the
            // Functions, the epoch and the history defaults: put them back before anyone
            // publishes.
            self.prepare().await?;
        }
        let client = self.link()?.client.clone();
        let mut sub = timed(self.s.op_timeout, Sub::connect(&client)).await?;
        let control = self.keys.control();
        let canary = self.keys.canary(&self.s.node_id);
        timed(
            self.s.op_timeout,
            sub.change(Change::Subscribe, &[control.clone(), canary.clone()]),
        )
        .await?;
        let (exact, patterns) = self.redis_names(&self.hub.interests());
        for chunk in exact.chunks(512) {
            timed(self.s.op_timeout * 4, sub.change(Change::Subscribe, chunk)).await?;
        }
        for chunk in patterns.chunks(512) {
            timed(self.s.op_timeout * 4, sub.change(Change::Psubscribe, chunk)).await?;
        }
        // What this connection is subscribed to: a `listen` for one of these is answered at
        // once (its SUBSCRIBE was confirmed before this task got to the listen).
        let mut listening: HashSet<Arc<str>> = self.hub.interests().into_iter().collect();
        if !first {
            // Live messages are read into memory meanwhile (`hold_while`) and handed on after;
            // sockets drop what they already have.
            sub.hold_while(self.repair()).await?;
            info!("redis pub/sub back; gap repaired");
        }
        self.ready.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
        let canary_every = Duration::from_millis(self.s.canary_interval_ms.max(10));
        let mut canary_tick = tokio::time::interval(canary_every);
        canary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The canaries go out from a task of their own (stopped with this session): the reader
        // may spend seconds in a node's backlog, and canaries sent only between its drains came
        // back too sparse to tell a slow node from a cut connection.
        let mut canaries = JoinSet::new();
        canaries.spawn(self.clone().publish_canaries(canary.clone(), canary_every));
        let mut watch = CanaryWatch::new();
        // A command that waited while the stream was drained: handled before the next drain, so
        // a node behind on its pub/sub still answers a `subscribe` within one drain.
        let mut waiting: Option<SubCmd> = None;
        // Messages were left held after the last pass (more than one pass takes): they waited
        // already, so the next pass takes them without the write delay.
        let mut behind = false;
        let mut pace = Pace::new(self.s.write_pace, self.s.write_pace_min_sockets);
        let mut stop = std::pin::pin!(shutdown.changed());
        loop {
            let cmd = match waiting.take() {
                Some(cmd) => cmd,
                None => match next_wake(&mut canary_tick, cmds, &mut sub, stop.as_mut()).await {
                    Wake::Stop | Wake::Cmd(None) => return Ok(true),
                    Wake::Cmd(Some(cmd)) => cmd,
                    Wake::Msg(Err(e)) => return Err(e),
                    Wake::Msg(Ok(msg)) => {
                        if !self.s.write_delay.is_zero() && !behind {
                            // WSGW_WRITE_DELAY_MS: what arrives meanwhile joins this message's
                            // burst, one write per socket for all of it.
                            sub.hold_while(tokio::time::sleep(self.s.write_delay)).await;
                        } else if !behind && let Some(until) = pace.hold_until(|| self.interest_of(&msg), Instant::now)
                        {
                            // WSGW_WRITE_PACE_MS (pace.rs): a large fan-out on this message's
                            // channel began less than the pace ago: it waits, gathering what
                            // comes meanwhile.
                            self.metrics.paced_passes.inc();
                            sub.hold_while(tokio::time::sleep_until(until.into())).await;
                        }
                        let started = pace.on().then(Instant::now);
                        // With every message already waiting behind it: several make bursts.
                        let mut ended = None;
                        let open = self.hub.drain_waiting(
                            msg,
                            || match sub.try_next()? {
                                Ok(m) => Some(Some(m)),
                                Err(e) => {
                                    ended = Some(e);
                                    Some(None)
                                }
                            },
                            |m| m.payload().len(),
                            |m, burst| {
                                let reached = self.on_pubsub(&m, &canary, &control, &mut watch, burst);
                                pace.reached(|| self.interest_of(&m), reached);
                            },
                        );
                        pace.pass_done(started);
                        if !open {
                            return Err(ended.unwrap_or_else(|| unavailable("pub/sub connection closed")));
                        }
                        // With per-core runtimes: nothing more handed on while a core is far
                        // behind (what arrives meanwhile is read into memory, `hold_while`).
                        sub.hold_while(self.hub.cores_caught_up()).await;
                        behind = sub.holds_any();
                        waiting = cmds.try_recv().ok();
                        continue;
                    }
                    Wake::Tick => {
                        if watch.missing(canary_every * 3 + self.s.op_timeout) {
                            warn!("canary missing on the pub/sub connection: reconnecting");
                            return Ok(false);
                        }
                        continue;
                    }
                },
            };
            match cmd {
                SubCmd::Listen(channels, tx) => {
                    // A reconnect storm brings thousands of listens at once: subscribe every
                    // listen already waiting in one command instead of one round trip each.
                    let mut all = channels;
                    let mut waiters = vec![tx];
                    let mut deferred = None;
                    while all.len() < 4096 {
                        match cmds.try_recv() {
                            Ok(SubCmd::Listen(more, t)) => {
                                all.extend(more);
                                waiters.push(t);
                            }
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    all.retain(|c| !listening.contains(c));
                    all.sort();
                    all.dedup();
                    let (exact, patterns) = self.redis_names(&all);
                    let r = timed(self.s.op_timeout * 2, async {
                        if !exact.is_empty() {
                            sub.change(Change::Subscribe, &exact).await?;
                        }
                        if !patterns.is_empty() {
                            sub.change(Change::Psubscribe, &patterns).await?;
                        }
                        Ok(())
                    })
                    .await;
                    let failed = r.is_err();
                    for t in waiters {
                        let _ = t.send(r.clone());
                    }
                    if failed {
                        return Err(unavailable("subscribe failed"));
                    }
                    listening.extend(all);
                    // An unlisten or reconnect that came after these listens: next.
                    waiting = deferred;
                }
                SubCmd::Unlisten(channels) => self.unlisten_now(&mut sub, channels, &mut listening).await?,
                SubCmd::Reconnect => {
                    warn!("redis primary moved: reconnecting pub/sub");
                    return Ok(false);
                }
            }
        }
    }

    /// Publishes this node's canary every `every`, one at a time.
    async fn publish_canaries(self: Arc<Self>, channel: String, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = timed(self.s.op_timeout, async {
                let mut c = self.conn().await?;
                let _: i64 = c.publish(&channel, "canary").await.map_err(unavailable)?;
                Ok(())
            })
            .await;
            if let Err(e) = r {
                debug!(error = %e, "canary publish failed");
            }
        }
    }

    /// What `msg` reached sockets by: its channel, or its pattern for a pattern message
    /// (without the key prefix). Borrowed from the message unless a pattern had to be decoded.
    fn interest_of<'m>(&self, msg: &'m PubMsg) -> Option<Cow<'m, str>> {
        let prefix = self.keys.prefix.as_str();
        if !msg.is_pmessage() {
            return msg.channel_name().strip_prefix(prefix).map(Cow::Borrowed);
        }
        match msg.pattern()? {
            Cow::Borrowed(p) => p.strip_prefix(prefix).map(Cow::Borrowed),
            Cow::Owned(p) => p.strip_prefix(prefix).map(|p| Cow::Owned(p.to_owned())),
        }
    }

    /// Handles one message of the pub/sub connection (in `burst` if given) and tells `watch`
    /// what it was. Returns how many sockets it reached.
    fn on_pubsub(
        &self,
        msg: &PubMsg,
        canary: &str,
        control: &str,
        watch: &mut CanaryWatch,
        burst: Option<&mut Burst>,
    ) -> usize {
        let name = msg.channel_name();
        if name == canary {
            watch.canary();
            let sync = msg.payload().strip_prefix(b"sync:");
            if let Some(n) = sync.and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                && let Some((_, tx)) = self.syncs.lock().remove(&n)
            {
                // Answered once what came before it is offered on every core.
                self.hub.after_fanouts(tx);
            }
        } else if name == control {
            self.on_control(msg.payload());
        } else {
            let (published_us, reached) = self.on_message(msg, burst);
            watch.frame(published_us);
            return reached;
        }
        0
    }

    pub(super) async fn unlisten_now(
        &self,
        sub: &mut Sub,
        channels: Vec<Arc<str>>,
        listening: &mut HashSet<Arc<str>>,
    ) -> Result<(), BrokerError> {
        // Commands run in order, so a channel re-subscribed since is still wanted.
        let gone: Vec<Arc<str>> = channels
            .into_iter()
            .filter(|c| !self.hub.has_interest(c) && listening.remove(c))
            .collect();
        let (exact, patterns) = self.redis_names(&gone);
        timed(self.s.op_timeout, async {
            if !exact.is_empty() {
                sub.change(Change::Unsubscribe, &exact).await?;
            }
            if !patterns.is_empty() {
                sub.change(Change::Punsubscribe, &patterns).await?;
            }
            Ok(())
        })
        .await
    }

    pub(super) fn on_control(&self, payload: &[u8]) {
        match serde_json::from_slice::<Control>(payload) {
            Ok(Control::KickUser { user_id }) => {
                self.hub.close_user(&user_id, CloseCode::Kicked);
            }
            Ok(Control::KickConnection { connection_id }) => {
                if let Some(c) = self.hub.connection(&connection_id) {
                    c.close(CloseCode::Kicked);
                }
            }
            Ok(Control::Replace { connection_id, node }) => {
                if node == self.s.node_id
                    && let Some(c) = self.hub.connection(&connection_id)
                {
                    c.replace();
                }
            }
            Err(e) => debug!(error = %e, "ignored control message"),
        }
    }

    /// A frame from Redis: strip the routing header, read only what routing and dedup need,
    /// and hand the very same bytes to the hub. Returns the frame's publish time (µs; 0 when
    /// unknown) and how many sockets it reached.
    pub(super) fn on_message(&self, msg: &PubMsg, burst: Option<&mut Burst>) -> (u64, usize) {
        let Some(channel) = msg.channel_name().strip_prefix(self.keys.prefix.as_str()) else {
            return (0, 0);
        };
        let Some((frame, header)) = self.parse_frame(channel, msg.payload()) else {
            self.metrics.dropped_frames.inc();
            return (0, 0);
        };
        if let Some(id) = frame.event_id {
            let mut w = self.watermark.lock();
            if w.is_none_or(|w| id > w) {
                *w = Some(id);
            }
        }
        let excluded = header.excluded();
        let reached = if msg.is_pmessage() {
            let Some(pattern) = msg.pattern() else {
                return (frame.published_us, 0);
            };
            let Some(pattern) = pattern.strip_prefix(self.keys.prefix.as_str()) else {
                return (frame.published_us, 0);
            };
            self.hub.deliver_pattern(pattern, channel, &frame, &excluded, burst)
        } else {
            self.hub.deliver_exact(channel, &frame, &excluded, burst)
        };
        (frame.published_us, reached)
    }

    /// A pub/sub message's frame, checked, and its header (header.rs).
    pub(super) fn parse_frame<'a>(&self, channel: &str, payload: &'a [u8]) -> Option<(OutFrame, Header<'a>)> {
        let (header, body) = header::split(payload)?;
        let text = std::str::from_utf8(body).ok()?;
        let head = head::read(text)?;
        let mut response = None;
        match head.kind.as_ref() {
            // An event must name the channel it travels on, so a frame can't be smuggled
            // onto another channel's subscribers.
            "event" if head.channel.as_deref() == Some(channel) => {}
            // Channel presence (`channel_presence.rs`): ephemeral, on the channel they name.
            "join" | "leave" if head.channel.as_deref() == Some(channel) => {}
            // Backend answers to requests, only to the one connection that asked.
            "response" if channel.starts_with(wsgw_protocol::CONNECTION_PREFIX) => {
                let key = head.request_id.as_ref().map(|v| v.to_string())?;
                response = Some(Arc::new(ResponseTag { key, more: head.more }));
            }
            _ => return None,
        }
        let published_us = head.ts.map_or(0, crate::time::ms_to_us);
        // The one copy of the body: behind its header, the bytes every recipient is sent.
        let mut frame = OutFrame::control(body);
        frame.event_id = head.event_id;
        frame.published_us = published_us;
        frame.response = response;
        Some((frame, header))
    }

    pub(super) async fn listen(&self, channels: &[Arc<str>]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(());
        }
        if !self.ready.load(Ordering::Acquire) {
            return Err(unavailable("redis pub/sub is not connected"));
        }
        let (tx, rx) = oneshot::channel();
        self.sub_tx
            .send(SubCmd::Listen(channels.to_vec(), tx))
            .map_err(unavailable)?;
        match tokio::time::timeout(self.s.op_timeout * 2, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(unavailable("subscribe not confirmed in time")),
        }
    }

    pub(super) async fn sync(&self) -> Result<EventId, BrokerError> {
        let inner = self;
        if !inner.ready.load(Ordering::Acquire) {
            return Err(unavailable("redis pub/sub is not connected"));
        }
        let n = inner.next_sync.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.syncs.lock().insert(n, (None, tx));
        let patient = inner.s.op_timeout * PATIENT;
        let r = async {
            // The marker is published after the snapshot is read, so it reaches our pub/sub
            // connection after every event up to the snapshot.
            let seq: Option<String> = timed(patient, async {
                let mut c = inner.conn().await?;
                let (seq, _): (Option<String>, i64) = redis::pipe()
                    .cmd("GET")
                    .arg(inner.keys.seq(None))
                    .cmd("PUBLISH")
                    .arg(inner.keys.canary(&inner.s.node_id))
                    .arg(format!("sync:{n}"))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(seq)
            })
            .await?;
            match tokio::time::timeout(patient, rx).await {
                Ok(Ok(())) => Ok(seq.and_then(|v| v.parse::<EventId>().ok()).unwrap_or_default()),
                _ => Err(unavailable("redis pub/sub did not catch up in time")),
            }
        }
        .await;
        inner.syncs.lock().remove(&n);
        r
    }
}
