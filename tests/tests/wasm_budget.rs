//! Each vhost's WASM budget and exchange-type allow list (issue 11), changed at runtime with
//! `SetVhostLimits` / `SetVhostExchangeTypes`: instances and total memory refuse declares in
//! one vhost only, a new deadline applies to the next call, a spent CPU budget puts the
//! vhost's connections in `flow`, bad values are refused, and everything survives a restart.

use std::time::Duration;

use amq_protocol::types::FieldTable;
use bourse::meta::{MetaCommand, MetaError};
use bourse_tests::connection::lapin_connect;
use bourse_tests::raw::within;
use bourse_tests::tenancy::{grant_all, put_vhost, vhost_limits, vhost_url};
use bourse_tests::wasm::{PluginBroker, assert_error, publish, try_declare};
use bourse_tests::{bounded, eventually};
use lapin::options::ExchangeDeclareOptions;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

const LIMIT: Duration = Duration::from_secs(60);

async fn broker_with_vhosts(plugins: &[&str], vhosts: &[&str]) -> PluginBroker {
    broker_with(plugins, vhosts, |_| {}).await
}

async fn broker_with(
    plugins: &[&str],
    vhosts: &[&str],
    adjust: impl FnOnce(&mut bourse::Config),
) -> PluginBroker {
    let broker = PluginBroker::start_with(plugins, adjust).await;
    let handle = broker.broker.handle().expect("in-process broker");
    for vhost in vhosts {
        for command in [put_vhost(vhost), grant_all("guest", vhost)] {
            handle.execute(command).await.expect("meta command");
        }
    }
    broker
}

async fn channel_in(broker: &PluginBroker, vhost: &str) -> (Connection, Channel) {
    let conn = lapin_connect(&vhost_url(broker.broker.url(), vhost))
        .await
        .unwrap_or_else(|e| panic!("connect to {vhost}: {e}"));
    let ch = within(conn.create_channel()).await.expect("channel");
    (conn, ch)
}

