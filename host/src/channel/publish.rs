//! Publishing: assembling content frames into a message, routing it, mandatory returns,
//! publisher confirms and transactions.

use std::collections::VecDeque;
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, tx};
use amq_protocol::types::FieldTable;
use bytes::{Bytes, BytesMut};

use super::{Channel, ChannelOutlet, Session, Settle};
use crate::exchange::Name;
use crate::limits::Reservation;
use crate::message::{Envelope, Message, header_keys, parse_expiration};
use crate::protocol::{AmqpError, BASIC_CLASS, ContentHeader, encode_properties};
use crate::queue::Enqueued;
use crate::store::Ticket;
use crate::vhost::Exchange;
use crate::vhost::REPLY_TO_QUEUE;

/// A basic.publish waiting for its content.
pub(crate) struct PendingPublish {
    exchange: Arc<Exchange>,
    envelope: Arc<Envelope>,
    mandatory: bool,
    header: Option<Box<ContentHeader>>,
    body: Body,
    /// A body spanning several frames holds its bytes against the connection's
    /// `connection_content_max_bytes` until it completes or the channel closes.
    reserved: Option<Reservation>,
}

/// Body frames received so far: most bodies fit one frame and are kept without copying.
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len(),
            Body::Many(b) => b.len(),
        }
    }

    fn push(&mut self, chunk: Bytes, total: u64) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                // Grown as frames arrive, never allocated at the announced size up front: a
                // header may announce 512 MiB and send one frame.
                let received = first.len() + chunk.len();
                let mut all = BytesMut::with_capacity((received * 2).min(total as usize));
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        }
    }
}

/// A complete message ready to route.
pub(crate) struct Publish {
    exchange: Arc<Exchange>,
    message: Arc<Message>,
    /// The decoded properties, for routing (the message keeps only their bytes).
    properties: BasicProperties,
    /// Extra routing keys from the CC and BCC headers.
    extra_keys: Vec<Name>,
    mandatory: bool,
}

/// Publisher-confirm state: the next tag, acks not yet written (coalesced into one
/// `multiple` ack per read batch), and confirms held until the message store has synced the
/// messages they cover.
#[derive(Default)]
pub(crate) struct Confirms {
    next_tag: u64,
    last_sent: u64,
    unsent_ack: Option<u64>,
    /// (store ticket, tag, ack rather than nack), in tag order. Once something waits, every
    /// later confirm queues behind it so that a `multiple` ack never covers a waiting tag.
    waiting: VecDeque<(Ticket, u64, bool)>,
}

