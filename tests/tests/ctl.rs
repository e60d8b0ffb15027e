//! The command-line tool, `bourse-ctl`, run as a real process against an in-process broker's
//! management API: what it declares is seen by the API and by AMQP clients, its JSON output
//! parses and carries the broker's counts, errors exit 1 with the API's reason, export then
//! import carries a broker's definitions into a fresh one, and a plugin deployed with it
//! shows in `plugin status`. Each run of the tool is bounded (`bourse_tests::ctl::RUN_TIMEOUT`).

use std::time::Duration;

use bourse_tests::connection::lapin_connect;
use bourse_tests::ctl::Ctl;
use bourse_tests::http::Api;
use bourse_tests::raw::within;
use bourse_tests::tenancy::vhost_url;
use bourse_tests::wasm::{dedup_as_regex, plugin_bytes, seed_cache_key, test_cache_dir};
use bourse_tests::{TempDir, TestBroker, bounded, confirm_channel, eventually};
use hyper::StatusCode;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(120);

/// A broker with its management API on an ephemeral port (guest is its administrator), the
/// tool and the test's own API client pointed at it.
async fn start() -> (TestBroker, Ctl, Api) {
    start_with(|_| {}).await
}

async fn start_with(adjust: impl FnOnce(&mut bourse::Config)) -> (TestBroker, Ctl, Api) {
    let broker = TestBroker::start_with(|cfg| {
        cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
        adjust(cfg);
    })
    .await;
    let addr = broker
        .handle()
        .expect("in-process broker")
        .management_addr()
        .expect("a management listener");
    (broker, Ctl::new(addr), Api::new(addr, "guest", "guest"))
}

