//! broker/redis/control.rs: messages every node sees on `<prefix>control` (kicks, and the
//! takeover of a connection id resumed on another node), sent and acted on; and bans (a key
//! `<prefix>ban:<user>` with the ban's TTL, plus a kick; the check on every connect is in `bans`).

use super::*;

/// A control message on `<prefix>control`, seen by every node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
pub(super) enum Control {
    KickUser {
        user_id: String,
    },
    KickConnection {
        connection_id: String,
    },
    /// A newer socket of the same user resumed this connection id on another node; only the
    /// node that held the old socket acts (the new one may already hold the id itself).
    Replace {
        connection_id: String,
        node: String,
    },
}

impl Inner {
    pub(super) async fn send_control(&self, msg: &Control) -> Result<(), BrokerError> {
        let inner = self;
        let payload = serde_json::to_string(msg).map_err(|e| BrokerError::Internal(e.to_string()))?;
        timed(inner.s.op_timeout, async {
            let mut c = inner.conn().await?;
            let _: i64 = c.publish(inner.keys.control(), payload).await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn kick_user(&self, user_id: &str) -> Result<usize, BrokerError> {
        let known = self.presence(user_id).await?.len();
        self.hub.close_user(user_id, CloseCode::Kicked);
        self.send_control(&Control::KickUser {
            user_id: user_id.to_string(),
        })
        .await?;
        Ok(known)
    }

    /// Sets the ban key first, so a socket connecting after the kick is refused.
    pub(super) async fn ban(&self, user_id: &str, ttl_s: u64) -> Result<usize, BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout, async {
            let mut c = inner.conn().await?;
            let _: () = c
                .set_ex(inner.keys.ban(user_id), "1", ttl_s)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await?;
        self.kick_user(user_id).await
    }

    pub(super) async fn unban(&self, user_id: &str) -> Result<bool, BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout, async {
            let mut c = inner.conn().await?;
            let n: i64 = c.del(inner.keys.ban(user_id)).await.map_err(unavailable)?;
            Ok(n > 0)
        })
        .await
    }

    pub(super) async fn kick_connection(&self, connection_id: &str) -> Result<bool, BrokerError> {
        let local = self
            .hub
            .connection(connection_id)
            .is_some_and(|c| c.close(CloseCode::Kicked));
        let known = {
            let inner = self;
            timed(inner.s.op_timeout, async {
                let mut c = inner.conn().await?;
                let n: i64 = c
                    .exists(inner.keys.presence_conn(connection_id))
                    .await
                    .map_err(unavailable)?;
                Ok(n > 0)
            })
            .await?
        };
        self.send_control(&Control::KickConnection {
            connection_id: connection_id.to_string(),
        })
        .await?;
        Ok(local || known)
    }
}
