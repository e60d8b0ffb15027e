//! Crash recovery of the real broker binary ([`bourse_tests::process`]): SIGKILL at random
//! moments while publishers with confirms and an acking consumer run, and segment files damaged
//! between a kill and a restart. The assertions are what docs/storage.md ("What is guaranteed")
//! promises, no more:
//!
//! - a message whose publisher confirm (basic.ack) arrived survives every crash until it is
//!   acknowledged; one nacked, or whose confirm never arrived, may or may not come back;
//! - an acknowledgement comes back only if the broker had not yet written it when it was killed
//!   (see [`MARGIN`]); a delivery mark likewise, so `redelivered` is checked only for deliveries
//!   older than the margin;
//! - records come back intact or not at all, in publish order; a damaged tail loses only the
//!   records from the damage on, and the broker says so in its log.
//!
//! These tests ignore `BOURSE_TEST_AMQP_URL`: they have to kill the broker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bourse_tests::process::BrokerProcess;
use bourse_tests::{bounded, confirm_channel, uniq};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer, PublisherConfirm};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

/// Kill/restart rounds of the random-kill test.
const ROUNDS: u64 = 20;
/// Publisher connections per round, each with one confirm-mode channel.
const PUBLISHERS: usize = 3;
/// Unconfirmed messages each publisher keeps in flight.
const WINDOW: usize = 64;
/// Time from "every client is publishing or consuming" to SIGKILL, drawn per round.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 50..=600;
/// Every `LONG_EVERY`th round lasts longer than [`MARGIN`] ([`LONG_KILL_AFTER_MS`]); without such
/// rounds no ack or delivery would be old enough at the kill for the ack and redelivered checks
/// to apply.
const LONG_EVERY: u64 = 5;
/// Time to SIGKILL in a long round.
const LONG_KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 2_500..=4_000;
/// How long before the kill an acknowledgement (or a delivery) must have been sent for the test
/// to count on the broker having written it to `acks.N` (or `dlvr.N`).
///
/// Why a margin at all: the broker buffers an ack and its flusher writes it in the next round;
/// after SIGKILL what the flusher wrote survives (page cache), what was still buffered is lost
/// and the message comes back, as RabbitMQ may redeliver an acked message after a crash
/// (at-least-once). A flusher round lasts about one fsync, milliseconds when idle; two seconds
/// covers a loaded, shared 2-core machine where one fsync can stall for hundreds of
/// milliseconds, plus the time between our timestamp and the broker reading the frame.
const MARGIN: Duration = Duration::from_secs(2);
/// How long handing one basic.ack to the connection may take. lapin (4.12) never resolves an
/// ack whose connection died, so waiting longer means the broker is gone.
const ACK_LIMIT: Duration = Duration::from_secs(1);
/// Upper bound of the whole random-kill test (it aims at well under a minute).
const CRASH_LIMIT: Duration = Duration::from_secs(180);
/// How long client tasks may take to notice that the broker is gone.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for the next message while draining a queue of known length.
const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Quiet period after a drain, to catch any message beyond the announced count.
const QUIET: Duration = Duration::from_millis(300);

/// Messages published before the segment is damaged.
const CORRUPT_MESSAGES: u64 = 200;
/// Upper bound of the corrupt-tail test (both variants).
const CORRUPT_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// messages

/// The body of message `id`: its id, then a filler whose length (0..257) and letters depend on
/// the id, so a damaged, truncated or swapped body shows.
fn body(id: u64) -> Vec<u8> {
    let mut body = format!("bourse crash test message {id}|").into_bytes();
    let extra = (id.wrapping_mul(2_654_435_761) % 257) as usize;
    body.extend((0..extra).map(|i| b'a' + ((id as usize + i) % 26) as u8));
    body
}

/// Persistent (delivery mode 2), with the id as message_id.
fn properties(id: u64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.to_string().into())
}

