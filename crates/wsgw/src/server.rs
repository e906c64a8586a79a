//! server.rs: a node's life: serving `/ws` and the HTTP API on a listener until the shutdown
//! future resolves, the graceful drain, and the node-wide tick (heartbeats, token expiry,
//! request timeouts, history expiry). The binary passes a signal as the shutdown future;
//! tests pass one they control.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{info, warn};
use wsgw_protocol::{CloseCode, ErrorCode, ServerFrame};

use crate::config::Config;
use crate::hub::{Connection, OutFrame, TickNow};
use crate::node::{Gateway, StartError};
use crate::time::{mono_ms, now_ms};

/// Binds `addr` with an accept queue of `backlog` connections (`WSGW_LISTEN_BACKLOG`; the
/// kernel caps it at `net.core.somaxconn`). A burst of connects beyond the queue has its SYNs
/// dropped, and those clients wait a second for their TCP retry: tokio's own `bind` asks for 1024.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// Serves `/ws`, the API, `/health`, `/ready` and `/metrics` on `listener` until `shutdown`
/// resolves, then drains: refuses new sockets, closes open ones with 1012 in batches over
/// `drain_ms`, and returns once they are gone.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    serve_on_cores(listener, &[], gw, shutdown).await
}

/// `serve`, plus one more listener on the same address for each runtime in `cores`
/// (`WSGW_RUNTIME=per_core`): `listener` must have `SO_REUSEPORT`
/// ([`crate::cores::reuseport_listener`]). Each runtime accepts on its own listener, so the
/// sockets it accepts run on its thread. The drain covers every runtime's sockets.
pub async fn serve_on_cores(
    listener: TcpListener,
    cores: &[Handle],
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = match gw.config.metrics_listen {
        Some(addr) => Some(serve_metrics(
            bind(addr, gw.config.listen_backlog)?,
            gw.clone(),
            stop_rx.clone(),
        )?),
        None => None,
    };
    let ticker = tokio::spawn(tick(gw.clone(), stop_rx));
    let app = crate::api::router(gw.clone());
    let app = app.layer(axum::middleware::from_fn(crate::handshake::plain_http_ends_handshake));
    let (drained_tx, drained_rx) = watch::channel(false);
    if !cores.is_empty() {
        // This thread runs core 0; each core's lane offers fan-outs to its own sockets.
        crate::cores::set_current(0);
        let here = Handle::current();
        let lanes = std::iter::once(&here)
            .chain(cores)
            .enumerate()
            .map(|(core, h)| gw.hub.spawn_core_fanout(core, h));
        gw.hub.use_core_fanouts(lanes.collect());
    }
    let mut others = Vec::with_capacity(cores.len());
    for core in cores {
        let std_listener = crate::cores::reuseport_listener(listener.local_addr()?, gw.config.listen_backlog)?;
        let (app, gw) = (app.clone(), gw.clone());
        let mut drained = drained_rx.clone();
        others.push(core.spawn(async move {
            let listener = crate::handshake::GatedListener::new(TcpListener::from_std(std_listener)?, gw);
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<crate::handshake::Peer>(),
            )
            .with_graceful_shutdown(async move {
                let _ = drained.wait_for(|d| *d).await;
            })
            .await
        }));
    }
    let listener = crate::handshake::GatedListener::new(listener, gw.clone());
    let gw_signal = gw.clone();
    // Sockets outlive axum's connection tracking once upgraded, so drain them ourselves. Axum
    // is told to stop only after the drain: until then it keeps accepting, so `/ready` answers
    // 503 and new sockets are refused with 1012 instead of finding the port closed.
    let signal = async move {
        shutdown.await;
        info!("shutdown requested: draining");
        gw_signal.begin_drain();
        drain(&gw_signal).await;
        let _ = drained_tx.send(true);
    };
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<crate::handshake::Peer>(),
    )
    .with_graceful_shutdown(signal)
    .await;
    for other in others {
        match other.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "a per-core listener failed"),
            Err(e) => warn!(error = %e, "a per-core listener's task failed"),
        }
    }
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    // Sessions have ended: remove what is left of this node's presence, then stop the broker.
    gw.broker.shutdown().await;
    gw.hooks.flush().await;
    gw.stop_broker();
    served?;
    info!("stopped");
    Ok(())
}

