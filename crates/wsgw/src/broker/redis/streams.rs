//! broker/redis/streams.rs: durable publishes through the `wsgw_publish` Function, and reads
//! of the history streams with the rules that decide `recovered`.

use super::*;

impl Inner {
    pub(super) async fn publish(&self, req: PublishRequest) -> Result<EventId, BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("wsgw_publish")
                .arg(2)
                .arg(inner.keys.seq(inner.keys.shard_of(&req.channel)))
                .arg(inner.keys.history(&req.channel))
                .arg(&req.channel)
                .arg(&req.event)
                .arg(req.data.get())
                .arg(inner.s.history.ttl_ms)
                .arg(inner.s.history.size)
                .arg(req.exclude.join(","));
            if let Some(key) = &req.idempotency_key {
                // The Function records it in <prefix>idem:<key>, shared with backends' FCALLs.
                cmd.arg(key);
            }
            let id: String = cmd.query_async(&mut c).await.map_err(classify)?;
            id.parse()
                .map_err(|e: wsgw_protocol::EventIdError| BrokerError::Internal(e.to_string()))
        })
        .await
    }

    /// One page of a channel's history. In a Redis Cluster the stream, its meta and the
    /// sequence hold plain `<ms>-<seq>` ids of the channel's id-shard: the query's ids are read
    /// in that shard and the page's ids name it. An id of another shard vouches for nothing.
    pub(super) async fn history_page(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let shard = self.keys.shard_of(channel);
        let foreign = |id: EventId| id.shard() != shard;
        let plain = |id: EventId| id.in_shard(None);
        let query = match query {
            HistoryQuery::After { id, .. } if foreign(id) => return Ok(HistoryPage::default()),
            HistoryQuery::After { id, limit, until } => HistoryQuery::After {
                id: plain(id),
                limit,
                until: until.filter(|u| !foreign(*u)).map(plain),
            },
            HistoryQuery::Last { n, until } => HistoryQuery::Last {
                n,
                until: until.filter(|u| !foreign(*u)).map(plain),
            },
        };
        let mut page = self.plain_page(channel, shard, query).await?;
        if shard.is_some() {
            for e in &mut page.events {
                e.id = e.id.in_shard(shard);
            }
        }
        Ok(page)
    }

    async fn plain_page(
        &self,
        channel: &str,
        shard: Option<u16>,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        let mut c = self.conn().await?;
        match query {
            HistoryQuery::Last { n, until } => {
                let end = until.map_or_else(|| "+".to_string(), |u| u.to_string());
                let reply: StreamRangeReply = c
                    .xrevrange_count(self.keys.history(channel), end, "-", n)
                    .await
                    .map_err(unavailable)?;
                let mut events = stream_events(reply);
                events.reverse();
                Ok(HistoryPage { events, complete: true })
            }
            HistoryQuery::After { id, limit, until } => {
                type Reply = (
                    StreamRangeReply,
                    u64,
                    (Option<String>, Option<String>, Option<u64>),
                    Option<u64>,
                    Option<String>,
                );
                // `XLEN`: whether the stream itself is gone, which an empty page cannot tell when
                // `until` bounds it (a repair whose snapshot is its cursor reads an empty range
                // while newer events exist).
                let (reply, stream_len, meta, epoch, seq): Reply = redis::pipe()
                    .cmd("XRANGE")
                    .arg(self.keys.history(channel))
                    .arg(format!("({id}"))
                    .arg(until.map_or_else(|| "+".to_string(), |u| u.to_string()))
                    .arg("COUNT")
                    .arg(limit)
                    .cmd("XLEN")
                    .arg(self.keys.history(channel))
                    .cmd("HMGET")
                    .arg(self.keys.meta(channel))
                    .arg("trimmed")
                    .arg("last")
                    .arg("since")
                    .cmd("GET")
                    .arg(self.keys.epoch(shard))
                    .cmd("GET")
                    .arg(self.keys.seq(shard))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let events = stream_events(reply);
                let trimmed = meta.0.and_then(|s| s.parse::<EventId>().ok());
                let last = meta.1.and_then(|s| s.parse::<EventId>().ok());
                // A meta that began at `since` (its channel's stream and meta had both expired):
                // its absence until then proves no event after `since` - 2 x TTL, and nothing
                // vouches for one at or before it. The channel's history begins just after.
                let ttl2 = self.s.history.ttl_ms.saturating_mul(2);
                let epoch = match meta.2 {
                    Some(since) => epoch.map(|e| e.max(since.saturating_sub(ttl2).saturating_add(1))),
                    None => epoch,
                };
                // An id newer than any this Redis issued comes from another Redis (or its lost
                // past): nothing here can vouch for what followed it.
                // In a cluster a shard that never issued an id (no sequence, but an epoch: its
                // data has not been lost) has nothing to vouch for: nothing was published.
                let never_issued = shard.is_some() && seq.is_none();
                let issued = until.or_else(|| seq.and_then(|s| s.parse::<EventId>().ok()));
                // Without the channel's meta, how old the id is decides, by Redis's clock (which
                // dated the id and expires the keys), never the node's: a node whose clock runs
                // behind would vouch for ids whose history expired.
                let now = match last {
                    Some(_) => 0,
                    None => super::clock::redis_time_ms(&mut c).await?,
                };
                let complete = self.s.history.size > 0
                    && (never_issued || issued.is_some_and(|last_issued| id <= last_issued))
                    && recoverable(id, epoch, trimmed, last, stream_len == 0, now, self.s.history.ttl_ms);
                Ok(HistoryPage { events, complete })
            }
        }
    }
}

