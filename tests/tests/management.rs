//! The management HTTP API (issue 12), over real HTTP: authentication and tags (401 with
//! RabbitMQ's JSON), vhosts, users, permissions and vhost limits changed through it and seen
//! by AMQP clients, queues, exchanges and connections with their counts, errors, and the
//! alarms health check.

use std::time::Duration;

use bourse::config::UserSeed;
use bourse_tests::connection::lapin_connect;
use bourse_tests::http::{Api, api_broker as start, segment};
use bourse_tests::raw::{RawClient, reply_code, within};
use bourse_tests::tenancy::user_url;
use bourse_tests::{TestBroker, bounded, confirm_channel};
use hyper::{Method, StatusCode};
use lapin::BasicProperties;
use lapin::ExchangeKind;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn credentials_and_tags_are_checked_with_rabbitmqs_401() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let addr = broker.handle().unwrap().management_addr().unwrap();
        let anonymous = Api::anonymous(addr).get("/api/whoami").await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            anonymous.json,
            json!({"error": "not_authorised", "reason": "Login failed"})
        );
        assert!(anonymous.authenticate.is_some(), "no WWW-Authenticate");
        let wrong = api.as_user("guest", "nope").get("/api/whoami").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let tagless = api.as_user("tagless", "pw").get("/api/overview").await;
        assert_eq!(tagless.status, StatusCode::UNAUTHORIZED);
        assert_eq!(tagless.json["reason"], "Not management user");
        let manager = api.as_user("manager", "pw");
        let users = manager.get("/api/users").await;
        assert_eq!(users.status, StatusCode::UNAUTHORIZED);
        assert_eq!(users.json["reason"], "Not administrator user");
        let refused = manager.put("/api/vhosts/x", json!({})).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let me = manager.get("/api/whoami").await;
        assert_eq!(me.status, StatusCode::OK);
        assert_eq!(me.json, json!({"name": "manager", "tags": ["management"]}));
        let overview = api.get("/api/overview").await;
        assert_eq!(overview.status, StatusCode::OK);
        for key in [
            "management_version",
            "node",
            "object_totals",
            "queue_totals",
            "listeners",
        ] {
            assert!(
                overview.json.get(key).is_some(),
                "overview lacks {key}: {}",
                overview.json
            );
        }
    })
    .await;
}