/// The id of a delivery, checking that its body is exactly the one published with that id.
fn parse(d: &Delivery) -> Result<u64, String> {
    let Some(message_id) = d.properties.message_id() else {
        return Err(format!(
            "message without message_id, body {:?}",
            String::from_utf8_lossy(&d.data)
        ));
    };
    let id: u64 = message_id
        .as_str()
        .parse()
        .map_err(|_| format!("message_id {message_id:?} is not an id"))?;
    if d.data != body(id) {
        return Err(format!(
            "message {id} has a damaged body: {} bytes {:?}, expected {} bytes",
            d.data.len(),
            String::from_utf8_lossy(&d.data[..d.data.len().min(60)]),
            body(id).len()
        ));
    }
    Ok(id)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare(broker: &BrokerProcess, ch: &Channel, queue: &str) -> u32 {
    match timeout(
        STOP_LIMIT,
        ch.queue_declare(queue.into(), durable(), FieldTable::default()),
    )
    .await
    {
        Ok(Ok(q)) => q.message_count(),
        other => panic!("queue.declare {queue}: {other:?}\n{}", broker.log_tail()),
    }
}

/// Consumes the whole queue (auto-ack): as many messages as queue.declare-ok announces, then
/// whatever else arrives within [`QUIET`] (there should be nothing).
async fn drain(broker: &BrokerProcess, queue: &str) -> Vec<Delivery> {
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel opens");
    let expected = declare(broker, &ch, queue).await as usize;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        match timeout(DRAIN_IDLE, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            other => panic!(
                "draining {queue}: got {} of the {expected} messages announced, then {other:?}\n{}",
                out.len(),
                broker.log_tail()
            ),
        }
    }
    while let Ok(Some(Ok(d))) = timeout(QUIET, consumer.next()).await {
        out.push(d);
    }
    let _ = conn.close(200, "drained".into()).await;
    out
}

// ---------------------------------------------------------------------------------------------
// random kills

/// One delivery of a message to the test's consumer.
struct Delivered {
    /// The broker life (round) it happened in; [`ROUNDS`] for the final drain.
    round: u64,
    at: Instant,
    redelivered: bool,
}

/// One acknowledgement the consumer tried to send.
struct Acked {
    round: u64,
    /// When `basic.ack` was handed to the connection; `None` if that failed (it may or may not
    /// have reached the broker).
    at: Option<Instant>,
}

/// What happened to one message id.
struct Track {
    published_round: u64,
    /// The broker's basic.ack for the publish arrived.
    confirmed: bool,
    deliveries: Vec<Delivered>,
    acks: Vec<Acked>,
}

/// Everything the clients saw, shared by the client tasks of every round.
#[derive(Default)]
struct Ledger {
    /// When each round's broker was killed (index = round), taken just before the SIGKILL.
    kills: Vec<Instant>,
    ids: HashMap<u64, Track>,
    /// Broken promises, each a sentence for the failure message.
    violations: Vec<String>,
    /// Deliveries whose `redelivered` flag the test could check (see [`Ledger::on_delivery`]).
    redelivered_checked: u64,
}

impl Ledger {
    fn published(&mut self, id: u64, round: u64) {
        self.ids.insert(
            id,
            Track {
                published_round: round,
                confirmed: false,
                deliveries: Vec::new(),
                acks: Vec::new(),
            },
        );
    }

    /// An acknowledgement of `t` sent more than [`MARGIN`] before its round's kill, if any:
    /// the broker had written it, so the message must never come back.
    fn durable_ack(kills: &[Instant], t: &Track) -> Option<(u64, Duration)> {
        t.acks.iter().find_map(|a| {
            let (at, kill) = (a.at?, *kills.get(a.round as usize)?);
            (at + MARGIN < kill).then(|| (a.round, kill - at))
        })
    }