impl Confirms {
    /// Whether confirms wait for the message store.
    pub(crate) fn awaiting_sync(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// A transaction's buffered work.
#[derive(Default)]
pub(crate) struct TxState {
    pub(crate) publishes: Vec<Publish>,
    pub(crate) settlements: Vec<(Settle, u64, bool)>,
    /// What the buffered work holds, against `tx_max_bytes`: bodies and properties, and a
    /// fixed cost per settlement.
    pub(crate) bytes: u64,
}

/// What one buffered basic.ack/nack/reject counts against `tx_max_bytes`.
pub(crate) const TX_SETTLEMENT_BYTES: u64 = 32;

impl TxState {
    /// Accounts `bytes` more buffered work, refusing what would cross `max` (406).
    pub(crate) fn account(&mut self, bytes: u64, max: u64) -> Result<(), AmqpError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > max {
            return Err(AmqpError::precondition_failed(format!(
                "transaction buffers more than tx_max_bytes ({max}) bytes; it is discarded"
            )));
        }
        Ok(())
    }
}

impl Channel {
    pub(super) fn start_publish(
        &mut self,
        cx: &Session<'_>,
        publish: basic::Publish,
    ) -> Result<(), AmqpError> {
        if publish.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        cx.may(
            crate::auth::Access::Write,
            crate::auth::ResourceKind::Exchange,
            publish.exchange.as_str(),
        )?;
        let exchange = match self.last_exchange.upgrade() {
            Some(last) if *last.spec.name == *publish.exchange.as_str() && !last.is_removed() => {
                last
            }
            _ => {
                let exchange = cx.vhost.exchange(publish.exchange.as_str())?;
                self.last_exchange = Arc::downgrade(&exchange);
                exchange
            }
        };
        cx.may_route(
            crate::auth::Access::Write,
            &exchange.spec.name,
            &exchange.spec.kind,
            publish.routing_key.as_str(),
        )?;
        if exchange.spec.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.spec.name, cx.vhost.name
            )));
        }
        // Publishers mostly repeat their exchange and routing key: share the last message's
        // envelope instead of allocating one per message (each queued message keeps it).
        let envelope = match &self.last_envelope {
            Some(last)
                if *last.routing_key == *publish.routing_key.as_str()
                    && Arc::ptr_eq(&last.exchange, &exchange.spec.name) =>
            {
                last.clone()
            }
            _ => {
                let envelope = Envelope::new(
                    exchange.spec.name.clone(),
                    Name::from(publish.routing_key.as_str()),
                );
                self.last_envelope = Some(envelope.clone());
                envelope
            }
        };
        self.outlet.info.published.add(1);
        self.pending = Some(PendingPublish {
            exchange,
            envelope,
            mandatory: publish.mandatory,
            header: None,
            body: Body::Empty,
            reserved: None,
        });
        Ok(())
    }

    pub(super) fn content_header(
        &mut self,
        cx: &Session<'_>,
        header: Box<ContentHeader>,
    ) -> Result<(), AmqpError> {
        let Some(pending) = &mut self.pending else {
            return Err(AmqpError::unexpected_frame(format!(
                "content header on channel {} without a publish",
                self.id
            )));
        };
        if pending.header.is_some() {
            return Err(AmqpError::unexpected_frame(
                "second content header for one publish",
            ));
        }
        if header.class_id != BASIC_CLASS {
            return Err(AmqpError::unexpected_frame(format!(
                "content header for class {}",
                header.class_id
            )));
        }
        if header.body_size > cx.max_message_bytes {
            self.pending = None;
            return Err(AmqpError::precondition_failed(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, cx.max_message_bytes
            ))
            .on_method(60, 40));
        }
        let empty = header.body_size == 0;
        pending.header = Some(header);
        if empty {
            return self.finish_publish(cx);
        }
        Ok(())
    }

    /// Feeds a body frame to the pending publish.
    pub fn handle_body(&mut self, cx: &Session<'_>, chunk: Bytes) -> Result<(), AmqpError> {
        let Some(PendingPublish {
            header: Some(header),
            body,
            reserved,
            ..
        }) = &mut self.pending
        else {
            return Err(AmqpError::unexpected_frame(format!(
                "content body on channel {} without a content header",
                self.id
            )));
        };
        let expected = header.body_size;
        if body.len() as u64 + chunk.len() as u64 > expected {
            return Err(AmqpError::unexpected_frame(
                "content body longer than announced",
            ));
        }
        let completes = body.len() as u64 + chunk.len() as u64 == expected;
        if !completes || !matches!(body, Body::Empty) {
            reserved
                .get_or_insert_with(|| cx.content.reserve())
                .grow(chunk.len() as u64)?;
        }
        body.push(chunk, expected);
        if completes {
            return self.finish_publish(cx);
        }
        Ok(())
    }

    fn finish_publish(&mut self, cx: &Session<'_>) -> Result<(), AmqpError> {
        let Some(PendingPublish {
            exchange,
            envelope,
            mandatory,
            header: Some(header),
            body,
            reserved: _,
        }) = self.pending.take()
        else {
            return Ok(());
        };
        let ContentHeader {
            mut properties,
            mut raw_properties,
            ..
        } = *header;
        // RabbitMQ's order: direct reply-to, then user_id, then expiration.
        if properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO_QUEUE)
        {
            let Some(reply) = &self.reply else {
                return Err(
                    AmqpError::precondition_failed("fast reply consumer does not exist")
                        .on_method(60, 40),
                );
            };
            properties = properties.with_reply_to(reply.name.as_ref().into());
            raw_properties = encode_properties(&properties)?;
        }
        if let Some(user_id) = properties.user_id()
            && user_id.as_str() != cx.user
        {
            return Err(AmqpError::precondition_failed(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                user_id, cx.user
            ))
            .on_method(60, 40));
        }
        if let Some(expiration) = properties.expiration()
            && let Err(reason) = parse_expiration(expiration.as_str())
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid expiration '{expiration}': {reason}"
            ))
            .on_method(60, 40));
        }
        let mut extra_keys = Vec::new();
        if let Some(headers) = properties.headers() {
            let inner = headers.inner();
            header_keys(inner.get("CC"), &mut extra_keys);
            if inner.contains_key("BCC") {
                header_keys(inner.get("BCC"), &mut extra_keys);
                // BCC keys route the message but are never delivered (RabbitMQ's
                // sender-selected distribution).
                let kept: FieldTable = inner
                    .iter()
                    .filter(|(k, _)| k.as_str() != "BCC")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>()
                    .into();
                properties = properties.with_headers(kept);
                raw_properties = encode_properties(&properties)?;
            }
        }
        let message = Arc::new(Message::from_wire(
            envelope,
            &properties,
            &raw_properties,
            body.into_bytes(),
        ));
        let publish = Publish {
            exchange,
            message,
            properties,
            extra_keys,
            mandatory,
        };
        match &mut self.tx {
            Some(tx) => {
                let size = publish.message.body().len() + publish.message.raw_properties().len();
                tx.account(size as u64, cx.limits.tx_max_bytes)?;
                tx.publishes.push(publish);
            }
            None => {
                self.route_and_enqueue(cx, publish);
            }
        }
        Ok(())
    }

    /// Routes and enqueues; returns the store ticket to await before the message counts as
    /// safely received (0: nothing was stored).
    pub(super) fn route_and_enqueue(&mut self, cx: &Session<'_>, publish: Publish) -> Ticket {
        let Publish {
            exchange,
            message,
            properties,
            extra_keys,
            mandatory,
        } = publish;
        if let Some(delayed) = exchange.delayed()
            && let Some(due) =
                crate::vhost::delayed::due_time(&properties, crate::vhost::delayed::now_ms())
        {
            let delayed = delayed.clone();
            return self.hold_delayed(
                cx, &delayed, exchange, message, properties, extra_keys, mandatory, due,
            );
        }
        self.find_destinations(cx, &exchange, &message, &properties, &extra_keys);
        // A reply handed to a direct reply-to consumer counts as routed.
        let unroutable = self.routed.queues.is_empty() && self.routed.replies.is_empty();
        if self.routed.delay_ms > 0
            && !unroutable
            && let Some(delayed) = exchange.delayed()
        {
            let delayed = delayed.clone();
            return self.hold_decided(cx, &delayed, &exchange, &message);
        }
        cx.exchanges.borrow_mut().count(&exchange, !unroutable);
        if unroutable && mandatory {
            self.outlet.send_return(&message, 312, "NO_ROUTE");
        }
        let mut refused = false;
        // A persistent message is confirmed only once what its routing wrote to durable plugin
        // state is on disk too (x-dedup's record of its id), wherever the message went.
        let mut ticket = if message.persistent() {
            self.routed.state_ticket
        } else {
            0
        };
        for queue in self.routed.queues.drain(..) {
            match queue.publish(message.clone()) {
                // x-overflow reject-publish(-dlx), or the store failed: the queue refused it.
                Enqueued::Rejected => refused = true,
                Enqueued::Stored(stored) => ticket = ticket.max(stored),
                Enqueued::Accepted => {}
            }
            if queue.in_flow() {
                cx.note_flow(&queue);
            }
        }
        for reply in self.routed.replies.drain(..) {
            // Congested since routing: dropped like a reply to a requester that is gone.
            let _ = reply.deliver_reply(&message);
        }
        // A plugin failed and the message reached no queue, or a queue refused it (RabbitMQ
        // nacks when any queue rejects): the publisher must know.
        self.confirm(
            cx,
            ticket,
            (unroutable && self.routed.router_failed) || refused,
        );
        ticket
    }

    /// The publisher confirm of one message: held until the store syncs `ticket` (0: nothing
    /// to wait for), a nack when `nack`.
    fn confirm(&mut self, cx: &Session<'_>, ticket: Ticket, nack: bool) {
        if let Some(confirms) = &mut self.confirms {
            confirms.next_tag += 1;
            let tag = confirms.next_tag;
            if ticket != 0 || confirms.awaiting_sync() {
                // Persistent in a durable queue: confirmed once on disk (group commit).
                let behind = confirms.waiting.back().map_or(0, |w| w.0);
                confirms.waiting.push_back((ticket.max(behind), tag, !nack));
            } else if nack {
                flush_confirms(&self.outlet, confirms, cx);
                send_nack(&self.outlet, confirms, tag);
            } else {
                confirms.unsent_ack = Some(tag);
            }
        }
    }

    /// Routes `message` by its routing key and its CC/BCC keys into `self.routed`.
    fn find_destinations(
        &mut self,
        cx: &Session<'_>,
        exchange: &Arc<Exchange>,
        message: &Arc<Message>,
        properties: &BasicProperties,
        extra_keys: &[Name],
    ) {
        if extra_keys.is_empty() {
            let keys = [&**message.routing_key()];
            cx.vhost
                .route(exchange, message, properties, &keys, &mut self.routed);
        } else {
            let mut keys: Vec<&str> = Vec::with_capacity(extra_keys.len() + 1);
            keys.push(message.routing_key());
            keys.extend(extra_keys.iter().map(|k| k.as_ref()));
            cx.vhost
                .route(exchange, message, properties, &keys, &mut self.routed);
        }
    }

    /// A message for a delayed exchange, due at `due`: with `mandatory`, routed now only to
    /// learn whether it would reach a queue (returned if not, and then not held); otherwise
    /// stored until due. Its confirm waits for the store when it was stored durably.
    #[allow(clippy::too_many_arguments)]
    fn hold_delayed(
        &mut self,
        cx: &Session<'_>,
        delayed: &Arc<crate::vhost::DelayedExchange>,
        exchange: Arc<Exchange>,
        message: Arc<Message>,
        properties: BasicProperties,
        extra_keys: Vec<Name>,
        mandatory: bool,
        due: u64,
    ) -> Ticket {
        if mandatory {
            // A dry run: a plugin type that records what it routes (x-dedup) must not see
            // the message now and then again, as a repeat, when it fires.
            crate::store::dry_run(|| {
                self.find_destinations(cx, &exchange, &message, &properties, &extra_keys);
            });
            let unroutable = self.routed.queues.is_empty() && self.routed.replies.is_empty();
            self.routed.queues.clear();
            self.routed.replies.clear();
            if unroutable {
                cx.exchanges.borrow_mut().count(&exchange, false);
                self.outlet.send_return(&message, 312, "NO_ROUTE");
                self.confirm(cx, 0, self.routed.router_failed);
                return 0;
            }
        }
        cx.exchanges.borrow_mut().count(&exchange, true);
        match delayed.hold(&message, &extra_keys, due) {
            Ok(ticket) => {
                self.confirm(cx, ticket, false);
                ticket
            }
            Err(error) => {
                tracing::warn!(exchange = %exchange.spec.name, %error, "delayed message refused");
                self.confirm(cx, 0, true);
                0
            }
        }
    }

    /// A message whose plugin decided a delay (`self.routed.delay_ms`) and which reached the
    /// queues in `self.routed.queues`: stored to be put into those queues when due (mandatory
    /// was satisfied by reaching them now). Its confirm waits for the store when it was stored
    /// durably, and for the plugin state its routing wrote.
    fn hold_decided(
        &mut self,
        cx: &Session<'_>,
        delayed: &Arc<crate::vhost::DelayedExchange>,
        exchange: &Arc<Exchange>,
        message: &Arc<Message>,
    ) -> Ticket {
        let queues: Vec<Name> = self
            .routed
            .queues
            .drain(..)
            .map(|q| q.name().clone())
            .collect();
        self.routed.replies.clear();
        cx.exchanges.borrow_mut().count(exchange, true);
        let due = crate::vhost::delayed::now_ms().saturating_add(self.routed.delay_ms);
        let state = if message.persistent() {
            self.routed.state_ticket
        } else {
            0
        };
        match delayed.hold_decided(message, &queues, due) {
            Ok(ticket) => {
                let ticket = ticket.max(state);
                self.confirm(cx, ticket, false);
                ticket
            }
            Err(error) => {
                tracing::warn!(exchange = %exchange.spec.name, %error, "delayed message refused");
                self.confirm(cx, 0, true);
                0
            }
        }
    }

    /// Writes the acks coalesced during the last read batch, and the confirms and tx.commit-ok
    /// replies that were waiting for the message store to sync.
    pub fn flush_confirms(&mut self, cx: &Session<'_>) {
        if let Some(confirms) = &mut self.confirms {
            flush_confirms(&self.outlet, confirms, cx);
            let unconfirmed = confirms.next_tag.saturating_sub(confirms.last_sent);
            if unconfirmed != self.outlet.info.unconfirmed.get() {
                self.outlet.info.unconfirmed.set(unconfirmed);
            }
        }
        if !self.commits.is_empty() {
            let synced = cx.vhost.synced();
            while self.commits.front().is_some_and(|&t| t <= synced) {
                self.commits.pop_front();
                self.reply(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
            }
        }
    }

    /// Whether replies wait for the message store (the connection then watches it).
    pub fn awaiting_sync(&self) -> bool {
        !self.commits.is_empty() || self.confirms.as_ref().is_some_and(Confirms::awaiting_sync)
    }
}

