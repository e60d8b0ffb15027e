//! Queue logic without a network or a runtime: a recording outlet stands in for channels and a
//! recording host for the vhost. No tokio runtime runs here, so timers never start and expiry
//! is observed through `get`.

use std::sync::{Arc, Weak};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::Bytes;
use parking_lot::Mutex;

use super::*;

#[derive(Default)]
struct Recorder {
    /// (consumer tag, body) of every accepted offer.
    delivered: Mutex<Vec<(String, String)>>,
    /// Whether offers are refused (no credit).
    full: std::sync::atomic::AtomicBool,
}

impl Outlet for Recorder {
    fn offer(
        &self,
        consumer: &Arc<Consumer>,
        _queue: &Arc<Queue>,
        entry: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        if self.full.load(Ordering::Relaxed) {
            return Err(entry);
        }
        let body = String::from_utf8_lossy(entry.message.body()).into_owned();
        self.delivered.lock().push((consumer.tag.to_string(), body));
        Ok(())
    }

    fn cancelled_by_server(&self, _consumer: &Consumer) {}
}

/// A dead letter as the host saw it: exchange, routing keys, body, reason, x-death length.
type DeadLetter = (String, Vec<String>, String, DeathReason, usize);

#[derive(Default)]
struct Host {
    dead: Mutex<Vec<DeadLetter>>,
}

impl QueueHost for Host {
    fn dead_letter(
        &self,
        exchange: &str,
        routing_keys: &[&str],
        message: Arc<Message>,
        reason: DeathReason,
    ) -> bool {
        self.dead.lock().push((
            exchange.to_owned(),
            routing_keys.iter().map(|k| k.to_string()).collect(),
            String::from_utf8_lossy(message.body()).into_owned(),
            reason,
            deaths(&message.properties()).len(),
        ));
        true
    }

    fn queue_expired(&self, _queue: &Arc<Queue>) {}
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn queue_with(args: &[(&str, AMQPValue)], host: &Arc<Host>) -> Arc<Queue> {
    let mut arguments = FieldTable::default();
    for (k, v) in args {
        arguments.insert((*k).into(), v.clone());
    }
    let queue = Queue::try_new(QueueSpec {
        name: Name::from("q"),
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments,
    })
    .expect("valid arguments");
    let host: Arc<dyn QueueHost> = host.clone();
    queue.attach(Arc::downgrade(&host) as Weak<dyn QueueHost>);
    queue
}

fn message(body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        Name::from("ex"),
        Name::from("rk"),
        &BasicProperties::default(),
        &[],
        Bytes::from(body.to_owned()),
    ))
}

fn consumer(tag: &str, priority: i64, outlet: &Arc<Recorder>) -> Arc<Consumer> {
    Arc::new(Consumer {
        tag: Name::from(tag),
        outlet: outlet.clone(),
        no_ack: false,
        exclusive: false,
        priority,
        prefetch: 0,
        unacked: Default::default(),
    })
}

fn ready_bodies(queue: &Queue) -> Vec<String> {
    std::iter::from_fn(|| queue.get(true))
        .map(|(e, _)| String::from_utf8_lossy(e.message.body()).into_owned())
        .collect()
}

#[test]
fn overflow_modes() {
    let host = Arc::new(Host::default());
    let limit = ("x-max-length", AMQPValue::LongInt(2));
    let dlx = ("x-dead-letter-exchange", text("dlx"));

    let drop = queue_with(&[limit.clone(), dlx.clone()], &host);
    for body in ["a", "b", "c"] {
        assert_eq!(drop.publish(message(body)), Enqueued::Accepted);
    }
    assert_eq!(ready_bodies(&drop), ["b", "c"]);

    let reject = queue_with(
        &[
            limit.clone(),
            dlx.clone(),
            ("x-overflow", text("reject-publish")),
        ],
        &host,
    );
    let dlx_reject = queue_with(
        &[limit, dlx, ("x-overflow", text("reject-publish-dlx"))],
        &host,
    );
    for q in [&reject, &dlx_reject] {
        assert_eq!(q.publish(message("a")), Enqueued::Accepted);
        assert_eq!(q.publish(message("b")), Enqueued::Accepted);
        assert_eq!(q.publish(message("c")), Enqueued::Rejected);
        assert_eq!(ready_bodies(q), ["a", "b"]);
    }
    let dead = host.dead.lock();
    let summary: Vec<_> = dead
        .iter()
        .map(|(x, keys, body, reason, n)| (x.as_str(), keys.clone(), body.as_str(), *reason, *n))
        .collect();
    // drop-head dead-letters "a"; reject-publish drops "c"; reject-publish-dlx dead-letters it.
    assert_eq!(
        summary,
        [
            ("dlx", vec!["rk".to_string()], "a", DeathReason::Maxlen, 1),
            ("dlx", vec!["rk".to_string()], "c", DeathReason::Maxlen, 1),
        ]
    );
}

