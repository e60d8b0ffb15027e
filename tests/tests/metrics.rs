//! The Prometheus endpoint (issue 12): RabbitMQ's metric names for connections, queues and
//! messages, `bourse_*` series per vhost and per plugin, checked against known traffic.

use std::time::Duration;

use amq_protocol::types::FieldTable;
use bourse_tests::bounded;
use bourse_tests::http::Api;
use bourse_tests::raw::within;
use bourse_tests::wasm::{PluginBroker, confirm_channel, declare, publish_acked, queue_on};
use hyper::StatusCode;

/// The value of the series `name` with exactly `labels` (`{a="b",...}` or empty).
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{labels} ");
    text.lines()
        .find(|l| l.starts_with(&key))
        .and_then(|l| l[key.len()..].trim().parse().ok())
}

#[tokio::test]
async fn metrics_follow_known_traffic() {
    bounded(Duration::from_secs(60), async {
        let broker = PluginBroker::start_with(&["x-modulus-hash"], |cfg| {
            cfg.prometheus_listen = Some(([127, 0, 0, 1], 0).into());
        })
        .await;
        let handle = broker.broker.handle().unwrap();
        let api = Api::anonymous(handle.prometheus_addr().expect("a Prometheus listener"));
        let conn = lapin::Connection::connect(broker.broker.url(), Default::default())
            .await
            .unwrap();
        let ch = confirm_channel(&conn).await;
        declare(&ch, "m", "x-modulus-hash", FieldTable::default()).await;
        queue_on(&ch, "q1", "m", "any").await;
        for i in 0..5 {
            publish_acked(&ch, "m", &format!("k{i}"), "body").await;
        }
        let (status, kind, text) = api.get_text("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert_eq!(
            value(&text, "rabbitmq_connections", ""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "rabbitmq_queues", ""), Some(1.0));
        assert_eq!(value(&text, "rabbitmq_queue_messages_ready", ""), Some(5.0));
        assert_eq!(
            value(&text, "rabbitmq_queue_messages_unacked", ""),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "rabbitmq_global_messages_received_total", ""),
            Some(5.0)
        );
        assert_eq!(
            value(
                &text,
                "bourse_vhost_messages_received_total",
                "{vhost=\"/\"}"
            ),
            Some(5.0)
        );
        let plugin = "{plugin=\"x-modulus-hash\",vhost=\"/\"}";
        assert_eq!(
            value(&text, "bourse_plugin_exchanges", plugin),
            Some(1.0),
            "{text}"
        );
        let routed = value(&text, "bourse_plugin_routed_total", plugin).unwrap_or(0.0)
            + value(&text, "bourse_plugin_cache_hits_total", plugin).unwrap_or(0.0);
        assert_eq!(routed, 5.0, "{text}");
        assert_eq!(
            value(&text, "bourse_plugin_failures_total", plugin),
            Some(0.0)
        );
        assert!(
            text.trim_end().ends_with("# EOF"),
            "OpenMetrics ends with # EOF"
        );

        // Per object: each queue's counts; a basic.get (with ack pending) moves one message
        // from ready to unacked before its get-ok is sent.
        let (_, _, per) = api.get_text("/metrics/per-object").await;
        let q1 = "{vhost=\"/\",queue=\"q1\"}";
        assert_eq!(
            value(&per, "rabbitmq_queue_messages_ready", q1),
            Some(5.0),
            "{per}"
        );
        let got = within(ch.basic_get("q1".into(), Default::default()))
            .await
            .unwrap();
        assert!(got.is_some());
        let (_, _, per) = api.get_text("/metrics/per-object").await;
        assert_eq!(
            value(&per, "rabbitmq_queue_messages_ready", q1),
            Some(4.0),
            "{per}"
        );
        assert_eq!(
            value(&per, "rabbitmq_queue_messages_unacked", q1),
            Some(1.0),
            "{per}"
        );
        assert_eq!(
            value(&per, "rabbitmq_queue_messages_published_total", q1),
            Some(5.0),
            "{per}"
        );
        // Delivered, requeued and delivered again, acked: the global counters follow, and a
        // deleted queue's counts stay in them.
        let got = got.unwrap();
        within(got.nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        }))
        .await
        .unwrap();
        let again = within(ch.basic_get("q1".into(), Default::default()))
            .await
            .unwrap()
            .expect("requeued message");
        assert!(again.redelivered);
        within(again.ack(Default::default())).await.unwrap();
        let check = |text: &str| {
            for (name, want) in [
                ("rabbitmq_global_messages_delivered_total", 2.0),
                (
                    "rabbitmq_global_messages_delivered_get_manual_ack_total",
                    2.0,
                ),
                (
                    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
                    0.0,
                ),
                ("rabbitmq_global_messages_redelivered_total", 1.0),
                ("rabbitmq_global_messages_acknowledged_total", 1.0),
            ] {
                assert_eq!(value(text, name, ""), Some(want), "{name}: {text}");
            }
        };
        let (_, _, text) = api.get_text("/metrics").await;
        check(&text);
        within(ch.queue_delete("q1".into(), Default::default()))
            .await
            .unwrap();
        let (_, _, text) = api.get_text("/metrics").await;
        check(&text);
    })
    .await;
}