/// Writes the coalesced acks, then the held confirms whose messages the store has synced (all
/// of them as nacks if the store failed: those messages will never be on disk).
fn flush_confirms(outlet: &ChannelOutlet, confirms: &mut Confirms, cx: &Session<'_>) {
    if let Some(tag) = confirms.unsent_ack.take() {
        send_ack(outlet, confirms, tag);
    }
    if confirms.waiting.is_empty() {
        return;
    }
    let synced = cx.vhost.synced();
    let failed = cx.vhost.store_failure().is_some();
    let mut ack_upto = None;
    while let Some(&(ticket, tag, ack)) = confirms.waiting.front() {
        if ticket > synced && !failed {
            break;
        }
        confirms.waiting.pop_front();
        if ack && (ticket <= synced) {
            ack_upto = Some(tag);
        } else {
            if let Some(upto) = ack_upto.take() {
                send_ack(outlet, confirms, upto);
            }
            send_nack(outlet, confirms, tag);
        }
    }
    if let Some(upto) = ack_upto {
        send_ack(outlet, confirms, upto);
    }
}

fn send_nack(outlet: &ChannelOutlet, confirms: &mut Confirms, tag: u64) {
    outlet.send_method(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
        delivery_tag: tag,
        multiple: false,
        requeue: false,
    })));
    confirms.last_sent = tag;
}

