//! broker/redis/sub.rs: the node's pub/sub connection, read by the node itself over plain TCP
//! (sub_conn.rs) or by the redis crate's reader over TLS or a Unix socket, and what it holds
//! while the node does other work (held.rs, `Holding`: bounded either way).

use std::task::{Context, Poll};

use futures_util::ready;

use super::held::Holding;
use super::sub_conn::{Got, PubMsg, SubConn};
use super::*;

/// Replies or messages `hold_while` reads before it lets its work run again.
const HOLD_BATCH: usize = 256;

/// A change to what the pub/sub connection follows.
#[derive(Clone, Copy)]
pub(super) enum Change {
    Subscribe,
    Psubscribe,
    Unsubscribe,
    Punsubscribe,
}

impl Change {
    pub(super) fn command(self) -> &'static str {
        match self {
            Change::Subscribe => "SUBSCRIBE",
            Change::Psubscribe => "PSUBSCRIBE",
            Change::Unsubscribe => "UNSUBSCRIBE",
            Change::Punsubscribe => "PUNSUBSCRIBE",
        }
    }
}

/// The redis crate's pub/sub connection: its reader runs in a task of its own and queues every
/// message it reads; the node takes them into `holding` while it does other work, so that queue
/// stays short and what the node holds is bounded.
pub(super) struct CrateSub {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    holding: Holding,
}

/// The node's pub/sub connection: read here over plain TCP, by the redis crate otherwise.
pub(super) enum Sub {
    Own(SubConn),
    Crate(CrateSub),
}

impl Sub {
    pub(super) async fn connect(client: &redis::Client) -> Result<Self, BrokerError> {
        if let Some(conn) = SubConn::connect(client.get_connection_info()).await {
            return Ok(Sub::Own(conn?));
        }
        let (sink, stream) = client.get_async_pubsub().await.map_err(unavailable)?.split();
        Ok(Sub::Crate(CrateSub {
            sink,
            stream,
            holding: Holding::default(),
        }))
    }

    /// Sends `change` for `names`, returning once Redis confirmed each name; messages read
    /// meanwhile are held.
    pub(super) async fn change(&mut self, change: Change, names: &[String]) -> Result<(), BrokerError> {
        let CrateSub { sink, stream, holding } = match self {
            Sub::Own(c) => return c.names(change.command(), names).await,
            Sub::Crate(c) => c,
        };
        let confirmed = async {
            match change {
                Change::Subscribe => sink.subscribe(names).await,
                Change::Psubscribe => sink.psubscribe(names).await,
                Change::Unsubscribe => sink.unsubscribe(names).await,
                Change::Punsubscribe => sink.punsubscribe(names).await,
            }
            .map_err(unavailable)
        };
        hold_from_crate(stream, holding, confirmed).await
    }

    /// The next message; an error when the connection ended.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<PubMsg, BrokerError>> {
        match self {
            Sub::Own(c) => c.poll_next(cx),
            Sub::Crate(c) => {
                if let Some(held) = c.holding.next() {
                    return Poll::Ready(held);
                }
                match ready!(c.stream.poll_next_unpin(cx)) {
                    Some(m) => Poll::Ready(Ok(PubMsg::Crate(m))),
                    None => Poll::Ready(Err(unavailable("pub/sub connection closed"))),
                }
            }
        }
    }

    /// Runs `work` while reading the connection's messages into memory (bounded: `Holding`),
    /// where the next `poll_next`s find them. Without it, messages would pile up in Redis's
    /// output buffer for this connection while the node repairs a gap or waits for a core, and
    /// past its `client-output-buffer-limit` Redis would drop the connection; with the crate's
    /// reader, in that reader's queue, without a bound.
    pub(super) async fn hold_while<T>(&mut self, work: impl Future<Output = T>) -> T {
        let c = match self {
            Sub::Own(c) => c,
            Sub::Crate(c) => return hold_from_crate(&mut c.stream, &mut c.holding, work).await,
        };
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = work.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            // At most this many replies per wake-up, so `work` is polled again soon.
            for _ in 0..HOLD_BATCH {
                if c.holding.has_ended() {
                    return Poll::Pending;
                }
                match c.poll_reply(cx) {
                    Poll::Ready(Ok(Got::Message(m))) => c.holding.hold(m),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => c.holding.end(e),
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Whether messages read earlier are held for the next reads (the node is behind).
    pub(super) fn holds_any(&self) -> bool {
        match self {
            Sub::Own(c) => !c.holding.is_empty(),
            Sub::Crate(c) => !c.holding.is_empty(),
        }
    }

    /// A message already waiting, without waiting for one: `Some(Err)` when the connection ended.
    pub(super) fn try_next(&mut self) -> Option<Result<PubMsg, BrokerError>> {
        use futures_util::FutureExt;
        std::future::poll_fn(|cx| self.poll_next(cx)).now_or_never()
    }
}

/// Runs `work` while taking the crate's reader's messages into `holding`. Past its bound they
/// are still taken, and dropped: the crate's reader goes on reading into its own queue, which
/// has no bound, until the session drops the connection.
async fn hold_from_crate<T>(
    stream: &mut redis::aio::PubSubStream,
    holding: &mut Holding,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = work.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        for _ in 0..HOLD_BATCH {
            match stream.poll_next_unpin(cx) {
                Poll::Ready(Some(m)) => holding.hold(PubMsg::Crate(m)),
                Poll::Ready(None) => {
                    // Nothing more comes: `work` wakes this when it ends.
                    holding.end(unavailable("pub/sub connection closed"));
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}
