//! Plugins per vhost (issue 11): a component uploaded into one vhost serves declares there and
//! nowhere else; it can be replaced, rolled back and removed there without touching another
//! vhost; bad uploads and users without the right are refused with nothing stored; and the
//! vhost's plugins with their durable exchanges come back after a restart and a SIGKILL.
//!
//! Two versions of type `x-regex` tell which one routed (as in `wasm_reload.rs`): the regex
//! plugin matches nothing for key `b`, so a message goes to the alternate exchange's queue;
//! `x-dedup` relabelled `x-regex` is a fanout and puts it in the bound queue.

use std::time::Duration;

use amq_protocol::types::FieldTable;
use bourse::BrokerHandle;
use bourse::exchange::wasm::tenant::VhostPluginError;
use bourse_tests::connection::lapin_connect;
use bourse_tests::process::BrokerProcess;
use bourse_tests::raw::within;
use bourse_tests::tenancy::{grant, put_user, put_vhost, vhost_url};
use bourse_tests::wasm::{
    assert_error, bodies, dedup_as_regex, plugin_bytes, publish_acked, seed_cache_key, table,
    test_cache_dir, text, try_bind, try_declare,
};
use bourse_tests::{TestBroker, bounded};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};

/// A broker without a plugin directory (so every WASM type is a vhost's own), sharing the
/// tests' compile cache, with vhosts `a` and `b` where guest may do everything.
async fn tenant_broker() -> TestBroker {
    let broker = TestBroker::start_with(|cfg| {
        cfg.wasm_cache_dir = Some(test_cache_dir());
        seed_cache_key(&cfg.data_dir);
    })
    .await;
    let handle = broker.handle().expect("in-process broker");
    setup_vhosts(handle).await;
    broker
}

async fn setup_vhosts(handle: &BrokerHandle) {
    for command in [
        put_vhost("a"),
        put_vhost("b"),
        grant("guest", "a", ".*"),
        grant("guest", "b", ".*"),
    ] {
        handle.execute(command).await.expect("meta command");
    }
}

async fn channel(base: &str, vhost: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin_connect(&vhost_url(base, vhost))
        .await
        .unwrap_or_else(|e| panic!("connect to vhost {vhost}: {e}"));
    let ch = within(conn.create_channel()).await.expect("channel");
    within(ch.confirm_select(Default::default()))
        .await
        .expect("confirm.select");
    (conn, ch)
}

