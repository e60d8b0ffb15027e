//! Route explain (`POST /api/exchanges/{vhost}/{name}/explain`, `bourse-ctl explain`): where a
//! message would go through exchange-to-exchange bindings, alternate exchanges and a WASM
//! plugin, without anything being enqueued, and without a plugin's state remembering the
//! explained message (x-dedup must still route the real publish that follows).

use std::time::Duration;

use bourse_tests::bounded;
use bourse_tests::ctl::Ctl;
use bourse_tests::http::Api;
use bourse_tests::wasm::PluginBroker;
use hyper::StatusCode;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);

/// A broker with x-dedup loaded and its management API on an ephemeral port.
async fn start() -> (PluginBroker, Api, Ctl) {
    let broker = PluginBroker::start_with(&["x-dedup"], |cfg| {
        cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let addr = broker
        .broker
        .handle()
        .expect("in-process broker")
        .management_addr()
        .expect("a management listener");
    (broker, Api::new(addr, "guest", "guest"), Ctl::new(addr))
}

async fn put(api: &Api, path: &str, body: Value) {
    let reply = api.put(path, body).await;
    assert!(reply.status.is_success(), "PUT {path}: {reply:?}");
}

async fn bind(api: &Api, source: &str, kind: &str, destination: &str, key: &str) {
    let path = format!("/api/bindings/%2F/e/{source}/{kind}/{destination}");
    let reply = api.post(&path, json!({ "routing_key": key })).await;
    assert!(reply.status.is_success(), "POST {path}: {reply:?}");
}

async fn explain(api: &Api, exchange: &str, routing_key: &str, properties: Value) -> Value {
    let path = format!("/api/exchanges/%2F/{exchange}/explain");
    let body = json!({ "routing_key": routing_key, "payload": "p", "properties": properties });
    let reply = api.post(&path, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.json
}

/// The queue names of an explanation, sorted.
fn queues(explained: &Value) -> Vec<String> {
    let mut names: Vec<String> = explained["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("no queues in {explained}"))
        .iter()
        .map(|q| q.as_str().expect("a name").to_owned())
        .collect();
    names.sort();
    names
}

async fn depth(api: &Api, queue: &str) -> u64 {
    let reply = api.get(&format!("/api/queues/%2F/{queue}")).await;
    reply.json["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count for {queue}: {reply:?}"))
}

#[tokio::test]
async fn explain_follows_exchange_bindings_and_alternates_without_enqueuing() {
    bounded(LIMIT, async {
        let (_broker, api, ctl) = start().await;
        put(&api, "/api/exchanges/%2F/in", json!({"type": "topic"})).await;
        put(&api, "/api/exchanges/%2F/fan", json!({"type": "fanout"})).await;
        put(&api, "/api/exchanges/%2F/ae", json!({"type": "fanout"})).await;
        put(
            &api,
            "/api/exchanges/%2F/lonely",
            json!({"type": "direct", "arguments": {"alternate-exchange": "ae"}}),
        )
        .await;
        for q in ["q1", "q2", "q3", "q-ae"] {
            put(&api, &format!("/api/queues/%2F/{q}"), json!({})).await;
        }
        bind(&api, "in", "q", "q1", "a.*").await;
        bind(&api, "in", "e", "fan", "a.#").await;
        bind(&api, "fan", "q", "q2", "").await;
        bind(&api, "fan", "q", "q3", "").await;
        bind(&api, "ae", "q", "q-ae", "").await;

        // Two exchanges deep: the topic exchange's queue and the fanout behind it.
        let explained = explain(&api, "in", "a.b", json!({})).await;
        assert_eq!(explained["routed"], true, "{explained}");
        assert_eq!(queues(&explained), ["q1", "q2", "q3"], "{explained}");
        let hops = explained["hops"].as_array().expect("hops");
        assert_eq!(hops.len(), 2, "{explained}");
        assert_eq!(hops[0]["exchange"], "in");
        assert_eq!(hops[0]["via"]["kind"], "published");
        let first: Vec<(&str, &str)> = hops[0]["reached"]
            .as_array()
            .expect("reached")
            .iter()
            .map(|r| {
                (
                    r["destination"].as_str().expect("name"),
                    r["bindings"][0]["routing_key"].as_str().expect("a binding"),
                )
            })
            .collect();
        assert!(first.contains(&("q1", "a.*")), "{explained}");
        assert!(first.contains(&("fan", "a.#")), "{explained}");
        assert_eq!(hops[1]["exchange"], "fan");
        assert_eq!(hops[1]["type"], "fanout");
        assert_eq!(hops[1]["via"], json!({"kind": "binding", "from": "in"}));

        // Only the deeper binding matches a three-word key; CC adds a key, as publish does.
        let explained = explain(&api, "in", "a.b.c", json!({})).await;
        assert_eq!(queues(&explained), ["q2", "q3"], "{explained}");
        let explained = explain(&api, "in", "x", json!({"headers": {"CC": ["a.z"]}})).await;
        assert_eq!(queues(&explained), ["q1", "q2", "q3"], "{explained}");

        // Nothing matches: the alternate exchange takes it.
        let explained = explain(&api, "lonely", "nobody", json!({})).await;
        assert_eq!(queues(&explained), ["q-ae"], "{explained}");
        let hops = explained["hops"].as_array().expect("hops");
        assert_eq!(hops[0]["alternate"], "ae", "{explained}");
        assert_eq!(
            hops[1]["via"],
            json!({"kind": "alternate", "from": "lonely"})
        );

        // Unroutable: said so, and a mandatory publish would come back.
        let explained = explain(&api, "fan", "", json!({})).await;
        assert_eq!(queues(&explained), ["q2", "q3"]);
        bind(&api, "in", "q", "q1", "never").await;
        let explained = explain(&api, "in", "zzz", json!({})).await;
        assert_eq!(explained["routed"], false, "{explained}");

        for q in ["q1", "q2", "q3", "q-ae"] {
            assert_eq!(depth(&api, q).await, 0, "explain enqueued into {q}");
        }
        let x = api.get("/api/exchanges/%2F/in").await.json;
        assert!(
            x["message_stats"]["publish_in"].as_u64().unwrap_or(0) == 0,
            "explain counted as a publish: {x}"
        );

        // The CLI says the same, for people and for scripts.
        let run = ctl
            .ok(&["explain", "--exchange", "in", "--routing-key", "a.b"])
            .await;
        assert!(
            run.stdout
                .contains("exchange fan (fanout), through a binding of in"),
            "{run:?}"
        );
        assert!(
            run.stdout
                .contains("-> queue q1 [binding key 'a.*', 'never']"),
            "{run:?}"
        );
        assert!(run.stdout.contains("would reach: "), "{run:?}");
        let run = ctl
            .ok(&[
                "--format",
                "json",
                "explain",
                "--exchange",
                "lonely",
                "--routing-key",
                "k",
            ])
            .await;
        let parsed: Value = serde_json::from_str(&run.stdout).expect("JSON output");
        assert_eq!(queues(&parsed), ["q-ae"], "{parsed}");
    })
    .await;
}

#[tokio::test]
async fn explain_runs_a_plugin_without_letting_it_remember() {
    bounded(LIMIT, async {
        let (_broker, api, _ctl) = start().await;
        put(
            &api,
            "/api/exchanges/%2F/payments",
            json!({"type": "x-dedup"}),
        )
        .await;
        put(&api, "/api/queues/%2F/ledger", json!({})).await;
        bind(&api, "payments", "q", "ledger", "").await;
        let id = json!({"message_id": "pay-1"});

        // Explained twice: x-dedup ran (it is a fanout to ledger) and recorded nothing.
        for _ in 0..2 {
            let explained = explain(&api, "payments", "", id.clone()).await;
            assert_eq!(queues(&explained), ["ledger"], "{explained}");
            assert_eq!(explained["hops"][0]["type"], "x-dedup");
        }
        // So the real publish is the first of its id, and routed; after it, explain sees the
        // duplicate the plugin now remembers.
        let published = api
            .post(
                "/api/exchanges/%2F/payments/publish",
                json!({"routing_key": "", "payload": "p", "properties": id.clone()}),
            )
            .await;
        assert_eq!(published.json["routed"], true, "{published:?}");
        let explained = explain(&api, "payments", "", id.clone()).await;
        assert_eq!(explained["routed"], false, "{explained}");
        assert_eq!(depth(&api, "ledger").await, 1);
    })
    .await;
}

#[tokio::test]
async fn explain_needs_write_on_the_exchange_and_an_exchange_that_exists() {
    bounded(LIMIT, async {
        let (_broker, api, _ctl) = start().await;
        put(&api, "/api/exchanges/%2F/in", json!({"type": "direct"})).await;
        put(
            &api,
            "/api/users/reader",
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
        put(
            &api,
            "/api/permissions/%2F/reader",
            json!({"configure": "", "write": "^nothing$", "read": ".*"}),
        )
        .await;
        // Refused exactly as the publish route refuses it (RabbitMQ answers 401 there).
        let body = json!({"routing_key": "k", "payload": "p"});
        let reader = api.as_user("reader", "pw");
        let denied = reader
            .post("/api/exchanges/%2F/in/explain", body.clone())
            .await;
        let publish = reader
            .post("/api/exchanges/%2F/in/publish", body.clone())
            .await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{denied:?}");
        assert_eq!(denied.status, publish.status);
        assert_eq!(denied.json, publish.json);
        assert!(
            denied.json["reason"]
                .as_str()
                .is_some_and(|r| r.contains("access to exchange 'in'")),
            "{denied:?}"
        );
        let missing = api.post("/api/exchanges/%2F/nope/explain", body).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
        let bad = api
            .post(
                "/api/exchanges/%2F/in/explain",
                json!({"routing_key": "k", "payload": "p", "payload_encoding": "utf-9"}),
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    })
    .await;
}
