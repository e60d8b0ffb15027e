//! Definitions through the management API (issue 12): RabbitMQ's JSON exported and
//! imported, a file exported by RabbitMQ 3.10 loaded and used, a round trip into a fresh
//! broker, `load_definitions` at start-up, and one vhost's definitions on their own.

use std::time::Duration;

use bourse_tests::connection::lapin_connect;
use bourse_tests::http::api_broker as start;
use bourse_tests::raw::{reply_code, within};
use bourse_tests::tenancy::user_url;
use bourse_tests::{TestBroker, bounded, confirm_channel};
use hyper::{Method, StatusCode};
use lapin::BasicProperties;
use lapin::ExchangeKind;
use lapin::options::{
    BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn bindings_and_definitions_are_exported_in_rabbitmqs_format() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = within(conn.create_channel()).await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for (name, kind) in [
            ("orders", ExchangeKind::Direct),
            ("audit", ExchangeKind::Fanout),
        ] {
            within(ch.exchange_declare(name.into(), kind, durable, FieldTable::default()))
                .await
                .unwrap();
        }
        within(ch.queue_declare(
            "o1".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.queue_declare(
            "scratch".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.queue_bind(
            "o1".into(),
            "orders".into(),
            "new".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.exchange_bind(
            "audit".into(),
            "orders".into(),
            "new".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        api.put(
            "/api/vhost-limits/%2F/max-connections",
            json!({"value": 50}),
        )
        .await;

        let bindings = api.get("/api/bindings/%2F").await.json;
        let list = bindings.as_array().unwrap();
        let has = |source: &str, destination: &str, kind: &str, key: &str| {
            list.iter().any(|b| {
                b["source"] == source
                    && b["destination"] == destination
                    && b["destination_type"] == kind
                    && b["routing_key"] == key
            })
        };
        assert!(has("", "o1", "queue", "o1"), "{bindings}");
        assert!(has("orders", "o1", "queue", "new"), "{bindings}");
        assert!(has("orders", "audit", "exchange", "new"), "{bindings}");

        let defs = api.get("/api/definitions").await;
        assert_eq!(defs.status, StatusCode::OK);
        let defs = defs.json;
        let names = |key: &str| -> Vec<String> {
            defs[key]
                .as_array()
                .unwrap_or_else(|| panic!("{key} missing: {defs}"))
                .iter()
                .map(|o| o["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        assert_eq!(names("queues"), ["o1"], "transient queues are not exported");
        let mut exchanges = names("exchanges");
        exchanges.sort();
        assert_eq!(
            exchanges,
            ["audit", "orders"],
            "no amq.* or default exchange"
        );
        assert!(names("vhosts").contains(&"/".to_owned()));
        let guest = defs["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "guest")
            .expect("guest exported");
        assert_eq!(
            guest["password_hash"],
            api.get("/api/users/guest").await.json["password_hash"]
        );
        assert_eq!(
            defs["bindings"].as_array().unwrap().len(),
            2,
            "{}",
            defs["bindings"]
        );
        assert_eq!(
            defs["parameters"],
            json!([{"vhost": "/", "component": "vhost-limits", "name": "limits",
                    "value": {"max-connections": 50}}])
        );
        for key in [
            "permissions",
            "topic_permissions",
            "policies",
            "global_parameters",
        ] {
            assert!(defs[key].is_array(), "{key}: {defs}");
        }
        // Administrators only.
        let refused = api.as_user("watcher", "pw").get("/api/definitions").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn a_rabbitmq_definitions_export_loads_and_works() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/rabbitmq-3.10.8-definitions.json");
        let bytes = std::fs::read(&file).expect("test data");
        let imported = api.raw(Method::POST, "/api/definitions", bytes).await;
        assert_eq!(imported.status, StatusCode::OK, "{:?}", imported.json);
        let warnings: Vec<String> = imported.json["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect();
        assert!(
            warnings.iter().any(|w| w.contains("1 policies")),
            "the policy is not reported as ignored: {warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("alice.quorum") && w.contains("quorum")),
            "{warnings:?}"
        );
        // Alice logs in with her RabbitMQ password hash, under her RabbitMQ permissions.
        let url = user_url(broker.url(), "alice", "alicepw", "tenant-a");
        let conn = lapin_connect(&url).await.expect("alice's RabbitMQ hash");
        let ch = confirm_channel(&conn).await;
        let confirm = within(ch.basic_publish(
            "orders".into(),
            "new".into(),
            BasicPublishOptions::default(),
            b"order",
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        within(confirm)
            .await
            .expect("routed by the imported binding");
        let queue = api.get("/api/queues/tenant-a/alice.jobs").await.json;
        assert_eq!(queue["messages_ready"], 1, "{queue}");
        assert_eq!(
            queue["arguments"],
            json!({"x-dead-letter-exchange": "audit", "x-max-length": 1000, "x-message-ttl": 30000})
        );
        let ch = within(conn.create_channel()).await.unwrap();
        let denied = within(ch.queue_declare(
            "bob.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await;
        assert_eq!(denied.err().and_then(|e| reply_code(&e)), Some(403));
        assert_eq!(
            api.get("/api/vhost-limits/tenant-a").await.json,
            json!([{"vhost": "tenant-a", "value": {"max-connections": 20, "max-queues": 50}}])
        );
        assert_eq!(
            api.get("/api/vhosts/tenant-a").await.json["description"],
            "tenant A"
        );
        let bad = api
            .raw(Method::POST, "/api/definitions", b"[1, 2]".to_vec())
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test]
async fn definitions_round_trip_into_a_fresh_broker() {
    bounded(LIMIT, async {
        let (source, api) = start().await;
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/rabbitmq-3.10.8-definitions.json");
        let imported = api
            .raw(
                Method::POST,
                "/api/definitions",
                std::fs::read(&file).unwrap(),
            )
            .await;
        assert_eq!(imported.status, StatusCode::OK);
        let exported = api.get("/api/definitions").await.json;
        let (fresh, fresh_api) = start().await;
        let loaded = fresh_api
            .raw(
                Method::POST,
                "/api/definitions",
                exported.to_string().into_bytes(),
            )
            .await;
        assert_eq!(loaded.status, StatusCode::OK, "{:?}", loaded.json);
        assert_eq!(
            loaded.json["warnings"],
            json!([]),
            "bourse's own export loads cleanly"
        );
        let again = fresh_api.get("/api/definitions").await.json;
        assert_eq!(
            again, exported,
            "bourse -> JSON -> fresh bourse is not identical"
        );
        drop((source, fresh));
    })
    .await;
}

#[tokio::test]
async fn load_definitions_imports_a_file_at_start_up() {
    bounded(LIMIT, async {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/rabbitmq-3.10.8-definitions.json");
        let broker = TestBroker::start_with(|cfg| cfg.load_definitions = Some(file)).await;
        let url = user_url(broker.url(), "alice", "alicepw", "tenant-a");
        let conn = lapin_connect(&url).await.expect("alice from the file");
        let ch = within(conn.create_channel()).await.unwrap();
        within(ch.queue_declare(
            "alice.jobs".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .expect("the file's queue");
        // A broken file stops the start.
        let dir = bourse_tests::TempDir::new();
        let bad = dir.path.join("bad.json");
        std::fs::write(&bad, "{\"users\": 3}").unwrap();
        let error = match bourse::Broker::start(bourse::Config {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path.join("data"),
            load_definitions: Some(bad),
            ..bourse::Config::default()
        })
        .await
        {
            Ok(_) => panic!("a broken definitions file was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("users must be a list"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn one_vhosts_definitions_export_without_vhost_names_and_load_into_another() {
    bounded(LIMIT, async {
        let (_broker, api) = start().await;
        for vhost in ["from", "into"] {
            let made = api.put(&format!("/api/vhosts/{vhost}"), json!({})).await;
            assert_eq!(made.status, StatusCode::CREATED);
            let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
            api.put(&format!("/api/permissions/{vhost}/guest"), all)
                .await;
        }
        api.put(
            "/api/exchanges/from/orders",
            json!({"type": "topic", "durable": true}),
        )
        .await;
        api.put("/api/queues/from/billing", json!({"durable": true}))
            .await;
        let bound = api
            .post(
                "/api/bindings/from/e/orders/q/billing",
                json!({"routing_key": "order.*"}),
            )
            .await;
        assert_eq!(bound.status, StatusCode::CREATED);
        let limited = api
            .put("/api/vhost-limits/from/max-queues", json!({"value": 10}))
            .await;
        assert_eq!(limited.status, StatusCode::NO_CONTENT);
        let exported = api.get("/api/definitions/from").await;
        assert_eq!(exported.status, StatusCode::OK);
        let doc = exported.json;
        for key in ["users", "vhosts", "permissions"] {
            assert!(doc.get(key).is_none(), "{key} in a vhost's export: {doc}");
        }
        assert_eq!(doc["queues"][0]["name"], "billing");
        assert!(doc["queues"][0].get("vhost").is_none(), "{doc}");
        assert_eq!(doc["exchanges"][0]["name"], "orders");
        assert_eq!(doc["bindings"][0]["routing_key"], "order.*");
        assert_eq!(doc["parameters"][0]["value"], json!({"max-queues": 10}));

        let imported = api
            .raw(
                Method::POST,
                "/api/definitions/into",
                doc.to_string().into_bytes(),
            )
            .await;
        assert_eq!(imported.status, StatusCode::OK, "{}", imported.json);
        let queue = api.get("/api/queues/into/billing").await;
        assert_eq!(queue.status, StatusCode::OK);
        assert_eq!(queue.json["durable"], true);
        let bindings = api.get("/api/bindings/into/e/orders/q/billing").await.json;
        assert_eq!(bindings[0]["routing_key"], "order.*", "{bindings}");
        let limits = api.get("/api/vhost-limits/into").await.json;
        assert_eq!(limits[0]["value"], json!({"max-queues": 10}), "{limits}");
        // The source vhost is untouched; an unknown vhost is 404 either way.
        assert_eq!(api.get("/api/definitions/from").await.json, doc);
        assert_eq!(
            api.get("/api/definitions/nope").await.status,
            StatusCode::NOT_FOUND
        );
        let nowhere = api
            .raw(Method::POST, "/api/definitions/nope", b"{}".to_vec())
            .await;
        assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
        let bad = api
            .raw(Method::POST, "/api/definitions/into", b"[1]".to_vec())
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    })
    .await;
}
