//! What the management API shows of traffic (issue 12): message counts and rates on queues,
//! exchanges, channels, connections and the overview while real clients publish and
//! consume; the channel and consumer lists; getting messages from a queue; nodes, the
//! aliveness test, topic permissions, and bindings told apart by their arguments.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bourse_tests::connection::lapin_connect;
use bourse_tests::http::{Api, api_broker, api_broker_with};
use bourse_tests::raw::{reply_code, within};
use bourse_tests::tenancy::user_url;
use bourse_tests::{bounded, confirm_channel};
use futures_lite::StreamExt;
use hyper::StatusCode;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(15);

fn rate(v: &Value, field: &str) -> f64 {
    v["message_stats"][format!("{field}_details")]["rate"]
        .as_f64()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn rates_follow_a_publisher_and_a_consumer_and_counts_add_up() {
    bounded(LIMIT, async {
        let (broker, api) = api_broker_with(|cfg| cfg.management_sample_interval_ms = 200).await;
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = confirm_channel(&conn).await;
        within(ch.exchange_declare(
            "rates.x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.queue_declare(
            "rates.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.queue_bind(
            "rates.q".into(),
            "rates.x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        // A consumer that acks everything, on its own connection.
        let consumer_conn = lapin_connect(broker.url()).await.unwrap();
        let cch = within(consumer_conn.create_channel()).await.unwrap();
        within(cch.basic_qos(10, BasicQosOptions::default()))
            .await
            .unwrap();
        let mut deliveries = within(cch.basic_consume(
            "rates.q".into(),
            "rates.c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        let acked = Arc::new(AtomicU64::new(0));
        let counting = acked.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = deliveries.next().await {
                d.ack(BasicAckOptions::default()).await.unwrap();
                counting.fetch_add(1, Ordering::Relaxed);
            }
        });
        // A publisher of a few hundred messages a second until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, pch) = (stop.clone(), ch.clone());
        let publisher = tokio::spawn(async move {
            let mut sent = 0u64;
            while !stopping.load(Ordering::Relaxed) && sent < 20_000 {
                for _ in 0..20 {
                    pch.basic_publish(
                        "rates.x".into(),
                        "k".into(),
                        BasicPublishOptions::default(),
                        b"m",
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        });
        let moving = |v: &Value| {
            rate(v, "publish") > 0.0 && rate(v, "deliver_get") > 0.0 && rate(v, "ack") > 0.0
        };
        let (ok, q) = api.get_until("/api/queues/%2F/rates.q", WAIT, moving).await;
        assert!(ok, "queue rates never moved: {q}");
        let (ok, o) = api.get_until("/api/overview", WAIT, moving).await;
        assert!(ok, "overview rates never moved: {o}");
        let (ok, v) = api.get_until("/api/vhosts/%2F", WAIT, moving).await;
        assert!(ok, "vhost rates never moved: {v}");
        let (ok, x) = api
            .get_until("/api/exchanges/%2F/rates.x", WAIT, |x| {
                rate(x, "publish_in") > 0.0 && rate(x, "publish_out") > 0.0
            })
            .await;
        assert!(ok, "exchange rates never moved: {x}");
        let (ok, channels) = api
            .get_until("/api/channels", WAIT, |list| {
                let all = list.as_array().cloned().unwrap_or_default();
                all.iter()
                    .any(|c| rate(c, "publish") > 0.0 && c["confirm"] == true)
                    && all.iter().any(|c| {
                        c["consumer_count"] == 1
                            && rate(c, "deliver_get") > 0.0
                            && rate(c, "ack") > 0.0
                            && c["prefetch_count"] == 10
                    })
            })
            .await;
        assert!(ok, "channel rates never moved: {channels}");
        let (ok, conns) = api
            .get_until("/api/connections", WAIT, |list| {
                list.as_array().is_some_and(|all| {
                    all.iter().all(|c| {
                        c["recv_oct_details"]["rate"].as_f64() > Some(0.0)
                            && c["send_oct_details"]["rate"].as_f64() > Some(0.0)
                    })
                })
            })
            .await;
        assert!(ok, "connection byte rates never moved: {conns}");

        stop.store(true, Ordering::Relaxed);
        let sent = publisher.await.unwrap();
        assert!(
            bourse_tests::eventually(WAIT, || acked.load(Ordering::Relaxed) == sent).await,
            "consumer got {} of {sent}",
            acked.load(Ordering::Relaxed)
        );
        // Counts are exact; rates fall back to 0 once the traffic stops.
        let (ok, q) = api
            .get_until("/api/queues/%2F/rates.q", WAIT, |q| {
                q["message_stats"]["ack"] == sent && rate(q, "publish") == 0.0
            })
            .await;
        assert!(ok, "queue after the traffic: {q}");
        assert_eq!(q["message_stats"]["publish"], sent);
        assert_eq!(q["message_stats"]["deliver"], sent);
        assert_eq!(q["message_stats"]["deliver_get"], sent);
        assert_eq!(q["message_stats"]["redeliver"], 0);
        let x = api.get("/api/exchanges/%2F/rates.x").await.json;
        assert_eq!(x["message_stats"]["publish_in"], sent);
        assert_eq!(x["message_stats"]["publish_out"], sent);
        let o = api.get("/api/overview").await.json;
        assert_eq!(o["message_stats"]["publish"], sent);
        assert_eq!(o["object_totals"]["channels"], 2);
    })
    .await;
}

#[tokio::test]
async fn channels_and_consumers_are_listed_with_their_connections() {
    bounded(LIMIT, async {
        let (broker, api) = api_broker().await;
        let granted = api
            .put(
                "/api/permissions/%2F/manager",
                json!({"configure": ".*", "write": ".*", "read": ".*"}),
            )
            .await;
        assert!(granted.status.is_success(), "{}", granted.json);
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = within(conn.create_channel()).await.unwrap();
        within(ch.queue_declare(
            "listed.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.basic_qos(5, BasicQosOptions::default()))
            .await
            .unwrap();
        let _consumer = within(ch.basic_consume(
            "listed.q".into(),
            "tag-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        let manager_conn = lapin_connect(&user_url(broker.url(), "manager", "pw", "/"))
            .await
            .unwrap();
        let _manager_ch = within(manager_conn.create_channel()).await.unwrap();

        let channels = api.get("/api/channels").await.json;
        let all = channels.as_array().expect("a list");
        assert_eq!(all.len(), 2, "{channels}");
        let guest_ch = all
            .iter()
            .find(|c| c["user"] == "guest")
            .expect("guest's channel");
        assert_eq!(guest_ch["consumer_count"], 1);
        assert_eq!(guest_ch["prefetch_count"], 5);
        assert_eq!(guest_ch["number"], 1);
        let conn_name = guest_ch["connection_details"]["name"].as_str().unwrap();
        assert_eq!(guest_ch["name"], format!("{conn_name} (1)"));
        // One channel by name, a connection's channels, a vhost's channels.
        let name = bourse_tests::http::segment(guest_ch["name"].as_str().unwrap());
        let one = api.get(&format!("/api/channels/{name}")).await;
        assert_eq!(one.status, StatusCode::OK);
        assert_eq!(one.json["consumer_count"], 1);
        let of_conn = api
            .get(&format!(
                "/api/connections/{}/channels",
                bourse_tests::http::segment(conn_name)
            ))
            .await;
        assert_eq!(of_conn.json.as_array().map(Vec::len), Some(1));
        let in_vhost = api.get("/api/vhosts/%2F/channels").await;
        assert_eq!(in_vhost.json.as_array().map(Vec::len), Some(2));
        let missing = api.get("/api/channels/nope%20(1)").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);

        let consumers = api.get("/api/consumers").await.json;
        assert_eq!(consumers.as_array().map(Vec::len), Some(1), "{consumers}");
        let c = &consumers[0];
        assert_eq!(c["consumer_tag"], "tag-1");
        assert_eq!(c["queue"], json!({"name": "listed.q", "vhost": "/"}));
        assert_eq!(c["ack_required"], true);
        assert_eq!(c["exclusive"], false);
        assert_eq!(c["prefetch_count"], 5);
        assert_eq!(c["channel_details"]["connection_name"], conn_name);
        assert_eq!(c["channel_details"]["number"], 1);
        assert_eq!(api.get("/api/consumers/%2F").await.json, consumers);
        assert_eq!(
            api.get("/api/consumers/nope").await.status,
            StatusCode::NOT_FOUND
        );

        // A management user sees its own connection's channel and no one else's consumers;
        // a monitoring user sees everything.
        let manager = api.as_user("manager", "pw");
        let mine = manager.get("/api/channels").await.json;
        assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
        assert_eq!(mine[0]["user"], "manager");
        assert_eq!(manager.get("/api/consumers").await.json, json!([]));
        let watcher = api.as_user("watcher", "pw");
        assert_eq!(
            watcher
                .get("/api/channels")
                .await
                .json
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        // Closing the channel takes it off the list.
        within(ch.close(200, "bye".into())).await.unwrap();
        let (ok, left) = api
            .get_until("/api/channels", WAIT, |l| {
                l.as_array().map(Vec::len) == Some(1)
            })
            .await;
        assert!(ok, "closed channel still listed: {left}");
        assert_eq!(api.get("/api/consumers").await.json, json!([]));
    })
    .await;
}

async fn publish_three(api: &Api, queue: &str) {
    for (i, payload) in ["one", "two"].iter().enumerate() {
        let reply = api
            .post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({
                    "routing_key": queue, "payload": payload, "payload_encoding": "string",
                    "properties": {"content_type": "text/plain", "headers": {"n": i}},
                }),
            )
            .await;
        assert_eq!(reply.json, json!({"routed": true}));
    }
    let binary = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": queue, "payload": "/w==", "payload_encoding": "base64"}),
        )
        .await;
    assert_eq!(binary.json, json!({"routed": true}));
}

#[tokio::test]
async fn get_requeues_or_takes_messages_as_rabbitmqs_get_does() {
    bounded(LIMIT, async {
        let (_broker, api) = api_broker().await;
        let declared = api
            .put("/api/queues/%2F/got", json!({"durable": true}))
            .await;
        assert_eq!(declared.status, StatusCode::CREATED);
        publish_three(&api, "got").await;
        let get = |count: u64, ackmode: &str| {
            json!({"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50000})
        };
        // Requeued: the queue keeps them, marked redelivered.
        let peek = api
            .post("/api/queues/%2F/got/get", get(2, "ack_requeue_true"))
            .await;
        assert_eq!(peek.status, StatusCode::OK, "{}", peek.json);
        let list = peek.json.as_array().expect("a list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["payload"], "one");
        assert_eq!(list[0]["payload_encoding"], "string");
        assert_eq!(list[0]["redelivered"], false);
        assert_eq!(list[0]["routing_key"], "got");
        assert_eq!(list[0]["exchange"], "");
        assert_eq!(list[0]["message_count"], 2);
        assert_eq!(list[0]["properties"]["content_type"], "text/plain");
        assert_eq!(list[0]["properties"]["headers"], json!({"n": 0}));
        assert_eq!(list[1]["message_count"], 1);
        let (ok, q) = api
            .get_until("/api/queues/%2F/got", WAIT, |q| q["messages"] == 3)
            .await;
        assert!(ok, "requeued messages missing: {q}");
        // Taken: gone from the queue; a binary body comes back as base64.
        let taken = api
            .post("/api/queues/%2F/got/get", get(10, "ack_requeue_false"))
            .await;
        let list = taken.json.as_array().expect("a list");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["redelivered"], true);
        assert_eq!(list[2]["payload"], "/w==");
        assert_eq!(list[2]["payload_encoding"], "base64");
        assert_eq!(list[2]["payload_bytes"], 1);
        let q = api.get("/api/queues/%2F/got").await.json;
        assert_eq!((q["messages"].clone(), q["messages_unacknowledged"].clone()), (json!(0), json!(0)));
        assert_eq!(q["message_stats"]["get"], 5);
        assert_eq!(q["message_stats"]["ack"], 3);
        // An empty queue answers an empty list; bad requests are 400; unknown queues 404.
        let empty = api
            .post("/api/queues/%2F/got/get", get(1, "ack_requeue_false"))
            .await;
        assert_eq!(empty.json, json!([]));
        for bad in [
            json!({"count": 1, "ackmode": "sometimes"}),
            json!({"count": 0, "ackmode": "ack_requeue_true"}),
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "rot13"}),
        ] {
            let reply = api.post("/api/queues/%2F/got/get", bad).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.json);
            assert_eq!(reply.json["error"], "bad_request");
        }
        let unknown = api
            .post("/api/queues/%2F/nope/get", get(1, "ack_requeue_true"))
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        // Reading needs read permission on the queue.
        api.put(
            "/api/permissions/%2F/manager",
            json!({"configure": ".*", "write": ".*", "read": "^mine$"}),
        )
        .await;
        let refused = api
            .as_user("manager", "pw")
            .post("/api/queues/%2F/got/get", get(1, "ack_requeue_true"))
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.json);
    })
    .await;
}

#[tokio::test]
async fn nodes_aliveness_and_topic_permissions() {
    bounded(LIMIT, async {
        let (broker, api) = api_broker().await;
        let nodes = api.get("/api/nodes").await.json;
        let node = api.get("/api/overview").await.json["node"].clone();
        assert_eq!(nodes[0]["name"], node);
        assert_eq!(nodes[0]["running"], true);
        assert!(nodes[0]["mem_used"].as_u64() > Some(0), "{nodes}");
        assert!(nodes[0]["mem_limit"].as_u64() > Some(0), "{nodes}");
        let named = format!(
            "/api/nodes/{}",
            bourse_tests::http::segment(node.as_str().unwrap())
        );
        assert_eq!(api.get(&named).await.json["name"], node);
        assert_eq!(
            api.get("/api/nodes/other").await.status,
            StatusCode::NOT_FOUND
        );
        let manager = api.as_user("manager", "pw");
        assert_eq!(
            manager.get("/api/nodes").await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            api.as_user("watcher", "pw").get("/api/nodes").await.status,
            StatusCode::OK
        );
        assert_eq!(
            api.get("/api/aliveness-test/%2F").await.json,
            json!({"status": "ok"})
        );
        assert_eq!(
            api.get("/api/aliveness-test/nope").await.status,
            StatusCode::NOT_FOUND
        );

        // Topic permissions: set over HTTP, enforced over AMQP, removed.
        api.put(
            "/api/permissions/%2F/manager",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
        let set = api
            .put(
                "/api/topic-permissions/%2F/manager",
                json!({"exchange": "amq.topic", "write": "^allowed\\.", "read": ".*"}),
            )
            .await;
        assert_eq!(set.status, StatusCode::CREATED, "{}", set.json);
        let entry = json!({"user": "manager", "vhost": "/", "exchange": "amq.topic",
                           "write": "^allowed\\.", "read": ".*"});
        assert_eq!(api.get("/api/topic-permissions").await.json, json!([entry]));
        assert_eq!(
            api.get("/api/topic-permissions/%2F/manager").await.json,
            json!([entry])
        );
        assert_eq!(
            manager.get("/api/topic-permissions").await.status,
            StatusCode::UNAUTHORIZED
        );
        let conn = lapin_connect(&user_url(broker.url(), "manager", "pw", "/"))
            .await
            .unwrap();
        let ch = confirm_channel(&conn).await;
        let publish = |key: &'static str| {
            let ch = ch.clone();
            async move {
                ch.basic_publish(
                    "amq.topic".into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    b"t",
                    BasicProperties::default(),
                )
                .await?
                .await
            }
        };
        within(publish("allowed.one")).await.expect("allowed key");
        let denied = within(publish("other.one")).await;
        assert_eq!(denied.err().and_then(|e| reply_code(&e)), Some(403));
        let removed = api.delete("/api/topic-permissions/%2F/manager").await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        assert_eq!(
            api.get("/api/topic-permissions/%2F/manager").await.status,
            StatusCode::NOT_FOUND
        );
        let missing = api
            .put(
                "/api/topic-permissions/%2F/manager",
                json!({"exchange": "amq.topic"}),
            )
            .await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        // The per-user and per-vhost permission lists.
        let of_user = api.get("/api/users/manager/permissions").await.json;
        assert_eq!(of_user.as_array().map(Vec::len), Some(1), "{of_user}");
        assert_eq!(of_user[0]["vhost"], "/");
        let of_vhost = api.get("/api/vhosts/%2F/permissions").await.json;
        assert!(
            of_vhost
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["user"] == "manager"),
            "{of_vhost}"
        );
        assert_eq!(
            api.get("/api/users/nobody/permissions").await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn bindings_with_arguments_are_told_apart_by_their_properties_key() {
    bounded(LIMIT, async {
        let (_broker, api) = api_broker().await;
        api.put("/api/exchanges/%2F/hx", json!({"type": "headers"}))
            .await;
        api.put("/api/queues/%2F/hq", json!({})).await;
        for kind in ["a", "b"] {
            let made = api
                .post(
                    "/api/bindings/%2F/e/hx/q/hq",
                    json!({"routing_key": "", "arguments": {"x-match": "all", "kind": kind}}),
                )
                .await;
            assert_eq!(made.status, StatusCode::CREATED, "{}", made.json);
        }
        let between = api.get("/api/bindings/%2F/e/hx/q/hq").await.json;
        let list = between.as_array().expect("a list");
        assert_eq!(list.len(), 2, "{between}");
        let (first, second) = (
            list[0]["properties_key"].as_str().unwrap().to_owned(),
            list[1]["properties_key"].as_str().unwrap().to_owned(),
        );
        assert_ne!(first, second);
        assert!(first.starts_with('~'), "{first}");
        let one = api
            .get(&format!(
                "/api/bindings/%2F/e/hx/q/hq/{}",
                bourse_tests::http::segment(&first)
            ))
            .await;
        assert_eq!(one.json, list[0]);
        let removed = api
            .delete(&format!(
                "/api/bindings/%2F/e/hx/q/hq/{}",
                bourse_tests::http::segment(&first)
            ))
            .await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        let left = api.get("/api/bindings/%2F/e/hx/q/hq").await.json;
        assert_eq!(left.as_array().map(Vec::len), Some(1));
        assert_eq!(left[0]["properties_key"], second);
        // The queue's bindings start with the default exchange's; the exchange's as source.
        let of_queue = api.get("/api/queues/%2F/hq/bindings").await.json;
        assert_eq!(of_queue.as_array().map(Vec::len), Some(2), "{of_queue}");
        assert_eq!(of_queue[0]["source"], "");
        assert_eq!(
            api.get("/api/exchanges/%2F/hx/bindings/source")
                .await
                .json
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(
            api.get("/api/exchanges/%2F/hx/bindings/destination")
                .await
                .json,
            json!([])
        );
        let x = api.get("/api/exchanges/%2F/hx").await.json;
        assert_eq!(x["type"], "headers");
        assert_eq!(x["message_stats"]["publish_in"], 0);
        let default = api.get("/api/exchanges/%2F/amq.default").await.json;
        assert_eq!(default["name"], "");
    })
    .await;
}

#[tokio::test]
async fn plugin_stats_show_latency_memory_the_last_error_and_log_lines() {
    use bourse_tests::wasm::{plugin_bytes, seed_cache_key, test_cache_dir};
    bounded(LIMIT, async {
        let (broker, api) = api_broker_with(|cfg| {
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
            cfg.prometheus_listen = Some(([127, 0, 0, 1], 0).into());
        })
        .await;
        let uploaded = api
            .raw(
                hyper::Method::POST,
                "/api/plugins/%2F",
                plugin_bytes("x-noisy"),
            )
            .await;
        assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.json);
        api.put("/api/exchanges/%2F/noisy", json!({"type": "x-noisy"}))
            .await;
        api.put("/api/queues/%2F/heard", json!({})).await;
        let bound = api
            .post(
                "/api/bindings/%2F/e/noisy/q/heard",
                json!({"routing_key": ""}),
            )
            .await;
        assert_eq!(bound.status, StatusCode::CREATED, "{}", bound.json);
        let publish = |key: &'static str| {
            let api = api.clone();
            async move {
                api.post(
                    "/api/exchanges/%2F/noisy/publish",
                    json!({"routing_key": key, "payload": "p", "payload_encoding": "string"}),
                )
                .await
            }
        };
        for i in 0..32 {
            // Distinct keys: the decision cache must not answer them.
            let key: &'static str = Box::leak(format!("plain-{i}").into_boxed_str());
            assert_eq!(publish(key).await.json, json!({"routed": true}));
        }
        publish("log").await;
        publish("error").await;
        let plugins = api.get("/api/plugins/%2F").await.json;
        let x = &plugins[0]["exchanges"][0];
        assert_eq!(x["name"], "noisy", "{plugins}");
        let samples = x["latency_us"]["samples"].as_u64().unwrap_or(0);
        assert!(samples >= 4, "{x}");
        let (p50, p99) = (
            x["latency_us"]["p50"].as_f64().unwrap_or(0.0),
            x["latency_us"]["p99"].as_f64().unwrap_or(0.0),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{x}");
        assert!(x["memory_bytes"].as_u64() > Some(0), "{x}");
        assert!(x["busy_ms"].as_f64().is_some(), "{x}");
        assert!(x["cache_hit_ratio"].as_f64().is_some(), "{x}");
        let error = &x["last_error"];
        assert!(
            error["reason"].as_str().is_some_and(|r| !r.is_empty())
                && error["at"].as_u64() > Some(0),
            "{x}"
        );
        let logs = x["logs"].as_array().expect("log lines");
        assert!(!logs.is_empty(), "{x}");
        let line = &logs[logs.len() - 1];
        assert!(
            line["text"].as_str().is_some_and(|t| t.len() <= 1100),
            "a 1 MiB line is cut: {}",
            line["text"].as_str().map(str::len).unwrap_or(0)
        );
        assert!(
            line["level"].is_string() && line["at"].as_u64() > Some(0),
            "{line}"
        );
        // Prometheus has the per-plugin series too.
        let addr = broker.handle().unwrap().prometheus_addr().unwrap();
        let (_, _, text) = Api::anonymous(addr).get_text("/metrics").await;
        for series in [
            "bourse_plugin_call_p99_seconds{",
            "bourse_plugin_memory_bytes{",
            "bourse_plugin_busy_seconds_total{",
        ] {
            let line = text.lines().find(|l| l.starts_with(series));
            assert!(
                line.is_some_and(|l| l.contains("plugin=\"x-noisy\"")),
                "{series}: {line:?}"
            );
        }
    })
    .await;
}
