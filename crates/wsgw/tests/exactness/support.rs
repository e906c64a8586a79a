//! tests/exactness/support.rs: what the exactness tests share: frame helpers, a socket
//! `Recorder` that reads in the background, a `Publisher` backend pipelining `FCALL
//! wsgw_publish` (and its `PubLog`), and `SlowRedis`, a proxy that makes Redis look distant.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use wsgw_protocol::EventId;

use crate::common::cluster::*;
use crate::common::*;

/// The Redis tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Longest wait for a frame that a busy node is still working through.
pub const BUSY_DEADLINE: Duration = Duration::from_secs(30);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn subscribe(channel: &str) -> Value {
    json!({"type": "subscribe", "channel": channel})
}

pub fn unsubscribe(channel: &str) -> Value {
    json!({"type": "unsubscribe", "channel": channel})
}

pub fn id_of(v: &Value) -> Option<EventId> {
    v["event_id"].as_str().map(|s| s.parse().expect("valid event id"))
}

pub fn is_frame<'a>(ty: &'a str, channel: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v| v["type"] == ty && v["channel"] == channel
}

pub fn is_event(id: EventId) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == "event" && id_of(v) == Some(id)
}

/// Ids of the durable events on `channel` among `frames`, in arrival order.
pub fn ids_on(frames: &[Frame], channel: &str) -> Vec<EventId> {
    frames
        .iter()
        .filter(|f| f.v["type"] == "event" && f.v["channel"] == channel)
        .filter_map(|f| id_of(&f.v))
        .collect()
}

pub fn show(ids: &[EventId]) -> String {
    let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    format!("[{}]", ids.join(", "))
}

/// Describes how `got` differs from `want` (both ids of one channel): what is missing,
/// repeated or out of order.
pub fn diff(want: &[EventId], got: &[EventId]) -> String {
    let have: HashSet<EventId> = got.iter().copied().collect();
    let missing: Vec<EventId> = want.iter().filter(|id| !have.contains(id)).copied().collect();
    let mut seen = HashSet::new();
    let repeated = got.iter().filter(|id| !seen.insert(**id)).count();
    let backwards = got.windows(2).filter(|w| w[1] <= w[0]).count();
    let wanted: HashSet<EventId> = want.iter().copied().collect();
    let unexpected = got.iter().filter(|id| !wanted.contains(id)).count();
    let first: Vec<String> = missing.iter().take(5).map(|id| id.to_string()).collect();
    format!(
        "{} of {} missing (first: {first:?}), {repeated} repeated, {backwards} out of order, {unexpected} unexpected",
        missing.len(),
        want.len(),
    )
}

