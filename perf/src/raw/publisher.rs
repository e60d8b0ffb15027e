//! The raw publisher: messages pre-encoded per routing key, copied into a batch buffer with the
//! send time and the sequence word (publisher index, message number) patched in, one
//! `write_all` per batch. A separate task reads basic.ack/nack and
//! moves the confirm window.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, confirm, connection};
use anyhow::{Context, anyhow};
use tokio::{
    io::AsyncWriteExt,
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::Notify,
};

use super::{
    codec::{ConfirmTracker, Event, Inbound, PublishTemplate, describe_close, encode_method},
    conn::{CHANNEL, RawConn, ReadBuf},
};
use crate::{
    cli::LoadArgs,
    load::{Plan, Stop},
    stats::{self, Stats},
};

/// A batch is written once it holds this much (or the confirm window, the rate or the count
/// allows no more).
const BATCH_BYTES: usize = 128 * 1024;
/// After the stop, how long a blocked write or outstanding confirms may take.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Shared by the writer and the confirm reader.
#[derive(Debug, Default)]
struct Confirms {
    /// Messages acked or nacked so far.
    settled: AtomicU64,
    /// The reader saw an error or the connection end: stop publishing.
    failed: AtomicBool,
    /// The writer sent connection.close: the end of the stream is expected.
    closing: AtomicBool,
    /// Wakes the writer when `settled` or `failed` changes.
    wake: Notify,
}

pub struct RawPublisher {
    index: usize,
    conn: RawConn,
    templates: Vec<PublishTemplate>,
    args: Arc<LoadArgs>,
    stats: Arc<Stats>,
    stop: Arc<Stop>,
}

impl RawPublisher {
    /// Opens the publisher's connection and channel, selects confirms if asked, and encodes one
    /// message per routing key.
    pub async fn open(
        uri: &str,
        index: usize,
        plan: &Plan,
        args: Arc<LoadArgs>,
        stats: Arc<Stats>,
        stop: Arc<Stop>,
    ) -> anyhow::Result<Self> {
        let mut conn = RawConn::open(uri, &format!("bourse-perf raw publisher {index}")).await?;
        if args.confirm > 0 {
            conn.call(
                CHANNEL,
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: false,
                })),
                |m| matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))),
            )
            .await
            .context("confirm.select")?;
        }
        let base =
            BasicProperties::default().with_delivery_mode(if args.persistent { 2 } else { 1 });
        let templates = plan
            .routing_keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let props = match plan.headers.get(k) {
                    Some(h) => base.clone().with_headers(h.clone()),
                    None => base.clone(),
                };
                PublishTemplate::new(
                    CHANNEL,
                    &plan.exchange,
                    key.as_str(),
                    props,
                    args.size,
                    conn.frame_max,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            index,
            conn,
            templates,
            args,
            stats,
            stop,
        })
    }

    pub async fn run(self) {
        let Self {
            index,
            conn,
            templates,
            args,
            stats,
            stop,
        } = self;
        let a = &*args;
        let frame_max = conn.frame_max;
        let (stream, buf, parser) = conn.into_parts();
        let (rd, mut wr) = stream.into_split();
        let shared = Arc::new(Confirms::default());
        let reader = tokio::spawn(read_confirms(
            index,
            rd,
            buf,
            parser,
            frame_max,
            shared.clone(),
            stats.clone(),
        ));

        let window = a.confirm as u64;
        let largest = templates.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut batch = Vec::with_capacity(BATCH_BYTES + largest);
        let start = Instant::now();
        let mut m: u64 = 0;
        let mut healthy = true;
        while !stop.is_set() && !shared.failed.load(Ordering::Acquire) {
            let mut allowed = u64::MAX;
            if a.count > 0 {
                if m >= a.count {
                    break;
                }
                allowed = a.count - m;
            }
            if window > 0 {
                // Saturating: a broker acking tags never published must not wrap the count.
                let inflight = m.saturating_sub(shared.settled.load(Ordering::Acquire));
                if inflight >= window {
                    tokio::select! {
                        _ = shared.wake.notified() => {}
                        _ = stop.wait() => {}
                    }
                    continue;
                }
                allowed = allowed.min(window - inflight);
            }
            if a.rate > 0.0 {
                // Message m is due at start + m / rate, as in the lapin publisher.
                let due = (start.elapsed().as_secs_f64() * a.rate) as u64 + 1;
                if due <= m {
                    let at = start + Duration::from_secs_f64(m as f64 / a.rate);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = stop.wait() => {}
                    }
                    continue;
                }
                allowed = allowed.min(due - m);
            }
            // One clock read per batch: every message of it goes out in the same write.
            let now = stats::now_ns();
            let mut n = 0;
            while n < allowed && batch.len() < BATCH_BYTES {
                let k = (index + (m + n) as usize) % templates.len();
                templates[k].append_to(&mut batch, now, stats::seq_word(index, m + n));
                n += 1;
            }
            if let Err(e) = write_batch(&mut wr, &batch, &stop).await {
                stats.error(format_args!("publisher {index}: {e:#}"));
                healthy = false;
                break;
            }
            batch.clear();
            m += n;
            stats.sent.fetch_add(n, Ordering::Relaxed);
        }

        if healthy && window > 0 {
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while !shared.failed.load(Ordering::Acquire)
                && shared.settled.load(Ordering::Acquire) < m
            {
                if tokio::time::timeout_at(deadline, shared.wake.notified())
                    .await
                    .is_err()
                {
                    stats.error(format_args!(
                        "publisher {index}: {} confirms still outstanding {STOP_GRACE:?} after stopping",
                        m.saturating_sub(shared.settled.load(Ordering::Acquire))
                    ));
                    break;
                }
            }
        }
        if healthy && !shared.failed.load(Ordering::Acquire) {
            shared.closing.store(true, Ordering::Release);
            let mut close = Vec::new();
            let method = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "OK".into(),
                class_id: 0,
                method_id: 0,
            }));
            if encode_method(&mut close, 0, method).is_ok() && wr.write_all(&close).await.is_ok() {
                let mut reader = reader;
                if tokio::time::timeout(Duration::from_secs(2), &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
                return;
            }
        }
        reader.abort();
    }
}