#[test]
fn rejected_and_expired_messages_are_dead_lettered_with_the_routing_key() {
    let host = Arc::new(Host::default());
    let q = queue_with(
        &[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("elsewhere")),
        ],
        &host,
    );
    q.publish(message("stale"));
    // No consumer was waiting: with TTL 0 it is already expired at the head.
    assert!(q.get(false).is_none());
    let outlet = Arc::new(Recorder::default());
    q.add_consumer(consumer("c", 0, &outlet), || {})
        .expect("consumer");
    q.publish(message("fresh"));
    assert_eq!(q.unacked_count(), 1, "delivered directly despite TTL 0");
    // The channel hands back the delivered entry when the consumer rejects it.
    let entry = QueuedMessage::new(1, message("fresh"), 0);
    q.reject([entry]);
    assert_eq!(q.unacked_count(), 0);
    let dead = host.dead.lock();
    let reasons: Vec<_> = dead
        .iter()
        .map(|(x, keys, body, reason, _)| (x.as_str(), keys[0].as_str(), body.as_str(), *reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("", "elsewhere", "stale", DeathReason::Expired),
            ("", "elsewhere", "fresh", DeathReason::Rejected),
        ]
    );
}

#[test]
fn single_active_consumer_promotes_by_priority_then_registration() {
    let host = Arc::new(Host::default());
    let q = queue_with(
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
        &host,
    );
    let outlet = Arc::new(Recorder::default());
    let first = consumer("first", 0, &outlet);
    let second = consumer("second", 0, &outlet);
    let third = consumer("third", 0, &outlet);
    let urgent = consumer("urgent", 3, &outlet);
    for c in [&first, &second, &third, &urgent] {
        q.add_consumer(c.clone(), || {}).expect("consumer");
    }
    q.publish(message("m1"));
    q.publish(message("m2"));
    assert!(!q.remove_consumer(&first));
    q.publish(message("m3"));
    q.remove_consumer(&urgent);
    q.publish(message("m4"));
    // Removing a waiting consumer changes nothing.
    q.remove_consumer(&third);
    q.publish(message("m5"));
    let got: Vec<_> = outlet.delivered.lock().clone();
    let expect = [
        ("first", "m1"),
        ("first", "m2"),
        ("urgent", "m3"),
        ("second", "m4"),
        ("second", "m5"),
    ];
    assert_eq!(
        got,
        expect
            .iter()
            .map(|(t, b)| (t.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_busy_consumer_leaves_messages_ready_in_priority_order() {
    let host = Arc::new(Host::default());
    let q = queue_with(&[("x-max-priority", AMQPValue::ShortShortUInt(2))], &host);
    let outlet = Arc::new(Recorder::default());
    outlet.full.store(true, Ordering::Relaxed);
    q.add_consumer(consumer("c", 0, &outlet), || {})
        .expect("consumer");
    for (body, p) in [("low", 0), ("high", 2), ("mid", 1)] {
        let plain = message(body);
        q.publish(Arc::new(Message::new(
            plain.exchange().clone(),
            plain.routing_key().clone(),
            &BasicProperties::default().with_priority(p),
            &[],
            plain.body_bytes(),
        )));
    }
    outlet.full.store(false, Ordering::Relaxed);
    q.dispatch();
    let got: Vec<_> = outlet
        .delivered
        .lock()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(got, ["high", "mid", "low"]);
}
