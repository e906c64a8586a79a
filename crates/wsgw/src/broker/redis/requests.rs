//! broker/redis/requests.rs: client `request` frames handed to the backends through the
//! `<prefix>inbound` stream (their answers come back as `response` frames on pub/sub).

use super::*;

impl Inner {
    pub(super) async fn request(&self, req: InboundRequest) -> Result<(), BrokerError> {
        let inner = self;
        timed(inner.s.op_timeout, async move {
            let mut c = inner.conn().await?;
            let _: String = redis::cmd("XADD")
                .arg(inner.keys.inbound())
                .arg("MAXLEN")
                .arg("~")
                .arg(inner.s.inbound_maxlen)
                .arg("*")
                .arg("connection_id")
                .arg(&req.connection_id)
                .arg("user_id")
                .arg(&req.user_id)
                .arg("node")
                .arg(&req.node)
                .arg("request_id")
                .arg(&req.request_id)
                .arg("action")
                .arg(&req.action)
                .arg("data")
                .arg(&req.data)
                .arg("claims")
                .arg(&req.claims)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}
