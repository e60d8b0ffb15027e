//! `--backlog-rss`: what a queued backlog costs the broker in memory.
//!
//! After publishing (with no consumer), the broker may still be reading what the publishers
//! wrote, so first wait until the queues report (passive queue.declare) every message sent;
//! then let the RSS settle and divide the growth by the messages queued. The figure includes
//! everything the broker holds per queued message (bodies, properties, indexes, allocator
//! slack); RSS before is taken, settled, before publishing started.

use std::time::{Duration, Instant};

use lapin::{Connection, options::QueueDeclareOptions, types::FieldTable};
use serde_json::{Value, json};

use crate::{idle::settled_rss, procfs::Process};

/// Messages ready in `queues` now (passive declares on one channel of `conn`).
async fn queued(conn: &Connection, queues: &[String]) -> anyhow::Result<u64> {
    let ch = conn.create_channel().await?;
    let mut total = 0;
    for q in queues {
        let declared = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        total += u64::from(declared.message_count());
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(total)
}

/// Waits (at most `wait`) for `sent` messages to be queued, then measures. Never fails: what
/// could not be measured is reported as null with the reason.
pub async fn measure(
    conn: &Connection,
    queues: &[String],
    broker: Option<Process>,
    rss_before_kib: Option<u64>,
    sent: u64,
    wait: Duration,
) -> Value {
    let start = Instant::now();
    let mut messages = 0;
    let mut error = None;
    loop {
        match queued(conn, queues).await {
            Ok(n) => messages = n,
            Err(e) => {
                error = Some(format!("passive queue.declare: {e}"));
                break;
            }
        }
        if messages >= sent || start.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued_s = start.elapsed().as_secs_f64();
    let rss_after_kib = settled_rss(broker, Duration::from_secs(30)).await;
    let bytes_per_message = match (rss_before_kib, rss_after_kib) {
        (Some(before), Some(after)) if messages > 0 => {
            Some(((after as f64 - before as f64) * 1024.0 / messages as f64).round())
        }
        _ => None,
    };
    json!({
        "messages": messages,
        "sent": sent,
        "all_queued": messages >= sent,
        "queued_wait_s": (queued_s * 1000.0).round() / 1000.0,
        "rss_before_kib": rss_before_kib,
        "rss_after_kib": rss_after_kib,
        "bytes_per_message": bytes_per_message,
        "error": error,
    })
}
