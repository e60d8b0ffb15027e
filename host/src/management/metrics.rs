//! The Prometheus endpoint (`/metrics`, `/metrics/per-object`; docs/operations.md), with
//! RabbitMQ's metric names where it has them and `bourse_*` ones for the rest (per vhost and
//! per plugin). Every series is read from the broker's state at scrape time into a fresh
//! registry, so the data path pays for nothing but one counter add per read turn (messages
//! received, per vhost).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::broker::Shared;

type Labels = Vec<(String, String)>;

/// The metrics routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .with_state(shared)
}

async fn aggregated(State(shared): State<Arc<Shared>>) -> Response {
    respond(render(&shared, false))
}

async fn per_object(State(shared): State<Arc<Shared>>) -> Response {
    respond(render(&shared, true))
}

fn respond(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn count(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The exposition text: totals, per vhost and per plugin; with `per_object`, per queue too.
pub fn render(shared: &Shared, per_object: bool) -> String {
    let mut registry = Registry::default();
    let vhosts = shared.vhost_list();
    let (mut ready, mut unacked, mut consumers, mut queues, mut received) = (0, 0, 0, 0, 0u64);
    let received_by_vhost: Family<Labels, Counter> = Family::default();
    let queue_ready: Family<Labels, Gauge> = Family::default();
    let queue_unacked: Family<Labels, Gauge> = Family::default();
    let queue_consumers: Family<Labels, Gauge> = Family::default();
    let queue_published: Family<Labels, Counter> = Family::default();
    let queue_delivered: Family<Labels, Counter> = Family::default();
    let queue_acked: Family<Labels, Counter> = Family::default();
    let mut all = crate::stats::MessageStats::default();
    for vhost in &vhosts {
        all.add(&vhost.message_stats());
        let name = vhost.name.to_string();
        let total = vhost.published_total();
        received += total;
        received_by_vhost
            .get_or_create(&vec![("vhost".to_owned(), name.clone())])
            .inc_by(total);
        for q in vhost.queues() {
            let (r, u, c) = (q.message_count(), q.unacked_count(), q.consumer_count());
            ready += r;
            unacked += u;
            consumers += c;
            queues += 1;
            if per_object {
                let labels = vec![
                    ("vhost".to_owned(), name.clone()),
                    ("queue".to_owned(), q.name().to_string()),
                ];
                queue_ready.get_or_create(&labels).set(count(r));
                queue_unacked.get_or_create(&labels).set(count(u));
                queue_consumers.get_or_create(&labels).set(count(c));
                let stats = q.message_stats();
                queue_published.get_or_create(&labels).inc_by(stats.publish);
                queue_delivered
                    .get_or_create(&labels)
                    .inc_by(stats.delivered.deliver_get());
                queue_acked.get_or_create(&labels).inc_by(stats.ack);
            }
        }
    }
    gauge(
        &mut registry,
        "rabbitmq_connections",
        "Connections open",
        count(shared.connection_list().len()),
    );
    gauge(&mut registry, "rabbitmq_queues", "Queues", queues);
    gauge(
        &mut registry,
        "rabbitmq_consumers",
        "Consumers",
        count(consumers),
    );
    if !per_object {
        gauge(
            &mut registry,
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered, over all queues",
            count(ready),
        );
        gauge(
            &mut registry,
            "rabbitmq_queue_messages_unacked",
            "Messages delivered and not yet acknowledged, over all queues",
            count(unacked),
        );
        gauge(
            &mut registry,
            "rabbitmq_queue_messages",
            "Ready and unacknowledged messages, over all queues",
            count(ready + unacked),
        );
    }
    gauge(
        &mut registry,
        "rabbitmq_alarms_memory_used_watermark",
        "1 while the memory alarm is on",
        i64::from(shared.memory.is_alarmed()),
    );
    let received_total: Counter = Counter::default();
    received_total.inc_by(received);
    registry.register(
        "rabbitmq_global_messages_received",
        "Messages published to the broker (basic.publish methods received)",
        received_total,
    );
    let d = &all.delivered;
    for (name, help, value) in [
        (
            "rabbitmq_global_messages_delivered",
            "Messages delivered to consumers and basic.get",
            d.deliver_get(),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack",
            "Messages delivered to consumers that acknowledge",
            d.deliver,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack",
            "Messages delivered to no-ack consumers",
            d.deliver_no_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack",
            "Messages answered to basic.get that wait for an ack",
            d.get,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack",
            "Messages answered to basic.get with no-ack",
            d.get_no_ack,
        ),
        (
            "rabbitmq_global_messages_redelivered",
            "Messages delivered again after a requeue",
            d.redeliver,
        ),
        (
            "rabbitmq_global_messages_acknowledged",
            "Messages acknowledged by consumers",
            all.ack,
        ),
    ] {
        let counter: Counter = Counter::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    registry.register(
        "bourse_vhost_messages_received",
        "Messages published into each vhost",
        received_by_vhost,
    );
    if per_object {
        registry.register(
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered, per queue",
            queue_ready,
        );
        registry.register(
            "rabbitmq_queue_messages_unacked",
            "Messages delivered and not yet acknowledged, per queue",
            queue_unacked,
        );
        registry.register(
            "rabbitmq_queue_consumers",
            "Consumers per queue",
            queue_consumers,
        );
        registry.register(
            "rabbitmq_queue_messages_published",
            "Messages enqueued, per queue",
            queue_published,
        );
        registry.register(
            "rabbitmq_queue_messages_delivered",
            "Messages delivered (to consumers and basic.get), per queue",
            queue_delivered,
        );
        registry.register(
            "rabbitmq_queue_messages_acked",
            "Messages acknowledged, per queue",
            queue_acked,
        );
    }
    plugins(shared, &mut registry, &vhosts);
    delayed(&mut registry, &vhosts);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// `bourse_exchange_messages_delayed`: messages waiting in each `x-delayed-message` exchange
/// (few exchanges, so in both views).
fn delayed(registry: &mut Registry, vhosts: &[Arc<crate::vhost::VHost>]) {
    let waiting: Family<Labels, Gauge> = Family::default();
    for vhost in vhosts {
        for x in vhost.exchanges() {
            if let Some(delayed) = x.delayed() {
                let labels = vec![
                    ("vhost".to_owned(), vhost.name.to_string()),
                    ("exchange".to_owned(), x.spec.name.to_string()),
                ];
                waiting
                    .get_or_create(&labels)
                    .set(i64::try_from(delayed.waiting()).unwrap_or(i64::MAX));
            }
        }
    }
    registry.register(
        "bourse_exchange_messages_delayed",
        "Messages waiting in each delayed-message exchange",
        waiting,
    );
}

/// `bourse_plugin_*`: per plugin type and vhost, summed over its exchanges.
fn plugins(shared: &Shared, registry: &mut Registry, vhosts: &[Arc<crate::vhost::VHost>]) {
    let exchanges: Family<Labels, Gauge> = Family::default();
    let memory: Family<Labels, Gauge> = Family::default();
    let p99: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let busy: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let series = [
        ("bourse_plugin_routed", "Messages routed by a plugin call"),
        (
            "bourse_plugin_cache_hits",
            "Messages routed from the decision cache",
        ),
        ("bourse_plugin_failures", "Failed plugin calls (any reason)"),
        (
            "bourse_plugin_deadlines",
            "Plugin calls stopped at their deadline",
        ),
        (
            "bourse_plugin_caps",
            "Plugin calls stopped at a memory or table cap",
        ),
        ("bourse_plugin_traps", "Plugin calls that trapped otherwise"),
    ];
    let families: Vec<Family<Labels, Counter>> = series.iter().map(|_| Family::default()).collect();
    let mut all = shared
        .plugins
        .as_ref()
        .map(|m| m.status())
        .unwrap_or_default();
    for vhost in vhosts {
        all.extend(shared.vhost_plugins(&vhost.name));
    }
    for plugin in &all {
        for x in &plugin.exchanges {
            let labels = vec![
                ("plugin".to_owned(), plugin.name.clone()),
                ("vhost".to_owned(), x.vhost.clone()),
            ];
            exchanges.get_or_create(&labels).inc();
            memory
                .get_or_create(&labels)
                .inc_by(i64::try_from(x.memory_bytes).unwrap_or(i64::MAX));
            busy.get_or_create(&labels).inc_by(x.busy.as_secs_f64());
            // The slowest exchange's p99 stands for the plugin in the vhost.
            if let Some(d) = x.latency_p99 {
                let gauge = p99.get_or_create(&labels);
                if d.as_secs_f64() > gauge.get() {
                    gauge.set(d.as_secs_f64());
                }
            }
            let values = [
                x.routed,
                x.cache_hits,
                x.failures,
                x.deadlines,
                x.caps,
                x.traps,
            ];
            for (family, value) in families.iter().zip(values) {
                family.get_or_create(&labels).inc_by(value);
            }
        }
    }
    registry.register(
        "bourse_plugin_exchanges",
        "Exchanges of each plugin type per vhost",
        exchanges,
    );
    registry.register(
        "bourse_plugin_memory_bytes",
        "Linear memory of the live instances of each plugin type per vhost",
        memory,
    );
    registry.register(
        "bourse_plugin_call_p99_seconds",
        "99th percentile of sampled route calls (the slowest exchange's)",
        p99,
    );
    registry.register(
        "bourse_plugin_busy_seconds",
        "Time spent in route calls, by the engine's tick",
        busy,
    );
    for ((name, help), family) in series.iter().zip(families) {
        registry.register(*name, *help, family);
    }
}
