//! Exactness of delivery, one regression test per path (see docs/protocol.md, section 7): a
//! socket gets every durable event of every channel it is in, once, in id order, from the moment
//! its `welcome`/`subscribed` says `recovered:true`; otherwise it is told so (`recovered:false`,
//! or a `{"type":"gap",...}` frame on a live socket).
//!
//! The Redis tests run real `redis-server` and `wsgw` processes, with a backend publishing
//! through pipelined `FCALL wsgw_publish` in the background, and check what each socket saw
//! against what Redis issued. They take a lock so they run one at a time: each needs the CPU to
//! itself to reproduce its race at the same rate every run. What they share (the recorder, the
//! publisher, the slow-Redis proxy) is in exactness/support.rs.

use crate::common;
#[path = "exactness/support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::*;
use common::*;
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;
use wsgw_protocol::EventId;

/// 1. The reported issue: a client that keeps subscribing to `doc:9` with `history:20` and
///    leaving it again, on a node busy with 300 other subscribers of `chat:1`, while a backend
///    publishes 6,000 events to `chat:1` (every 7th also to `doc:9`), must get all 6,000, once,
///    in order. A `doc:9` catch-up is older than the socket's position on `doc:9` only; it
///    must not move the socket past `chat:1` events still on their way (3,791 went missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggling_a_history_subscription_loses_no_event_of_a_busy_channel() {
    let _serial = serial().await;
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-issue", ROOMY).await;
    let t = token("reader", &["chat:*", "doc:*"], &[]);
    let crowd = crowd(&node, &t, "chat:1", 300).await;
    let (c, _) = node.connect(&t).await;
    let mut client = Recorder::new("toggling client", c);
    client.subscribe_with(subscribe("chat:1")).await;

    let publisher = Publisher::start(
        &redis,
        |i| {
            if i % 7 == 0 {
                vec!["chat:1".into(), "doc:9".into()]
            } else {
                vec!["chat:1".into()]
            }
        },
        50,
        Duration::ZERO,
        Some(6000),
    );
    let mut toggles = 0;
    while !publisher.finished() {
        client
            .subscribe_with(json!({"type": "subscribe", "channel": "doc:9", "history": 20}))
            .await;
        client.unsubscribe("doc:9").await;
        toggles += 1;
    }
    let log = publisher.finish().await;
    let mut want = log.ids_on("chat:1");
    assert_eq!(want.len(), 6000);
    // A last event once the toggling is over: when it is there, everything before it is too.
    let mut r = redis.conn().await;
    let last: EventId = fcall_publish(&mut r, "chat:1", "last", &json!(null))
        .await
        .parse()
        .unwrap();
    want.push(last);
    client
        .wait_frame("the last chat:1 event", 0, BUSY_DEADLINE, is_event(last))
        .await;
    let got = ids_on(&client.frames(), "chat:1");
    assert!(
        got == want,
        "chat:1 as seen by the client that toggled doc:9 {toggles} times: {}",
        diff(&want, &got)
    );
    assert!(client.ended().is_none());
    for d in crowd {
        d.abort();
    }
}

