//! Dead-lettering, the pure part: the properties a dead-lettered message gets and RabbitMQ's
//! cycle rule. The queue decides *when* to dead-letter; the vhost routes the result.
//!
//! RabbitMQ 3.10 (`rabbit_dead_letter`) records each death in the `x-death` header, an array of
//! tables, most recent first, each with `count`, `reason`, `queue`, `time`, `exchange`,
//! `routing-keys` and, for a message that had a per-message TTL, `original-expiration`. A death
//! for a queue and reason already in the array increments that entry's `count` and moves it to
//! the front (its other fields are kept). The first death also sets `x-first-death-reason`,
//! `-queue` and `-exchange` (3.10 has no `x-last-death-*`; those came with 3.13). The
//! `expiration` property is removed, so the message does not expire again in the next queue,
//! and with `x-dead-letter-routing-key` set the `CC` header is removed too.

use std::collections::BTreeMap;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use super::args::string;

/// Why a message was dead-lettered; the names are the `reason` values of `x-death`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// basic.reject or basic.nack with requeue=false.
    Rejected,
    /// Its TTL (queue or per-message) ran out.
    Expired,
    /// Dropped or refused by a length limit.
    Maxlen,
}

impl DeathReason {
    /// The `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
        }
    }
}

/// One death to record.
#[derive(Debug, Clone, Copy)]
pub struct Death<'a> {
    /// The queue the message died in.
    pub queue: &'a str,
    /// Why.
    pub reason: DeathReason,
    /// The exchange the message had been published to (or dead-lettered through last).
    pub exchange: &'a str,
    /// Its publish routing key.
    pub routing_key: &'a str,
    /// Wall-clock time, in seconds since the epoch.
    pub time_secs: u64,
    /// Whether `x-dead-letter-routing-key` replaces the routing keys (the CC header goes).
    pub replaces_routing_keys: bool,
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn key(s: &str) -> ShortString {
    ShortString::from(s)
}

/// The CC keys of a message's headers (BCC is never kept in stored headers).
pub fn cc_keys(headers: Option<&FieldTable>) -> Vec<String> {
    let mut keys = Vec::new();
    match headers.and_then(|h| h.inner().get("CC")) {
        Some(AMQPValue::FieldArray(array)) => {
            keys.extend(
                array
                    .as_slice()
                    .iter()
                    .filter_map(string)
                    .map(str::to_owned),
            );
        }
        Some(value) => keys.extend(string(value).map(str::to_owned)),
        None => {}
    }
    keys
}

