//! The raw consumer: basic.qos and basic.consume, then one task that reads into a big buffer,
//! parses every whole frame in it, records each delivery's latency from its body's send time
//! (and with `--check-order` its sequence word), and writes the acks that batch produced in one
//! write: one basic.ack per delivery (multiple=false) unless `--multi-ack` asks for fewer.

use std::sync::{Arc, atomic::Ordering};

use amq_protocol::protocol::{AMQPClass, basic};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    codec::{Event, describe_close, encode_method, parse_all},
    conn::{CHANNEL, RawConn},
};
use crate::{
    cli::LoadArgs,
    load::Stop,
    stats::{self, OrderCheck, Stats, new_histogram},
};

pub struct RawConsumer {
    index: usize,
    conn: RawConn,
    args: Arc<LoadArgs>,
    stats: Arc<Stats>,
    stop: Arc<Stop>,
}

impl RawConsumer {
    /// Opens the consumer's connection and channel, sets the prefetch and starts consuming
    /// `queue`; deliveries may already be buffered when this returns.
    pub async fn open(
        uri: &str,
        index: usize,
        queue: &str,
        args: Arc<LoadArgs>,
        stats: Arc<Stats>,
        stop: Arc<Stop>,
    ) -> anyhow::Result<Self> {
        let mut conn = RawConn::open(uri, &format!("bourse-perf raw consumer {index}")).await?;
        if args.prefetch > 0 {
            let qos = basic::Qos {
                prefetch_count: args.prefetch,
                global: false,
            };
            conn.call(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Qos(qos)),
                |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))),
            )
            .await
            .context("basic.qos")?;
        }
        let consume = basic::Consume {
            queue: queue.into(),
            consumer_tag: format!("bourse-perf-{index}").into(),
            no_local: false,
            no_ack: args.autoack,
            exclusive: false,
            nowait: false,
            arguments: Default::default(),
        };
        conn.call(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Consume(consume)),
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))),
        )
        .await
        .with_context(|| format!("consuming from {queue}"))?;
        Ok(Self {
            index,
            conn,
            args,
            stats,
            stop,
        })
    }

    /// Consumes until the stop; returns the latencies (µs) it recorded.
    pub async fn run(self) -> Histogram<u64> {
        let Self {
            index,
            mut conn,
            args,
            stats,
            stop,
        } = self;
        let mut hist = new_histogram();
        let autoack = args.autoack;
        // As the lapin consumer: ack every N with multiple=true, never waiting for more than
        // the prefetch allows.
        let mut every = args.multi_ack.max(1) as u64;
        if args.prefetch > 0 {
            every = every.min(args.prefetch as u64);
        }
        let (mut unacked, mut last_tag) = (0u64, 0u64);
        let mut order = args.check_order.then(|| OrderCheck::new(args.producers));
        let mut acks = Vec::new();
        let mut healthy = true;
        loop {
            let mut received = 0;
            let parsed = parse_all(&mut conn.parser, conn.buf.filled(), |e| {
                match e {
                    Event::Delivery {
                        delivery_tag,
                        sent_ns,
                        seq,
                        ..
                    } => {
                        if let Some(sent) = sent_ns {
                            hist.saturating_record(stats::age_us_since(sent).max(1));
                        }
                        if let (Some(check), Some(word)) = (order.as_mut(), seq) {
                            check.observe(word);
                        }
                        received += 1;
                        if !autoack {
                            unacked += 1;
                            last_tag = delivery_tag;
                            if unacked >= every {
                                encode_ack(&mut acks, last_tag, every > 1)?;
                                unacked = 0;
                            }
                        }
                    }
                    Event::Method(_, AMQPClass::Basic(basic::AMQPMethod::Cancel(_))) => {
                        bail!("cancelled by the broker")
                    }
                    Event::Method(_, m) => {
                        if let Some(why) = describe_close(&m) {
                            bail!(why);
                        }
                    }
                    Event::Heartbeat => {}
                }
                Ok(())
            });
            stats.received.fetch_add(received, Ordering::Relaxed);
            if let Some(check) = order.as_mut() {
                check.flush(&stats.order);
            }
            match parsed {
                Ok(used) => conn.buf.consume(used),
                Err(e) => {
                    stats.error(format_args!("consumer {index}: {e:#}"));
                    healthy = false;
                    break;
                }
            }
            if !acks.is_empty() {
                if let Err(e) = conn.stream.write_all(&acks).await {
                    stats.error(format_args!("consumer {index}: writing acks: {e}"));
                    healthy = false;
                    break;
                }
                acks.clear();
            }
            let read = tokio::select! {
                biased;
                _ = stop.wait() => break,
                r = conn.stream.read(conn.buf.spare(conn.frame_max)) => r,
            };
            match read {
                Ok(n) if n > 0 => conn.buf.advance(n),
                end => {
                    if !stop.is_set() {
                        let why = match end {
                            Err(e) => format!("reading: {e}"),
                            Ok(_) => "the broker closed the connection".to_owned(),
                        };
                        stats.error(format_args!("consumer {index}: {why}"));
                    }
                    healthy = false;
                    break;
                }
            }
        }
        if healthy {
            if unacked > 0 && encode_ack(&mut acks, last_tag, true).is_ok() {
                let _ = conn.stream.write_all(&acks).await;
            }
            conn.close().await;
        }
        hist
    }
}

fn encode_ack(out: &mut Vec<u8>, delivery_tag: u64, multiple: bool) -> anyhow::Result<()> {
    let ack = basic::Ack {
        delivery_tag,
        multiple,
    };
    encode_method(out, CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))
}