    /// Checks one delivery (in `round`, or the final drain) against the id's history, records
    /// it, and returns the id if the message is one the test published.
    fn on_delivery(&mut self, round: u64, d: &Delivery) -> Option<u64> {
        let id = match parse(d) {
            Ok(id) => id,
            Err(why) => {
                self.violations.push(format!("round {round}: {why}"));
                return None;
            }
        };
        let kills = &self.kills;
        let Some(track) = self.ids.get_mut(&id) else {
            self.violations
                .push(format!("round {round}: message {id} was never published"));
            return None;
        };
        if track.deliveries.iter().any(|x| x.round == round) {
            self.violations.push(format!(
                "round {round}: message {id} delivered twice in one broker life"
            ));
        }
        if let Some((ack_round, lead)) = Self::durable_ack(kills, track) {
            self.violations.push(format!(
                "round {round}: message {id} came back although its ack was sent {lead:?} \
                 before the kill of round {ack_round}"
            ));
        }
        // A delivery mark written before the kill survives it (docs/storage.md), and one sent
        // more than MARGIN before the kill was written: the message must come back marked.
        // Younger marks may be lost, so their absence proves nothing.
        let marked = track.deliveries.iter().find(|x| {
            x.round < round
                && kills
                    .get(x.round as usize)
                    .is_some_and(|k| x.at + MARGIN < *k)
        });
        if let Some(earlier) = marked {
            self.redelivered_checked += 1;
            if !d.redelivered {
                self.violations.push(format!(
                    "round {round}: message {id} came back without redelivered although it was \
                     delivered {:?} before the kill of round {}",
                    kills[earlier.round as usize] - earlier.at,
                    earlier.round
                ));
            }
        }
        track.deliveries.push(Delivered {
            round,
            at: Instant::now(),
            redelivered: d.redelivered,
        });
        Some(id)
    }

    /// Whether the broker must still hold `t` after the last kill: its publish was confirmed
    /// and no ack was ever attempted; or it was delivered in a later broker life than its
    /// publish and its last ack attempt (so recovery returned it, and recovery makes what it
    /// returns durable) and was not acked after that.
    fn must_return(t: &Track) -> bool {
        let mut before_drain = t.deliveries.iter().filter(|d| d.round < ROUNDS);
        match t.acks.iter().map(|a| a.round).max() {
            None => t.confirmed || before_drain.any(|d| d.round > t.published_round),
            Some(last_ack) => before_drain.any(|d| d.round > last_ack),
        }
    }
}

/// One id's history, for failure messages: times are before (-) the kill of their round.
fn history(kills: &[Instant], id: u64, t: &Track) -> String {
    let before_kill = |round: u64, at: Instant| match kills.get(round as usize) {
        Some(kill) if *kill >= at => format!("-{:?}", *kill - at),
        Some(kill) => format!("+{:?}", at - *kill),
        None => "final drain".to_owned(),
    };
    let deliveries: Vec<String> = t
        .deliveries
        .iter()
        .map(|d| {
            let flag = if d.redelivered { " redelivered" } else { "" };
            format!("round {} {}{flag}", d.round, before_kill(d.round, d.at))
        })
        .collect();
    let acks: Vec<String> = t
        .acks
        .iter()
        .map(|a| match a.at {
            Some(at) => format!("round {} {}", a.round, before_kill(a.round, at)),
            None => format!("round {} (outcome unknown)", a.round),
        })
        .collect();
    format!(
        "{id}: published in round {}, {}, delivered [{}], acked [{}]",
        t.published_round,
        if t.confirmed {
            "confirmed"
        } else {
            "not confirmed"
        },
        deliveries.join(", "),
        acks.join(", ")
    )
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .expect("a client task panicked holding the ledger")
}

/// Publishes persistent messages with fresh ids until the connection dies, keeping up to
/// [`WINDOW`] unconfirmed; an id counts as confirmed only when the broker's basic.ack arrived.
async fn publisher(
    ch: Channel,
    queue: String,
    round: u64,
    next_id: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut in_flight: VecDeque<(u64, PublisherConfirm)> = VecDeque::with_capacity(WINDOW);
    loop {
        if in_flight.len() >= WINDOW {
            let (id, confirm) = in_flight.pop_front().expect("the window is full");
            if !settle(&ledger, id, confirm).await {
                break;
            }
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        lock(&ledger).published(id, round);
        let sent = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body(id),
                properties(id),
            )
            .await;
        match sent {
            Ok(confirm) => in_flight.push_back((id, confirm)),
            Err(_) => break,
        }
    }
    // The broker is gone: keep the confirms that arrived before it died.
    for (id, confirm) in in_flight {
        settle(&ledger, id, confirm).await;
    }
}