/// Acks every tag after the last one sent up to `tag` (one `multiple` ack when several).
fn send_ack(outlet: &ChannelOutlet, confirms: &mut Confirms, tag: u64) {
    let multiple = tag > confirms.last_sent + 1;
    confirms.last_sent = tag;
    outlet.send_method(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag: tag,
        multiple,
    })));
}

#[cfg(test)]
mod tests {
    use super::Body;
    use bytes::Bytes;

    #[test]
    fn a_body_grows_with_its_frames_not_with_its_announced_size() {
        // A header may announce 512 MiB and send two small frames: nothing near that size is
        // allocated.
        let announced = 512 << 20;
        let mut body = Body::Empty;
        body.push(Bytes::from_static(&[1; 100]), announced);
        body.push(Bytes::from_static(&[2; 100]), announced);
        let Body::Many(all) = &body else {
            panic!("two frames are gathered into one buffer");
        };
        assert!(all.capacity() < 4096, "capacity {}", all.capacity());
        for _ in 0..100 {
            body.push(Bytes::from_static(&[3; 1000]), announced);
        }
        assert_eq!(body.len(), 200 + 100 * 1000);
        let bytes = body.into_bytes();
        assert_eq!(&bytes[..100], &[1; 100]);
        assert_eq!(&bytes[200..1200], &[3; 1000]);
    }
}