/// 1b. A node behind on its pub/sub (a burst it is still fanning out to 300 sockets) has its
///     canary in that backlog. It must not take the late canary for a cut connection: such a
///     reconnect threw the backlog away, refused subscribes while down (an `unavailable` error
///     in the middle of test 1) and re-read history under load. With a canary every 50 ms the
///     node would call it missing after 1.15 s behind; it reconnects no more, and a socket still
///     gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_on_its_pub_sub_does_not_call_the_canary_missing() {
    let _serial = serial().await;
    let redis = RedisServer::start().await;
    let mut env = ROOMY.to_vec();
    env.push(("WSGW_CANARY_INTERVAL_MS", "50"));
    let node = GatewayProc::start(&redis, "gw-behind", &env).await;
    let t = token("reader", &["chat:*"], &[]);
    let crowd = crowd(&node, &t, "chat:1", 300).await;
    let (c, _) = node.connect(&t).await;
    let mut client = Recorder::new("reader", c);
    client.subscribe_with(subscribe("chat:1")).await;
    let reconnects = |m: &str| metric_value(m, "wsgw_redis_reconnects_total").unwrap_or(0.0);
    let before = reconnects(&node.metrics().await);

    let publisher = Publisher::start(&redis, |_| vec!["chat:1".into()], 200, Duration::ZERO, Some(8000));
    publisher.wait_until("8000 events", |l| l.events.len() >= 8000).await;
    let log = publisher.finish().await;
    let want = log.ids_on("chat:1");
    assert_eq!(want.len(), 8000);
    let last = *want.last().unwrap();
    client
        .wait_frame("the last chat:1 event", 0, BUSY_DEADLINE, is_event(last))
        .await;
    let got = ids_on(&client.frames(), "chat:1");
    assert!(got == want, "chat:1 as the reader saw it: {}", diff(&want, &got));
    assert!(!client.told_gap("chat:1"), "a gap frame although nothing was lost");
    let after = reconnects(&node.metrics().await);
    assert_eq!(
        after, before,
        "the node reconnected its pub/sub while it was only behind"
    );
    // Behind, it read frames several at a time and fanned them out as bursts (hub/burst.rs):
    // the frames checked above went that way.
    let bursts = metric_value(&node.metrics().await, "wsgw_burst_frames_total").unwrap_or(0.0);
    assert!(bursts > 0.0, "no frame went out in a burst: the node was never behind");
    for d in crowd {
        d.abort();
    }
}

