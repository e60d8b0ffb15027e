//! RabbitMQ's `message_stats`: counts since an object was created and, beside each, its rate
//! per second (`publish_details.rate`, ...). A task samples every queue, exchange, vhost,
//! connection and channel each `management_sample_interval_ms` into `Shared::rates`; a
//! request shows the counts as they are now and the rates of the last two samples.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::broker::Shared;
use crate::channel::ChannelOutlet;
use crate::connection::ConnectionInfo;
use crate::queue::Queue;
use crate::stats::{MessageStats, RateKey, Rates};
use crate::vhost::{Exchange, VHost};

/// Samples every counter until `stopped` turns true.
pub(super) async fn sample(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.config.management_sample_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = 0u64;
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        sweep += 1;
        sweep_once(&shared, sweep);
    }
}

fn sweep_once(shared: &Shared, sweep: u64) {
    let rates = &shared.rates;
    let now = Instant::now();
    for vhost in shared.vhost_list() {
        let name = vhost.name.to_string();
        for q in vhost.queues() {
            let key = RateKey::Queue(name.clone(), q.name().to_string());
            rates.record(sweep, key, now, values(&q.message_stats()));
        }
        for x in vhost.exchanges() {
            let (publish_in, publish_out) = x.publish_counts();
            let key = RateKey::Exchange(name.clone(), x.spec.name.to_string());
            rates.record(sweep, key, now, vec![publish_in, publish_out]);
        }
        rates.record(
            sweep,
            RateKey::Vhost(name),
            now,
            values(&vhost.message_stats()),
        );
    }
    for c in shared.connection_list() {
        let (received, sent) = c.octets();
        rates.record(sweep, RateKey::Connection(c.id), now, vec![received, sent]);
        for ch in c.channels() {
            let key = RateKey::Channel(c.id, ch.number());
            rates.record(sweep, key, now, values(&ch.message_stats()));
        }
    }
    rates.retain_sweep(sweep);
}

fn values(stats: &MessageStats) -> Vec<u64> {
    stats.fields().iter().map(|(_, n)| *n).collect()
}

/// `{name: count, name_details: {rate}}` for each field; rates 0 until sampled twice.
fn stats_json(fields: &[(&str, u64)], rates: Option<Vec<f64>>) -> Value {
    let mut out = Map::new();
    for (i, (name, count)) in fields.iter().enumerate() {
        let rate = rates
            .as_ref()
            .and_then(|r| r.get(i))
            .copied()
            .unwrap_or(0.0);
        out.insert((*name).to_owned(), json!(count));
        out.insert(format!("{name}_details"), json!({ "rate": round(rate) }));
    }
    Value::Object(out)
}

fn round(rate: f64) -> f64 {
    (rate * 10.0).round() / 10.0
}

/// A queue's `message_stats`.
pub(super) fn queue(rates: &Rates, vhost: &str, q: &Queue) -> Value {
    let key = RateKey::Queue(vhost.to_owned(), q.name().to_string());
    stats_json(&q.message_stats().fields(), rates.of(&key))
}

/// An exchange's `message_stats`: `publish_in` and `publish_out`.
pub(super) fn exchange(rates: &Rates, vhost: &str, x: &Exchange) -> Value {
    let (publish_in, publish_out) = x.publish_counts();
    let key = RateKey::Exchange(vhost.to_owned(), x.spec.name.to_string());
    stats_json(
        &[("publish_in", publish_in), ("publish_out", publish_out)],
        rates.of(&key),
    )
}

/// The `message_stats` of several vhosts together (the overview of what a user sees).
pub(super) fn vhosts(rates: &Rates, vhosts: &[Arc<VHost>]) -> Value {
    let mut total = MessageStats::default();
    let mut sum: Vec<f64> = Vec::new();
    for vhost in vhosts {
        total.add(&vhost.message_stats());
        if let Some(r) = rates.of(&RateKey::Vhost(vhost.name.to_string())) {
            sum.resize(r.len().max(sum.len()), 0.0);
            for (s, r) in sum.iter_mut().zip(r) {
                *s += r;
            }
        }
    }
    stats_json(&total.fields(), Some(sum))
}

/// A connection's byte counts with rates: `recv_oct`, `send_oct` and their `_details`.
pub(super) fn connection(rates: &Rates, c: &ConnectionInfo) -> Value {
    let (received, sent) = c.octets();
    stats_json(
        &[("recv_oct", received), ("send_oct", sent)],
        rates.of(&RateKey::Connection(c.id)),
    )
}

/// A channel's `message_stats`.
pub(super) fn channel(rates: &Rates, c: &ConnectionInfo, ch: &ChannelOutlet) -> Value {
    stats_json(
        &ch.message_stats().fields(),
        rates.of(&RateKey::Channel(c.id, ch.number())),
    )
}
