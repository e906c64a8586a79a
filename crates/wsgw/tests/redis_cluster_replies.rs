//! The Redis client the gateway runs on a cluster keeps every reply with its command while
//! sharded subscriptions move: Redis pushes a `sunsubscribe` for each channel of a slot that
//! moves (valkey-io/valkey#1066), and the client resubscribes by itself after a topology
//! refresh. redis 1.8.1 took such pushes for the replies of the commands waiting on that node
//! connection, and every later reply landed one command off; `vendor/redis` carries the fix
//! (see its `Confirms`). A real 3-primary cluster, one RESP3 cluster connection carrying both,
//! as the gateway's does (broker/redis/cluster_link.rs).

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::redis_cluster::{RedisCluster, owner, redis_cli};
use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

/// Channels subscribed per moving slot.
const PER_SLOT: usize = 40;
/// Commands kept in flight at once.
const LOOPS: usize = 24;

async fn connect(cluster: &RedisCluster) -> (ClusterConnection, tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(cluster.seeds.clone())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .response_timeout(Duration::from_secs(5))
        .build()
        .expect("a cluster client");
    let conn = client.get_async_connection().await.expect("the cluster connects");
    (conn, rx)
}

/// A hash tag whose slot the primary on `port` holds, and that slot; `skip` tags are not taken.
fn tag_on(cluster: &RedisCluster, port: u16, skip: &[String]) -> (String, String) {
    (0..10_000)
        .map(|i| format!("m{i}"))
        .filter(|t| !skip.contains(t))
        .find(|t| owner(cluster, &format!("{{{t}}}")) == port)
        .map(|t| {
            let slot = redis_cli(port, &["CLUSTER", "KEYSLOT", &format!("{{{t}}}")]);
            (t, slot)
        })
        .expect("a tag on that primary")
}

/// Moves the empty `slot` from `source` to `target` (no keys: nothing to MIGRATE), telling
/// every primary.
fn move_slot(cluster: &RedisCluster, slot: &str, source: u16, target: u16) {
    let target_id = redis_cli(target, &["CLUSTER", "MYID"]);
    let source_id = redis_cli(source, &["CLUSTER", "MYID"]);
    assert_eq!(
        redis_cli(target, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        redis_cli(source, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &target_id]),
        "OK"
    );
    assert_eq!(redis_cli(source, &["CLUSTER", "COUNTKEYSINSLOT", slot]), "0");
    for port in [target, source] {
        assert_eq!(redis_cli(port, &["CLUSTER", "SETSLOT", slot, "NODE", &target_id]), "OK");
    }
    for &port in &cluster.primaries {
        if port != target && port != source {
            redis_cli(port, &["CLUSTER", "SETSLOT", slot, "NODE", &target_id]);
        }
    }
}

#[tokio::test]
async fn replies_stay_with_their_commands_while_subscribed_slots_move() {
    let cluster = RedisCluster::start();
    let source = cluster.primaries[0];
    let target = cluster.primaries[1];
    let (conn, mut pushes) = connect(&cluster).await;

    // The commands go to the source, on a slot that stays there.
    let (stay, _) = tag_on(&cluster, source, &[]);
    // Three slots of the source, each with PER_SLOT sharded subscriptions, that will move.
    let mut taken = vec![stay.clone()];
    let mut moving = Vec::new();
    for _ in 0..3 {
        let (tag, slot) = tag_on(&cluster, source, &taken);
        taken.push(tag.clone());
        let names: Vec<String> = (0..PER_SLOT).map(|i| format!("{{{tag}}}ch:{i}")).collect();
        conn.clone().ssubscribe(&names).await.expect("SSUBSCRIBE");
        moving.push(slot);
    }
    // Subscriptions that stay, so the client's own resubscriptions after a topology refresh
    // confirm many channels on the source's connection.
    let staying: Vec<String> = (0..PER_SLOT).map(|i| format!("{{{stay}}}still:{i}")).collect();
    conn.clone().ssubscribe(&staying).await.expect("SSUBSCRIBE");

    let stop = Arc::new(AtomicBool::new(false));
    let (done, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_wrong = Arc::new(parking_lot::Mutex::new(None::<String>));
    let key = format!("{{{stay}}}k");
    let loops: Vec<_> = (0..LOOPS)
        .map(|l| {
            let (mut conn, stop, done, wrong, first_wrong, key) = (
                conn.clone(),
                stop.clone(),
                done.clone(),
                wrong.clone(),
                first_wrong.clone(),
                key.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mine = format!("{l}:{n}");
                    let r: redis::RedisResult<String> = redis::cmd("EVAL")
                        .arg("return ARGV[1]")
                        .arg(1)
                        .arg(&key)
                        .arg(&mine)
                        .query_async(&mut conn)
                        .await;
                    done.fetch_add(1, Ordering::Relaxed);
                    if r.as_deref().ok() != Some(mine.as_str()) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        first_wrong.lock().get_or_insert(format!("{mine} answered {r:?}"));
                    }
                }
            })
        })
        .collect();

    // Let the commands flow, then move each slot under them; the client hears of each move
    // (MOVED on a publish to it), refreshes its topology and resubscribes.
    let wait_done = |at_least: u64| {
        let done = done.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while done.load(Ordering::Relaxed) < at_least {
                assert!(tokio::time::Instant::now() < deadline, "commands stopped flowing");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_done(2_000).await;
    let mut unsubscribed = 0;
    for (i, slot) in moving.iter().enumerate() {
        move_slot(&cluster, slot, source, target);
        let moved: String = format!("{{{}}}ch:0", taken[i + 1]);
        let _: redis::RedisResult<usize> = conn.clone().spublish(&moved, "after the move").await;
        // Redis's unsubscribe pushes for the slot's channels reach the push channel.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        while seen < PER_SLOT {
            let push = tokio::time::timeout_at(deadline, pushes.recv())
                .await
                .expect("the slot's sunsubscribe pushes arrive")
                .expect("push channel open");
            if push.kind == redis::PushKind::SUnsubscribe {
                seen += 1;
            }
        }
        unsubscribed += seen;
        let at = done.load(Ordering::Relaxed);
        wait_done(at + 2_000).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (done, wrong) = (done.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed));
    println!("{done} commands across 3 slot moves ({unsubscribed} sunsubscribe pushes): {wrong} wrong replies");
    assert_eq!(
        wrong,
        0,
        "{wrong} of {done} replies were not their command's; first: {:?}",
        first_wrong.lock()
    );
    // The connection still carries both: the subscriptions that stayed still deliver.
    let mut c = conn.clone();
    let _: usize = c.spublish(&staying[0], "still here").await.expect("SPUBLISH");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let push = tokio::time::timeout_at(deadline, pushes.recv())
            .await
            .expect("the message on a channel that stayed arrives")
            .expect("push channel open");
        if push.kind == redis::PushKind::SMessage {
            break;
        }
    }
}