/// Serves `/metrics` alone on `metrics_listen` until `stop`, so a scraper can reach it on an
/// address that clients cannot.
fn serve_metrics(
    listener: TcpListener,
    gw: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    info!(addr = %listener.local_addr()?, "serving /metrics");
    let app = crate::api::metrics_router(gw);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the /metrics listener failed");
        }
    }))
}

async fn drain(gw: &Gateway) {
    let conns = gw.hub.connections();
    let steps = 10usize;
    let pause = Duration::from_millis(gw.config.drain_ms / steps as u64);
    let chunk = conns.len().div_ceil(steps).max(1);
    info!(
        connections = conns.len(),
        drain_ms = gw.config.drain_ms,
        "closing sockets with 1012"
    );
    for part in conns.chunks(chunk) {
        for c in part {
            c.close(CloseCode::Restart);
        }
        tokio::time::sleep(pause).await;
    }
    // Sockets that connected during the drain, then the wait for every session to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while gw.slots.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        for c in gw.hub.connections() {
            c.close(CloseCode::Restart);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = gw.slots.load(Ordering::Acquire);
    if left > 0 {
        warn!(left, "sessions still open after the drain");
    }
}

/// The node-wide tick: one timer for every socket's heartbeat and token expiry, rather than a
/// timer per socket. Pings are spread over the interval: a socket is pinged on the ticks of its
/// slot (its hub key modulo [`ping_slots`]), so each tick pings its share of the sockets and
/// neither the pings nor the pongs they draw arrive as one burst that holds up deliveries.
async fn tick(gw: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let interval = gw.config.heartbeat_interval_ms.max(1);
    let period_ms = (interval / 4).clamp(20, 1000);
    let slots = ping_slots(interval, period_ms);
    // Taken before the ticker starts, so tick `k` is never less than `k` periods after it.
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(period_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first round (`period_ms` of time since the start) whose slot has not been pinged.
    let mut next_round: u64 = 0;
    let mut next_expire = mono_ms();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let now = mono_ms();
        // A late tick (a busy node) pings every round it missed too, so no socket waits for
        // its ping longer than the interval plus the lateness.
        let last = (start.elapsed().as_millis() as u64 / period_ms).max(next_round);
        let rounds = Rounds::new(next_round, last, slots);
        next_round = last + 1;
        let at = TickNow {
            mono_ms: now,
            epoch_s: now_ms() / 1000,
            silence_ms: gw.config.heartbeat_timeout_ms,
            leeway_s: gw.config.jwt_leeway_s,
        };
        // Only the sockets of this tick's slots and the few that need something else are taken
        // out of the registry (the hub's tick table, read in one pass with no lock per socket).
        let due = gw.hub.tick_walk(at, |key| rounds.pings(key));
        let ping = OutFrame::control(ServerFrame::Ping { ts: now_ms() }.to_json());
        for c in due {
            let ping = rounds.pings(c.key()).then_some(&ping);
            tend(&gw, &c, at, ping);
        }
        if now >= next_expire {
            next_expire = now + 1000;
            gw.expire();
        }
    }
}

/// How many ticks of `period_ms` one heartbeat interval is spread over: each socket is pinged
/// once per that many ticks, so never less often than every `interval_ms`.
fn ping_slots(interval_ms: u64, period_ms: u64) -> u64 {
    (interval_ms / period_ms.max(1)).max(1)
}

/// The rounds one tick pings, `first..=last`: socket key `k` is in round `r`'s slot when
/// `k % slots == r % slots`.
#[derive(Debug, Clone, Copy)]
struct Rounds {
    first_slot: u64,
    count: u64,
    slots: u64,
}

impl Rounds {
    fn new(first: u64, last: u64, slots: u64) -> Self {
        Self {
            first_slot: first % slots,
            count: (last - first + 1).min(slots),
            slots,
        }
    }