#[tokio::test]
async fn vhosts_users_and_permissions_made_over_http_work_over_amqp() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let put = api
            .put("/api/vhosts/tenant", json!({"description": "a tenant", "tags": "gold"}))
            .await;
        assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.json);
        assert_eq!(
            api.put("/api/vhosts/tenant", json!({})).await.status,
            StatusCode::NO_CONTENT
        );
        let vhost = api.get("/api/vhosts/tenant").await;
        assert_eq!(vhost.json["description"], "a tenant");
        assert_eq!(vhost.json["tags"], json!(["gold"]));
        let user = api
            .put("/api/users/ulla", json!({"password": "s3cret", "tags": ["management"]}))
            .await;
        assert_eq!(user.status, StatusCode::CREATED, "{:?}", user.json);
        let shown = api.get("/api/users/ulla").await.json;
        assert_eq!(shown["tags"], json!(["management"]));
        assert_eq!(shown["hashing_algorithm"], "rabbit_password_hashing_sha256");
        assert!(shown["password_hash"].as_str().is_some_and(|h| h.len() > 40), "{shown}");
        // No permissions yet: the vhost refuses her.
        let url = user_url(broker.url(), "ulla", "s3cret", "tenant");
        let refused = lapin_connect(&url).await.expect_err("no permissions yet");
        assert_eq!(reply_code(&refused), Some(530));
        let grant = api
            .put(
                "/api/permissions/tenant/ulla",
                json!({"configure": "^ulla\\.", "write": ".*", "read": ".*"}),
            )
            .await;
        assert_eq!(grant.status, StatusCode::CREATED, "{:?}", grant.json);
        let conn = lapin_connect(&url).await.expect("granted");
        let ch = within(conn.create_channel()).await.unwrap();
        within(ch.queue_declare("ulla.q".into(), QueueDeclareOptions::default(), FieldTable::default()))
            .await
            .expect("configure ^ulla\\.");
        let ch = within(conn.create_channel()).await.unwrap();
        let denied = within(ch.queue_declare("other".into(), QueueDeclareOptions::default(), FieldTable::default())).await;
        assert_eq!(denied.err().and_then(|e| reply_code(&e)), Some(403));
        assert_eq!(
            api.get("/api/permissions/tenant/ulla").await.json,
            json!({"user": "ulla", "vhost": "tenant", "configure": "^ulla\\.", "write": ".*", "read": ".*"})
        );
        // She sees her vhost only; the monitoring user sees all.
        let hers: Vec<String> = api
            .as_user("ulla", "s3cret")
            .get("/api/vhosts")
            .await
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(hers, ["tenant"]);
        let all = api.as_user("watcher", "pw").get("/api/vhosts").await.json;
        assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
        assert_eq!(
            api.as_user("ulla", "s3cret").get("/api/queues/%2F").await.status,
            StatusCode::UNAUTHORIZED
        );
        // Deleting the vhost closes her connection and removes it.
        assert_eq!(api.delete("/api/vhosts/tenant").await.status, StatusCode::NO_CONTENT);
        let gone = api.get("/api/vhosts/tenant").await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.json, json!({"error": "Object Not Found", "reason": "Not Found"}));
        assert!(
            bourse_tests::eventually(Duration::from_secs(5), || !conn.status().connected()).await,
            "her connection stayed open"
        );
        assert_eq!(api.delete("/api/users/ulla").await.status, StatusCode::NO_CONTENT);
        assert_eq!(api.get("/api/users/ulla").await.status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn vhost_limits_set_over_http_refuse_amqp_clients() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let put = api
            .put("/api/vhost-limits/%2F/max-queues", json!({"value": 1}))
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json);
        assert_eq!(
            api.get("/api/vhost-limits/%2F").await.json,
            json!([{"vhost": "/", "value": {"max-queues": 1}}])
        );
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = within(conn.create_channel()).await.unwrap();
        within(ch.queue_declare(
            "one".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("first queue");
        let ch = within(conn.create_channel()).await.unwrap();
        let second = within(ch.queue_declare(
            "two".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await;
        assert_eq!(second.err().and_then(|e| reply_code(&e)), Some(406));
        assert_eq!(
            api.delete("/api/vhost-limits/%2F/max-queues").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(api.get("/api/vhost-limits").await.json, json!([]));
        let ch = within(conn.create_channel()).await.unwrap();
        within(ch.queue_declare(
            "two".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("limit lifted");
        let bad = api
            .put("/api/vhost-limits/%2F/max-wishes", json!({"value": 1}))
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json["error"], "bad_request");
    })
    .await;
}

#[tokio::test]
async fn queues_exchanges_and_connections_are_listed_with_their_counts() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = confirm_channel(&conn).await;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(100));
        within(ch.queue_declare(
            "jobs".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        ))
        .await
        .unwrap();
        for _ in 0..3 {
            within(ch.basic_publish(
                "".into(),
                "jobs".into(),
                BasicPublishOptions::default(),
                b"j",
                BasicProperties::default(),
            ))
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let queue = api.get("/api/queues/%2F/jobs").await;
        assert_eq!(queue.status, StatusCode::OK);
        assert_eq!(queue.json["messages_ready"], 3);
        assert_eq!(queue.json["messages"], 3);
        assert_eq!(queue.json["durable"], true);
        assert_eq!(queue.json["arguments"], json!({"x-max-length": 100}));
        assert_eq!(queue.json["vhost"], "/");
        assert_eq!(
            api.get("/api/queues/%2F/nope").await.status,
            StatusCode::NOT_FOUND
        );
        let queues = api.get("/api/queues").await.json;
        assert_eq!(queues.as_array().unwrap().len(), 1);
        let exchanges = api.get("/api/exchanges/%2F").await.json;
        let names: Vec<&str> = exchanges
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"amq.topic") && names.contains(&""),
            "{names:?}"
        );
        let overview = api.get("/api/overview").await.json;
        assert_eq!(overview["queue_totals"]["messages_ready"], 3);
        assert_eq!(overview["object_totals"]["connections"], 1);
        let connections = api.get("/api/connections").await.json;
        let first = &connections[0];
        assert_eq!(first["user"], "guest");
        assert_eq!(first["vhost"], "/");
        assert_eq!(first["state"], "running");
        assert_eq!(first["ssl"], false);
        // A management user sees only its own connections.
        let mine = api
            .as_user("manager", "pw")
            .get("/api/connections")
            .await
            .json;
        assert_eq!(mine, json!([]));
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_rabbitmqs_json_errors() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let bad = api
            .raw(Method::PUT, "/api/users/x", b"{not json".to_vec())
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json["error"], "bad_request");
        let no_password = api.put("/api/users/x", json!({"tags": ""})).await;
        assert_eq!(no_password.status, StatusCode::BAD_REQUEST);
        let bad_regex = api
            .put(
                "/api/permissions/%2F/guest",
                json!({"configure": "(", "write": "", "read": ""}),
            )
            .await;
        assert_eq!(
            bad_regex.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            bad_regex.json
        );
        let unknown_vhost = api
            .put(
                "/api/permissions/nowhere/guest",
                json!({"configure": "", "write": "", "read": ""}),
            )
            .await;
        assert_eq!(unknown_vhost.status, StatusCode::NOT_FOUND);
        let nothing = api.get("/api/no-such-route").await;
        assert_eq!(nothing.status, StatusCode::NOT_FOUND);
        assert_eq!(nothing.json["error"], "Object Not Found");
        // Alarms: fine, then the memory alarm set.
        assert_eq!(
            api.get("/api/health/checks/alarms").await.json,
            json!({"status": "ok"})
        );
        broker.handle().unwrap().set_memory_high_watermark_bytes(1);
        let alarmed = api.get("/api/health/checks/alarms").await;
        assert_eq!(alarmed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(alarmed.json["status"], "failed");
    })
    .await;
}

