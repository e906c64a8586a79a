//! hub/connection_requests.rs: the backend requests a connection waits on (`request` frames
//! sent to the `inbound` stream): bounded per socket, answered by `response` frames (a
//! streamed answer restarts the wait with each chunk), expired by the node-wide tick.

use super::{Connection, ResponseTag};
use crate::time::mono_ms;

#[derive(Debug)]
pub(super) struct PendingRequest {
    key: String,
    request_id: serde_json::Value,
    deadline_ms: u64,
    timeout_ms: u64,
}

impl Connection {
    /// Records a request sent to the backends; false when `limit` are already waiting.
    pub fn add_pending(&self, request_id: serde_json::Value, timeout_ms: u64, limit: usize) -> bool {
        let mut p = self.pending.lock();
        let key = request_id.to_string();
        p.retain(|r| r.key != key);
        if p.len() >= limit {
            return false;
        }
        let deadline_ms = mono_ms().saturating_add(timeout_ms);
        self.pending_due_by(deadline_ms);
        p.push(PendingRequest {
            key,
            request_id,
            deadline_ms,
            timeout_ms,
        });
        true
    }

    /// Forgets a request (e.g. it could not be sent).
    pub fn drop_pending(&self, request_id: &serde_json::Value) {
        let key = request_id.to_string();
        self.pending.lock().retain(|r| r.key != key);
    }

    /// Removes and returns the requests whose backend has not answered in time.
    pub fn expire_pending(&self, now_ms: u64) -> Vec<serde_json::Value> {
        let mut p = self.pending.lock();
        if p.is_empty() {
            self.pending_due_at(None);
            return Vec::new();
        }
        let mut expired = Vec::new();
        p.retain(|r| {
            if r.deadline_ms <= now_ms {
                expired.push(r.request_id.clone());
                false
            } else {
                true
            }
        });
        self.pending_due_at(p.iter().map(|r| r.deadline_ms).min());
        expired
    }

    pub(super) fn response_seen(&self, tag: &ResponseTag) {
        let mut p = self.pending.lock();
        if let Some(pos) = p.iter().position(|r| r.key == tag.key) {
            if tag.more {
                // A streamed answer is alive: each chunk restarts the wait for the next.
                p[pos].deadline_ms = mono_ms().saturating_add(p[pos].timeout_ms);
            } else {
                p.swap_remove(pos);
            }
        }
    }
}