    /// Whether the socket with hub key `key` is pinged in these rounds.
    fn pings(&self, key: u64) -> bool {
        (key % self.slots + self.slots - self.first_slot) % self.slots < self.count
    }
}

/// The tick's work for one socket: close it when silent or its token expired, give an idle
/// queue's memory back, send the ping, expire backend requests nobody answered in time.
fn tend(gw: &Gateway, c: &Connection, at: TickNow, ping: Option<&OutFrame>) {
    if c.silent(at) {
        c.close(CloseCode::HeartbeatTimeout);
        return;
    }
    if c.token_expired(at) {
        let err = ServerFrame::error(ErrorCode::TokenExpired, "token expired; refresh it and reconnect", None);
        gw.metrics
            .errors_sent
            .with_label_values(&[ErrorCode::TokenExpired.as_str()])
            .inc();
        c.close_with(OutFrame::control(err.to_json()), CloseCode::TokenExpired);
        return;
    }
    c.release_idle_queue();
    if let Some(p) = ping
        && c.send_control(p) == crate::hub::Push::Overflow
    {
        gw.metrics.slow_consumers.inc();
    }
    for request_id in c.expire_pending(at.mono_ms) {
        let err = ServerFrame::error(ErrorCode::Timeout, "no backend answered in time", Some(request_id));
        gw.metrics
            .errors_sent
            .with_label_values(&[ErrorCode::Timeout.as_str()])
            .inc();
        c.push_control(OutFrame::control(err.to_json()));
    }
}