/// 2. Five sockets subscribe at the same moment to a channel the node does not listen to yet,
///    while a backend publishes to it, and Redis takes 30 ms to confirm a SUBSCRIBE. Only the
///    first local subscriber used to wait for that confirmation; the others were told
///    `subscribed` at once and missed what was published until then. Each must get
///    `recovered:true`, then every event after its replay (with `last_event_id`), or every
///    event published after it read `subscribed` (without), with no gap. Four rounds, each on
///    a fresh channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_subscribing_together_to_a_busy_channel_each_get_it_without_a_gap() {
    let _serial = serial().await;
    let redis = RedisServer::start().await;
    let proxy = SlowRedis::start(redis.port, &["SUBSCRIBE"], Duration::from_millis(30), Duration::ZERO).await;
    let mut env = ROOMY.to_vec();
    let url = proxy.url();
    env.push(("WSGW_REDIS_URL", url.as_str()));
    let node = GatewayProc::start(&redis, "gw-flock", &env).await;
    let t = token("flock", &["busy:*"], &[]);
    let mut flock = Vec::new();
    for k in 0..5 {
        let (c, _) = node.connect(&t).await;
        flock.push(Recorder::new(format!("socket {k}"), c));
    }
    let round = Arc::new(AtomicU64::new(0));
    let publisher = {
        let round = round.clone();
        Publisher::start(
            &redis,
            move |_| match round.load(Ordering::Acquire) {
                0 => vec!["idle".into()],
                r => vec![format!("busy:{r}")],
            },
            5,
            Duration::from_millis(1),
            None,
        )
    };
    let mut failures = Vec::new();
    let rounds = 4;
    for r in 1..=rounds {
        let channel = format!("busy:{r}");
        round.store(r, Ordering::Release);
        publisher.wait_more(&channel, 20).await;
        let from = publisher.log().ids_on(&channel)[4];
        // Even sockets catch up from an id, odd ones subscribe plainly; all at once.
        let mut starts = Vec::new();
        for (k, s) in flock.iter_mut().enumerate() {
            starts.push(s.len());
            let frame = if k % 2 == 0 {
                json!({"type": "subscribe", "channel": channel, "last_event_id": from.to_string()})
            } else {
                subscribe(&channel)
            };
            s.send(frame).await;
        }
        let mut heads = Vec::new();
        for (s, start) in flock.iter_mut().zip(&starts) {
            let what = format!("subscribed to {channel}");
            heads.push(
                s.wait_frame(&what, *start, BUSY_DEADLINE, is_frame("subscribed", &channel))
                    .await,
            );
        }
        // Keep publishing a while after the last `subscribed`, then stop this channel.
        publisher.wait_more(&channel, 100).await;
        round.store(0, Ordering::Release);
        let switched = Instant::now();
        publisher
            .wait_until("a pipeline sent after the switch", |l| {
                l.batches.last().is_some_and(|(at, _)| *at > switched)
            })
            .await;
        let all = publisher.log().ids_on(&channel);
        let last = *all.last().unwrap();
        for (k, (s, head)) in flock.iter_mut().zip(&heads).enumerate() {
            let what = format!("the last event of {channel}");
            s.wait_frame(&what, *head, BUSY_DEADLINE, is_event(last)).await;
            let frames = s.frames();
            let sub = &frames[*head];
            let before = ids_on(&frames[starts[k]..*head], &channel);
            let got = ids_on(&frames[*head + 1..], &channel);
            let story = if k % 2 == 0 {
                format!("round {r}, socket {k} (last_event_id {from})")
            } else {
                format!("round {r}, socket {k} (plain subscribe)")
            };
            if sub.v["recovered"] != true {
                failures.push(format!("{story}: {}", sub.v));
            }
            if !before.is_empty() {
                failures.push(format!("{story}: {} events before `subscribed`", before.len()));
            }
            let want: Vec<EventId> = if k % 2 == 0 {
                all.iter().copied().filter(|id| *id > from).collect()
            } else {
                // From its first event on, everything; and nothing published after the
                // socket read `subscribed` may be missing.
                let first = got.first().copied().unwrap_or(last);
                let bound = publisher.log().first_sent_after(sub.at, &channel).unwrap_or(last);
                if first > bound {
                    let lost = all.iter().filter(|id| **id >= bound && **id < first).count();
                    failures.push(format!(
                        "{story}: first event {first}, but {lost} events from {bound} on were published after it read `subscribed`"
                    ));
                }
                all.iter().copied().filter(|id| *id >= first).collect()
            };
            if got != want {
                failures.push(format!("{story}: {}", diff(&want, &got)));
            }
        }
    }
    publisher.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} subscriptions went wrong:\n{}",
        failures.len(),
        rounds * 5,
        failures.join("\n")
    );
}