/// Waits for one confirm; false once the connection is lost.
async fn settle(ledger: &Mutex<Ledger>, id: u64, confirm: PublisherConfirm) -> bool {
    match confirm.await {
        Ok(c) => {
            if c.is_ack() {
                lock(ledger)
                    .ids
                    .get_mut(&id)
                    .expect("published ids are tracked")
                    .confirmed = true;
            }
            true
        }
        Err(_) => false,
    }
}

/// Consumes with manual acks until the connection dies, acking a random half of what arrives.
async fn consumer(
    mut consumer: Consumer,
    round: u64,
    mut rng: fastrand::Rng,
    ledger: Arc<Mutex<Ledger>>,
) {
    while let Some(Ok(d)) = consumer.next().await {
        let Some(id) = lock(&ledger).on_delivery(round, &d) else {
            continue;
        };
        if !rng.bool() {
            continue;
        }
        lock(&ledger)
            .ids
            .get_mut(&id)
            .expect("delivered ids are tracked")
            .acks
            .push(Acked { round, at: None });
        let sent = timeout(ACK_LIMIT, d.acker.ack(BasicAckOptions::default())).await;
        let Ok(sent) = sent else {
            // Only a dead connection holds an ack that long; whether it left is unknown.
            return;
        };
        if matches!(sent, Ok(true)) {
            let now = Instant::now();
            let mut l = lock(&ledger);
            let ack = l.ids.get_mut(&id).and_then(|t| t.acks.last_mut());
            ack.expect("the ack was recorded").at = Some(now);
        }
    }
}

