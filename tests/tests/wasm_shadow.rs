//! Shadow reload (`/api/plugins/{vhost}/{name}/shadow`, `bourse-ctl plugin shadow ...`): a
//! candidate version runs beside the active one on live traffic; its decisions are compared
//! and counted, never used, its state writes are not applied; it is then promoted (a hot
//! reload to it, with rollback) or dropped.
//!
//! The active version is `x-regex`; the candidate is `x-dedup` relabelled as `x-regex` (a
//! fanout that drops repeated message ids), so every message routes differently.

use std::time::Duration;

use bourse::config::UserSeed;
use bourse_tests::connection::lapin_connect;
use bourse_tests::ctl::Ctl;
use bourse_tests::http::Api;
use bourse_tests::raw::within;
use bourse_tests::tenancy::vhost_url;
use bourse_tests::wasm::{dedup_as_regex, plugin_bytes, seed_cache_key, test_cache_dir};
use bourse_tests::{TestBroker, bounded, confirm_channel};
use hyper::{Method, StatusCode};
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);

async fn publish(ch: &Channel, key: &str, id: &str) {
    let confirm = within(ch.basic_publish(
        "r".into(),
        key.into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default().with_message_id(id.into()),
    ))
    .await
    .expect("publish");
    assert!(within(confirm).await.expect("confirm").is_ack());
}

async fn depth(api: &Api, queue: &str) -> u64 {
    let reply = api.get(&format!("/api/queues/t/{queue}")).await;
    reply.json["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count for {queue}: {reply:?}"))
}

#[tokio::test]
async fn a_shadow_candidate_is_compared_on_live_traffic_then_promoted_or_dropped() {
    bounded(LIMIT, async {
        let broker = TestBroker::start_with(|cfg| {
            cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
            let mut guest = UserSeed::clear("guest", "guest");
            guest.tags = vec!["administrator".into()];
            cfg.users = vec![guest];
        })
        .await;
        let addr = broker.handle().unwrap().management_addr().unwrap();
        let api = Api::new(addr, "guest", "guest");
        let ctl = Ctl::new(addr);
        api.put("/api/vhosts/t", json!({})).await;
        api.put(
            "/api/permissions/t/guest",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
        let up = api
            .raw(Method::POST, "/api/plugins/t", plugin_bytes("x-regex"))
            .await;
        assert_eq!(up.status, StatusCode::OK, "{:?}", up.json);
        let active_sha = up.json["current"]["sha256"].clone();

        let conn = lapin_connect(&vhost_url(broker.url(), "t")).await.unwrap();
        let ch = confirm_channel(&conn).await;
        within(ch.exchange_declare(
            "r".into(),
            ExchangeKind::Custom("x-regex".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("x-regex exchange");
        for (queue, pattern) in [("qa", "a.*"), ("qb", "b.*")] {
            within(ch.queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("queue");
            within(ch.queue_bind(
                queue.into(),
                "r".into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("bind");
        }

        // A candidate that describes another type, or for a type the vhost lacks: refused.
        let wrong = api
            .raw(
                Method::PUT,
                "/api/plugins/t/x-regex/shadow",
                plugin_bytes("x-dedup"),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{:?}", wrong.json);
        let unknown = api
            .raw(
                Method::PUT,
                "/api/plugins/t/x-nope/shadow",
                dedup_as_regex(),
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{:?}", unknown.json);
        assert_eq!(
            api.get("/api/plugins/t/x-regex/shadow").await.status,
            StatusCode::NOT_FOUND
        );

        // The trial: every message compared, the active version's decision used.
        let started = api
            .raw(
                Method::PUT,
                "/api/plugins/t/x-regex/shadow",
                dedup_as_regex(),
            )
            .await;
        assert_eq!(started.status, StatusCode::OK, "{:?}", started.json);
        assert_eq!(started.json["active"]["sha256"], active_sha);
        assert_ne!(started.json["candidate"]["sha256"], active_sha);
        for i in 0..20 {
            publish(&ch, &format!("a{i}"), &format!("m{i}")).await;
        }
        let trial = api.get("/api/plugins/t/x-regex/shadow").await.json;
        assert_eq!(trial["compared"], 20, "{trial}");
        assert_eq!(trial["mismatches"], 20, "{trial}");
        assert_eq!(trial["candidate_failures"], 0, "{trial}");
        let example = &trial["examples"][0];
        assert_eq!(example["exchange"], "r", "{trial}");
        assert_eq!(
            example["active"]["destinations"],
            json!(["queue qa"]),
            "{trial}"
        );
        assert_eq!(
            example["candidate"]["destinations"],
            json!(["queue qa", "queue qb"]),
            "{trial}"
        );
        assert_eq!(depth(&api, "qa").await, 20);
        assert_eq!(
            depth(&api, "qb").await,
            0,
            "the candidate's decision was used"
        );
        let shown = ctl
            .ok(&["plugin", "shadow-status", "x-regex", "--vhost", "t"])
            .await;
        assert!(
            shown.stdout.contains("20 compared, 20 mismatches"),
            "{shown:?}"
        );

        // Promoted: the candidate routes from now on, with the old version kept for rollback.
        let promoted = api
            .raw(
                Method::POST,
                "/api/plugins/t/x-regex/shadow/promote",
                Vec::new(),
            )
            .await;
        assert_eq!(promoted.status, StatusCode::OK, "{:?}", promoted.json);
        assert_eq!(
            promoted.json["current"]["sha256"],
            started.json["candidate"]["sha256"]
        );
        assert_eq!(promoted.json["previous"]["sha256"], active_sha);
        assert_eq!(
            api.get("/api/plugins/t/x-regex/shadow").await.status,
            StatusCode::NOT_FOUND
        );
        // As a trial, the candidate remembered none of the ids it saw: m3 is new to it.
        publish(&ch, "a3", "m3").await;
        assert_eq!(depth(&api, "qa").await, 21);
        assert_eq!(
            depth(&api, "qb").await,
            1,
            "the trial's state writes were applied"
        );

        // A second trial, dropped: nothing changes.
        let run = ctl
            .ok(&[
                "plugin",
                "shadow",
                "x-regex",
                &plugins_file("x-regex"),
                "--vhost",
                "t",
            ])
            .await;
        assert!(run.stdout.contains("shadow trial of 'x-regex'"), "{run:?}");
        publish(&ch, "b1", "n1").await;
        let trial = api.get("/api/plugins/t/x-regex/shadow").await.json;
        assert_eq!(trial["compared"], 1, "{trial}");
        let dropped = api.delete("/api/plugins/t/x-regex/shadow").await;
        assert_eq!(dropped.status, StatusCode::NO_CONTENT, "{dropped:?}");
        let now: Value = api.get("/api/plugins/t").await.json;
        assert_eq!(
            now[0]["current"]["sha256"], started.json["candidate"]["sha256"],
            "{now}"
        );
        assert_eq!(
            api.delete("/api/plugins/t/x-regex/shadow").await.status,
            StatusCode::NOT_FOUND
        );
    })
    .await;
}

/// The path of a built plugin, for the CLI.
fn plugins_file(name: &str) -> String {
    bourse_tests::wasm::dist_dir()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}
