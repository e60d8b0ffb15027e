//! The crash test's bookkeeping: what happened to every message id across broker lives (each
//! publish, confirm, delivery and ack attempt, with its time relative to the kill of its
//! round), checked against what docs/storage.md promises as deliveries arrive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lapin::message::Delivery;
use tokio::time::Instant;

use super::parse;

/// How long before the kill an acknowledgement (or a delivery) must have been sent for the test
/// to count on the broker having written it to `acks.N` (or `dlvr.N`).
///
/// Why a margin at all: the broker buffers an ack and its flusher writes it in the next round;
/// after SIGKILL what the flusher wrote survives (page cache), what was still buffered is lost
/// and the message comes back, as RabbitMQ may redeliver an acked message after a crash
/// (at-least-once). A flusher round lasts about one fsync, milliseconds when idle; two seconds
/// covers a loaded, shared 2-core machine where one fsync can stall for hundreds of
/// milliseconds, plus the time between our timestamp and the broker reading the frame.
pub const MARGIN: Duration = Duration::from_secs(2);

/// One delivery of a message to the test's consumer.
pub struct Delivered {
    /// The broker life (round) it happened in; the number of rounds for the final drain.
    pub round: u64,
    pub at: Instant,
    pub redelivered: bool,
}

/// One acknowledgement the consumer tried to send.
pub struct Acked {
    pub round: u64,
    /// When `basic.ack` was handed to the connection; `None` if that failed (it may or may not
    /// have reached the broker).
    pub at: Option<Instant>,
}

/// What happened to one message id.
pub struct Track {
    pub published_round: u64,
    /// The broker's basic.ack for the publish arrived.
    pub confirmed: bool,
    pub deliveries: Vec<Delivered>,
    pub acks: Vec<Acked>,
}

/// Everything the clients saw, shared by the client tasks of every round.
#[derive(Default)]
pub struct Ledger {
    /// When each round's broker was killed (index = round), taken just before the SIGKILL.
    pub kills: Vec<Instant>,
    pub ids: HashMap<u64, Track>,
    /// Broken promises, each a sentence for the failure message.
    pub violations: Vec<String>,
    /// Deliveries whose `redelivered` flag the test could check (see [`Ledger::on_delivery`]).
    pub redelivered_checked: u64,
}

impl Ledger {
    pub fn published(&mut self, id: u64, round: u64) {
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
    pub fn durable_ack(kills: &[Instant], t: &Track) -> Option<(u64, Duration)> {
        t.acks.iter().find_map(|a| {
            let (at, kill) = (a.at?, *kills.get(a.round as usize)?);
            (at + MARGIN < kill).then(|| (a.round, kill - at))
        })
    }

    /// Checks one delivery (in `round`, or the final drain) against the id's history, records
    /// it, and returns the id if the message is one the test published.
    pub fn on_delivery(&mut self, round: u64, d: &Delivery) -> Option<u64> {
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
    /// returns durable) and was not acked after that. `rounds` is the number of rounds (the
    /// round of the final drain).
    pub fn must_return(t: &Track, rounds: u64) -> bool {
        let mut before_drain = t.deliveries.iter().filter(|d| d.round < rounds);
        match t.acks.iter().map(|a| a.round).max() {
            None => t.confirmed || before_drain.any(|d| d.round > t.published_round),
            Some(last_ack) => before_drain.any(|d| d.round > last_ack),
        }
    }
}

/// One id's history, for failure messages: times are before (-) the kill of their round.
pub fn history(kills: &[Instant], id: u64, t: &Track) -> String {
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

pub fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .expect("a client task panicked holding the ledger")
}
