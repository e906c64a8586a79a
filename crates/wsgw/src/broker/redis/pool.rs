//! broker/redis/pool.rs: the pool of command connections to the primary. deadpool's managed pool
//! over multiplexed connections, with one difference from deadpool-redis's manager: a checkout
//! does not send `UNWATCH` + `PING` to a connection that answered a command moments ago. That
//! check cost a round trip to Redis on every publish, history read and presence batch. A
//! connection that has not answered for [`PROVEN_FOR`], or whose last command failed without an
//! answer from Redis (a dropped connection, or a command abandoned at its timeout), is still
//! checked with a `PING` before it is handed out, and dropped when that fails.

use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// How long an answer proves a connection alive for the next checkout.
pub(super) const PROVEN_FOR: Duration = Duration::from_millis(500);

/// The pool the broker's commands use.
pub(super) type Pool = managed::Pool<Manager>;

/// A checked-out connection; Redis commands run on it directly, and it goes back to the pool
/// when dropped.
pub(super) struct Pooled(pub(super) managed::Object<Manager>);

/// What the last command on a connection says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Redis answered it (a reply or an error reply) at this instant.
    Answered(Instant),
    /// It failed without an answer, or it was abandoned before one came (its future was
    /// dropped at a timeout): the connection may be dead or hold a late reply.
    Doubtful,
}

/// A multiplexed connection that remembers whether its last command was answered.
pub(super) struct Conn {
    inner: MultiplexedConnection,
    health: Health,
}

impl Conn {
    fn note<T>(&mut self, r: &RedisResult<T>) {
        self.health = match r {
            Ok(_) => Health::Answered(Instant::now()),
            Err(e) if answered_by_redis(e) => Health::Answered(Instant::now()),
            Err(_) => Health::Doubtful,
        };
    }
}

impl Health {
    /// Whether the connection can be handed out without a `PING` first.
    fn proven(self, now: Instant) -> bool {
        matches!(self, Health::Answered(at) if now.saturating_duration_since(at) < PROVEN_FOR)
    }
}

/// An error reply comes from a live server; anything else (I/O, a closed connection, a
/// protocol error) does not prove the connection alive.
fn answered_by_redis(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        // Doubtful until the answer comes: a future dropped at a timeout leaves it so.
        self.health = Health::Doubtful;
        Box::pin(async move {
            let r = self.inner.req_packed_command(cmd).await;
            self.note(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.health = Health::Doubtful;
        Box::pin(async move {
            let r = self.inner.req_packed_commands(pipeline, offset, count).await;
            self.note(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl ConnectionLike for Pooled {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// Dials the primary with the link's client (TLS material included) and checks connections
/// that have not proven themselves alive.
pub(super) struct Manager {
    client: redis::Client,
}

impl Manager {
    pub(super) fn new(client: redis::Client) -> Self {
        Self { client }
    }
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = RedisError;

    async fn create(&self) -> Result<Conn, RedisError> {
        let inner = self.client.get_multiplexed_async_connection().await?;
        Ok(Conn {
            inner,
            health: Health::Answered(Instant::now()),
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<RedisError> {
        if conn.health.proven(Instant::now()) {
            return Ok(());
        }
        // deadpool-redis's check: `UNWATCH` (no command here uses WATCH, but a connection must
        // never carry one to its next user) and a `PING` that must echo back.
        let (pong,): (String,) = redis::pipe()
            .cmd("UNWATCH")
            .ignore()
            .cmd("PING")
            .arg("wsgw")
            .query_async(conn)
            .await?;
        if pong == "wsgw" {
            Ok(())
        } else {
            Err(RecycleError::message("the PING check got another answer"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recent_answer_spares_the_ping() {
        let now = Instant::now();
        let answered = Health::Answered(now);
        assert!(answered.proven(now));
        assert!(answered.proven(now + PROVEN_FOR / 2));
        assert!(!answered.proven(now + PROVEN_FOR));
        assert!(!Health::Doubtful.proven(now));
    }

    #[test]
    fn error_replies_prove_the_server_answered_and_io_errors_do_not() {
        let reply = RedisError::from((ErrorKind::Server(redis::ServerErrorKind::ResponseError), "ERR"));
        assert!(answered_by_redis(&reply));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!answered_by_redis(&io));
        let parse = RedisError::from((ErrorKind::Parse, "garbage"));
        assert!(!answered_by_redis(&parse));
    }
}