/// The object of `list` whose `name` is `name`.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[tokio::test]
async fn declared_topology_is_seen_by_the_api_and_routes_amqp_messages() {
    bounded(LIMIT, async {
        let (broker, ctl, api) = start().await;
        let created = ctl
            .ok(&["declare", "vhost", "t", "--description", "a tenant"])
            .await;
        assert!(created.stdout.contains("created"), "{created:?}");
        ctl.ok(&["declare", "permission", "--vhost", "t", "--user", "guest"])
            .await;
        ctl.ok(&[
            "declare",
            "exchange",
            "orders",
            "--type",
            "direct",
            "--durable",
            "--vhost",
            "t",
        ])
        .await;
        ctl.ok(&["declare", "queue", "q", "--durable", "--vhost", "t"])
            .await;
        ctl.ok(&[
            "declare",
            "binding",
            "--source",
            "orders",
            "--destination",
            "q",
            "--routing-key",
            "k",
            "--vhost",
            "t",
        ])
        .await;
        assert_eq!(
            api.get("/api/vhosts/t").await.json["description"],
            "a tenant"
        );
        assert_eq!(api.get("/api/queues/t/q").await.json["durable"], true);
        assert_eq!(
            api.get("/api/exchanges/t/orders").await.status,
            StatusCode::OK
        );

        // Two messages through AMQP, one through the tool's publish.
        let conn = lapin_connect(&vhost_url(broker.url(), "t"))
            .await
            .expect("connect to t");
        let ch = confirm_channel(&conn).await;
        for body in [b"one".as_slice(), b"two"] {
            let confirm = within(ch.basic_publish(
                "orders".into(),
                "k".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            ))
            .await
            .expect("publish");
            within(confirm).await.expect("confirmed");
        }
        let published = ctl
            .json(&[
                "publish",
                "--exchange",
                "orders",
                "--routing-key",
                "k",
                "--payload",
                "three",
                "--vhost",
                "t",
            ])
            .await;
        assert_eq!(published["routed"], true, "{published}");
        let queues = ctl.json(&["list", "queues", "--vhost", "t"]).await;
        let q = named(&queues, "q");
        assert_eq!(q["messages_ready"], 3, "{q}");
        assert_eq!(q["vhost"], "t");
        let table = ctl.ok(&["list", "queues", "--vhost", "t"]).await.stdout;
        assert!(
            table.contains("messages_ready") && table.contains(" q "),
            "{table}"
        );
        // Every vhost's without --vhost.
        let all = ctl.json(&["list", "queues"]).await;
        assert_eq!(named(&all, "q")["vhost"], "t");

        let bindings = ctl.json(&["list", "bindings", "--vhost", "t"]).await;
        assert!(
            bindings
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["source"] == "orders"
                    && b["destination"] == "q"
                    && b["routing_key"] == "k"),
            "{bindings}"
        );
        ctl.ok(&[
            "delete",
            "binding",
            "--source",
            "orders",
            "--destination",
            "q",
            "--routing-key",
            "k",
            "--vhost",
            "t",
        ])
        .await;
        let left = api.get("/api/bindings/t").await.json;
        assert!(
            !left
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["source"] == "orders"),
            "{left}"
        );

        ctl.ok(&["purge", "queue", "q", "--vhost", "t"]).await;
        assert_eq!(api.get("/api/queues/t/q").await.json["messages_ready"], 0);
        let _ = conn.close(200, "done".into()).await;
        ctl.ok(&["delete", "queue", "q", "--vhost", "t"]).await;
        ctl.ok(&["delete", "exchange", "orders", "--vhost", "t"])
            .await;
        assert_eq!(
            api.get("/api/queues/t/q").await.status,
            StatusCode::NOT_FOUND
        );
        ctl.ok(&["delete", "vhost", "t"]).await;
        assert_eq!(api.get("/api/vhosts/t").await.status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn get_reads_messages_and_requeues_them_or_not() {
    bounded(LIMIT, async {
        let (_broker, ctl, api) = start().await;
        ctl.ok(&["declare", "queue", "g"]).await;
        for payload in ["a", "b"] {
            ctl.ok(&["publish", "--routing-key", "g", "--payload", payload])
                .await;
        }
        let peek = ctl.json(&["get", "queue", "g", "--count", "2"]).await;
        assert_eq!(peek.as_array().map(Vec::len), Some(2), "{peek}");
        assert_eq!(peek[0]["payload"], "a");
        assert_eq!(api.get("/api/queues/%2F/g").await.json["messages_ready"], 2);
        let taken = ctl.json(&["get", "queue", "g", "--requeue", "false"]).await;
        assert_eq!(taken[0]["payload"], "a", "{taken}");
        assert_eq!(api.get("/api/queues/%2F/g").await.json["messages_ready"], 1);
        let table = ctl.ok(&["get", "queue", "g"]).await.stdout;
        assert!(
            table.contains("payload") && table.contains(" b "),
            "{table}"
        );
    })
    .await;
}

#[tokio::test]
async fn errors_exit_1_with_the_apis_reason_and_usage_errors_exit_2() {
    bounded(LIMIT, async {
        let (_broker, ctl, _api) = start().await;
        let wrong = ctl.as_user("guest", "nope").run(&["whoami"]).await;
        assert_eq!(wrong.code, Some(1), "{wrong:?}");
        assert!(wrong.stderr.contains("Login failed"), "{wrong:?}");
        assert!(wrong.stderr.contains("401"), "{wrong:?}");
        let missing = ctl.run(&["delete", "queue", "no-such-queue"]).await;
        assert_eq!(missing.code, Some(1), "{missing:?}");
        assert!(missing.stderr.contains("404"), "{missing:?}");
        let bad_args = ctl
            .run(&["declare", "queue", "x", "--arguments", "[1]"])
            .await;
        assert_eq!(bad_args.code, Some(2), "{bad_args:?}");
        let usage = ctl.run(&["declare", "queue"]).await;
        assert_eq!(usage.code, Some(2), "{usage:?}");
        // Nothing listens on port 1.
        let nowhere = Ctl::with_url("http://127.0.0.1:1").run(&["overview"]).await;
        assert_eq!(nowhere.code, Some(1), "{nowhere:?}");
        assert!(
            nowhere.stderr.contains("http://127.0.0.1:1/api/overview"),
            "{nowhere:?}"
        );
        let me = ctl.json(&["whoami"]).await;
        assert_eq!(me["name"], "guest");
        assert!(
            ctl.ok(&["overview"])
                .await
                .stdout
                .contains("object_totals.queues")
        );
    })
    .await;
}

/// The sections of a definitions document that must survive a round trip, each sorted.
fn sections(doc: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in [
        "users",
        "vhosts",
        "permissions",
        "queues",
        "exchanges",
        "bindings",
    ] {
        let mut items: Vec<Value> = doc[key].as_array().cloned().unwrap_or_default();
        items.sort_by_key(|v| v.to_string());
        out.insert(key.into(), Value::Array(items));
    }
    Value::Object(out)
}

#[tokio::test]
async fn export_then_import_into_a_fresh_broker_round_trips() {
    bounded(LIMIT, async {
        let (_a, from, api_a) = start().await;
        from.ok(&["declare", "vhost", "shop"]).await;
        from.ok(&[
            "declare",
            "user",
            "ann",
            "--password",
            "pw",
            "--tags",
            "management",
        ])
        .await;
        from.ok(&[
            "declare",
            "permission",
            "--vhost",
            "shop",
            "--user",
            "ann",
            "--configure",
            "^ann",
        ])
        .await;
        from.ok(&[
            "declare",
            "permission",
            "--vhost",
            "shop",
            "--user",
            "guest",
        ])
        .await;
        from.ok(&[
            "declare",
            "exchange",
            "x",
            "--type",
            "topic",
            "--durable",
            "--vhost",
            "shop",
        ])
        .await;
        from.ok(&[
            "declare",
            "queue",
            "dq",
            "--durable",
            "--arguments",
            r#"{"x-max-length": 5}"#,
            "--vhost",
            "shop",
        ])
        .await;
        from.ok(&[
            "declare",
            "binding",
            "--source",
            "x",
            "--destination",
            "dq",
            "--routing-key",
            "a.#",
            "--vhost",
            "shop",
        ])
        .await;
        let dir = TempDir::new();
        let path = dir.path.join("defs.json");
        let file = path.to_str().expect("a UTF-8 path");
        from.ok(&["export", file]).await;
        let exported: Value =
            serde_json::from_slice(&std::fs::read(file).expect("export written")).expect("JSON");
        assert_eq!(
            sections(&exported),
            sections(&api_a.get("/api/definitions").await.json)
        );
        assert!(
            exported["bindings"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["routing_key"] == "a.#")),
            "{exported}"
        );
        let to_stdout = from.ok(&["export", "-"]).await.stdout;
        let parsed: Value = serde_json::from_str(&to_stdout).expect("export - is JSON");
        assert_eq!(sections(&parsed), sections(&exported));

        let (b, to, api_b) = start().await;
        let imported = to.ok(&["import", file]).await;
        // stderr is not a terminal: no progress bar drawn.
        assert!(!imported.stderr.contains("importing"), "{imported:?}");
        assert_eq!(
            sections(&api_b.get("/api/definitions").await.json),
            sections(&exported)
        );
        let queues = to.json(&["list", "queues", "--vhost", "shop"]).await;
        assert_eq!(
            named(&queues, "dq")["arguments"],
            json!({"x-max-length": 5})
        );
        let addr = b.handle().unwrap().management_addr().unwrap();
        let ann = Api::new(addr, "ann", "pw");
        assert_eq!(ann.get("/api/whoami").await.json["name"], "ann");
    })
    .await;
}

#[tokio::test]
async fn close_connection_closes_it_with_the_reason() {
    bounded(LIMIT, async {
        let (broker, ctl, _api) = start().await;
        let conn = lapin_connect(broker.url()).await.expect("connect");
        let mut listed = Value::Null;
        for _ in 0..100 {
            listed = ctl.json(&["list", "connections"]).await;
            if listed.as_array().is_some_and(|l| !l.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let name = listed[0]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no connection listed: {listed}"))
            .to_owned();
        ctl.ok(&["close", "connection", &name, "--reason", "bye from ctl"])
            .await;
        assert!(
            eventually(Duration::from_secs(5), || !conn.status().connected()).await,
            "the connection is still open"
        );
        let mut left = Value::Null;
        for _ in 0..100 {
            left = ctl.json(&["list", "connections"]).await;
            if left == json!([]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left, json!([]));
        let missing = ctl.run(&["close", "connection", &name]).await;
        assert_eq!(missing.code, Some(1), "{missing:?}");
        assert!(missing.stderr.contains("404"), "{missing:?}");
    })
    .await;
}

#[tokio::test]
async fn a_deployed_plugin_shows_in_plugin_status_and_can_be_replaced_and_rolled_back() {
    bounded(Duration::from_secs(180), async {
        let (_broker, ctl, _api) = start_with(|cfg| {
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
        })
        .await;
        let dir = TempDir::new();
        let first_file = dir.path.join("x-regex.wasm");
        std::fs::write(&first_file, plugin_bytes("x-regex")).expect("write the component");
        let second_file = dir.path.join("x-regex-v2.wasm");
        std::fs::write(&second_file, dedup_as_regex()).expect("write the component");
        let (first_file, second_file) =
            (first_file.to_str().unwrap(), second_file.to_str().unwrap());
        ctl.ok(&["declare", "vhost", "p"]).await;
        ctl.ok(&["declare", "permission", "--vhost", "p", "--user", "guest"])
            .await;

        let deployed = ctl
            .json(&["plugin", "deploy", first_file, "--vhost", "p"])
            .await;
        assert_eq!(deployed["name"], "x-regex", "{deployed}");
        let first = deployed["current"]["sha256"]
            .as_str()
            .expect("a sha256")
            .to_owned();
        ctl.ok(&[
            "declare", "exchange", "r", "--type", "x-regex", "--vhost", "p",
        ])
        .await;

        let status = ctl
            .json(&["plugin", "status", "x-regex", "--vhost", "p"])
            .await;
        assert_eq!(status[0]["scope"], "p", "{status}");
        assert_eq!(status[0]["current"]["sha256"], first.as_str());
        assert_eq!(status[0]["exchanges"][0]["name"], "r", "{status}");
        let table = ctl.ok(&["plugin", "status", "x-regex"]).await.stdout;
        assert!(
            table.contains(&first) && table.contains("routed"),
            "{table}"
        );
        let listed = ctl.ok(&["list", "plugins"]).await.stdout;
        assert!(
            listed.contains("x-regex") && listed.contains(&first[..12]),
            "{listed}"
        );
        // An exchange of the vhost's own type is reset on a fresh instance.
        let reset = ctl.json(&["plugin", "reset", "r", "--vhost", "p"]).await;
        assert_eq!(reset["name"], "r", "{reset}");
        assert_eq!(reset["failed"], Value::Null, "{reset}");
        let missing = ctl.run(&["plugin", "reset", "nope", "--vhost", "p"]).await;
        assert_eq!(missing.code, Some(1), "{missing:?}");
        assert!(missing.stderr.contains("404"), "{missing:?}");

        let replaced = ctl
            .ok(&["plugin", "deploy", second_file, "--vhost", "p"])
            .await;
        assert!(replaced.stdout.contains("replacing"), "{replaced:?}");
        let status = ctl
            .json(&["plugin", "status", "x-regex", "--vhost", "p"])
            .await;
        assert_eq!(status[0]["previous"]["sha256"], first.as_str(), "{status}");
        ctl.ok(&["plugin", "rollback", "x-regex", "--vhost", "p"])
            .await;
        let status = ctl
            .json(&["plugin", "status", "x-regex", "--vhost", "p"])
            .await;
        assert_eq!(status[0]["current"]["sha256"], first.as_str(), "{status}");

        ctl.ok(&["plugin", "remove", "x-regex", "--vhost", "p"])
            .await;
        let gone = ctl
            .run(&["plugin", "status", "x-regex", "--vhost", "p"])
            .await;
        assert_eq!(gone.code, Some(1), "{gone:?}");
        assert!(gone.stderr.contains("no plugin type 'x-regex'"), "{gone:?}");
    })
    .await;
}
