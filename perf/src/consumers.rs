//! Starting the consumers of a load run, with lapin or the raw client: before publishing
//! starts, or (scenario (j), `--consume-after-publish`) once it has stopped.

use std::sync::Arc;

use anyhow::Context;
use hdrhistogram::Histogram;
use lapin::{
    Connection,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::task::JoinSet;

use crate::{
    cli::{Client, LoadArgs},
    lapin_client::ConsumerTask,
    load::{Plan, Stop},
    raw::RawConsumer,
    stats::Stats,
};

/// What starting consumers needs, so they can start before publishing or after it.
pub(crate) struct Workers<'a> {
    pub(crate) args: Arc<LoadArgs>,
    pub(crate) plan: Arc<Plan>,
    /// lapin's shared connections (empty for the raw client).
    pub(crate) conns: &'a [Connection],
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<Stop>,
}

impl Workers<'_> {
    /// Opens every consumer (consumer i on queue i mod Q) and spawns it into `set`.
    pub(crate) async fn start_consumers(
        &self,
        set: &mut JoinSet<Histogram<u64>>,
    ) -> anyhow::Result<()> {
        let (a, p) = (&self.args, &self.plan);
        let uri = a.common.uri.as_str();
        for c in 0..a.consumers {
            let queue = &p.queues[c % p.queues.len()];
            if a.client == Client::Raw {
                let consumer = RawConsumer::open(
                    uri,
                    c,
                    queue,
                    a.clone(),
                    self.stats.clone(),
                    self.stop.clone(),
                )
                .await?;
                set.spawn(consumer.run());
                continue;
            }
            let ch = self.conns[(a.producers + c) % self.conns.len()]
                .create_channel()
                .await?;
            if a.prefetch > 0 {
                ch.basic_qos(a.prefetch, BasicQosOptions { global: false })
                    .await?;
            }
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("bourse-perf-{c}").into(),
                    BasicConsumeOptions {
                        no_ack: a.autoack,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming from {queue}"))?;
            set.spawn(
                ConsumerTask {
                    index: c,
                    ch,
                    consumer,
                    args: a.clone(),
                    stats: self.stats.clone(),
                    stop: self.stop.clone(),
                }
                .run(),
            );
        }
        Ok(())
    }
}