/// The seed of the kill delays and ack choices: `BOURSE_CRASH_SEED` to replay a run.
fn seed() -> u64 {
    std::env::var("BOURSE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Starts one round's clients: the consumer (which also declares the queue) and the
/// publishers. Returns their connections and tasks once every one of them is running.
async fn start_clients(
    broker: &BrokerProcess,
    queue: &str,
    round: u64,
    seed: u64,
    next_id: &Arc<AtomicU64>,
    ledger: &Arc<Mutex<Ledger>>,
) -> (Vec<Connection>, Vec<JoinHandle<()>>) {
    let mut conns = Vec::new();
    let mut tasks = Vec::new();

    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel opens");
    declare(broker, &ch, queue).await;
    let consuming = ch
        .basic_consume(
            queue.into(),
            "crash".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let rng = fastrand::Rng::with_seed(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    tasks.push(tokio::spawn(consumer(
        consuming,
        round,
        rng,
        ledger.clone(),
    )));
    conns.push(conn);

    for _ in 0..PUBLISHERS {
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        tasks.push(tokio::spawn(publisher(
            ch,
            queue.to_owned(),
            round,
            next_id.clone(),
            ledger.clone(),
        )));
        conns.push(conn);
    }
    (conns, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_keeps_every_confirmed_message() {
    // Outside the time limit: this may build the broker binary.
    bourse_tests::process::broker_binary();
    let seed = seed();
    eprintln!(
        "crash test seed {seed} (replay the delays and ack choices with BOURSE_CRASH_SEED={seed})"
    );
    bounded(CRASH_LIMIT, async move {
        let began = Instant::now();
        let queue = uniq("crash");
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let next_id = Arc::new(AtomicU64::new(1));
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut broker = BrokerProcess::start().await;

        for round in 0..ROUNDS {
            if round > 0 {
                broker.restart().await;
            }
            let (conns, tasks) =
                start_clients(&broker, &queue, round, seed, &next_id, &ledger).await;
            let range = if round % LONG_EVERY == LONG_EVERY - 1 {
                LONG_KILL_AFTER_MS
            } else {
                KILL_AFTER_MS
            };
            let delay = Duration::from_millis(rng.u64(range));
            sleep(delay).await;
            lock(&ledger).kills.push(Instant::now());
            broker.kill();
            for (i, task) in tasks.into_iter().enumerate() {
                let who = if i == 0 { "the consumer".to_owned() } else { format!("publisher {i}") };
                match timeout(STOP_LIMIT, task).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("round {round}: {who} failed: {e}"),
                    Err(_) => panic!("round {round}: {who} did not notice the kill within {STOP_LIMIT:?}"),
                }
            }
            drop(conns);
            let l = lock(&ledger);
            let this_round = l.ids.values().filter(|t| t.published_round == round);
            let (published, confirmed) =
                this_round.fold((0, 0), |(p, c), t| (p + 1, c + u64::from(t.confirmed)));
            eprintln!(
                "round {round:2}: killed after {delay:>3?} (at {:.1?}), {published} published, {confirmed} confirmed",
                began.elapsed()
            );
        }

        broker.restart().await;
        let drained = drain(&broker, &queue).await;
        let mut l = lock(&ledger);
        let mut back = HashSet::new();
        for d in &drained {
            if let Some(id) = l.on_delivery(ROUNDS, d) {
                back.insert(id);
            }
        }
        let mut missing: Vec<u64> = l
            .ids
            .iter()
            .filter(|(id, t)| Ledger::must_return(t) && !back.contains(id))
            .map(|(id, _)| *id)
            .collect();
        missing.sort_unstable();

        let confirmed = l.ids.values().filter(|t| t.confirmed).count();
        let deliveries: usize = l.ids.values().map(|t| t.deliveries.len()).sum();
        let durable_acks = l
            .ids
            .values()
            .filter(|t| Ledger::durable_ack(&l.kills, t).is_some())
            .count();
        let owed = l.ids.values().filter(|t| Ledger::must_return(t)).count();
        let redelivered_in_rounds = l
            .ids
            .values()
            .flat_map(|t| &t.deliveries)
            .filter(|d| d.round < ROUNDS && d.redelivered)
            .count();
        let redelivered = drained.iter().filter(|d| d.redelivered).count();
        let summary = format!(
            "seed {seed}, {ROUNDS} rounds in {:.1?}: {} published, {confirmed} confirmed, \
             {deliveries} deliveries ({redelivered_in_rounds} redelivered), {durable_acks} ids \
             acked more than {MARGIN:?} before a kill, {owed} owed at the end; final drain {} \
             messages ({redelivered} redelivered); redelivered flag checked on {} deliveries",
            began.elapsed(),
            l.ids.len(),
            drained.len(),
            l.redelivered_checked
        );
        eprintln!("{summary}");
        assert!(
            confirmed > 0 && deliveries > 0 && durable_acks > 0,
            "the test exercised too little: {summary}\n{}",
            broker.log_tail()
        );
        let examples: Vec<String> = missing
            .iter()
            .take(5)
            .map(|id| history(&l.kills, *id, &l.ids[id]))
            .collect();
        assert!(
            missing.is_empty() && l.violations.is_empty(),
            "{summary}\n{} confirmed (or recovered) and unacknowledged messages did not come back, \
             first: {:?}\n  {}\n{} broken promises, first:\n  {}\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            examples.join("\n  "),
            l.violations.len(),
            l.violations[..l.violations.len().min(20)].join("\n  "),
            broker.log_tail()
        );
        // Messages came back across kills, so some were delivered before a long round's kill
        // and again after it: the redelivered check must have had something to check.
        assert!(
            l.redelivered_checked > 0,
            "no delivery was old enough at a kill to check redelivered: {summary}"
        );
        // Unconfirmed messages may or may not come back: nothing to assert about them beyond
        // the checks every delivery went through (intact body, a published id, no duplicate).
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// damaged segment tails

/// How a segment is damaged between the kill and the restart.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Four bytes inside the last record's payload inverted: its CRC no longer matches.
    FlippedBytes,
    /// The file cut in the middle of the record `from_end` records before the end, then
    /// garbage appended (starting with a plausible length, so the reader has to rely on the CRC).
    TruncatedWithGarbage { from_end: usize },
}

/// The header every `msgs.N` starts with (docs/storage.md, "Segments").
const SEGMENT_HEADER: &[u8; 8] = b"BSEG\x01\x00\x00\x00";

/// Record boundaries of a segment, following the framing of docs/storage.md (`len` u32 LE, a
/// CRC, `len` bytes of payload): `(offset, payload length)` of each record. The CRC is not
/// checked: the file was written by the broker and not damaged yet.
fn records(data: &[u8]) -> Vec<(usize, usize)> {
    assert!(
        data.starts_with(SEGMENT_HEADER),
        "segment does not start with BSEG v1: {:?}",
        &data[..data.len().min(8)]
    );
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER.len();
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || at + 8 + len > data.len() {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

/// Every file under `dir`, for failure messages.
fn tree(dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(format!("  {} ({len} bytes)", path.display()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    if out.is_empty() {
        "  (no files)".into()
    } else {
        out.join("\n")
    }
}

/// The newest `msgs.N` of `queue`: `<data_dir>/vhosts/*/queues/*/` whose `name` is the queue.
fn newest_segment(data_dir: &Path, queue: &str) -> Option<PathBuf> {
    let vhosts = std::fs::read_dir(data_dir.join("vhosts")).ok()?;
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for vhost in vhosts.flatten() {
        let Ok(queues) = std::fs::read_dir(vhost.path().join("queues")) else {
            continue;
        };
        for q in queues.flatten() {
            if std::fs::read(q.path().join("name")).ok().as_deref() != Some(queue.as_bytes()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(q.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let id = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("msgs."))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(id) = id {
                    found.push((id, f.path()));
                }
            }
        }
    }
    found.into_iter().max().map(|(_, path)| path)
}

/// Damages `segment` as `damage` says; returns how many records before the damage are intact.
fn damage_segment(segment: &Path, damage: Damage) -> usize {
    let mut data = std::fs::read(segment).expect("read the segment");
    let recs = records(&data);
    let (kept, data) = match damage {
        Damage::FlippedBytes => {
            let (at, len) = *recs.last().expect("the segment has records");
            let mid = at + 8 + len / 2;
            for b in &mut data[mid..(mid + 4).min(at + 8 + len)] {
                *b = !*b;
            }
            (recs.len() - 1, data)
        }
        Damage::TruncatedWithGarbage { from_end } => {
            let victim = recs.len() - from_end;
            let (at, len) = recs[victim];
            data.truncate(at + 8 + len / 2);
            let mut rng = fastrand::Rng::with_seed(victim as u64);
            data.extend_from_slice(&40u32.to_le_bytes());
            data.extend((0..96).map(|_| rng.u8(1..)));
            (victim, data)
        }
    };
    std::fs::write(segment, data).expect("write the damaged segment");
    kept
}

/// Publishes `ids` as persistent messages on one confirm channel; every one must be confirmed.
async fn publish_confirmed(
    broker: &BrokerProcess,
    ch: &Channel,
    queue: &str,
    ids: std::ops::Range<u64>,
) {
    let mut confirms = Vec::new();
    for id in ids {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(id),
                properties(id),
            )
            .await
            .expect("basic.publish");
        confirms.push((id, confirm));
    }
    for (id, confirm) in confirms {
        match timeout(STOP_LIMIT, confirm).await {
            Ok(Ok(c)) if c.is_ack() => {}
            other => panic!(
                "publish of {id} not confirmed: {other:?}\n{}",
                broker.log_tail()
            ),
        }
    }
}

async fn corrupt_case(damage: Damage) {
    let queue = uniq("corrupt");
    let mut broker = BrokerProcess::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare(&broker, &ch, &queue).await;
    publish_confirmed(&broker, &ch, &queue, 0..CORRUPT_MESSAGES).await;
    broker.kill();
    drop(conn);

    let data_dir = broker.data_dir().to_owned();
    let segment = newest_segment(&data_dir, &queue).unwrap_or_else(|| {
        panic!(
            "{damage:?}: no msgs.* segment of queue {queue} under {} after {CORRUPT_MESSAGES} \
             confirmed persistent messages; files:\n{}\n{}",
            data_dir.display(),
            tree(&data_dir),
            broker.log_tail()
        )
    });
    let recs = records(&std::fs::read(&segment).expect("read the segment"));
    assert_eq!(
        recs.len() as u64,
        CORRUPT_MESSAGES,
        "{damage:?}: expected one record per message in {}",
        segment.display()
    );
    let kept = damage_segment(&segment, damage) as u64;

    broker.restart().await;
    let drained = drain(&broker, &queue).await;
    let ids: Vec<u64> = drained
        .iter()
        .map(|d| parse(d).unwrap_or_else(|why| panic!("{damage:?}: {why}")))
        .collect();
    let expected: Vec<u64> = (0..kept).collect();
    assert_eq!(
        ids,
        expected,
        "{damage:?}: after damaging record {kept} of {}, exactly the {kept} records before it must \
         come back, in order\n{}",
        segment.display(),
        broker.log_tail()
    );

    let name = segment
        .file_name()
        .and_then(|n| n.to_str())
        .expect("segment name");
    let log = broker.log();
    let reported = log.lines().any(|line| {
        let lower = line.to_lowercase();
        line.contains(name)
            && ["damaged", "corrupt", "truncat", "cut off"]
                .iter()
                .any(|w| lower.contains(w))
    });
    assert!(
        reported,
        "{damage:?}: the broker's log does not mention the damage to {name}\n{}",
        broker.log_tail()
    );

    // Appends continue at the cut: a new message survives the next kill, nothing damaged
    // resurfaces. The drain's acks may not be written yet when the broker is killed, so the
    // intact messages may come back again (at-least-once).
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let fresh = CORRUPT_MESSAGES + 1;
    publish_confirmed(&broker, &ch, &queue, fresh..fresh + 1).await;
    broker.restart().await;
    drop(conn);
    let ids: Vec<u64> = drain(&broker, &queue)
        .await
        .iter()
        .map(|d| parse(d).unwrap_or_else(|why| panic!("{damage:?}, after the cut: {why}")))
        .collect();
    assert_eq!(
        ids.last(),
        Some(&fresh),
        "{damage:?}: the message published after the cut must come back, last: {ids:?}\n{}",
        broker.log_tail()
    );
    assert!(
        ids.iter().all(|id| *id < kept || *id == fresh) && ids.is_sorted(),
        "{damage:?}: after the cut only intact messages, in order, may come back: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_segment_tail_is_cut_and_intact_messages_survive() {
    bourse_tests::process::broker_binary();
    bounded(CORRUPT_LIMIT, async {
        corrupt_case(Damage::FlippedBytes).await;
        corrupt_case(Damage::TruncatedWithGarbage { from_end: 10 }).await;
    })
    .await;
}

/// The test's own reading of the segment format ([`records`], [`newest_segment`],
/// [`damage_segment`]) checked against the message store itself, without the broker: the
/// damage must be what recovery detects, and recovery must keep exactly the records before it.
/// If the format changes, this fails here rather than as a puzzling broker-level failure.
#[test]
fn damage_helpers_match_the_store_format() {
    use bourse::store::{MessageStore, StoreOptions, prepare_vhost_dir};
    for damage in [
        Damage::FlippedBytes,
        Damage::TruncatedWithGarbage { from_end: 10 },
    ] {
        let dir = bourse_tests::TempDir::new();
        let vhost_dir = prepare_vhost_dir(&dir.path, "/").expect("vhost dir");
        let (store, _) = MessageStore::open(&vhost_dir, StoreOptions::default()).expect("open");
        let queue = store.open_queue("q").expect("open_queue");
        for id in 0..CORRUPT_MESSAGES {
            queue.append("", "q", &[0, 0], &body(id)).expect("append");
        }
        store.flush().expect("flush");
        store.close();
        drop((queue, store));

        let segment = newest_segment(&dir.path, "q").expect("a segment");
        let recs = records(&std::fs::read(&segment).expect("read"));
        assert_eq!(recs.len() as u64, CORRUPT_MESSAGES, "{damage:?}");
        let kept = damage_segment(&segment, damage) as u64;

        let (store, recovered) =
            MessageStore::open(&vhost_dir, StoreOptions::default()).expect("reopen");
        let q = &recovered[0];
        let bodies: Vec<Vec<u8>> = q
            .messages
            .iter()
            .map(|m| q.store.read(m.position).expect("read").body.to_vec())
            .collect();
        let expected: Vec<Vec<u8>> = (0..kept).map(body).collect();
        assert!(
            bodies == expected,
            "{damage:?}: recovered {} records, expected the {kept} before the damage",
            bodies.len()
        );
        store.close();
    }
}