/// A gateway started on a real listener in this process (tests, embedding).
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state.
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl RunningGateway {
    /// Binds `config.listen` (port 0 picks a free one) and serves until stopped.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let listener = bind(config.listen, config.listen_backlog)?;
        let addr = listener.local_addr()?;
        let gateway = Gateway::new(config).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, gateway.clone(), async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            gateway,
            stop: Some(tx),
            task,
        })
    }

    /// Triggers the graceful shutdown and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(StartError::Config(format!("gateway task failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Connection;

    /// How many of `n` simultaneous connects to a listener that never accepts complete
    /// within half a second.
    async fn connects_within_half_a_second(backlog: u32, n: usize) -> usize {
        let listener = bind("127.0.0.1:0".parse().unwrap(), backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let tries =
            (0..n).map(|_| tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)));
        let results = futures_util::future::join_all(tries).await;
        let ok = results.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        drop(listener);
        ok
    }

    #[tokio::test]
    async fn the_listener_queues_as_many_connects_as_its_backlog() {
        // A backlog of 4 holds about 4 waiting connects; the rest wait for a TCP retry (1 s).
        let small = connects_within_half_a_second(4, 64).await;
        assert!((1..64).contains(&small), "{small} of 64 connected with a backlog of 4");
        assert_eq!(connects_within_half_a_second(256, 64).await, 64);
    }

    fn open(gw: &Gateway, id: &str) -> Arc<Connection> {
        let c = gw
            .hub
            .register(Connection::new(Arc::from(id), Arc::from("u"), 100, &[]));
        c.finish_replay(|_| OutFrame::control("welcome"), Vec::new(), &[], None);
        c
    }

    /// A memory node with a 1 s heartbeat (a tick every 250 ms, so four ping slots) and a 3 s
    /// timeout.
    async fn heartbeat_node() -> Arc<Gateway> {
        let config = Config {
            jwt_secret: Some("a-test-secret-that-is-long-enough!".into()),
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 3000,
            ..Config::default()
        };
        Gateway::new(config).await.expect("a memory node")
    }

    /// Runs the node's tick until `true` is sent on the returned sender.
    fn run_tick(gw: &Arc<Gateway>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        (stop_tx, tokio::spawn(tick(gw.clone(), stop_rx)))
    }

    /// Lets a tick that is due run (paused time).
    async fn let_tick_run() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    fn pinged(c: &Connection) -> bool {
        let mut out = Vec::new();
        c.take_batch(&mut out);
        out.iter().any(|f| f.text().contains(r#""type":"ping""#))
    }

    #[tokio::test(start_paused = true)]
    async fn pings_are_spread_over_the_interval_and_reach_every_socket_once_per_interval() {
        // 1 s interval: a tick every 250 ms, so four slots of two sockets each.
        let gw = heartbeat_node().await;
        let socks: Vec<_> = (0..8).map(|i| open(&gw, &format!("s{i}"))).collect();
        let (stop_tx, ticker) = run_tick(&gw);
        let mut times = vec![0; socks.len()];
        for round in 0..8 {
            let_tick_run().await;
            let now: Vec<bool> = socks.iter().map(|c| pinged(c)).collect();
            assert_eq!(
                now.iter().filter(|p| **p).count(),
                2,
                "tick {round} pings one slot: {now:?}"
            );
            for (t, p) in times.iter_mut().zip(&now) {
                *t += usize::from(*p);
            }
            if round == 3 {
                assert_eq!(times, vec![1; socks.len()], "one interval pings every socket once");
            }
            tokio::time::advance(Duration::from_millis(250)).await;
        }
        assert_eq!(times, vec![2; socks.len()], "two intervals, two pings each");
        let _ = stop_tx.send(true);
        ticker.await.expect("the tick stops");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_pings_the_slots_of_the_rounds_it_missed() {
        let gw = heartbeat_node().await;
        let socks: Vec<_> = (0..8).map(|i| open(&gw, &format!("s{i}"))).collect();
        let (stop_tx, ticker) = run_tick(&gw);
        let count = |socks: &[Arc<Connection>]| socks.iter().filter(|c| pinged(c)).count();
        let_tick_run().await;
        assert_eq!(count(&socks), 2, "the first tick pings one slot");
        // Three rounds pass before the tick runs again: it pings their three slots at once.
        tokio::time::advance(Duration::from_millis(800)).await;
        let_tick_run().await;
        assert_eq!(count(&socks), 6, "the late tick makes up for the rounds it missed");
        let _ = stop_tx.send(true);
        ticker.await.expect("the tick stops");
    }

    #[test]
    fn rounds_cover_their_slots_and_never_more_than_all() {
        let slots = 4;
        let pinged = |r: Rounds| (0..8u64).filter(|k| r.pings(*k)).collect::<Vec<_>>();
        assert_eq!(pinged(Rounds::new(1, 1, slots)), vec![1, 5]);
        assert_eq!(pinged(Rounds::new(3, 4, slots)), vec![0, 3, 4, 7], "wraps around");
        assert_eq!(pinged(Rounds::new(2, 20, slots)), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn the_ping_slots_never_stretch_the_interval() {
        assert_eq!(ping_slots(30_000, 1000), 30);
        assert_eq!(ping_slots(4_500, 1000), 4, "4 s between pings, not 5");
        assert_eq!(
            ping_slots(10, 20),
            1,
            "every tick when the interval is shorter than one"
        );
        assert_eq!(ping_slots(1000, 0), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tick_pings_live_sockets_and_closes_silent_ones_on_paused_time() {
        let gw = heartbeat_node().await;
        let silent = open(&gw, "silent");
        let chatty = open(&gw, "chatty");
        let (stop_tx, ticker) = run_tick(&gw);
        // 2.5 s: within the timeout, both are fine and both were pinged.
        for _ in 0..25 {
            tokio::time::advance(Duration::from_millis(100)).await;
            chatty.touch();
            tokio::task::yield_now().await;
        }
        assert_eq!(silent.close_requested(), None);
        let mut out = Vec::new();
        silent.take_batch(&mut out);
        assert!(out.iter().any(|f| f.text().contains(r#""type":"ping""#)), "pinged");
        // 4 s: only the silent one has been quiet for longer than the timeout.
        for _ in 0..15 {
            tokio::time::advance(Duration::from_millis(100)).await;
            chatty.touch();
            tokio::task::yield_now().await;
        }
        assert_eq!(silent.close_requested(), Some(CloseCode::HeartbeatTimeout));
        assert_eq!(chatty.close_requested(), None);
        let _ = stop_tx.send(true);
        ticker.await.expect("the tick stops");
    }
}
