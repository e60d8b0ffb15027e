//! The lapin-based publisher and consumer of `bourse-perf load` (the default client): one
//! connection per worker, publishes with an optional confirm window, consumers with autoack or
//! manual (multiple) acks. The frame-level alternative is `raw`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};

use crate::cli::LoadArgs;
use crate::load::{Plan, Stop};
use crate::stats::{self, Stats, new_histogram};

enum Outcome {
    Written,
    Acked,
    Nacked,
    Failed(lapin::Error),
}

async fn publish_one(
    ch: &Channel,
    exchange: ShortString,
    key: ShortString,
    body: Vec<u8>,
    props: BasicProperties,
    confirm: bool,
) -> Outcome {
    let pending = match ch
        .basic_publish(exchange, key, BasicPublishOptions::default(), &body, props)
        .await
    {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    if !confirm {
        return Outcome::Written;
    }
    match pending.await {
        Ok(Confirmation::Nack(_)) => Outcome::Nacked,
        Ok(_) => Outcome::Acked,
        Err(e) => Outcome::Failed(e),
    }
}

pub(crate) struct Publisher {
    pub(crate) index: usize,
    pub(crate) ch: Channel,
    pub(crate) plan: Arc<Plan>,
    pub(crate) args: Arc<LoadArgs>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<Stop>,
}

impl Publisher {
    fn record(&self, o: Outcome) -> bool {
        match o {
            Outcome::Written => {}
            Outcome::Acked => {
                self.stats.confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Nacked => {
                self.stats.nacked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(e) => {
                self.stats
                    .error(format_args!("publisher {}: {e}", self.index));
                return false;
            }
        }
        true
    }

    pub(crate) async fn run(self) {
        let a = &*self.args;
        let confirm = a.confirm > 0;
        let window = if confirm {
            a.confirm
        } else {
            a.write_window.max(1)
        };
        let exchange = ShortString::from(self.plan.exchange.clone());
        let keys = &self.plan.routing_keys;
        let base = BasicProperties::default().with_delivery_mode(if a.persistent { 2 } else { 1 });
        let mut inflight = FuturesUnordered::new();
        let start = Instant::now();
        let mut m: u64 = 0;
        let mut healthy = true;
        'publish: while healthy && !self.stop.is_set() && (a.count == 0 || m < a.count) {
            if a.rate > 0.0 {
                let due = start + Duration::from_secs_f64(m as f64 / a.rate);
                while Instant::now() < due {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        Some(o) = inflight.next(), if !inflight.is_empty() => healthy &= self.record(o),
                        _ = self.stop.wait() => break 'publish,
                    }
                }
            }
            while inflight.len() >= window {
                tokio::select! {
                    Some(o) = inflight.next() => healthy &= self.record(o),
                    _ = self.stop.wait() => break 'publish,
                }
            }
            let k = (self.index + m as usize) % keys.len();
            let mut props = base.clone();
            if let Some(h) = self.plan.headers.get(k) {
                props = props.with_headers(h.clone());
            }
            let mut body = vec![0u8; a.size];
            stats::stamp(&mut body);
            inflight.push(publish_one(
                &self.ch,
                exchange.clone(),
                keys[k].clone(),
                body,
                props,
                confirm,
            ));
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            m += 1;
            // Poll once so the new publish hands its frames to the connection now; collect
            // whatever else has completed meanwhile.
            while let Some(Some(o)) = inflight.next().now_or_never() {
                healthy &= self.record(o);
            }
        }
        // Let outstanding writes and confirms finish, bounded.
        let drain = async {
            while let Some(o) = inflight.next().await {
                self.record(o);
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            self.stats.error(format_args!(
                "publisher {}: {} publishes or confirms still outstanding 10 s after stopping",
                self.index,
                inflight.len()
            ));
        }
    }
}

pub(crate) struct ConsumerTask {
    pub(crate) index: usize,
    pub(crate) ch: Channel,
    pub(crate) consumer: lapin::Consumer,
    pub(crate) args: Arc<LoadArgs>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<Stop>,
}

impl ConsumerTask {
    pub(crate) async fn run(mut self) -> Histogram<u64> {
        let mut hist = new_histogram();
        let autoack = self.args.autoack;
        let mut every = self.args.multi_ack.max(1) as u64;
        if self.args.prefetch > 0 {
            every = every.min(self.args.prefetch as u64);
        }
        let mut unacked = 0u64;
        let mut last_tag = 0u64;
        loop {
            let delivery = tokio::select! {
                biased;
                _ = self.stop.wait() => break,
                d = self.consumer.next() => d,
            };
            match delivery {
                Some(Ok(d)) => {
                    if let Some(us) = stats::age_us(&d.data) {
                        hist.saturating_record(us.max(1));
                    }
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if !autoack {
                        unacked += 1;
                        last_tag = d.delivery_tag;
                        if unacked >= every {
                            self.ack(last_tag, every > 1);
                            unacked = 0;
                        }
                    }
                }
                Some(Err(e)) => {
                    self.stats
                        .error(format_args!("consumer {}: {e}", self.index));
                    break;
                }
                None => {
                    if !self.stop.is_set() {
                        self.stats.error(format_args!(
                            "consumer {}: cancelled by the broker",
                            self.index
                        ));
                    }
                    break;
                }
            }
        }
        if unacked > 0 {
            self.ack(last_tag, true);
        }
        hist
    }

    /// Sends basic.ack without waiting for the write: the connection's own task writes it, and
    /// a failure closes the channel, which the delivery stream reports.
    fn ack(&self, tag: u64, multiple: bool) {
        let sent = self
            .ch
            .basic_ack(tag, BasicAckOptions { multiple })
            .now_or_never();
        if let Some(Err(e)) = sent {
            self.stats
                .error(format_args!("consumer {}: ack: {e}", self.index));
        }
    }
}