/// 3. The node's pub/sub link breaks (`CLIENT KILL TYPE pubsub`, five times, then a Redis
///    restart with its AOF) while a backend keeps publishing on four channels. After each break
///    the node resubscribes and repairs the gap from history; events published while it does
///    so must not be skipped because a higher id on another channel was delivered first. Each
///    live socket gets every event of each channel once, in order, or a `gap` frame naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_pubsub_link_is_repaired_all_reach_live_sockets() {
    let _serial = serial().await;
    const CHANNELS: [&str; 4] = ["a:1", "b:1", "c:1", "d:1"];
    let mut redis = RedisServer::start_persistent().await;
    let node = GatewayProc::start(&redis, "gw-repair", ROOMY).await;
    let t = token("steady", &["a:*", "b:*", "c:*", "d:*"], &[]);
    let mut socks = Vec::new();
    for k in 0..3 {
        let (c, _) = node.connect(&t).await;
        let mut s = Recorder::new(format!("socket {k}"), c);
        for ch in CHANNELS {
            s.subscribe_with(subscribe(ch)).await;
        }
        socks.push(s);
    }
    let publisher = Publisher::start(
        &redis,
        |i| vec![CHANNELS[(i % 4) as usize].to_string()],
        8,
        Duration::from_millis(1),
        None,
    );
    publisher.wait_more("a:1", 50).await;
    let mut r = redis.conn().await;
    for _ in 0..5 {
        let before = pubsub_reconnects(&node).await;
        let killed: i64 = redis_cmd(&mut r, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        assert!(killed >= 1);
        wait_pubsub_reconnect(&node, before, "the node notices its pub/sub link is gone").await;
        node.wait_ready().await;
        publisher.wait_more("a:1", 100).await;
    }
    redis.restart().await;
    node.wait_ready().await;
    publisher.wait_more("a:1", 200).await;
    let log = publisher.finish().await;
    let mut r = redis.conn().await;
    let mut lasts = Vec::new();
    for ch in CHANNELS {
        lasts.push(
            fcall_publish(&mut r, ch, "last", &json!(null))
                .await
                .parse::<EventId>()
                .unwrap(),
        );
    }
    let mut failures = Vec::new();
    for ch in CHANNELS {
        let want = history_ids(&mut r, ch).await;
        for s in socks.iter_mut() {
            for last in &lasts {
                s.wait_frame("the last event of each channel", 0, BUSY_DEADLINE, is_event(*last))
                    .await;
            }
            let got = ids_on(&s.frames(), ch);
            let in_order_once = got.windows(2).all(|w| w[0] < w[1]);
            let ok = got == want || (s.told_gap(ch) && in_order_once);
            if !ok {
                failures.push(format!("{}, {ch}: {}", s.name, diff(&want, &got)));
            }
            assert!(s.ended().is_none(), "{} was closed: {:?}", s.name, s.ended());
        }
    }
    assert!(
        failures.is_empty(),
        "{} events published ({} pipelines lost to the restart); without a gap frame:\n{}",
        log.events.len(),
        log.failed,
        failures.join("\n")
    );
}

/// 4. A socket follows `t:1` only through the pattern `t:*`. The node's pub/sub link is killed
///    and events are published before it is back: the repair must cover channels reached
///    through patterns too, so the socket gets the missed events once, in order, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_followed_only_through_a_pattern_is_repaired_after_an_outage() {
    let _serial = serial().await;
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-pattern", &[]).await;
    let (c, _) = node.connect(&token("pat", &["t:*"], &[])).await;
    let mut s = Recorder::new("pattern socket", c);
    s.subscribe_with(subscribe("t:*")).await;
    let mut r = redis.conn().await;
    let first: EventId = fcall_publish(&mut r, "t:1", "e", &json!(0)).await.parse().unwrap();
    s.wait_frame("the first event", 0, DEADLINE, is_event(first)).await;

    for outage in 1..=3 {
        let mark = s.len();
        let before = pubsub_reconnects(&node).await;
        let killed: i64 = redis_cmd(&mut r, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        assert!(killed >= 1);
        // Published right after the kill: the node hears of them only through the repair.
        let mut missed = Vec::new();
        for i in 0..6 {
            let ch = if i % 3 == 2 { "t:2" } else { "t:1" };
            missed.push(
                fcall_publish(&mut r, ch, "missed", &json!(i))
                    .await
                    .parse::<EventId>()
                    .unwrap(),
            );
        }
        wait_pubsub_reconnect(&node, before, "the node notices its pub/sub link is gone").await;
        node.wait_ready().await;
        let live: EventId = fcall_publish(&mut r, "t:1", "live", &json!(outage))
            .await
            .parse()
            .unwrap();
        s.wait_frame("the live event after the outage", mark, DEADLINE, is_event(live))
            .await;
        let got: Vec<EventId> = s.frames()[mark..].iter().filter_map(|f| id_of(&f.v)).collect();
        let mut want = missed.clone();
        want.push(live);
        assert!(
            got == want,
            "outage {outage}: got {}, want {}: {}",
            show(&got),
            show(&want),
            diff(&want, &got)
        );
    }
    assert!(s.ended().is_none());
}