#[tokio::test]
async fn deleting_a_connection_closes_it_with_320_and_the_reason() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let (mut raw, _) = RawClient::open(broker.addr()).await;
        let listed = api.get("/api/connections").await.json;
        let name = listed[0]["name"].as_str().expect("a connection").to_owned();
        assert_eq!(
            api.get(&format!("/api/connections/{}", segment(&name)))
                .await
                .json["user"],
            "guest"
        );
        // Not someone else's to close.
        let other = api
            .as_user("manager", "pw")
            .delete(&format!("/api/connections/{}", segment(&name)))
            .await;
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        let closed = api
            .raw_with(
                Method::DELETE,
                &format!("/api/connections/{}", segment(&name)),
                Vec::new(),
                &[("x-reason", "maintenance window")],
            )
            .await;
        assert_eq!(closed.status, StatusCode::NO_CONTENT);
        let reason = raw.expect_connection_close_code(320).await;
        assert_eq!(reason.text, "CONNECTION_FORCED - maintenance window");
    })
    .await;
}

#[tokio::test]
async fn tenants_upload_roll_back_and_remove_plugins_over_http() {
    use bourse_tests::wasm::{dedup_as_regex, plugin_bytes, seed_cache_key, test_cache_dir};
    bounded(Duration::from_secs(120), async {
        let broker = TestBroker::start_with(|cfg| {
            cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
            let mut guest = UserSeed::clear("guest", "guest");
            guest.tags = vec!["administrator".into()];
            let mut maker = UserSeed::clear("maker", "pw");
            maker.tags = vec!["policymaker".into()];
            let mut manager = UserSeed::clear("manager", "pw");
            manager.tags = vec!["management".into()];
            cfg.users = vec![guest, maker, manager];
        })
        .await;
        let addr = broker.handle().unwrap().management_addr().unwrap();
        let admin = Api::new(addr, "guest", "guest");
        admin.put("/api/vhosts/t", json!({})).await;
        for user in ["maker", "manager"] {
            admin
                .put(
                    &format!("/api/permissions/t/{user}"),
                    json!({"configure": ".*", "write": ".*", "read": ".*"}),
                )
                .await;
        }
        let maker = admin.as_user("maker", "pw");
        let upload = |api: &Api, bytes: Vec<u8>| {
            let api = api.clone();
            async move { api.raw(Method::POST, "/api/plugins/t", bytes).await }
        };
        let up = upload(&maker, plugin_bytes("x-regex")).await;
        assert_eq!(up.status, StatusCode::OK, "{:?}", up.json);
        assert_eq!(up.json["name"], "x-regex");
        assert_eq!(up.json["scope"], "t");
        let first = up.json["current"]["sha256"].clone();
        // Declarable in t only.
        let url = user_url(broker.url(), "maker", "pw", "t");
        let conn = lapin_connect(&url).await.unwrap();
        let ch = within(conn.create_channel()).await.unwrap();
        within(ch.exchange_declare(
            "r".into(),
            ExchangeKind::Custom("x-regex".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("x-regex in t");
        let root = lapin_connect(broker.url()).await.unwrap();
        let rch = within(root.create_channel()).await.unwrap();
        let elsewhere = within(rch.exchange_declare(
            "r".into(),
            ExchangeKind::Custom("x-regex".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await;
        assert_eq!(elsewhere.err().and_then(|e| reply_code(&e)), Some(406));
        let listed = maker.get("/api/plugins/t").await.json;
        assert_eq!(listed[0]["exchanges"][0]["name"], "r", "{listed}");
        // A new version, then back.
        let second = upload(&maker, dedup_as_regex()).await;
        assert_eq!(second.status, StatusCode::OK, "{:?}", second.json);
        assert_eq!(second.json["previous"]["sha256"], first);
        let back = maker
            .raw(Method::POST, "/api/plugins/t/x-regex/rollback", Vec::new())
            .await;
        assert_eq!(back.status, StatusCode::OK, "{:?}", back.json);
        assert_eq!(back.json["current"]["sha256"], first);
        // Who may not, and what is not a component.
        let denied = upload(&admin.as_user("manager", "pw"), plugin_bytes("x-regex")).await;
        assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{:?}", denied.json);
        let garbage = upload(&maker, b"not wasm".to_vec()).await;
        assert_eq!(
            garbage.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            garbage.json
        );
        assert_eq!(garbage.json["error"], "bad_request");
        // Everything is listed: the vhost's type with its scope.
        let all = admin.get("/api/plugins").await.json;
        assert!(
            all.as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "x-regex" && p["scope"] == "t"),
            "{all}"
        );
        let removed = maker.delete("/api/plugins/t/x-regex").await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT);
        assert_eq!(maker.get("/api/plugins/t").await.json, json!([]));
        assert_eq!(
            maker.delete("/api/plugins/t/x-regex").await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

#[tokio::test]
async fn an_oversized_plugin_upload_gets_413() {
    bounded(LIMIT, async {
        let broker = TestBroker::start_with(|cfg| {
            cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
            cfg.wasm_upload_max_bytes = 1000;
        })
        .await;
        let api = Api::new(
            broker.handle().unwrap().management_addr().unwrap(),
            "guest",
            "guest",
        );
        for size in [1001, 100_000] {
            let reply = api
                .raw(Method::POST, "/api/plugins/%2F", vec![0; size])
                .await;
            assert_eq!(
                reply.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{size}: {:?}",
                reply.json
            );
            assert!(
                reply.json["reason"]
                    .as_str()
                    .unwrap()
                    .contains("wasm_upload_max_bytes"),
                "{:?}",
                reply.json
            );
        }
    })
    .await;
}

#[tokio::test]
async fn exchanges_queues_and_bindings_are_declared_and_deleted_over_http() {
    bounded(LIMIT, async {
        let (broker, api) = start().await;
        let put = api
            .put(
                "/api/exchanges/%2F/orders",
                json!({"type": "direct", "durable": true}),
            )
            .await;
        assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.json);
        let q = api
            .put(
                "/api/queues/%2F/o1",
                json!({"durable": true, "arguments": {"x-max-length": 10}}),
            )
            .await;
        assert_eq!(q.status, StatusCode::CREATED, "{:?}", q.json);
        assert_eq!(
            api.put(
                "/api/queues/%2F/o1",
                json!({"durable": true, "arguments": {"x-max-length": 10}})
            )
            .await
            .status,
            StatusCode::NO_CONTENT
        );
        let different = api
            .put("/api/queues/%2F/o1", json!({"durable": false}))
            .await;
        assert_eq!(
            different.status,
            StatusCode::BAD_REQUEST,
            "inequivalent redeclare"
        );
        let bind = api
            .raw(
                Method::POST,
                "/api/bindings/%2F/e/orders/q/o1",
                json!({"routing_key": "new"}).to_string().into_bytes(),
            )
            .await;
        assert_eq!(bind.status, StatusCode::CREATED, "{:?}", bind.json);
        // An AMQP publisher sees the declared topology.
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = confirm_channel(&conn).await;
        within(ch.basic_publish(
            "orders".into(),
            "new".into(),
            BasicPublishOptions::default(),
            b"o",
            BasicProperties::default(),
        ))
        .await
        .unwrap()
        .await
        .unwrap();
        assert_eq!(
            api.get("/api/queues/%2F/o1").await.json["messages_ready"],
            1
        );
        // Publishing through the API (rabbitmqadmin's `publish`).
        let published = api
            .raw(
                Method::POST,
                "/api/exchanges/%2F/orders/publish",
                json!({"routing_key": "new", "payload": "aGk=", "payload_encoding": "base64",
                       "properties": {"delivery_mode": 2, "headers": {"h": 1}}})
                .to_string()
                .into_bytes(),
            )
            .await;
        assert_eq!(
            published.json,
            json!({"routed": true}),
            "{:?}",
            published.status
        );
        let nowhere = api
            .raw(
                Method::POST,
                "/api/exchanges/%2F/orders/publish",
                json!({"routing_key": "old", "payload": "x"})
                    .to_string()
                    .into_bytes(),
            )
            .await;
        assert_eq!(nowhere.json, json!({"routed": false}));
        assert_eq!(api.get("/api/queues/%2F/o1").await.json["messages"], 2);
        let first = within(ch.basic_get("o1".into(), Default::default()))
            .await
            .unwrap();
        assert_eq!(first.expect("the AMQP message").delivery.data, b"o");
        let second = within(ch.basic_get("o1".into(), Default::default()))
            .await
            .unwrap();
        let second = second.expect("the HTTP message");
        assert_eq!(second.delivery.data, b"hi");
        assert_eq!(second.properties.delivery_mode(), &Some(2));
        assert_eq!(
            api.delete("/api/queues/%2F/o1/contents").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            api.get("/api/queues/%2F/o1").await.json["messages_ready"],
            0
        );
        assert_eq!(
            api.delete("/api/bindings/%2F/e/orders/q/o1/new")
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            api.delete("/api/bindings/%2F/e/orders/q/o1/new")
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        let unknown_type = api
            .put("/api/exchanges/%2F/x", json!({"type": "x-nothing"}))
            .await;
        assert_eq!(unknown_type.status, StatusCode::BAD_REQUEST);
        // The user's AMQP permissions apply: the monitoring user sees vhost t but has no
        // permissions there.
        api.put("/api/vhosts/t", json!({})).await;
        let watcher = api.as_user("watcher", "pw");
        let refused = watcher.put("/api/queues/t/w", json!({})).await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "{:?}",
            refused.json
        );
        assert_eq!(
            api.delete("/api/queues/%2F/o1").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            api.get("/api/queues/%2F/o1").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api.delete("/api/exchanges/%2F/orders").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            api.delete("/api/exchanges/%2F/orders").await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}
