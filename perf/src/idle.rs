//! Idle mode: what an idle connection (and a queue) costs the broker in resident memory.
//!
//! Measures the broker's RSS once it has settled, opens N connections with one channel each
//! (and optionally declares Q queues), lets the RSS settle again, and reports the difference
//! per connection (or per queue). The connections are then held open for a while (the broker
//! must keep serving them: heartbeats, no drops) and closed; the RSS after closing shows what
//! the broker gives back.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use lapin::{
    Channel, Connection,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

use crate::{amqp, cli::IdleArgs, procfs::Process, stats::Stats};

/// Waits until three readings 500 ms apart stay within 0.5 % of each other (at least two
/// seconds, at most `max`), and returns the last reading in KiB. Garbage-collected brokers
/// keep shrinking for a while after load, so measure on a freshly started one.
pub(crate) async fn settled_rss(broker: Option<Process>, max: Duration) -> Option<u64> {
    let b = broker?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut prev = b.sample().ok()?.rss_kib;
    let mut prev2 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = b.sample().ok()?.rss_kib;
        let close = |x: u64| now.abs_diff(x) * 200 < now.max(1);
        let stable = close(prev) && close(prev2);
        prev2 = prev;
        prev = now;
        if (stable && start.elapsed() >= Duration::from_secs(2)) || start.elapsed() >= max {
            return Some(now);
        }
    }
}

async fn open_one(uri: &str, i: usize) -> anyhow::Result<(Connection, Channel)> {
    let conn = amqp::connect(uri, format!("bourse-perf idle {i}")).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

pub async fn run(a: IdleArgs, stats: Arc<Stats>) -> anyhow::Result<Value> {
    let broker = a.common.broker_pid.map(Process::new).transpose()?;
    let uri = a.common.uri.as_str();
    let settle = Duration::from_secs_f64(a.settle_secs.max(1.0));

    let rss_before = settled_rss(broker, settle).await;

    let started = Instant::now();
    let mut open: Vec<(Connection, Channel)> = Vec::with_capacity(a.connections);
    let indices: Vec<usize> = (0..a.connections).collect();
    for chunk in indices.chunks(a.parallel.max(1)) {
        for r in join_all(chunk.iter().map(|&i| open_one(uri, i))).await {
            match r {
                Ok(c) => open.push(c),
                Err(e) => stats.error(format_args!("opening a connection: {e:#}")),
            }
        }
        if stats.snapshot().errors > 0 && open.is_empty() {
            anyhow::bail!("cannot open any connection");
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    eprintln!(
        "bourse-perf idle: {} of {} connections open in {connect_s:.2} s",
        open.len(),
        a.connections
    );

    // Queues go on the first connection's channel, or on a connection of their own.
    let extra = if a.queues > 0 && open.is_empty() {
        Some(open_one(uri, usize::MAX).await?)
    } else {
        None
    };
    let queue_ch = extra.as_ref().or(open.first()).map(|(_, ch)| ch.clone());
    let names: Vec<String> = (0..a.queues)
        .map(|i| format!("{}{i}", a.queue_prefix))
        .collect();
    let declared_at = Instant::now();
    if let Some(ch) = &queue_ch {
        for q in &names {
            if let Err(e) = ch
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                stats.error(format_args!("declaring {q}: {e}"));
                break;
            }
        }
    }
    let declare_s = declared_at.elapsed().as_secs_f64();
    if a.queues > 0 {
        eprintln!(
            "bourse-perf idle: {} queues declared in {declare_s:.2} s",
            a.queues
        );
    }

    let rss_after = settled_rss(broker, settle).await;

    // Hold, watching the peak and that every connection stays up.
    let hold_until = Instant::now() + Duration::from_secs_f64(a.hold_secs);
    let mut rss_peak = rss_after.unwrap_or(0);
    while Instant::now() < hold_until {
        tokio::time::sleep(Duration::from_millis(250).min(hold_until - Instant::now())).await;
        if let Some(s) = broker.and_then(|b| b.sample().ok()) {
            rss_peak = rss_peak.max(s.rss_kib);
        }
    }
    let dropped = open
        .iter()
        .filter(|(c, ch)| !c.status().connected() || !ch.status().connected())
        .count();
    if dropped > 0 {
        stats.error(format_args!(
            "{dropped} connections or channels were closed while idle"
        ));
    }

    if let Some(ch) = &queue_ch {
        for q in &names {
            if let Err(e) = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                stats.error(format_args!("deleting {q}: {e}"));
                break;
            }
        }
    }
    let all = open.iter().chain(extra.iter());
    let closing = join_all(all.map(|(c, _)| c.close(200, "OK".into())));
    let _ = tokio::time::timeout(Duration::from_secs(30), closing).await;
    drop(open);
    drop(extra);
    let rss_closed = settled_rss(broker, settle).await;

    let delta = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a as i64 - b as i64),
        _ => None,
    };
    let per = |n: usize| {
        delta
            .filter(|_| n > 0)
            .map(|d| (d as f64 / n as f64 * 100.0).round() / 100.0)
    };
    Ok(json!({
        "mode": "idle",
        "label": a.common.label,
        "connections": a.connections,
        "queues": a.queues,
        "connect_s": (connect_s * 1000.0).round() / 1000.0,
        "declare_s": (declare_s * 1000.0).round() / 1000.0,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_peak_kib": broker.map(|_| rss_peak),
        "rss_closed_kib": rss_closed,
        "rss_delta_kib": delta,
        // With queues, the delta includes the connections too; with one connection that is noise.
        "kib_per_connection": if a.queues == 0 { per(a.connections) } else { None },
        "kib_per_queue": per(a.queues),
        "errors": stats.snapshot().errors,
        "error_samples": stats.error_samples(),
        "timed_out": false,
    }))
}