/// 5. A `last_event_id` newer than any id issued (a client from another server life, or a
///    corrupted cursor): `recovered:false`, and live events published afterwards still arrive,
///    on connect and on subscribe.
#[tokio::test]
async fn a_last_event_id_from_the_future_is_not_recovered_and_live_events_still_flow() {
    let node = Node::default().await;
    let t = token("future", &["news:*"], &[]);
    let future = format!("{}-0", now_ms() + 10 * 365 * 24 * 3_600_000);
    let (c, w) = node.connect_query(&format!("token={t}&last_event_id={future}")).await;
    assert_eq!(
        (w["recovered"].as_bool(), w["replayed"].as_u64()),
        (Some(false), Some(0)),
        "{w}"
    );
    let mut s = Recorder::new("socket with a future id", c);
    let id: EventId = node.publish("user:future", "live", json!(1)).await.parse().unwrap();
    let got = s.try_wait_frame(0, Duration::from_secs(3), is_event(id)).await;
    assert!(got.is_some(), "a live event after the welcome never arrived");

    let head = s
        .subscribe_with(json!({"type": "subscribe", "channel": "news:1", "last_event_id": future}))
        .await;
    assert_eq!(s.frames()[head].v["recovered"], false, "{}", s.frames()[head].v);
    let id: EventId = node.publish("news:1", "live", json!(2)).await.parse().unwrap();
    let got = s.try_wait_frame(head, Duration::from_secs(3), is_event(id)).await;
    assert!(got.is_some(), "a live event after the subscribe never arrived");
    node.stop().await;
}

/// 6. A socket follows `p:*`, then subscribes to `p:1` with a `last_event_id` from before it
///    joined the pattern: it gets the events it missed, and none of those it already received
///    through the pattern a second time.
#[tokio::test]
async fn subscribing_with_last_event_id_to_a_channel_already_followed_by_pattern_resends_nothing() {
    let node = Node::default().await;
    let (c, _) = node.connect(&token("pat", &["p:*"], &[])).await;
    let mut s = Recorder::new("pattern socket", c);
    let from: EventId = node.publish("p:1", "e", json!(0)).await.parse().unwrap();
    let mut missed = Vec::new();
    for i in 1..=2 {
        missed.push(node.publish("p:1", "e", json!(i)).await.parse::<EventId>().unwrap());
    }
    s.subscribe_with(subscribe("p:*")).await;
    let mut seen = Vec::new();
    for i in 3..=4 {
        seen.push(node.publish("p:1", "e", json!(i)).await.parse::<EventId>().unwrap());
    }
    s.wait_frame("the events through the pattern", 0, DEADLINE, is_event(seen[1]))
        .await;
    assert_eq!(ids_on(&s.frames(), "p:1"), seen, "the events through the pattern");

    let head = s
        .subscribe_with(json!({"type": "subscribe", "channel": "p:1", "last_event_id": from.to_string()}))
        .await;
    let live: EventId = node.publish("p:1", "e", json!(5)).await.parse().unwrap();
    s.wait_frame("the live event", head, DEADLINE, is_event(live)).await;
    let (sub, after) = {
        let frames = s.frames();
        (frames[head].v.clone(), ids_on(&frames[head + 1..], "p:1"))
    };
    let mut want = missed.clone();
    want.push(live);
    let again: Vec<EventId> = after.iter().filter(|id| seen.contains(id)).copied().collect();
    assert!(
        after == want,
        "after `subscribed`: got {}, want {} (the catch-up, then the live event); sent again: {}",
        show(&after),
        show(&want),
        show(&again)
    );
    assert_eq!(
        (sub["recovered"].as_bool(), sub["replayed"].as_u64()),
        (Some(true), Some(2)),
        "{sub}"
    );
    node.stop().await;
}