/// Declares durable exchange `name` of `kind` on a fresh channel (a refusal closes the
/// channel).
async fn declare_in(conn: &Connection, name: &str, kind: &str) -> Result<(), lapin::Error> {
    let ch = within(conn.create_channel()).await.expect("channel");
    within(ch.exchange_declare(
        name.into(),
        ExchangeKind::Custom(kind.to_owned()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
}

#[tokio::test]
async fn instance_and_memory_budgets_refuse_declares_in_their_vhost_only() {
    bounded(LIMIT, async {
        let broker = broker_with_vhosts(&["x-modulus-hash"], &["a", "b"]).await;
        let handle = broker.broker.handle().unwrap();
        handle
            .execute(vhost_limits("a", &[("wasm-instances-max", 2)]))
            .await
            .expect("limit");
        let (a, _) = channel_in(&broker, "a").await;
        let (b, _) = channel_in(&broker, "b").await;
        declare_in(&a, "m1", "x-modulus-hash").await.expect("first");
        declare_in(&a, "m2", "x-modulus-hash")
            .await
            .expect("second");
        assert_error(
            declare_in(&a, "m3", "x-modulus-hash").await,
            406,
            "wasm-instances-max",
        );
        // B's share is its own.
        for i in 0..4 {
            declare_in(&b, &format!("m{i}"), "x-modulus-hash")
                .await
                .expect("b declares");
        }
        // Raised at runtime: the next declare fits.
        handle
            .execute(vhost_limits("a", &[("wasm-instances-max", 3)]))
            .await
            .expect("raise");
        declare_in(&a, "m3", "x-modulus-hash").await.expect("third");

        // Total memory: caps of 16 MiB (the default) against 80 MiB, then 2 MiB caps.
        handle
            .execute(vhost_limits("b", &[("wasm-memory-total-bytes", 80 << 20)]))
            .await
            .expect("total");
        // B holds 4 x 16 MiB = 64 MiB; one more is 80 MiB, then none.
        declare_in(&b, "m4", "x-modulus-hash").await.expect("fits");
        assert_error(
            declare_in(&b, "m5", "x-modulus-hash").await,
            406,
            "wasm-memory-total-bytes",
        );
        handle
            .execute(vhost_limits("b", &[("wasm-memory-max-bytes", 2 << 20)]))
            .await
            .expect("smaller caps");
        assert_error(
            declare_in(&b, "m5", "x-modulus-hash").await,
            406,
            "wasm-memory-total-bytes",
        );
        let budget = handle.shared().wasm_budget("b").expect("budget");
        assert_eq!(budget.memory_reserved(), 80 << 20);
        // Deleting an exchange gives its reservation back; the next takes only 2 MiB.
        let ch = within(b.create_channel()).await.unwrap();
        within(ch.exchange_delete("m0".into(), Default::default()))
            .await
            .expect("delete");
        assert!(
            eventually(Duration::from_secs(5), || budget.memory_reserved()
                == 64 << 20)
            .await
        );
        declare_in(&b, "m5", "x-modulus-hash")
            .await
            .expect("2 MiB fits");
        declare_in(&b, "m6", "x-modulus-hash")
            .await
            .expect("and another");
        assert_eq!(budget.memory_reserved(), 68 << 20);
    })
    .await;
}

#[tokio::test]
async fn a_new_deadline_applies_to_the_next_call() {
    bounded(LIMIT, async {
        let broker = broker_with_vhosts(&["x-loop"], &["a"]).await;
        let handle = broker.broker.handle().unwrap();
        handle
            .execute(vhost_limits("a", &[("wasm-call-deadline-ms", 40)]))
            .await
            .expect("deadline");
        let (a, ch) = channel_in(&broker, "a").await;
        declare_in(&a, "spin", "x-loop").await.expect("declare");
        within(ch.confirm_select(Default::default())).await.unwrap();
        for _ in 0..5 {
            publish(&ch, "spin", "k", b"x", BasicProperties::default(), false).await;
        }
        let status = handle.plugins().unwrap().status_of("x-loop").unwrap();
        let failed = status.exchanges[0].failed.clone().unwrap_or_default();
        assert!(
            failed.contains("deadline of 40 ms exceeded"),
            "the exchange failed for another reason: {failed:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_cpu_budget_puts_the_vhosts_connections_in_flow() {
    bounded(LIMIT, async {
        let broker = broker_with_vhosts(&["x-loop"], &["a", "b"]).await;
        let handle = broker.broker.handle().unwrap();
        handle
            .execute(vhost_limits("a", &[("wasm-cpu-ms-per-sec", 10)]))
            .await
            .expect("budget");
        let (a, _) = channel_in(&broker, "a").await;
        let budget = handle.shared().wasm_budget("a").unwrap();
        // Each loop call costs its 5 ms deadline; fresh exchanges dodge the failure limit.
        let spender = tokio::spawn(async move {
            for i in 0..20 {
                let ch = a.create_channel().await.expect("channel");
                let name = format!("spin{i}");
                try_declare(&ch, &name, "x-loop", FieldTable::default())
                    .await
                    .expect("declare");
                for _ in 0..4 {
                    let _ = ch
                        .basic_publish(
                            name.as_str().into(),
                            "k".into(),
                            Default::default(),
                            b"x",
                            BasicProperties::default(),
                        )
                        .await;
                }
            }
        });
        let states = || -> Vec<(String, &'static str)> {
            handle
                .connections()
                .iter()
                .map(|c| (c.vhost.clone(), c.state().as_str()))
                .collect()
        };
        let (_b, bch) = channel_in(&broker, "b").await;
        assert!(
            eventually(Duration::from_secs(20), || budget.in_debt()
                && states().contains(&("a".to_owned(), "flow")))
            .await,
            "a never went into flow: {:?}",
            states()
        );
        // B works meanwhile, and is not in flow.
        within(bch.queue_declare("free".into(), Default::default(), FieldTable::default()))
            .await
            .expect("b works");
        assert!(
            states()
                .iter()
                .filter(|(v, _)| v == "b")
                .all(|(_, s)| *s == "running"),
            "{:?}",
            states()
        );
        spender.abort();
    })
    .await;
}

#[tokio::test]
async fn bad_budget_values_are_refused() {
    bounded(LIMIT, async {
        let broker = broker_with_vhosts(&[], &["a"]).await;
        let handle = broker.broker.handle().unwrap();
        for (name, value) in [
            ("wasm-call-deadline-ms", 0),
            ("wasm-call-deadline-ms", 60_001),
            ("wasm-memory-max-bytes", 1024),
            ("wasm-budget", 1),
        ] {
            match handle.execute(vhost_limits("a", &[(name, value)])).await {
                Err(MetaError::Invalid(text)) => assert!(text.contains(name), "{text}"),
                other => panic!("{name} = {value} was not refused: {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn exchange_types_allowed_per_vhost_from_config_and_at_runtime() {
    bounded(LIMIT, async {
        let broker = broker_with(&["x-regex", "x-modulus-hash"], &["a", "b"], |cfg| {
            cfg.vhost_limits
                .entry("a".into())
                .or_default()
                .exchange_types = Some(vec!["x-regex".into()]);
        })
        .await;
        let handle = broker.broker.handle().unwrap();
        let (a, _) = channel_in(&broker, "a").await;
        declare_in(&a, "r", "x-regex").await.expect("listed type");
        declare_in(&a, "d", "direct")
            .await
            .expect("built-ins always");
        assert_error(
            declare_in(&a, "m", "x-modulus-hash").await,
            406,
            "exchange type 'x-modulus-hash' is not allowed in vhost 'a'",
        );
        let (b, _) = channel_in(&broker, "b").await;
        declare_in(&b, "m", "x-modulus-hash")
            .await
            .expect("b has no list");

        // At runtime the list is replaced: the type that left it keeps its exchange, which
        // can be redeclared, but no new one.
        handle
            .execute(MetaCommand::SetVhostExchangeTypes {
                vhost: "a".into(),
                types: Some(vec!["x-modulus-hash".into()]),
            })
            .await
            .expect("set");
        declare_in(&a, "m", "x-modulus-hash")
            .await
            .expect("now listed");
        declare_in(&a, "r", "x-regex")
            .await
            .expect("existing exchange");
        assert_error(
            declare_in(&a, "r2", "x-regex").await,
            406,
            "not allowed in vhost 'a'",
        );
        let unknown = MetaCommand::SetVhostExchangeTypes {
            vhost: "nowhere".into(),
            types: None,
        };
        assert!(matches!(
            handle.execute(unknown).await,
            Err(MetaError::NotFound(_))
        ));
        drop((a, b));

        // The runtime list and budget outlive a restart.
        handle
            .execute(vhost_limits("a", &[("wasm-instances-max", 2)]))
            .await
            .expect("limit");
        let mut broker = broker;
        broker.broker.restart().await;
        let (a, _) = channel_in(&broker, "a").await;
        assert_error(
            declare_in(&a, "r2", "x-regex").await,
            406,
            "not allowed in vhost 'a'",
        );
        // a holds r and m (restored): its 2 instances.
        assert_error(
            declare_in(&a, "m2", "x-modulus-hash").await,
            406,
            "wasm-instances-max",
        );
        // Lifting the list: every type again.
        broker
            .broker
            .handle()
            .unwrap()
            .execute(MetaCommand::SetVhostExchangeTypes {
                vhost: "a".into(),
                types: None,
            })
            .await
            .expect("lift");
        broker
            .broker
            .handle()
            .unwrap()
            .execute(vhost_limits("a", &[("wasm-instances-max", -1)]))
            .await
            .expect("lift");
        declare_in(&a, "r2", "x-regex").await.expect("any type");
    })
    .await;
}