/// A durable queue bound to `exchange` by `key`.
async fn durable_queue_on(ch: &lapin::Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declare queue {queue}: {e}"));
    try_bind(ch, queue, exchange, key, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
}

/// Exchange `e` of type x-regex (alternate exchange `ae` -> `q-ae`), queue `q1` bound by
/// `a`, all durable.
async fn topology(ch: &lapin::Channel) {
    within(ch.exchange_declare(
        "ae".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("declare ae");
    durable_queue_on(ch, "q-ae", "ae", "").await;
    within(ch.exchange_declare(
        "e".into(),
        lapin::ExchangeKind::Custom("x-regex".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("alternate-exchange", text("ae"))]),
    ))
    .await
    .expect("declare e of the vhost's x-regex");
    durable_queue_on(ch, "q1", "e", "a").await;
}

/// Which version routed a message published now to `e` with key `b`: "regex" or "fanout".
async fn version_routing(ch: &lapin::Channel, body: &str) -> &'static str {
    publish_acked(ch, "e", "b", body).await;
    let (bound, alternate) = (bodies(ch, "q1").await, bodies(ch, "q-ae").await);
    match (bound.as_slice(), alternate.as_slice()) {
        ([b], []) if b == body => "fanout",
        ([], [b]) if b == body => "regex",
        other => panic!("message {body:?} went to {other:?}"),
    }
}

fn assert_unknown_type(result: Result<(), lapin::Error>) {
    assert_error(result, 406, "unknown exchange type 'x-regex'");
}

#[tokio::test]
async fn a_vhost_plugin_serves_only_its_vhost() {
    bounded(Duration::from_secs(90), async {
        let broker = tenant_broker().await;
        let handle = broker.handle().expect("in-process broker");
        let status = handle
            .put_vhost_plugin("a", plugin_bytes("x-regex"), None)
            .await
            .expect("upload x-regex into a");
        assert_eq!(status.name, "x-regex");
        assert!(status.registered);
        assert_eq!(
            handle
                .vhost_plugins("a")
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["x-regex"]
        );
        assert!(handle.vhost_plugins("b").is_empty());

        let (_ca, a) = channel(broker.url(), "a").await;
        topology(&a).await;
        assert_eq!(version_routing(&a, "a-1").await, "regex");

        for vhost in ["b", "%2f"] {
            let (_c, ch) = channel(broker.url(), vhost).await;
            assert_unknown_type(try_declare(&ch, "e", "x-regex", FieldTable::default()).await);
        }

        // b gets its own x-regex (here: the fanout version); a's stays the regex one.
        handle
            .put_vhost_plugin("b", dedup_as_regex(), None)
            .await
            .expect("upload another x-regex into b");
        let (_cb, b) = channel(broker.url(), "b").await;
        topology(&b).await;
        assert_eq!(version_routing(&b, "b-1").await, "fanout");
        assert_eq!(version_routing(&a, "a-2").await, "regex");
    })
    .await;
}

#[tokio::test]
async fn replace_rollback_and_remove_change_one_vhost_only() {
    bounded(Duration::from_secs(90), async {
        let broker = tenant_broker().await;
        let handle = broker.handle().expect("in-process broker");
        for vhost in ["a", "b"] {
            handle
                .put_vhost_plugin(vhost, plugin_bytes("x-regex"), None)
                .await
                .expect("upload");
        }
        let (_ca, a) = channel(broker.url(), "a").await;
        let (_cb, b) = channel(broker.url(), "b").await;
        topology(&a).await;
        topology(&b).await;

        // Nothing to roll back to yet.
        let err = handle
            .rollback_vhost_plugin("a", "x-regex", None)
            .await
            .expect_err("no previous version");
        assert!(err.to_string().contains("x-regex"), "{err}");

        // Replace in a: a's existing exchange moves to the new version, b's does not.
        let status = handle
            .put_vhost_plugin("a", dedup_as_regex(), None)
            .await
            .expect("replace in a");
        assert!(status.previous.is_some(), "{status:?}");
        assert_eq!(version_routing(&a, "a-1").await, "fanout");
        assert_eq!(version_routing(&b, "b-1").await, "regex");

        handle
            .rollback_vhost_plugin("a", "x-regex", None)
            .await
            .expect("rollback in a");
        assert_eq!(version_routing(&a, "a-2").await, "regex");

        // Remove from a: new declares there are refused, the existing exchange keeps routing,
        // and b still has its type.
        handle
            .delete_vhost_plugin("a", "x-regex", None)
            .await
            .expect("remove from a");
        assert!(handle.vhost_plugins("a").is_empty());
        assert_unknown_type(try_declare(&a, "e2", "x-regex", FieldTable::default()).await);
        let (_ca2, a2) = channel(broker.url(), "a").await;
        assert_eq!(version_routing(&a2, "a-3").await, "regex");
        try_declare(&b, "e2", "x-regex", FieldTable::default())
            .await
            .expect("b still declares its x-regex");
        let err = handle
            .delete_vhost_plugin("a", "x-regex", None)
            .await
            .expect_err("already removed");
        assert!(
            matches!(err, VhostPluginError::UnknownPlugin { .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_uploads_and_users_without_the_right_are_refused_with_nothing_stored() {
    bounded(Duration::from_secs(90), async {
        let broker = TestBroker::start_with(|cfg| {
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
            cfg.wasm_upload_max_bytes = 4 * 1024 * 1024;
        })
        .await;
        let handle = broker.handle().expect("in-process broker");
        setup_vhosts(handle).await;
        for command in [
            put_user("plain", "pw", &[]),
            grant("plain", "a", ".*"),
            put_user("narrow", "pw", &["policymaker"]),
            grant("narrow", "a", "^x-acme-"),
            put_user("maker", "pw", &["policymaker"]),
            grant("maker", "a", ".*"),
            put_user("admin", "pw", &["administrator"]),
        ] {
            handle.execute(command).await.expect("meta command");
        }

        for file in ["not-a-component", "random-bytes", "x-wrong-major"] {
            let err = handle
                .put_vhost_plugin("a", plugin_bytes(file), None)
                .await
                .expect_err(file);
            assert!(matches!(err, VhostPluginError::Wasm(_)), "{file}: {err:?}");
        }
        let huge = vec![0u8; 4 * 1024 * 1024 + 1];
        let err = handle
            .put_vhost_plugin("a", huge, None)
            .await
            .expect_err("too large");
        assert!(matches!(err, VhostPluginError::TooLarge { .. }), "{err:?}");
        let err = handle
            .put_vhost_plugin("nowhere", plugin_bytes("x-regex"), None)
            .await
            .expect_err("unknown vhost");
        assert!(matches!(err, VhostPluginError::NoVhost(_)), "{err:?}");

        for user in ["plain", "narrow"] {
            let err = handle
                .put_vhost_plugin("a", plugin_bytes("x-regex"), Some(user))
                .await
                .expect_err(user);
            assert!(
                matches!(err, VhostPluginError::Denied(_)),
                "{user}: {err:?}"
            );
        }
        // A policymaker with permissions in a, but none in b.
        let err = handle
            .put_vhost_plugin("b", plugin_bytes("x-regex"), Some("maker"))
            .await
            .expect_err("maker in b");
        assert!(matches!(err, VhostPluginError::Denied(_)), "{err:?}");

        // Nothing was stored or registered by any of those.
        assert!(handle.vhost_plugins("a").is_empty());
        let (_c, ch) = channel(broker.url(), "a").await;
        assert_unknown_type(try_declare(&ch, "e", "x-regex", FieldTable::default()).await);

        handle
            .put_vhost_plugin("a", plugin_bytes("x-regex"), Some("maker"))
            .await
            .expect("a policymaker with configure .* in a");
        handle
            .put_vhost_plugin("b", plugin_bytes("x-regex"), Some("admin"))
            .await
            .expect("an administrator anywhere");
        let err = handle
            .delete_vhost_plugin("a", "x-regex", Some("plain"))
            .await
            .expect_err("plain may not remove");
        assert!(matches!(err, VhostPluginError::Denied(_)), "{err:?}");
        assert_eq!(handle.vhost_plugins("a").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_broker_wide_type_name_cannot_be_taken_by_a_vhost() {
    bounded(Duration::from_secs(90), async {
        let broker = bourse_tests::wasm::PluginBroker::start(&["x-regex"]).await;
        let handle = broker.broker.handle().expect("in-process broker");
        setup_vhosts(handle).await;
        let err = handle
            .put_vhost_plugin("a", dedup_as_regex(), None)
            .await
            .expect_err("x-regex is broker-wide");
        assert!(matches!(err, VhostPluginError::NameTaken { .. }), "{err:?}");
        // The broker-wide type is still the one a declares with.
        let (_c, a) = channel(broker.broker.url(), "a").await;
        topology(&a).await;
        assert_eq!(version_routing(&a, "a-1").await, "regex");
    })
    .await;
}

#[tokio::test]
async fn vhost_plugins_survive_a_restart_with_their_durable_exchanges() {
    bounded(Duration::from_secs(90), async {
        let mut broker = tenant_broker().await;
        {
            let handle = broker.handle().expect("in-process broker");
            handle
                .put_vhost_plugin("a", plugin_bytes("x-regex"), None)
                .await
                .expect("upload");
            handle
                .put_vhost_plugin("a", dedup_as_regex(), None)
                .await
                .expect("replace");
            let (conn, a) = channel(broker.url(), "a").await;
            topology(&a).await;
            assert_eq!(version_routing(&a, "before").await, "fanout");
            within(conn.close(200, "bye".into())).await.expect("close");
        }
        broker.restart().await;
        let handle = broker.handle().expect("in-process broker");
        let (_c, a) = channel(broker.url(), "a").await;
        assert_eq!(version_routing(&a, "after-restart").await, "fanout");
        // The previous version came back too: a rollback goes where it went before.
        handle
            .rollback_vhost_plugin("a", "x-regex", None)
            .await
            .expect("rollback after restart");
        assert_eq!(version_routing(&a, "rolled-back").await, "regex");
        let (_cb, b) = channel(broker.url(), "b").await;
        assert_unknown_type(try_declare(&b, "e", "x-regex", FieldTable::default()).await);
    })
    .await;
}

#[tokio::test]
async fn vhost_plugins_survive_a_sigkill_of_the_broker_process() {
    bounded(Duration::from_secs(120), async {
        // The binary has no upload door yet (the management API comes next), so an in-process
        // broker writes the tenant's plugin and exchange into the process's data directory.
        let mut process = BrokerProcess::start().await;
        process.kill();
        {
            let data_dir = process.data_dir().to_owned();
            let broker = TestBroker::start_with(|cfg| {
                cfg.data_dir = data_dir;
                cfg.wasm_cache_dir = Some(test_cache_dir());
            })
            .await;
            let handle = broker.handle().expect("in-process broker");
            setup_vhosts(handle).await;
            handle
                .put_vhost_plugin("a", plugin_bytes("x-regex"), None)
                .await
                .expect("upload");
            let (conn, a) = channel(broker.url(), "a").await;
            topology(&a).await;
            within(conn.close(200, "bye".into())).await.expect("close");
            let mut broker = broker;
            broker.shutdown().await;
        }
        for round in ["restart", "after-sigkill"] {
            process.restart().await;
            let (_c, a) = channel(&process.url(), "a").await;
            assert_eq!(
                version_routing(&a, round).await,
                "regex",
                "{}",
                process.log_tail()
            );
            let (_cb, b) = channel(&process.url(), "b").await;
            assert_unknown_type(try_declare(&b, "e", "x-regex", FieldTable::default()).await);
        }
    })
    .await;
}