/// 7. A client resumes its parked session while the node's pub/sub link is down and cannot come
///    back (Redis refuses SUBSCRIBE for a while; plain commands work, so the parked session is
///    found and taken): the connect gets `unavailable` and 1013. Once Redis is back, a resume
///    must not say `resumed:true` without the topics: it says `resumed:true` with them, or
///    `resumed:false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refused_for_want_of_pubsub_does_not_come_back_without_its_topics() {
    let _serial = serial().await;
    let redis = RedisServer::start().await;
    let node = GatewayProc::start(&redis, "gw-resume", &[]).await;
    let t = token("back", &["room:*"], &[]);
    let (mut c, w) = node.connect(&t).await;
    let id = w["connection_id"].as_str().unwrap().to_string();
    for ch in ["room:1", "room:2"] {
        c.send(subscribe(ch)).await;
        c.expect("subscribed").await;
    }
    c.close().await;
    let mut r = redis.conn().await;
    let key = format!("ws:session:{id}");
    wait_until("the session is parked", || {
        let (mut r, key) = (r.clone(), key.clone());
        async move { redis_cmd::<i64>(&mut r, &["EXISTS", &key]).await == 1 }
    })
    .await;

    // The pub/sub link goes and cannot come back for now; everything else works.
    let _: () = redis_cmd(&mut r, &["ACL", "SETUSER", "default", "-subscribe", "-psubscribe"]).await;
    let _: i64 = redis_cmd(&mut r, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    wait_not_ready(&node, "the node has lost its pub/sub link").await;
    let query = format!("token={t}&connection_id={id}");
    let mut refused = Client::connect(&node.ws_url(&query)).await;
    let (code, frames) = refused.until_closed().await;
    assert_eq!(code, Some(1013), "{frames:?}");
    assert!(frames.iter().any(|f| f["code"] == "unavailable"), "{frames:?}");

    let _: () = redis_cmd(&mut r, &["ACL", "SETUSER", "default", "+subscribe", "+psubscribe"]).await;
    node.wait_ready().await;
    let (mut c, w) = node.connect_query(&query).await;
    if w["resumed"] == true {
        let mut topics: Vec<&str> = w["channels"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        topics.sort();
        assert_eq!(
            topics,
            ["room:1", "room:2"],
            "resumed:true must bring the topics back: {w}"
        );
        let live = fcall_publish(&mut r, "room:2", "e", &json!(1)).await;
        assert_eq!(c.expect("event").await["event_id"], live.as_str());
    } else {
        assert_eq!(w["resumed"], false, "{w}");
    }
}

/// 8. While a backend keeps publishing to `doc:9`, another socket keeps the node listening to
///    it, the node's pub/sub stream runs 20 ms behind and history reads take 30 ms (so live
///    events, some older than the newest ones in history, arrive while a replay is read):
///    re-subscribing after an unsubscribe with an older `last_event_id` replays those events
///    again, the ones the socket already had included; `history:N` gives the newest N events
///    then everything after them, never an older event of that channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_replays_again_and_history_n_starts_at_the_newest_n() {
    let _serial = serial().await;
    let redis = RedisServer::start().await;
    let proxy = SlowRedis::start(
        redis.port,
        &["XRANGE", "XREVRANGE"],
        Duration::from_millis(30),
        Duration::from_millis(20),
    )
    .await;
    let mut env = ROOMY.to_vec();
    let url = proxy.url();
    env.push(("WSGW_REDIS_URL", url.as_str()));
    let node = GatewayProc::start(&redis, "gw-again", &env).await;
    let t = token("again", &["doc:*"], &[]);
    let (mut keeper, _) = node.connect(&t).await;
    keeper.send(subscribe("doc:9")).await;
    keeper.expect("subscribed").await;
    let keeper = drain(keeper);
    let (c, _) = node.connect(&t).await;
    let mut s = Recorder::new("re-subscribing socket", c);
    let publisher = Publisher::start(&redis, |_| vec!["doc:9".into()], 5, Duration::from_millis(1), None);
    publisher.wait_more("doc:9", 50).await;

    /// One subscription as the socket saw it: `subscribed` at `head`, `unsubscribed` at `end`.
    struct Sub {
        story: String,
        head: usize,
        end: usize,
        /// Where it must start: right after this id (`last_event_id`), or no older than this
        /// id (`history:N`: the Nth newest when the subscribe was sent).
        after: Option<EventId>,
        not_before: Option<EventId>,
    }
    let mut subs = Vec::new();
    for round in 1..=3 {
        let head = s.subscribe_with(subscribe("doc:9")).await;
        let got = s
            .wait_frame("30 events", head, BUSY_DEADLINE, {
                let mut n = 0;
                move |v| {
                    n += usize::from(v["type"] == "event");
                    n >= 30
                }
            })
            .await;
        let first = id_of(
            &s.frames()[head + 1..=got]
                .iter()
                .find(|f| f.v["type"] == "event")
                .unwrap()
                .v,
        )
        .unwrap();
        let end = s.unsubscribe("doc:9").await;
        subs.push(Sub {
            story: format!("round {round}: plain subscribe"),
            head,
            end,
            after: None,
            not_before: None,
        });
        // Back again from before everything it just received.
        let from = {
            let log = publisher.log();
            let ids = log.ids_on("doc:9");
            ids[ids.partition_point(|id| *id < first) - 1]
        };
        let head = s
            .subscribe_with(json!({"type": "subscribe", "channel": "doc:9", "last_event_id": from.to_string()}))
            .await;
        publisher.wait_more("doc:9", 30).await;
        let end = s.unsubscribe("doc:9").await;
        subs.push(Sub {
            story: format!("round {round}: last_event_id {from} (older than what it had)"),
            head,
            end,
            after: Some(from),
            not_before: None,
        });
    }
    for round in 1..=6 {
        let n = 3;
        let not_before = {
            let log = publisher.log();
            let ids = log.ids_on("doc:9");
            ids[ids.len() - n]
        };
        let head = s
            .subscribe_with(json!({"type": "subscribe", "channel": "doc:9", "history": n}))
            .await;
        publisher.wait_more("doc:9", 30).await;
        let end = s.unsubscribe("doc:9").await;
        subs.push(Sub {
            story: format!("round {round}: history:{n}"),
            head,
            end,
            after: None,
            not_before: Some(not_before),
        });
    }
    let all = publisher.finish().await.ids_on("doc:9");
    let frames = s.frames();
    let mut failures = Vec::new();
    let mut outside = 0;
    let mut prev_end = 0;
    for sub in &subs {
        outside += ids_on(&frames[prev_end..sub.head], "doc:9").len();
        prev_end = sub.end;
        let head = &frames[sub.head].v;
        let got = ids_on(&frames[sub.head + 1..sub.end], "doc:9");
        if head["recovered"] != true {
            failures.push(format!("{}: {head}", sub.story));
        }
        let Some(first) = got.first().copied() else {
            failures.push(format!("{}: no event", sub.story));
            continue;
        };
        let start = all.partition_point(|id| *id < first);
        let want: Vec<EventId> = all[start..].iter().take(got.len()).copied().collect();
        if got != want {
            failures.push(format!("{}: not one run of doc:9: {}", sub.story, diff(&want, &got)));
        }
        if let Some(after) = sub.after {
            let next = all[all.partition_point(|id| *id <= after)];
            if first != next {
                failures.push(format!("{}: starts at {first}, not at {next}", sub.story));
            }
        }
        if let Some(not_before) = sub.not_before {
            if first < not_before {
                let older = all.partition_point(|id| *id < not_before) - start;
                failures.push(format!(
                    "{}: starts {older} events before the newest 3 ({first} < {not_before}); replayed {}",
                    sub.story, head["replayed"]
                ));
            }
            if head["replayed"].as_u64().is_none_or(|r| r > 3) {
                failures.push(format!("{}: {head}", sub.story));
            }
        }
    }
    if outside > 0 {
        failures.push(format!("{outside} doc:9 events while not subscribed"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    keeper.abort();
}
