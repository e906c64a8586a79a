//! handshake.rs: the time and the slots a TCP connection may hold before it is a welcomed
//! socket. Every accepted connection gets a deadline (`WSGW_HANDSHAKE_TIMEOUT_MS`): one that
//! has neither sent a complete plain HTTP request nor been upgraded by then is closed (its
//! reads fail), so a peer sending half a request, or nothing, is not held forever. While
//! pending it holds a connection slot and a per-address slot (the TCP peer's, unless the peer
//! is a trusted proxy), released once it is upgraded (the session then takes its own, at once,
//! before the welcome), once a plain HTTP request arrives, or when the connection ends.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use tracing::debug;

use crate::node::{Gateway, IpSlot, Slot};

/// One accepted connection's handshake: whether it is over, and the slots it holds meanwhile.
pub struct Handshake {
    done: AtomicBool,
    slot: Mutex<Option<Slot>>,
    ip_slot: Mutex<Option<IpSlot>>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake").field("done", &self.is_done()).finish()
    }
}

impl Handshake {
    /// Takes a connection slot and, unless `peer` is a trusted proxy, a slot for its address
    /// (each only if there is room: a full node still answers the upgrade with its refusal).
    pub fn new(gw: &Arc<Gateway>, peer: IpAddr) -> Arc<Self> {
        let ip_slot = if gw.proxies.trusts(peer) {
            None
        } else {
            IpSlot::acquire(gw, peer)
        };
        Arc::new(Self {
            done: AtomicBool::new(false),
            slot: Mutex::new(Slot::acquire(gw)),
            ip_slot: Mutex::new(ip_slot),
        })
    }

    /// Whether the deadline no longer applies.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The handshake is over (upgraded, or a plain HTTP request): no deadline, no slots.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.slot.lock().take();
        self.ip_slot.lock().take();
    }
}

/// What the `/ws` handler learns about its connection (axum `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// Its handshake.
    pub handshake: Arc<Handshake>,
    /// The connection itself, shared with the HTTP layer: once upgraded, the socket reads and
    /// writes it directly (ws/).
    pub stream: Arc<TcpStream>,
}

/// A TCP stream whose reads fail once its handshake deadline passes unfinished. The stream is
/// shared (see [`Peer::stream`]), so it is read and written through `&TcpStream`. Bytes
/// direct.rs read and gave back are read first.
pub struct GatedIo {
    inner: Arc<TcpStream>,
    handshake: Arc<Handshake>,
    deadline: Option<Pin<Box<Sleep>>>,
    put_back: Bytes,
}

impl GatedIo {
    /// `self`, with `read` to be read again before the stream.
    pub fn put_back(mut self, read: Bytes) -> Self {
        self.put_back = read;
        self
    }

    /// What the `/ws` route learns about this connection, whose peer is `addr`.
    pub fn peer(&self, addr: SocketAddr) -> Peer {
        Peer {
            addr,
            handshake: self.handshake.clone(),
            stream: self.inner.clone(),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(sleep) = self.deadline.as_mut() else {
            return false;
        };
        if self.handshake.is_done() {
            self.deadline = None;
            return false;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Retries `op` until it does not block, waiting on `ready` in between.
fn poll_io<T>(
    cx: &mut Context<'_>,
    mut ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        std::task::ready!(ready(cx))?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

impl AsyncRead for GatedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.put_back.is_empty() {
            let n = self.put_back.len().min(buf.remaining());
            buf.put_slice(&self.put_back.split_to(n));
            return Poll::Ready(Ok(()));
        }
        if self.expired(cx) {
            debug!("handshake timed out: closing the connection");
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timeout")));
        }
        let tcp = &*self.inner;
        let n = std::task::ready!(poll_io(
            cx,
            |cx| tcp.poll_read_ready(cx),
            || tcp.try_read(buf.initialize_unfilled())
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GatedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let tcp = &*self.inner;
        poll_io(cx, |cx| tcp.poll_write_ready(cx), || tcp.try_write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = socket2::SockRef::from(&*self.inner).shutdown(std::net::Shutdown::Write);
        Poll::Ready(r.or_else(|e| {
            if e.kind() == io::ErrorKind::NotConnected {
                Ok(())
            } else {
                Err(e)
            }
        }))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = &*self.inner;
        poll_io(cx, |cx| tcp.poll_write_ready(cx), || tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

/// The node's listener: every accepted connection gets its handshake deadline and slots, and
/// a task that reads its first request (direct.rs). Only connections that task gives back
/// (anything but a plain `/ws` upgrade) reach axum, through `plain`.
pub struct GatedListener {
    inner: TcpListener,
    gw: Arc<Gateway>,
    plain_tx: mpsc::UnboundedSender<(GatedIo, SocketAddr)>,
    plain: mpsc::UnboundedReceiver<(GatedIo, SocketAddr)>,
}

impl GatedListener {
    /// Wraps `inner` for `gw`.
    pub fn new(inner: TcpListener, gw: Arc<Gateway>) -> Self {
        let (plain_tx, plain) = mpsc::unbounded_channel();
        Self {
            inner,
            gw,
            plain_tx,
            plain,
        }
    }

    fn gate(&self, tcp: TcpStream, addr: SocketAddr) {
        // Small frames must not wait for Nagle: batching is done by the writer.
        let _ = tcp.set_nodelay(true);
        let handshake = Handshake::new(&self.gw, addr.ip());
        let ms = self.gw.config.handshake_timeout_ms;
        let deadline = (ms > 0).then(|| Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
        let io = GatedIo {
            inner: Arc::new(tcp),
            handshake,
            deadline,
            put_back: Bytes::new(),
        };
        let (gw, plain) = (self.gw.clone(), self.plain_tx.clone());
        tokio::spawn(async move {
            if let Some(io) = crate::direct::serve(io, addr, &gw).await {
                // Only fails once axum has stopped accepting: the connection just closes.
                let _ = plain.send((io, addr));
            }
        });
    }
}

impl Listener for GatedListener {
    type Io = GatedIo;
    type Addr = SocketAddr;

    // Cancel-safe, as axum needs: an accepted connection is handed to its task at once, and
    // `recv` is cancel-safe.
    async fn accept(&mut self) -> (GatedIo, SocketAddr) {
        loop {
            tokio::select! {
                biased;
                Some(plain) = self.plain.recv() => return plain,
                (tcp, addr) = Listener::accept(&mut self.inner) => self.gate(tcp, addr),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, GatedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GatedListener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            handshake: stream.io().handshake.clone(),
            stream: stream.io().inner.clone(),
        }
    }
}

/// Middleware: a request that is not a WebSocket upgrade ends its connection's handshake
/// (plain HTTP keeps its connection without a deadline or a slot). `/ws` keeps both until the
/// session has sent its welcome.
pub async fn plain_http_ends_handshake(req: Request, next: Next) -> Response {
    if req.uri().path() != "/ws"
        && let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<Peer>>()
    {
        peer.handshake.finish();
    }
    next.run(req).await
}
