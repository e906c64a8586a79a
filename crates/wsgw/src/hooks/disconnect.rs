//! hooks/disconnect.rs: the disconnect hook's queue. Sessions push a report as they end
//! (never waiting: a full queue drops it and counts it); one task sends the reports in batches,
//! `{"node":…,"disconnects":[{"connection_id","user_id","code"},…]}`, at most [`BATCH_WAIT`]
//! after the first of a batch arrived, or at once at [`BATCH_MAX`]. Best effort: a failed batch
//! is counted and logged, not retried.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{Caller, Hook};

/// Reports the queue holds; beyond it they are dropped (`wsgw_hook_disconnects_dropped_total`).
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most reports in one POST.
pub const BATCH_MAX: usize = 500;
/// Longest a report waits for its batch to fill before the batch is sent.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Batches sent at once; more wait, and the queue fills meanwhile.
const BATCHES_IN_FLIGHT: usize = 4;

/// One socket's end.
#[derive(Debug, Clone, Serialize)]
struct Disconnect {
    connection_id: String,
    user_id: String,
    code: u16,
}

#[derive(Serialize)]
struct Batch<'a> {
    node: &'a str,
    disconnects: &'a [Disconnect],
}

/// The sessions' end of the queue, and the sending task.
pub(super) struct Queue {
    tx: mpsc::Sender<Disconnect>,
    caller: Caller,
    task: Mutex<Option<JoinHandle<()>>>,
    flush: watch::Sender<bool>,
}

impl Queue {
    /// Starts the sending task. It ends when `stop` turns true or [`Queue::flush`] is called,
    /// after sending what is queued.
    pub(super) fn start(caller: Caller, url: String, node: String, mut stop: watch::Receiver<bool>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (flush, mut flush_rx) = watch::channel(false);
        let sender = Sender {
            caller: caller.clone(),
            url: Arc::from(url),
            node: Arc::from(node),
        };
        let done = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = flush_rx.wait_for(|s| *s) => {}
            }
        };
        let task = tokio::spawn(sender.run(rx, done));
        Self {
            tx,
            caller,
            task: Mutex::new(Some(task)),
            flush,
        }
    }

    pub(super) fn push(&self, connection_id: &str, user_id: &str, code: u16) {
        let report = Disconnect {
            connection_id: connection_id.to_owned(),
            user_id: user_id.to_owned(),
            code,
        };
        if self.tx.try_send(report).is_err() {
            self.caller.metrics.hook_disconnects_dropped.inc();
        }
    }

    /// Ends the task after a last send, waiting at most `within`.
    pub(super) async fn flush(&self, within: Duration) {
        let _ = self.flush.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}

struct Sender {
    caller: Caller,
    url: Arc<str>,
    node: Arc<str>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Disconnect>, done: impl Future<Output = ()>) {
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let mut sends = JoinSet::new();
        tokio::pin!(done);
        let mut stopping = false;
        while !stopping {
            let mut batch = Vec::new();
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_MAX) => if n == 0 { break },
                () = &mut done => break,
            }
            let deadline = Instant::now() + BATCH_WAIT;
            while batch.len() < BATCH_MAX {
                let room = BATCH_MAX - batch.len();
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)) => {
                        if !matches!(r, Ok(n) if n > 0) {
                            break;
                        }
                    }
                    // Stopping: send what there is now.
                    () = &mut done => {
                        stopping = true;
                        break;
                    }
                }
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let send = self.send(batch);
            sends.spawn(async move {
                send.await;
                drop(permit);
            });
            while sends.try_join_next().is_some() {}
        }
        // The last reports: what sessions pushed before the node stopped.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(report) = rx.try_recv() {
            rest.push(report);
        }
        for chunk in rest.chunks(BATCH_MAX) {
            sends.spawn(self.send(chunk.to_vec()));
        }
        while sends.join_next().await.is_some() {}
    }

    fn send(&self, batch: Vec<Disconnect>) -> impl Future<Output = ()> + Send + 'static {
        let (caller, url, node) = (self.caller.clone(), self.url.clone(), self.node.clone());
        async move {
            if batch.is_empty() {
                return;
            }
            let body = Batch {
                node: &node,
                disconnects: &batch,
            };
            let hook = Hook::Disconnect;
            match caller.post(hook, &url, &body).await {
                Ok((200..=299, _)) => caller.count(hook, "ok"),
                Ok((status, _)) => caller.failed(hook, &super::HookFailure::BadAnswer(format!("HTTP {status}"))),
                Err(f) => caller.failed(hook, &f),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = crate::metrics::Metrics::new();
        let caller = Caller {
            http: crate::http_client::client(),
            timeout: Duration::from_millis(100),
            permits: Arc::new(Semaphore::new(1)),
            metrics: metrics.clone(),
        };
        let (_stop_tx, stop) = watch::channel(false);
        // Nothing listens there; it does not matter, since the sender task gets no turn before
        // the pushes are done (one thread, no await in between).
        let q = Queue::start(caller, "http://127.0.0.1:9/".into(), "n".into(), stop);
        for i in 0..QUEUE_CAPACITY + 25 {
            q.push(&i.to_string(), "u", 1000);
        }
        assert_eq!(metrics.hook_disconnects_dropped.get(), 25);
        q.flush(Duration::from_secs(5)).await;
    }
}