/// Sorts a Redis error: `wsgw_publish` refusing its input is the client's fault
/// (`BadRequest`); Redis that cannot be reached or cannot serve now is `Unavailable`; anything
/// else (an unexpected reply, a script bug) is `Internal`.
pub(super) fn classify(e: redis::RedisError) -> BrokerError {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return BrokerError::Unavailable(e.to_string());
    }
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ResponseError)
            if e.detail().is_some_and(|d| d.starts_with("wsgw_publish:")) =>
        {
            BrokerError::BadRequest(e.detail().unwrap_or_default().to_string())
        }
        // A Redis Cluster in the middle of a failover or slot migration: the cluster client
        // follows MOVED and ASK, so one reaching us means it gave up for now; a Function whose
        // keys are half moved is refused whole ("non local key"). All pass: retry.
        ErrorKind::Server(ServerErrorKind::ResponseError) if e.to_string().contains("non local key") => {
            BrokerError::Unavailable(e.to_string())
        }
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        )
        | ErrorKind::Io
        | ErrorKind::ClusterConnectionNotFound => BrokerError::Unavailable(e.to_string()),
        ErrorKind::Extension if matches!(e.code(), Some("BUSY" | "NOREPLICAS")) => {
            BrokerError::Unavailable(e.to_string())
        }
        _ => BrokerError::Internal(e.to_string()),
    }
}

/// Whether every event after `after` on a channel is still in its history.
///
/// - the Redis data began after `after` (epoch newer, or missing after a FLUSHALL): no;
/// - trimming removed an id newer than `after`: no;
/// - the stream expired but the meta shows a newer last event: no;
/// - meta gone too: it outlives the stream by a TTL, so its absence proves no event for
///   2×TTL; only then is an older `after` unknowable. `now_ms` is Redis's clock, read only
///   in that case.
pub(super) fn recoverable(
    after: EventId,
    epoch_ms: Option<u64>,
    trimmed: Option<EventId>,
    last: Option<EventId>,
    stream_empty: bool,
    now_ms: u64,
    ttl_ms: u64,
) -> bool {
    let Some(epoch) = epoch_ms else { return false };
    if epoch > after.ms {
        return false;
    }
    if trimmed.is_some_and(|t| t > after) {
        return false;
    }
    match last {
        Some(l) => !(stream_empty && l > after),
        // Saturating: `after` is the client's `last_event_id`, which may be any u64 pair.
        None => after.ms.saturating_add(ttl_ms.saturating_mul(2)) >= now_ms,
    }
}