/// Writes a batch; once the run is stopped, a write blocked by the broker gets a bounded grace.
async fn write_batch(wr: &mut OwnedWriteHalf, batch: &[u8], stop: &Stop) -> anyhow::Result<()> {
    let write = wr.write_all(batch);
    tokio::pin!(write);
    tokio::select! {
        r = &mut write => return r.context("writing publishes"),
        _ = stop.wait() => {}
    }
    tokio::time::timeout(STOP_GRACE, write)
        .await
        .map_err(|_| anyhow!("a write still blocked {STOP_GRACE:?} after stopping"))?
        .context("writing publishes")
}

/// Reads the publisher's connection: basic.ack/nack settle the confirm window; a close or the
/// end of the stream (unless we are closing) is an error that stops the writer.
async fn read_confirms(
    index: usize,
    mut rd: OwnedReadHalf,
    mut buf: ReadBuf,
    mut parser: Inbound,
    frame_max: u32,
    shared: Arc<Confirms>,
    stats: Arc<Stats>,
) {
    let mut tracker = ConfirmTracker::default();
    let fail = |why: String| {
        stats.error(format_args!("publisher {index}: {why}"));
        shared.failed.store(true, Ordering::Release);
        shared.wake.notify_one();
    };
    loop {
        let (mut acked, mut nacked, mut closed) = (0, 0, false);
        let parsed = super::codec::parse_all(&mut parser, buf.filled(), |e| {
            match e {
                Event::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(x))) => {
                    acked += tracker.settle(x.delivery_tag, x.multiple);
                }
                Event::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(x))) => {
                    nacked += tracker.settle(x.delivery_tag, x.multiple);
                }
                Event::Method(_, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    closed = true;
                }
                Event::Method(_, m) => {
                    if let Some(why) = describe_close(&m) {
                        anyhow::bail!(why);
                    }
                }
                Event::Delivery { .. } | Event::Heartbeat => {}
            }
            Ok(())
        });
        if acked + nacked > 0 {
            stats.confirmed.fetch_add(acked, Ordering::Relaxed);
            stats.nacked.fetch_add(nacked, Ordering::Relaxed);
            shared.settled.fetch_add(acked + nacked, Ordering::Release);
            shared.wake.notify_one();
        }
        match parsed {
            Ok(used) => buf.consume(used),
            Err(e) => return fail(format!("{e:#}")),
        }
        if closed {
            return;
        }
        match buf.fill(&mut rd, frame_max).await {
            Ok(n) if n > 0 => {}
            end => {
                if !shared.closing.load(Ordering::Acquire) {
                    let why = match end {
                        Err(e) => format!("reading: {e}"),
                        Ok(_) => "the broker closed the connection".to_owned(),
                    };
                    fail(why);
                }
                return;
            }
        }
    }
}
