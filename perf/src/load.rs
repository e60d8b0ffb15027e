//! The load run: declare the topology, start consumers, publish for a bounded time or count,
//! drain, clean up, and report.
//!
//! Timeline (the measurement window is [t0, t1]):
//! 1. set-up: delete and re-declare the exchange and queues, bind, open the workers' connections
//!    and channels, start every consumer;
//! 2. t0: publishers start; a sampler watches the broker's RSS, a reporter prints one progress
//!    line per second to stderr;
//! 3. t1: the time is up (or, with `--count` and no time, every publisher has sent and seen its
//!    confirms); the counters and the broker's CPU time are read here, and the rates are
//!    counts in the window divided by its length;
//! 4. drain: consumers run on until nothing arrives for a second or `--drain-secs` is up, so the
//!    totals and latencies include the backlog; then everything is deleted and closed. With
//!    `--consume-after-publish` the consumers start only here (scenario (j)); with
//!    `--backlog-rss` the queued backlog's memory is measured here (`backlog`).
//!
//! Publishers and consumers are lapin's (`lapin_client`) or, with `--client raw`, the lean frame-level
//! ones of `raw`; set-up, the timeline and the report are the same for both.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{
    FutureExt,
    future::{BoxFuture, join_all},
};
use hdrhistogram::Histogram;
use lapin::{
    Connection, ExchangeKind,
    options::{
        ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{FieldTable, ShortString},
};
use serde_json::{Value, json};
use tokio::{sync::Notify, task::JoinSet};

use crate::{
    amqp::{self, expand, table},
    cli::{Client, LoadArgs},
    consumers::Workers,
    lapin_client::Publisher,
    procfs::{self, Process},
    raw::RawPublisher,
    stats::{Snapshot, Stats, new_histogram},
};

/// The routing resolved from the flags and the per-type defaults.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) exchange: String,
    kind: ExchangeKind,
    exchange_args: FieldTable,
    pub(crate) queues: Vec<String>,
    queue_args: FieldTable,
    /// (queue index, binding key, binding arguments)
    bindings: Vec<(usize, String, FieldTable)>,
    pub(crate) routing_keys: Vec<ShortString>,
    /// Message headers per routing-key index (empty when no --header).
    pub(crate) headers: Vec<FieldTable>,
}

