//! `bourse-perf delayed`: delayed delivery (`x-delayed-message`) under load.
//!
//! Declares a delayed exchange over `direct` and a queue bound to it, starts one no-ack
//! consumer, then publishes `--messages` messages from `--publishers` confirm-mode channels,
//! each due at `start + --min-delay-ms + (a hash of its number mod --spread-ms)` (the due time
//! rides in the body's first 8 bytes). Reports the publish rate (confirmed), the broker's RSS
//! once everything is published and settled (messages waiting), and, as they fire, the fire
//! rate and the lateness (receive time minus due time, delivery included) p50/p99/max.
//! With `--no-wait`, it stops after the RSS figure (the messages stay in the broker).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use futures::StreamExt;
use lapin::{
    BasicProperties,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::{Value, json};

use crate::{
    amqp, cli::Common, idle::settled_rss, procfs::Process, stats::Stats, stats::new_histogram,
};

#[derive(Args, Debug, Clone)]
pub struct DelayedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages to publish.
    #[arg(short = 'C', long, default_value_t = 100_000)]
    pub messages: u64,
    /// Publishing channels (one connection each).
    #[arg(short = 'x', long, default_value_t = 4)]
    pub publishers: usize,
    /// Unconfirmed messages each publisher keeps in flight.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Smallest delay, from the start of the run, ms.
    #[arg(long, default_value_t = 20_000)]
    pub min_delay_ms: u64,
    /// Due times are spread over this many ms after the smallest delay.
    #[arg(long, default_value_t = 10_000)]
    pub spread_ms: u64,
    /// Body size in bytes (at least 8: the due time).
    #[arg(short = 's', long, default_value_t = 16)]
    pub body_bytes: usize,
    /// Persistent messages (delivery-mode 2) on a durable exchange.
    #[arg(short = 'f', long)]
    pub persistent: bool,
    /// Stop once published and measured: do not wait for the messages to fire.
    #[arg(long)]
    pub no_wait: bool,
    /// Exchange name.
    #[arg(short = 'e', long, default_value = "bourse-perf-delayed")]
    pub exchange: String,
}

/// A histogram behind a mutex (the consumer is the only writer).
type Hist = std::sync::Mutex<hdrhistogram::Histogram<u64>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fixed scramble of `i`, so due times are not in publish order.
fn scramble(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub async fn run(a: DelayedArgs, stats: Arc<Stats>) -> anyhow::Result<Value> {
    let broker = a.common.broker_pid.map(Process::new).transpose()?;
    let uri = a.common.uri.clone();
    let queue = format!("{}-q", a.exchange);
    let setup = amqp::connect(&uri, "bourse-perf delayed setup".into()).await?;
    let ch = setup.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-delayed-type"),
        AMQPValue::LongString(LongString::from("direct")),
    );
    ch.exchange_declare(
        a.exchange.as_str().into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable: a.persistent,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: a.persistent,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.as_str().into(),
        a.exchange.as_str().into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let rss_before = settled_rss(broker, Duration::from_secs(10)).await;

    // The consumer: lateness of each message, first and last receive times.
    let hist: Arc<Hist> = Arc::new(std::sync::Mutex::new(new_histogram()));
    let received = Arc::new(AtomicU64::new(0));
    let first_last = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let consumer_conn = amqp::connect(&uri, "bourse-perf delayed consumer".into()).await?;
    let cch = consumer_conn.create_channel().await?;
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    {
        let (hist, received, first_last) = (hist.clone(), received.clone(), first_last.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let now = now_ms();
                if let Some(due) = delivery.data.get(..8) {
                    let due = u64::from_le_bytes(due.try_into().unwrap_or([0; 8]));
                    if let Ok(mut h) = hist.lock() {
                        let _ = h.record(now.saturating_sub(due).max(1));
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut fl) = first_last.lock() {
                    if fl.0 == 0 {
                        fl.0 = now;
                    }
                    fl.1 = now;
                }
            }
        });
    }

    let start_ms = now_ms();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for p in 0..a.publishers {
        let conn = amqp::connect(&uri, format!("bourse-perf delayed publisher {p}")).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let (a, next, stats, exchange) =
            (a.clone(), next.clone(), stats.clone(), a.exchange.clone());
        tasks.push(tokio::spawn(async move {
            let _conn = conn;
            let mut in_flight = std::collections::VecDeque::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.messages {
                    break;
                }
                let due = start_ms + a.min_delay_ms + scramble(i) % a.spread_ms.max(1);
                let mut body = vec![0u8; a.body_bytes.max(8)];
                body[..8].copy_from_slice(&due.to_le_bytes());
                let mut headers = FieldTable::default();
                let delay = due.saturating_sub(now_ms()) as i64;
                headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay.max(1)));
                let mut props = BasicProperties::default().with_headers(headers);
                if a.persistent {
                    props = props.with_delivery_mode(2);
                }
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        "k".into(),
                        BasicPublishOptions::default(),
                        &body,
                        props,
                    )
                    .await?;
                stats.sent.fetch_add(1, Ordering::Relaxed);
                in_flight.push_back(confirm);
                if in_flight.len() >= a.window
                    && let Some(c) = in_flight.pop_front()
                {
                    c.await?;
                    stats.confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
            for c in in_flight {
                c.await?;
                stats.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let published_ms = now_ms();
    let fired_during_publish = received.load(Ordering::Relaxed);
    let rss_waiting = settled_rss(broker, Duration::from_secs(20)).await;
    let hwm = broker.and_then(|b| b.sample().ok()).map(|s| s.hwm_kib);
    let mut report = json!({
        "label": a.common.label,
        "messages": a.messages,
        "persistent": a.persistent,
        "body_bytes": a.body_bytes,
        "publish_s": (publish_s * 1000.0).round() / 1000.0,
        "publish_rate": (a.messages as f64 / publish_s).round(),
        "fired_during_publish": fired_during_publish,
        "rss_before_kib": rss_before,
        "rss_waiting_kib": rss_waiting,
        "rss_hwm_kib": hwm,
        "first_due_after_publish_ms": (start_ms + a.min_delay_ms) as i64 - published_ms as i64,
    });
    if a.no_wait {
        return Ok(report);
    }
    let last_due = start_ms + a.min_delay_ms + a.spread_ms;
    let deadline =
        Instant::now() + Duration::from_millis(last_due.saturating_sub(now_ms()) + 60_000);
    while received.load(Ordering::Relaxed) < a.messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.load(Ordering::Relaxed);
    let (first, last) = *first_last.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let h = hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let fire_s = (last.saturating_sub(first)) as f64 / 1000.0;
    if let Some(map) = report.as_object_mut() {
        map.insert("received".into(), json!(got));
        map.insert("fire_s".into(), json!(fire_s));
        map.insert(
            "fire_rate".into(),
            json!(if fire_s > 0.0 {
                (got as f64 / fire_s).round()
            } else {
                0.0
            }),
        );
        map.insert(
            "lateness_ms".into(),
            json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99),
                   "p999": h.value_at_quantile(0.999), "max": h.max()}),
        );
        map.insert(
            "broker_rss_after_kib".into(),
            json!(broker.and_then(|b| b.sample().ok()).map(|s| s.rss_kib)),
        );
    }
    Ok(report)
}