/// The properties of a message dead-lettered as `death` says, from its current properties.
pub fn dead_letter_properties(properties: &BasicProperties, death: &Death<'_>) -> BasicProperties {
    let mut headers: BTreeMap<ShortString, AMQPValue> = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();

    let mut routing_keys = vec![text(death.routing_key)];
    routing_keys.extend(
        cc_keys(properties.headers().as_ref())
            .iter()
            .map(|k| text(k)),
    );
    let mut info = BTreeMap::new();
    info.insert(key("reason"), text(death.reason.as_str()));
    info.insert(key("queue"), text(death.queue));
    info.insert(key("time"), AMQPValue::Timestamp(death.time_secs));
    info.insert(key("exchange"), text(death.exchange));
    info.insert(
        key("routing-keys"),
        AMQPValue::FieldArray(FieldArray::from(routing_keys)),
    );
    if let Some(expiration) = properties.expiration() {
        info.insert(key("original-expiration"), text(expiration.as_str()));
    }

    let deaths = match headers.get("x-death") {
        None => {
            headers.insert(key("x-first-death-reason"), text(death.reason.as_str()));
            headers.insert(key("x-first-death-queue"), text(death.queue));
            headers.insert(key("x-first-death-exchange"), text(death.exchange));
            info.insert(key("count"), AMQPValue::LongLongInt(1));
            vec![AMQPValue::FieldTable(info.into())]
        }
        Some(AMQPValue::FieldArray(existing)) => {
            update_deaths(existing.as_slice(), death.queue, death.reason, info)
        }
        // A client republished the message and mangled the header: start again, as RabbitMQ
        // does (rabbitmq-server#767).
        Some(_) => {
            info.insert(key("count"), AMQPValue::LongLongInt(1));
            vec![AMQPValue::FieldTable(info.into())]
        }
    };
    headers.insert(
        key("x-death"),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if death.replaces_routing_keys {
        headers.remove("CC");
    }
    without_expiration(properties).with_headers(headers.into())
}

/// The entry's queue and reason, if it is a table that has them.
fn queue_and_reason(entry: &AMQPValue) -> Option<(&str, &str)> {
    let AMQPValue::FieldTable(table) = entry else {
        return None;
    };
    let t = table.inner();
    Some((string(t.get("queue")?)?, string(t.get("reason")?)?))
}

fn count_of(table: &FieldTable) -> Option<i64> {
    match table.inner().get("count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        _ => None,
    }
}

/// A new `x-death` array: the entry for (queue, reason) counted once more and moved to the
/// front, or a fresh entry there. Duplicate entries for one queue and reason (written by old
/// brokers) are merged, their number standing in for a missing count.
fn update_deaths(
    existing: &[AMQPValue],
    queue: &str,
    reason: DeathReason,
    mut info: BTreeMap<ShortString, AMQPValue>,
) -> Vec<AMQPValue> {
    let is_match = |e: &AMQPValue| queue_and_reason(e) == Some((queue, reason.as_str()));
    let matches = existing.iter().filter(|e| is_match(e)).count();
    let mut out = Vec::with_capacity(existing.len() + 1);
    let first = existing.iter().find(|e| is_match(e));
    match first {
        Some(AMQPValue::FieldTable(table)) => {
            // The count may come from a client (a republished message): saturate rather
            // than overflow, so i64::MAX stays i64::MAX.
            let count = count_of(table).unwrap_or(i64::try_from(matches).unwrap_or(i64::MAX));
            let mut updated = table.inner().clone();
            updated.insert(
                key("count"),
                AMQPValue::LongLongInt(count.saturating_add(1)),
            );
            out.push(AMQPValue::FieldTable(updated.into()));
        }
        _ => {
            info.insert(key("count"), AMQPValue::LongLongInt(1));
            out.push(AMQPValue::FieldTable(info.into()));
        }
    }
    out.extend(existing.iter().filter(|e| !is_match(e)).cloned());
    out
}

/// RabbitMQ's cycle rule: a message dead-lettered back to a queue it already died in drops,
/// unless a rejection happened since (a client decided, so the cycle is not automatic).
/// `deaths` is the message's new `x-death` array, most recent first. Deaths for reason
/// `rejected` never count as cycles; the caller checks that first.
pub fn is_cycle(queue: &str, deaths: &[AMQPValue]) -> bool {
    let Some(at) = deaths
        .iter()
        .position(|d| queue_and_reason(d).is_some_and(|(q, _)| q == queue))
    else {
        return false;
    };
    deaths[..=at].iter().all(|d| match queue_and_reason(d) {
        Some((_, reason)) => reason != "rejected",
        // Something we did not write: a client touched it, so not fully automatic.
        None => false,
    })
}

/// The `x-death` array of a message, if any.
pub fn deaths(properties: &BasicProperties) -> &[AMQPValue] {
    match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    {
        Some(AMQPValue::FieldArray(array)) => array.as_slice(),
        _ => &[],
    }
}

/// A copy of `properties` without the expiration.
fn without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death<'a>(queue: &'a str, reason: DeathReason, exchange: &'a str) -> Death<'a> {
        Death {
            queue,
            reason,
            exchange,
            routing_key: "rk",
            time_secs: 1_700_000_000,
            replaces_routing_keys: false,
        }
    }

    fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        p.headers().as_ref()?.inner().get(name)
    }

    fn entry(p: &BasicProperties, i: usize) -> &BTreeMap<ShortString, AMQPValue> {
        match &deaths(p)[i] {
            AMQPValue::FieldTable(t) => t.inner(),
            other => panic!("x-death entry {i} is {other:?}"),
        }
    }

    #[test]
    fn first_death_sets_first_death_headers_and_one_entry() {
        let mut cc = FieldTable::default();
        cc.insert(
            key("CC"),
            AMQPValue::FieldArray(FieldArray::from(vec![text("cc1")])),
        );
        let props = BasicProperties::default()
            .with_expiration("5000".into())
            .with_priority(3)
            .with_headers(cc);
        let out = dead_letter_properties(&props, &death("q1", DeathReason::Expired, "ex"));
        assert_eq!(out.expiration(), &None, "expiration is removed");
        assert_eq!(out.priority(), &Some(3), "other properties stay");
        assert_eq!(header(&out, "x-first-death-reason"), Some(&text("expired")));
        assert_eq!(header(&out, "x-first-death-queue"), Some(&text("q1")));
        assert_eq!(header(&out, "x-first-death-exchange"), Some(&text("ex")));
        assert!(
            header(&out, "CC").is_some(),
            "CC kept without a dead-letter routing key"
        );
        assert_eq!(deaths(&out).len(), 1);
        let e = entry(&out, 0);
        assert_eq!(e.get("count"), Some(&AMQPValue::LongLongInt(1)));
        assert_eq!(e.get("reason"), Some(&text("expired")));
        assert_eq!(e.get("queue"), Some(&text("q1")));
        assert_eq!(e.get("exchange"), Some(&text("ex")));
        assert_eq!(e.get("time"), Some(&AMQPValue::Timestamp(1_700_000_000)));
        assert_eq!(e.get("original-expiration"), Some(&text("5000")));
        assert_eq!(
            e.get("routing-keys"),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![
                text("rk"),
                text("cc1")
            ])))
        );
    }

    #[test]
    fn same_queue_and_reason_increments_and_moves_to_front() {
        let p0 = BasicProperties::default();
        let p1 = dead_letter_properties(&p0, &death("a", DeathReason::Rejected, "x"));
        let p2 = dead_letter_properties(&p1, &death("b", DeathReason::Expired, "dlx"));
        let p3 = dead_letter_properties(&p2, &death("a", DeathReason::Rejected, "dlx2"));
        assert_eq!(deaths(&p3).len(), 2);
        let front = entry(&p3, 0);
        assert_eq!(front.get("queue"), Some(&text("a")));
        assert_eq!(front.get("count"), Some(&AMQPValue::LongLongInt(2)));
        // RabbitMQ 3.10 keeps the entry's other fields as they were.
        assert_eq!(front.get("exchange"), Some(&text("x")));
        assert_eq!(entry(&p3, 1).get("queue"), Some(&text("b")));
        // x-first-death-* describe the first death only.
        assert_eq!(header(&p3, "x-first-death-queue"), Some(&text("a")));
        assert_eq!(header(&p3, "x-first-death-exchange"), Some(&text("x")));
        // Another reason for the same queue is a separate entry.
        let p4 = dead_letter_properties(&p3, &death("a", DeathReason::Maxlen, "x"));
        assert_eq!(deaths(&p4).len(), 3);
    }

    #[test]
    fn dead_letter_routing_key_drops_cc_and_mangled_x_death_restarts() {
        let mut headers = FieldTable::default();
        headers.insert(key("CC"), text("cc"));
        headers.insert(key("x-death"), text("garbage"));
        let props = BasicProperties::default().with_headers(headers);
        let mut d = death("q", DeathReason::Maxlen, "");
        d.replaces_routing_keys = true;
        let out = dead_letter_properties(&props, &d);
        assert!(header(&out, "CC").is_none());
        assert_eq!(deaths(&out).len(), 1);
        assert_eq!(
            entry(&out, 0).get("count"),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert!(
            header(&out, "x-first-death-queue").is_none(),
            "RabbitMQ sets x-first-death-* only when there was no x-death"
        );
    }

    /// A client may publish any `x-death` count, of any integer type: the next death
    /// saturates at i64::MAX instead of overflowing (a panic in debug builds, a wrap to a
    /// negative count in release).
    #[test]
    fn client_supplied_counts_saturate() {
        let counts = [
            (AMQPValue::LongLongInt(i64::MAX), i64::MAX),
            (AMQPValue::LongLongInt(i64::MAX - 1), i64::MAX),
            (AMQPValue::LongLongInt(i64::MIN), i64::MIN + 1),
            (AMQPValue::LongUInt(u32::MAX), i64::from(u32::MAX) + 1),
            (AMQPValue::LongInt(i32::MAX), i64::from(i32::MAX) + 1),
            (AMQPValue::ShortUInt(u16::MAX), i64::from(u16::MAX) + 1),
            (AMQPValue::ShortShortInt(i8::MIN), i64::from(i8::MIN) + 1),
        ];
        for (count, expected) in counts {
            let mut record = FieldTable::default();
            record.insert(key("queue"), text("q"));
            record.insert(key("reason"), text("rejected"));
            record.insert(key("count"), count.clone());
            let mut headers = FieldTable::default();
            headers.insert(
                key("x-death"),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(record)])),
            );
            let props = BasicProperties::default().with_headers(headers);
            let out = dead_letter_properties(&props, &death("q", DeathReason::Rejected, "x"));
            assert_eq!(
                entry(&out, 0).get("count"),
                Some(&AMQPValue::LongLongInt(expected)),
                "count {count:?}"
            );
        }
    }

    #[test]
    fn cycles_without_rejection_are_detected() {
        let p0 = BasicProperties::default();
        // q1 -(expired)-> q2 -(expired)-> back to q1: a cycle.
        let p1 = dead_letter_properties(&p0, &death("q1", DeathReason::Expired, "x"));
        assert!(!is_cycle("q2", deaths(&p1)));
        let p2 = dead_letter_properties(&p1, &death("q2", DeathReason::Expired, "dlx"));
        assert!(is_cycle("q1", deaths(&p2)));
        // A queue dead-lettering to itself.
        assert!(is_cycle("q1", deaths(&p1)));
        // A rejection on the way breaks the cycle.
        let r = dead_letter_properties(&p1, &death("q2", DeathReason::Rejected, "dlx"));
        assert!(!is_cycle("q1", deaths(&r)));
        assert!(!is_cycle("elsewhere", deaths(&p2)));
    }
}
