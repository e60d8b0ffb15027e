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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bourse_tests::crash::damage::{Damage, damage_segment, newest_segment, records, tree};
use bourse_tests::crash::ledger::{Acked, Ledger, MARGIN, history, lock};
use bourse_tests::crash::{STOP_LIMIT, body, declare, drain, parse, properties};
use bourse_tests::process::BrokerProcess;
use bourse_tests::{bounded, confirm_channel, uniq};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, PublisherConfirm};
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
/// How long handing one basic.ack to the connection may take. lapin (4.12) never resolves an
/// ack whose connection died, so waiting longer means the broker is gone.
const ACK_LIMIT: Duration = Duration::from_secs(1);
/// Upper bound of the whole random-kill test (it aims at well under a minute).
const CRASH_LIMIT: Duration = Duration::from_secs(180);

/// Messages published before the segment is damaged.
const CORRUPT_MESSAGES: u64 = 200;
/// Upper bound of the corrupt-tail test (both variants).
const CORRUPT_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// random kills

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
            .filter(|(id, t)| Ledger::must_return(t, ROUNDS) && !back.contains(id))
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
        let owed = l.ids.values().filter(|t| Ledger::must_return(t, ROUNDS)).count();
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