pub(super) fn stream_events(reply: StreamRangeReply) -> Vec<StoredEvent> {
    reply
        .ids
        .into_iter()
        .filter_map(|e| {
            let id: EventId = e.id.parse().ok()?;
            let frame: Vec<u8> = e.get("f")?;
            let exclude: Option<String> = e.get("x");
            Some(StoredEvent {
                id,
                frame: Utf8Bytes::try_from(bytes::Bytes::from(frame)).ok()?,
                ts_ms: id.ms,
                exclude: exclude.map(|x| Arc::from(x.as_str())),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_in_flux_is_unavailable_and_a_refused_publish_a_bad_request() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let server = |kind, detail: &str| {
            classify(RedisError::from((
                ErrorKind::Server(kind),
                "An error was signalled by the server",
                detail.to_string(),
            )))
        };
        let unavailable = |e: BrokerError| matches!(e, BrokerError::Unavailable(_));
        assert!(unavailable(server(ServerErrorKind::Moved, "3999 127.0.0.1:7001")));
        assert!(unavailable(server(ServerErrorKind::Ask, "3999 127.0.0.1:7001")));
        assert!(unavailable(server(ServerErrorKind::ClusterDown, "The cluster is down")));
        let half_moved =
            "Script attempted to access a non local key in a cluster node script: wsgw_publish, on @user_function:45.";
        assert!(unavailable(server(ServerErrorKind::ResponseError, half_moved)));
        let refused = "wsgw_publish: channel user:42 is in id-shard 6; keys must be ws:{6}seq ws:{6}history:user:42";
        assert!(matches!(
            server(ServerErrorKind::ResponseError, refused),
            BrokerError::BadRequest(_)
        ));
        assert!(matches!(
            server(ServerErrorKind::ResponseError, "something else"),
            BrokerError::Internal(_)
        ));
    }

    #[test]
    fn a_last_event_id_at_the_top_of_the_range_does_not_overflow() {
        let top = EventId::new(u64::MAX, u64::MAX);
        // Whatever it answers, it answers without panicking (the caller refuses L above S).
        let _ = recoverable(top, Some(0), None, None, true, 1_700_000_000_000, u64::MAX);
    }

    #[test]
    fn recovery_rules() {
        let l = EventId::new(1_000_000, 0);
        let now = 1_000_500;
        let ttl = 1000;
        assert!(recoverable(
            l,
            Some(999_000),
            None,
            Some(EventId::new(1_000_100, 0)),
            false,
            now,
            ttl
        ));
        assert!(
            !recoverable(l, None, None, None, true, now, ttl),
            "epoch gone: data was lost"
        );
        assert!(
            !recoverable(l, Some(1_000_001), None, None, true, now, ttl),
            "redis data began after the id"
        );
        assert!(
            !recoverable(l, Some(1), Some(EventId::new(1_000_010, 0)), None, false, now, ttl),
            "trimmed past it"
        );
        assert!(
            recoverable(l, Some(1), Some(EventId::new(999_999, 0)), None, false, now, ttl),
            "trimmed before it"
        );
        assert!(
            !recoverable(l, Some(1), None, Some(EventId::new(1_000_200, 0)), true, now, ttl),
            "expired after it"
        );
        assert!(
            recoverable(l, Some(1), None, None, true, now, ttl),
            "no meta, recent id: nothing happened"
        );
        assert!(
            !recoverable(l, Some(1), None, None, true, 1_000_000 + 5 * ttl, ttl),
            "no meta, old id: unknowable"
        );
    }
}