pub async fn redis_cmd<T: redis::FromRedisValue>(r: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(r).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Every id Redis holds in `channel`'s history, oldest first: what was really published,
/// including events of a pipeline whose answer was lost in an outage.
pub async fn history_ids(r: &mut redis::aio::MultiplexedConnection, channel: &str) -> Vec<EventId> {
    let key = format!("ws:history:{channel}");
    let entries: Vec<(String, Vec<String>)> = redis_cmd(r, &["XRANGE", &key, "-", "+"]).await;
    entries.into_iter().map(|(id, _)| id.parse().unwrap()).collect()
}

/// One frame as a socket received it.
pub struct Frame {
    pub at: Instant,
    pub v: Value,
}

/// A socket whose frames a background task reads as they come (a busy socket never stalls the
/// server), each kept with its arrival time.
pub struct Recorder {
    pub name: String,
    pub sink: SplitSink<Ws, Message>,
    pub frames: Arc<Mutex<Vec<Frame>>>,
    pub seen: tokio::sync::watch::Receiver<usize>,
    pub ended: Arc<Mutex<Option<String>>>,
    pub reader: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub fn new(name: impl Into<String>, c: Client) -> Recorder {
        let Client { ws, .. } = c;
        let (sink, mut stream) = ws.split();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (tx, seen) = tokio::sync::watch::channel(0usize);
        let reader = {
            let (frames, ended) = (frames.clone(), ended.clone());
            tokio::spawn(async move {
                let why = loop {
                    match stream.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                            let n = {
                                let mut f = frames.lock().unwrap();
                                f.push(Frame { at: Instant::now(), v });
                                f.len()
                            };
                            tx.send_replace(n);
                        }
                        Some(Ok(Message::Close(f))) => break format!("closed ({:?})", f.map(|f| u16::from(f.code))),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break format!("dropped ({e})"),
                        None => break "dropped".to_string(),
                    }
                };
                *ended.lock().unwrap() = Some(why);
                tx.send_modify(|_| {});
            })
        };
        Recorder {
            name: name.into(),
            sink,
            frames,
            seen,
            ended,
            reader,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.sink.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub fn frames(&self) -> std::sync::MutexGuard<'_, Vec<Frame>> {
        self.frames.lock().unwrap()
    }

    pub fn len(&self) -> usize {
        self.frames().len()
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }

    /// The index of the first frame at or after `from` that matches, once it has arrived;
    /// None when `within` passes or the socket ends first.
    pub async fn try_wait_frame(
        &mut self,
        from: usize,
        within: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + within;
        let mut scan = from;
        loop {
            {
                let f = self.frames.lock().unwrap();
                while scan < f.len() {
                    if pred(&f[scan].v) {
                        return Some(scan);
                    }
                    scan += 1;
                }
            }
            if self.ended().is_some() {
                return None;
            }
            if tokio::time::timeout_at(deadline, self.seen.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Like `try_wait_frame`, but a test failure when the frame does not come.
    pub async fn wait_frame(
        &mut self,
        what: &str,
        from: usize,
        within: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> usize {
        match self.try_wait_frame(from, within, pred).await {
            Some(i) => i,
            None => {
                let last: Vec<String> = self.frames().iter().rev().take(3).map(|f| f.v.to_string()).collect();
                panic!(
                    "{}: no {what} within {within:?} (socket {}; last frames, newest first: {last:?})",
                    self.name,
                    self.ended().unwrap_or_else(|| "open".into())
                )
            }
        }
    }

    /// Sends `subscribe` (or any frame answered by `subscribed`) and returns the index of the
    /// `subscribed` frame for `channel`. An `error` frame first fails the test at once.
    pub async fn subscribe_with(&mut self, frame: Value) -> usize {
        let channel = frame["channel"].as_str().unwrap().to_string();
        self.answered(frame, "subscribed", &channel).await
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> usize {
        self.answered(unsubscribe(channel), "unsubscribed", channel).await
    }

    /// Sends `frame` and returns the index of the `answer` frame for `channel`; fails at the
    /// first `error` frame instead (a refused command is not worth its 30 s deadline).
    async fn answered(&mut self, frame: Value, answer: &str, channel: &str) -> usize {
        let from = self.len();
        self.send(frame).await;
        let what = format!("{answer} for {channel}");
        let want = is_frame(answer, channel);
        let i = self
            .wait_frame(&what, from, BUSY_DEADLINE, |v| v["type"] == "error" || want(v))
            .await;
        let got = self.frames()[i].v.clone();
        assert!(got["type"] != "error", "{}: {got} instead of {what}", self.name);
        i
    }

    /// Whether a `gap` frame names `channel` (or a pattern) among the frames received.
    pub fn told_gap(&self, channel: &str) -> bool {
        self.frames().iter().any(|f| {
            f.v["type"] == "gap"
                && f.v["channels"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c == channel))
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What a background backend published and Redis confirmed.
#[derive(Default)]
pub struct PubLog {
    /// Every confirmed event, in publish order: (channel, id).
    pub events: Vec<(String, EventId)>,
    /// Each confirmed pipeline: when it was sent, and the index in `events` of its first event.
    pub batches: Vec<(Instant, usize)>,
    /// Pipelines that failed (Redis away); whether their events were stored is unknown.
    pub failed: usize,
}

impl PubLog {
    pub fn ids_on(&self, channel: &str) -> Vec<EventId> {
        self.events
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, id)| *id)
            .collect()
    }

    pub fn count_on(&self, channel: &str) -> usize {
        self.events.iter().filter(|(c, _)| c == channel).count()
    }

    /// The first event on `channel` from a pipeline sent after `t`.
    pub fn first_sent_after(&self, t: Instant, channel: &str) -> Option<EventId> {
        let (_, start) = self.batches.iter().find(|(at, _)| *at > t)?;
        self.events[*start..]
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, id)| *id)
    }
}

/// A backend publishing durably in the background: pipelines of `FCALL wsgw_publish`, step
/// `i` going to the channels `plan(i)`. It reconnects by itself when Redis goes away.
pub struct Publisher {
    pub stop: Arc<AtomicBool>,
    pub log: Arc<Mutex<PubLog>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// `batch` steps per pipeline, `pause` between pipelines, `steps` in all (None: until
    /// stopped).
    pub fn start(
        redis: &RedisServer,
        plan: impl Fn(u64) -> Vec<String> + Send + Sync + 'static,
        batch: u64,
        pause: Duration,
        steps: Option<u64>,
    ) -> Publisher {
        let client = redis::Client::open(redis.url()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(PubLog::default()));
        let task = {
            let (stop, log) = (stop.clone(), log.clone());
            tokio::spawn(async move {
                let mut conn: Option<redis::aio::MultiplexedConnection> = None;
                let mut step = 0u64;
                while !stop.load(Ordering::Acquire) && steps.is_none_or(|s| step < s) {
                    let Some(c) = conn.as_mut() else {
                        let fresh =
                            tokio::time::timeout(Duration::from_millis(500), client.get_multiplexed_async_connection())
                                .await;
                        match fresh {
                            Ok(Ok(c)) => conn = Some(c),
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                        continue;
                    };
                    let mut pipe = redis::pipe();
                    let mut channels = Vec::new();
                    let end = steps.map_or(step + batch, |s| s.min(step + batch));
                    while step < end {
                        for ch in plan(step) {
                            pipe.cmd("FCALL")
                                .arg("wsgw_publish")
                                .arg(2)
                                .arg("ws:seq")
                                .arg(format!("ws:history:{ch}"))
                                .arg(&ch)
                                .arg("e")
                                .arg(step.to_string());
                            channels.push(ch);
                        }
                        step += 1;
                    }
                    let sent = Instant::now();
                    // Patient: a pipeline that times out is not logged although Redis may have run it,
                    // which fails the test; on a loaded machine 2 s was not always enough.
                    let r = tokio::time::timeout(Duration::from_secs(10), pipe.query_async::<Vec<String>>(c)).await;
                    match r {
                        Ok(Ok(ids)) => {
                            let mut log = log.lock().unwrap();
                            let start = log.events.len();
                            log.batches.push((sent, start));
                            for (ch, id) in channels.into_iter().zip(ids) {
                                log.events.push((ch, id.parse().unwrap()));
                            }
                        }
                        _ => {
                            log.lock().unwrap().failed += 1;
                            conn = None;
                        }
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            })
        };
        Publisher { stop, log, task }
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, PubLog> {
        self.log.lock().unwrap()
    }

    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until `cond` holds on what was published so far.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&PubLog) -> bool) {
        let deadline = Instant::now() + BUSY_DEADLINE;
        while !cond(&self.log()) {
            assert!(!self.finished(), "the publisher stopped before {what}");
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `n` more events went to `channel`.
    pub async fn wait_more(&self, channel: &str, n: usize) {
        let target = self.log().count_on(channel) + n;
        self.wait_until(&format!("{n} more events on {channel}"), |l| {
            l.count_on(channel) >= target
        })
        .await;
    }

    /// Stops (or waits for the planned steps to be done) and returns the log.
    pub async fn finish(self) -> PubLog {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("publisher task");
        Arc::try_unwrap(self.log).ok().unwrap().into_inner().unwrap()
    }
}

/// Reads a socket until it ends, discarding frames (a subscriber that keeps up).
pub fn drain(c: Client) -> tokio::task::JoinHandle<()> {
    let Client { mut ws, .. } = c;
    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
}

/// `n` sockets with `token` on `node`, each subscribed to `channel` and read by a [`drain`]:
/// the crowd that keeps a node busy. Abort the handles when done.
pub async fn crowd(node: &GatewayProc, token: &str, channel: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut crowd = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut c, _) = node.connect(token).await;
        c.send(subscribe(channel)).await;
        c.expect("subscribed").await;
        crowd.push(drain(c));
    }
    crowd
}

/// Gateway settings for the load tests: room for every frame of a test in a socket's queue (a
/// slow reader is not what is tested here) and no inbound rate limit.
pub const ROOMY: &[(&str, &str)] = &[
    ("WSGW_SEND_QUEUE", "100000"),
    ("WSGW_RATE_LIMIT_PER_S", "0"),
    ("WSGW_HISTORY_SIZE", "100000"),
];

/// A TCP proxy between a node and Redis that makes Redis look distant or busy in two ways:
/// every chunk the node sends with one of `commands` in it is held for `delay` before it goes
/// on (a `SUBSCRIBE` that takes a while to be confirmed, a slow history read); and on the
/// pub/sub connection (the one that sent a `SUBSCRIBE`) everything Redis sends arrives `lag`
/// late (the node's pub/sub stream runs behind history). Each direction's bytes stay in order.
pub struct SlowRedis {
    pub port: u16,
    pub task: tokio::task::JoinHandle<()>,
}

impl SlowRedis {
    pub async fn start(upstream: u16, commands: &'static [&'static str], delay: Duration, lag: Duration) -> SlowRedis {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                // Without this, Nagle's algorithm holds small writes (pub/sub messages) back for
                // up to a delayed-ACK period: a lag nobody asked for.
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let pubsub = Arc::new(AtomicBool::new(false));
                let seen_subscribe = pubsub.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let has = |word: &str| {
                            chunk
                                .windows(word.len())
                                .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
                        };
                        if has("SUBSCRIBE") {
                            seen_subscribe.store(true, Ordering::Release);
                        }
                        if commands.iter().any(|c| has(c)) {
                            tokio::time::sleep(delay).await;
                        }
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                // Redis to node: read as it comes, written `lag` later on the pub/sub connection.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((at, chunk)) = rx.recv().await {
                        if pubsub.load(Ordering::Acquire) {
                            tokio::time::sleep_until(at + lag).await;
                        }
                        if cw.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SlowRedis { port, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for SlowRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}
