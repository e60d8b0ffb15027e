//! Message counters per queue, exchange, channel and connection: what the management API turns
//! into RabbitMQ's `message_stats` and rates (`management/rates.rs`) and Prometheus into
//! `*_total` series. None of them costs a contended atomic on the data path: a queue's and a
//! channel's delivery counts are plain integers under the lock their delivery already holds;
//! the counters one task alone writes (a channel's publishes and acks, a connection's bytes)
//! are [`OwnedCounter`]s, a load and a store without a locked instruction.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter that one task writes and any thread reads (no read-modify-write: a second writer
/// would lose counts, never corrupt them).
#[derive(Debug, Default)]
pub struct OwnedCounter(AtomicU64);

impl OwnedCounter {
    /// Adds `n`; only the owning task calls this.
    pub fn add(&self, n: u64) {
        let now = self.0.load(Ordering::Relaxed);
        self.0.store(now.wrapping_add(n), Ordering::Relaxed);
    }

    /// Sets the value (a gauge that one task keeps: a channel's consumer count).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Deliveries of messages, by how they went out, as RabbitMQ counts them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deliveries {
    /// To a consumer that acknowledges.
    pub deliver: u64,
    /// To a no-ack consumer.
    pub deliver_no_ack: u64,
    /// basic.get answers that wait for an ack.
    pub get: u64,
    /// basic.get answers with no-ack.
    pub get_no_ack: u64,
    /// Of the above, those marked redelivered.
    pub redeliver: u64,
}

impl Deliveries {
    /// Counts one delivery.
    pub fn count(&mut self, get: bool, no_ack: bool, redelivered: bool) {
        let slot = match (get, no_ack) {
            (false, false) => &mut self.deliver,
            (false, true) => &mut self.deliver_no_ack,
            (true, false) => &mut self.get,
            (true, true) => &mut self.get_no_ack,
        };
        *slot += 1;
        self.redeliver += u64::from(redelivered);
    }

    /// RabbitMQ's `deliver_get`: every way out.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

/// The message counts of a queue or a channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageStats {
    /// Messages published into it (a queue: enqueued; a channel: basic.publish received).
    pub publish: u64,
    /// Messages sent out.
    pub delivered: Deliveries,
    /// Messages acknowledged.
    pub ack: u64,
}

impl MessageStats {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &MessageStats) {
        self.publish += other.publish;
        self.ack += other.ack;
        let (d, o) = (&mut self.delivered, &other.delivered);
        d.deliver += o.deliver;
        d.deliver_no_ack += o.deliver_no_ack;
        d.get += o.get;
        d.get_no_ack += o.get_no_ack;
        d.redeliver += o.redeliver;
    }

    /// RabbitMQ's field names and values, in the order the management API shows them.
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        let d = &self.delivered;
        [
            ("publish", self.publish),
            ("deliver_get", d.deliver_get()),
            ("deliver", d.deliver),
            ("deliver_no_ack", d.deliver_no_ack),
            ("get", d.get),
            ("get_no_ack", d.get_no_ack),
            ("redeliver", d.redeliver),
            ("ack", self.ack),
        ]
    }
}

/// What a rate is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A vhost's totals.
    Vhost(String),
    /// A queue, by vhost and name.
    Queue(String, String),
    /// An exchange, by vhost and name.
    Exchange(String, String),
    /// A connection.
    Connection(u64),
    /// A channel: its connection and number.
    Channel(u64, u16),
}

/// Per-second rates of counters, from the last two samples of each: RabbitMQ's `*_details`.
/// The management API samples every counter on a timer and reads the rates here.
#[derive(Debug, Default)]
pub struct Rates {
    table: parking_lot::Mutex<std::collections::HashMap<RateKey, Sampled>>,
}

#[derive(Debug)]
struct Sampled {
    at: std::time::Instant,
    values: Vec<u64>,
    rates: Vec<f64>,
    sweep: u64,
}

impl Rates {
    /// Records `values` of `key` taken at `at` during sweep `sweep`. A counter that went down
    /// (the object was deleted and declared again) rates 0.
    pub fn record(&self, sweep: u64, key: RateKey, at: std::time::Instant, values: Vec<u64>) {
        let mut table = self.table.lock();
        let rates = match table.get(&key) {
            Some(old) if old.values.len() == values.len() && at > old.at => {
                let seconds = (at - old.at).as_secs_f64();
                old.values
                    .iter()
                    .zip(&values)
                    .map(|(before, now)| now.saturating_sub(*before) as f64 / seconds)
                    .collect()
            }
            _ => vec![0.0; values.len()],
        };
        table.insert(
            key,
            Sampled {
                at,
                values,
                rates,
                sweep,
            },
        );
    }

    /// Forgets the objects sweep `sweep` did not see (they are gone).
    pub fn retain_sweep(&self, sweep: u64) {
        self.table.lock().retain(|_, s| s.sweep == sweep);
    }

    /// The rates of `key`'s counters at the last sample, in the order they were recorded.
    pub fn of(&self, key: &RateKey) -> Option<Vec<f64>> {
        self.table.lock().get(key).map(|s| s.rates.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_count_each_way_out_once() {
        let mut d = Deliveries::default();
        d.count(false, false, false);
        d.count(false, true, true);
        d.count(true, false, true);
        d.count(true, true, false);
        assert_eq!(
            (d.deliver, d.deliver_no_ack, d.get, d.get_no_ack),
            (1, 1, 1, 1)
        );
        assert_eq!((d.deliver_get(), d.redeliver), (4, 2));
    }

    #[test]
    fn owned_counter_adds() {
        let c = OwnedCounter::default();
        c.add(3);
        c.add(4);
        assert_eq!(c.get(), 7);
    }

    #[test]
    fn rates_are_per_second_deltas_and_never_negative() {
        let rates = Rates::default();
        let key = RateKey::Queue("/".into(), "q".into());
        let t0 = std::time::Instant::now();
        rates.record(1, key.clone(), t0, vec![10, 5]);
        assert_eq!(rates.of(&key), Some(vec![0.0, 0.0]));
        let t1 = t0 + std::time::Duration::from_millis(500);
        rates.record(2, key.clone(), t1, vec![20, 1]);
        assert_eq!(rates.of(&key), Some(vec![20.0, 0.0]));
        rates.retain_sweep(3);
        assert_eq!(rates.of(&key), None);
    }
}