fn plan(a: &LoadArgs) -> anyhow::Result<Plan> {
    let ty = a.exchange_type.as_str();
    let exchange = a
        .exchange
        .clone()
        .unwrap_or_else(|| format!("bourse-perf-{ty}"));
    let queues: Vec<String> = (0..a.queues)
        .map(|i| format!("{}{i}", a.queue_prefix))
        .collect();
    if queues.is_empty() && a.consumers > 0 {
        bail!("--consumers needs at least one queue (--queues)");
    }
    let kind = match ty {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    };
    let mut header_templates = a.headers.clone();
    let mut bindings = Vec::new();
    let (keys, routing_template) = if exchange.is_empty() {
        // The default exchange routes by queue name: key i is queue i mod Q.
        (a.keys.unwrap_or(a.queues.max(1)), None)
    } else {
        let n = a.bindings.unwrap_or(a.queues);
        if n > 0 && queues.is_empty() {
            bail!("--bindings needs at least one queue (--queues)");
        }
        let (bk, rk, keys) = match ty {
            "direct" => ("k{i}", "k{i}", n),
            "topic" => ("perf.k{i}.*", "perf.k{i}.x", n),
            "fanout" => ("", "", 1),
            "headers" => ("", "", n),
            _ => ("1", "{i}", 1000),
        };
        let mut binding_args = a.binding_args.clone();
        if ty == "headers" {
            if binding_args.is_empty() {
                binding_args = vec!["x-match=all".into(), "k={i}".into()];
            }
            if header_templates.is_empty() {
                header_templates = vec!["k={i}".into()];
            }
        }
        let bk = a.binding_key.as_deref().unwrap_or(bk);
        for i in 0..n {
            bindings.push((i % queues.len(), expand(bk, i), table(&binding_args, i)?));
        }
        let rk = a.routing_key.clone().unwrap_or_else(|| rk.to_owned());
        (a.keys.unwrap_or(keys.max(1)), Some(rk))
    };
    let routing_keys = (0..keys)
        .map(|i| {
            ShortString::from(match &routing_template {
                Some(t) => expand(t, i),
                None => queues
                    .get(i % queues.len().max(1))
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect();
    let headers = if header_templates.is_empty() {
        Vec::new()
    } else {
        (0..keys)
            .map(|i| table(&header_templates, i))
            .collect::<anyhow::Result<_>>()?
    };
    Ok(Plan {
        exchange,
        kind,
        exchange_args: table(&a.exchange_args, 0)?,
        queues,
        queue_args: table(&a.queue_args, 0)?,
        bindings,
        routing_keys,
        headers,
    })
}

/// Deletes and re-declares the exchange and queues and binds them.
async fn declare(conn: &Connection, a: &LoadArgs, p: &Plan) -> anyhow::Result<()> {
    let mut ch = conn.create_channel().await?;
    // Leftovers of an earlier run may differ in type or durability: delete first (unless
    // asked to keep them, e.g. to consume a backlog published by an earlier run). A broker
    // may answer a delete of a missing entity with a channel error; then use a new channel.
    let queues_to_delete = if a.keep_topology {
        &[][..]
    } else {
        &p.queues[..]
    };
    for q in queues_to_delete {
        if ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .is_err()
        {
            ch = conn.create_channel().await?;
        }
    }
    if !p.exchange.is_empty() {
        if !a.keep_topology
            && ch
                .exchange_delete(p.exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .is_err()
        {
            ch = conn.create_channel().await?;
        }
        ch.exchange_declare(
            p.exchange.as_str().into(),
            p.kind.clone(),
            ExchangeDeclareOptions {
                durable: a.durable,
                ..Default::default()
            },
            p.exchange_args.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "declaring exchange {:?} of type {}",
                p.exchange, a.exchange_type
            )
        })?;
    }
    for q in &p.queues {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: a.durable,
                ..Default::default()
            },
            p.queue_args.clone(),
        )
        .await
        .with_context(|| format!("declaring queue {q}"))?;
    }
    for (qi, key, args) in &p.bindings {
        ch.queue_bind(
            p.queues[*qi].as_str().into(),
            p.exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            args.clone(),
        )
        .await
        .with_context(|| format!("binding {} to {} with {key:?}", p.queues[*qi], p.exchange))?;
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

async fn delete(conn: &Connection, p: &Plan) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    for q in &p.queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    if !p.exchange.is_empty() {
        ch.exchange_delete(p.exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

/// A stop signal that is cheap to poll per message and can also be awaited.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

impl Stop {
    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
    pub(crate) async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.flag.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// Watches the broker's RSS every 100 ms and keeps the maximum.
fn spawn_rss_sampler(broker: Process, peak: Arc<AtomicU64>, stop: Arc<Stop>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !stop.is_set() {
            tick.tick().await;
            if let Ok(s) = broker.sample() {
                peak.fetch_max(s.rss_kib, Ordering::Relaxed);
            }
        }
    });
}

/// One line per second on stderr: rates over the last second and totals.
fn spawn_progress(stats: Arc<Stats>, broker: Option<Process>, stop: Arc<Stop>) {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = stats.snapshot();
        let mut last_cpu = broker.and_then(|b| b.sample().ok()).map(|s| s.cpu_s);
        let mut last_at = Instant::now();
        while !stop.is_set() {
            tick.tick().await;
            let now = stats.snapshot();
            let dt = last_at.elapsed().as_secs_f64().max(1e-3);
            last_at = Instant::now();
            let rate = |a: u64, b: u64| (a - b) as f64 / dt;
            let mut line = format!(
                "[{:>5.1}s] sent {:>9.0}/s  confirmed {:>9.0}/s  received {:>9.0}/s  | total sent {} received {} errors {}",
                start.elapsed().as_secs_f64(),
                rate(now.sent, last.sent),
                rate(now.confirmed, last.confirmed),
                rate(now.received, last.received),
                now.sent,
                now.received,
                now.errors,
            );
            if let Some(s) = broker.and_then(|b| b.sample().ok()) {
                if let Some(c) = last_cpu {
                    line += &format!(
                        "  | broker cpu {:>3.0}% rss {} MiB",
                        (s.cpu_s - c) / dt * 100.0,
                        s.rss_kib / 1024
                    );
                }
                last_cpu = Some(s.cpu_s);
            }
            eprintln!("{line}");
            last = now;
        }
    });
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "p50": h.value_at_quantile(0.50),
        "p95": h.value_at_quantile(0.95),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Runs the load test; `stats` is owned by the caller so a timed-out run can still report.
pub async fn run(args: LoadArgs, stats: Arc<Stats>) -> anyhow::Result<Value> {
    let a = Arc::new(args);
    if a.time_secs <= 0.0 && a.count == 0 {
        bail!("unbounded run: give --time and/or --count");
    }
    if a.time_secs <= 0.0 && a.producers == 0 {
        bail!("with no publishers, --time bounds the run");
    }
    if a.producers + a.consumers == 0 {
        bail!("nothing to do: no publishers and no consumers");
    }
    let raw = a.client == Client::Raw;
    if a.check_order && (!raw || a.size < 16) {
        bail!("--check-order needs --client raw and bodies of at least 16 bytes (-s 16)");
    }
    if a.backlog_rss && a.common.broker_pid.is_none() {
        bail!("--backlog-rss measures the broker: give --broker-pid");
    }
    if raw && a.connections != 0 {
        bail!("--client raw opens one connection per publisher and per consumer: no --connections");
    }
    let p = Arc::new(plan(&a)?);
    let broker = a.common.broker_pid.map(Process::new).transpose()?;
    let uri = a.common.uri.as_str();

    let setup = amqp::connect(uri, "bourse-perf setup".into()).await?;
    declare(&setup, &a, &p).await?;

    // Workers' connections, opened a few at a time.
    let n_conns = if raw {
        0
    } else if a.connections == 0 {
        a.producers + a.consumers
    } else {
        a.connections
    };
    let mut conns = Vec::with_capacity(n_conns);
    for chunk in (0..n_conns).collect::<Vec<_>>().chunks(16) {
        let opened = join_all(
            chunk
                .iter()
                .map(|i| amqp::connect(uri, format!("bourse-perf {i}"))),
        )
        .await;
        for c in opened {
            conns.push(c?);
        }
    }
    let conn_of = |worker: usize| &conns[worker % n_conns];

    let stop = Arc::new(Stop::default());
    let consumers_stop = Arc::new(Stop::default());
    let mut consumers = JoinSet::new();
    let workers = Workers {
        args: a.clone(),
        plan: p.clone(),
        conns: &conns,
        stats: stats.clone(),
        stop: consumers_stop.clone(),
    };
    if !a.consume_after_publish {
        workers.start_consumers(&mut consumers).await?;
    }
    let rss_settled_before = if a.backlog_rss {
        crate::idle::settled_rss(broker, Duration::from_secs(10)).await
    } else {
        None
    };
    // Each publisher as a future not yet started: all begin together at t0.
    let mut publishers: Vec<BoxFuture<'static, ()>> = Vec::with_capacity(a.producers);
    for i in 0..a.producers {
        if raw {
            let publisher =
                RawPublisher::open(uri, i, &p, a.clone(), stats.clone(), stop.clone()).await?;
            publishers.push(publisher.run().boxed());
            continue;
        }
        let ch = conn_of(i).create_channel().await?;
        if a.confirm > 0 {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        let publisher = Publisher {
            index: i,
            ch,
            plan: p.clone(),
            args: a.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
        };
        publishers.push(publisher.run().boxed());
    }

    // t0
    let sample0 = broker.map(|b| b.sample()).transpose()?;
    let tool = Process {
        pid: std::process::id(),
    };
    let tool0 = tool.sample().ok();
    let machine0 = procfs::machine_busy_s();
    let peak_rss = Arc::new(AtomicU64::new(sample0.map(|s| s.rss_kib).unwrap_or(0)));
    let monitors_stop = Arc::new(Stop::default());
    if let Some(b) = broker {
        spawn_rss_sampler(b, peak_rss.clone(), monitors_stop.clone());
    }
    spawn_progress(stats.clone(), broker, monitors_stop.clone());
    let t0 = Instant::now();
    let mut pub_tasks = JoinSet::new();
    for publisher in publishers {
        pub_tasks.spawn(publisher);
    }

    let all_published = async {
        while let Some(r) = pub_tasks.join_next().await {
            if let Err(e) = r {
                stats.error(format_args!("publisher task: {e}"));
            }
        }
        if a.producers == 0 {
            std::future::pending::<()>().await;
        }
    };
    if a.time_secs > 0.0 {
        let _ = tokio::time::timeout(Duration::from_secs_f64(a.time_secs), all_published).await;
    } else {
        all_published.await;
    }
    // t1
    let window = t0.elapsed().as_secs_f64();
    let at_t1 = stats.snapshot();
    let sample1 = broker.map(|b| b.sample()).transpose()?;
    let tool1 = tool.sample().ok();
    let machine1 = procfs::machine_busy_s();
    stop.set();

    // A buffer's consumers start now, not after the publishers' in-flight writes: a broker
    // that blocked the publishers (memory alarm) reads the rest only once consumers drain.
    let consume_start = Instant::now();
    let received_before_drain = stats.snapshot().received;
    // A consumer that starts on a deep queue may need a moment for its first delivery.
    let mut quiet_for = Duration::from_secs(1);
    if a.consume_after_publish {
        workers.start_consumers(&mut consumers).await?;
        quiet_for = Duration::from_secs(2);
    }
    // Publishers drain their in-flight publishes (bounded inside); then consumers catch up.
    while let Some(r) = pub_tasks.join_next().await {
        if let Err(e) = r {
            stats.error(format_args!("publisher task: {e}"));
        }
    }
    let drain_start = Instant::now();
    let mut last_received = stats.snapshot().received;
    let mut quiet_since = Instant::now();
    while a.consumers > 0 && drain_start.elapsed().as_secs_f64() < a.drain_secs {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = stats.snapshot();
        if s.received != last_received {
            last_received = s.received;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet_for {
            break;
        }
        if a.consume_after_publish && s.received >= s.sent {
            break;
        }
    }
    // From the consumers' start to the last delivery, not the quiet wait after it.
    let drain_s = quiet_since.duration_since(consume_start).as_secs_f64();
    let backlog = if a.backlog_rss {
        Some(
            crate::backlog::measure(
                &setup,
                &p.queues,
                broker,
                rss_settled_before,
                stats.snapshot().sent,
                Duration::from_secs_f64(a.drain_secs),
            )
            .await,
        )
    } else {
        None
    };
    let end = stats.snapshot();
    let total_s = t0.elapsed().as_secs_f64();
    let sample_end = broker.and_then(|b| b.sample().ok());
    consumers_stop.set();
    monitors_stop.set();
    let mut hist = new_histogram();
    while let Some(r) = consumers.join_next().await {
        match r {
            Ok(h) => {
                let _ = hist.add(&h);
            }
            Err(e) => stats.error(format_args!("consumer task: {e}")),
        }
    }
    if !a.keep_topology
        && let Err(e) = delete(&setup, &p).await
    {
        stats.error(format_args!("deleting the topology: {e}"));
    }
    let closing = conns
        .iter()
        .chain(std::iter::once(&setup))
        .map(|c| c.close(200, "OK".into()));
    let _ = tokio::time::timeout(Duration::from_secs(5), join_all(closing)).await;

    let end_stats = stats.snapshot();
    let mut report = report_common(&a, &p, window, &at_t1);
    report["received_total"] = json!(end.received);
    report["sent_total"] = json!(end.sent);
    report["confirmed_total"] = json!(end.confirmed);
    report["total_s"] = json!(round(total_s, 3));
    report["latency_us"] = percentiles(&hist);
    if a.consume_after_publish {
        let drained = end.received - received_before_drain;
        report["drain"] = json!({
            "secs": round(drain_s, 3),
            "received": drained,
            "rate": if drain_s > 0.0 { round(drained as f64 / drain_s, 1) } else { 0.0 },
        });
    }
    if a.check_order {
        let o = &stats.order;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let in_order = get(&o.in_order);
        let clean = get(&o.gaps) + get(&o.behind) + get(&o.foreign) == 0;
        report["order"] = json!({
            "checked": get(&o.checked),
            "in_order": in_order,
            "gaps": get(&o.gaps),
            "skipped": get(&o.skipped),
            "behind": get(&o.behind),
            "foreign": get(&o.foreign),
            // One consumer per queue: each message once, in publish order, none missing. A
            // publisher's last batch may have been written only in part when the run stopped
            // (a blocked write given up after its grace): the broker can hold more than `sent`
            // counts, never fewer.
            "exactly_once_in_order": clean && in_order == end.received && end.received >= end.sent,
        });
    }
    if let Some(b) = backlog {
        report["backlog"] = b;
    }
    report["errors"] = json!(end_stats.errors);
    report["error_samples"] = json!(stats.error_samples());
    if let (Some(t0), Some(t1)) = (tool0, tool1) {
        // The tool's own CPU in the window: on a small machine it competes with the broker.
        let tool_cpu = t1.cpu_s - t0.cpu_s;
        report["tool_cpu_s"] = json!(round(tool_cpu, 3));
        if let (Some(m0), Some(m1)) = (machine0, machine1) {
            // Everything else the machine did in the window (other builds and tests on a
            // shared machine): a large value marks a disturbed run.
            let broker_cpu = match (sample0, sample1) {
                (Some(s0), Some(s1)) => s1.cpu_s - s0.cpu_s,
                _ => 0.0,
            };
            let other = (m1 - m0 - tool_cpu - broker_cpu).max(0.0);
            report["other_cpu_s"] = json!(round(other, 3));
        }
    }
    if let (Some(s0), Some(s1)) = (sample0, sample1) {
        let cpu = s1.cpu_s - s0.cpu_s;
        // Per CPU-second over the whole run, t0 to the end of the drain: a publisher that
        // outruns its consumers leaves a backlog the broker must still deliver, so the window
        // alone would credit the broker for publishes whose delivery it has not paid for yet.
        let cpu_total = sample_end.map(|e| e.cpu_s - s0.cpu_s).unwrap_or(cpu);
        let msgs = if a.consumers > 0 {
            end.received
        } else {
            end.sent
        };
        let per = |n: u64, c: f64| if c > 0.0 { round(n as f64 / c, 0) } else { 0.0 };
        report["broker"] = json!({
            "pid": a.common.broker_pid,
            "cpu_s": round(cpu, 3),
            "cpu_util": round(cpu / window, 3),
            "cpu_total_s": round(cpu_total, 3),
            "rss_start_kib": s0.rss_kib,
            "rss_peak_kib": peak_rss.load(Ordering::Relaxed).max(s1.rss_kib),
            "rss_t1_kib": s1.rss_kib,
            "vm_hwm_kib": sample_end.unwrap_or(s1).hwm_kib,
            "msgs_per_cpu_s": per(msgs, cpu_total),
            "window_received_per_cpu_s": per(at_t1.received, cpu),
            "window_sent_per_cpu_s": per(at_t1.sent, cpu),
        });
    }
    Ok(report)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The parameters and window rates, shared by the normal and the timed-out report.
fn report_common(a: &LoadArgs, p: &Plan, window: f64, s: &Snapshot) -> Value {
    let rate = |n: u64| {
        if window > 0.0 {
            round(n as f64 / window, 1)
        } else {
            0.0
        }
    };
    json!({
        "mode": "load",
        "label": a.common.label,
        "params": {
            "client": a.client.name(),
            "producers": a.producers,
            "consumers": a.consumers,
            "connections": if a.connections == 0 { a.producers + a.consumers } else { a.connections },
            "size": a.size,
            "time_s": a.time_secs,
            "count": a.count,
            "rate": a.rate,
            "exchange_type": a.exchange_type,
            "exchange": p.exchange,
            "queues": p.queues.len(),
            "bindings": p.bindings.len(),
            "keys": p.routing_keys.len(),
            "autoack": a.autoack,
            "prefetch": a.prefetch,
            "multi_ack": a.multi_ack,
            "confirm": a.confirm,
            "persistent": a.persistent,
            "durable": a.durable,
            "check_order": a.check_order,
            "consume_after_publish": a.consume_after_publish,
        },
        "window_s": round(window, 3),
        "sent": s.sent,
        "confirmed": s.confirmed,
        "nacked": s.nacked,
        "received": s.received,
        "sent_rate": rate(s.sent),
        "confirmed_rate": rate(s.confirmed),
        "received_rate": rate(s.received),
        "timed_out": false,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::stats;

    fn args(flags: &[&str]) -> LoadArgs {
        let argv = ["bourse-perf", "load"].iter().chain(flags).copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Load(a) => *a,
            Command::Idle(_) | Command::Delayed(_) => unreachable!(),
        }
    }

    #[test]
    fn topic_defaults_give_one_matching_binding_per_key() {
        let p = plan(&args(&["-t", "topic", "-u", "1", "--bindings", "1000"])).unwrap();
        assert_eq!(p.exchange, "bourse-perf-topic");
        assert_eq!(p.bindings.len(), 1000);
        assert_eq!(p.routing_keys.len(), 1000);
        assert_eq!(p.bindings[5].1, "perf.k5.*");
        assert_eq!(p.routing_keys[5].as_str(), "perf.k5.x");
        assert!(p.bindings.iter().all(|(q, _, _)| *q == 0));
    }

    #[test]
    fn fanout_headers_plugin_and_default_exchange() {
        let p = plan(&args(&["-t", "fanout", "-u", "10"])).unwrap();
        assert_eq!((p.bindings.len(), p.routing_keys.len()), (10, 1));
        assert_eq!(p.bindings[9].0, 9);

        let p = plan(&args(&["-t", "headers", "-u", "2"])).unwrap();
        assert_eq!(p.headers.len(), 2);
        assert!(
            p.bindings[1]
                .2
                .inner()
                .contains_key(&ShortString::from("x-match"))
        );

        let p = plan(&args(&["-t", "x-consistent-hash", "-u", "3"])).unwrap();
        assert_eq!(p.kind, ExchangeKind::Custom("x-consistent-hash".into()));
        assert_eq!(p.bindings[2].1, "1");
        assert_eq!(p.routing_keys.len(), 1000);

        let p = plan(&args(&["-e", "", "-u", "3"])).unwrap();
        assert!(p.bindings.is_empty());
        assert_eq!(p.routing_keys[2].as_str(), "bourse-perf-q2");
        let p = plan(&args(&["-e", "", "-u", "3", "--keys", "5"])).unwrap();
        assert_eq!(p.routing_keys[4].as_str(), "bourse-perf-q1");
    }

    #[test]
    fn consumers_need_queues() {
        assert!(plan(&args(&["-u", "0"])).is_err());
        assert!(plan(&args(&["-u", "0", "-y", "0", "--bindings", "0"])).is_ok());
    }

    #[test]
    fn body_stamp_round_trips() {
        let mut body = vec![0u8; 16];
        stats::stamp(&mut body);
        assert!(stats::age_us(&body).unwrap() < 1_000_000);
        let mut short = vec![0u8; 4];
        stats::stamp(&mut short);
        assert_eq!(stats::age_us(&short), None);
    }
}
