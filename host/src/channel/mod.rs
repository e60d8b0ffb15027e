//! One AMQP channel: its state machine for publish, consume, ack, qos, confirms and tx.
//!
//! Methods arrive already decoded from the connection; topology methods become vhost calls,
//! basic methods drive queues and the channel's [`ChannelOutlet`]. Errors come back as
//! [`AmqpError`] and the connection decides whether they close the channel or itself.

mod access;
mod outlet;
mod publish;
mod topology;

pub use outlet::{ChannelOutlet, ReplyTarget, Unacked};

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, tx};

use crate::connection::Writer;
use crate::exchange::Name;
use crate::message::QueuedMessage;
use crate::protocol::{AmqpError, ContentHeader};
use crate::queue::{ConnectionId, ConsumeError, Consumer, Queue};
use crate::vhost::{REPLY_TO_QUEUE, ReplyConsumer, Routed, VHost};

use publish::{PendingPublish, TxState};

/// What a channel needs from its connection.
pub struct Session<'a> {
    /// The vhost the connection opened.
    pub vhost: &'a Arc<VHost>,
    /// The connection, for exclusive queues.
    pub connection_id: ConnectionId,
    /// Largest accepted body.
    pub max_message_bytes: u64,
    /// The authenticated user (checked against the user_id property).
    pub user: &'a str,
    /// The vhost's limits (consumers per channel, transaction size).
    pub limits: &'a crate::limits::VhostLimits,
    /// Bodies still arriving on the connection's channels.
    pub content: &'a Arc<crate::limits::ContentBudget>,
    /// Queues in flow that this connection published into during the current read turn: the
    /// connection waits for them before it reads on (`queue/flow.rs`).
    pub throttled: &'a std::cell::RefCell<Vec<Arc<Queue>>>,
    /// What the user may do in the vhost: every operation is checked (`access.rs`).
    pub grants: &'a crate::auth::Grants,
    /// Messages published per exchange during the current read turn.
    pub exchanges: &'a std::cell::RefCell<crate::vhost::ExchangeTally>,
}

impl Session<'_> {
    /// Remembers that the connection published into `queue` while it was in flow.
    pub(crate) fn note_flow(&self, queue: &Arc<Queue>) {
        let mut throttled = self.throttled.borrow_mut();
        if !throttled.iter().any(|q| Arc::ptr_eq(q, queue)) {
            throttled.push(queue.clone());
        }
    }
}

/// An open channel.
pub struct Channel {
    id: u16,
    outlet: Arc<ChannelOutlet>,
    consumers: HashMap<Name, (Arc<Consumer>, Arc<Queue>)>,
    /// basic.qos global=false: prefetch for consumers created afterwards.
    consumer_prefetch: u32,
    /// The last queue declared, used when a method names the queue "" (spec 1.7.2.1).
    last_queue: Option<Name>,
    pending: Option<PendingPublish>,
    confirms: Option<publish::Confirms>,
    tx: Option<TxState>,
    /// tx.commit-ok replies held until the store syncs the committed messages (tickets).
    commits: std::collections::VecDeque<crate::store::Ticket>,
    routed: Routed,
    /// The exchange and routing key of the last publish, shared by the next ones that repeat them.
    last_envelope: Option<Arc<crate::message::Envelope>>,
    /// The exchange of the last publish: the next one to the same name skips the vhost's
    /// topology lock (shared by every publisher) while it has not been removed. Weak: a
    /// deleted exchange (a WASM one holds an instance) is not kept alive by a quiet channel.
    last_exchange: std::sync::Weak<crate::vhost::Exchange>,
    /// The direct reply-to consumer (basic.consume on `amq.rabbitmq.reply-to`).
    reply: Option<ReplyState>,
    /// The channel's place in its user's channel count, given back when it is dropped.
    slot: Option<crate::limits::Held>,
    /// Deliveries acked during the current read turn, settled in their queues when it ends
    /// (or before this channel's next other method): one queue lock and one dispatch per
    /// queue for a turn's acks, instead of one per basic.ack.
    acked: Vec<Unacked>,
}

/// A channel's direct reply-to consumer.
pub(crate) struct ReplyState {
    /// Its consumer tag.
    tag: Name,
    /// The reply-to name requests get (`amq.rabbitmq.reply-to.<suffix>`).
    pub(crate) name: Name,
    /// Kept alive here; the vhost holds a weak reference.
    _target: Arc<ReplyTarget>,
}

impl Channel {
    /// Opens channel `id`.
    pub fn new(id: u16, connection: ConnectionId, writer: Arc<Writer>) -> Self {
        Self {
            id,
            outlet: ChannelOutlet::new(id, connection, writer),
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            last_queue: None,
            pending: None,
            confirms: None,
            tx: None,
            commits: std::collections::VecDeque::new(),
            routed: Routed::default(),
            last_envelope: None,
            last_exchange: std::sync::Weak::new(),
            reply: None,
            slot: None,
            acked: Vec::new(),
        }
    }

    /// Keeps the channel's place in its user's channel count until the channel is dropped.
    pub fn hold(&mut self, slot: crate::limits::Held) {
        self.slot = Some(slot);
    }

    /// Enables the delivery acknowledgement timeout (RabbitMQ's `consumer_timeout`): `alarm`
    /// wakes the connection, which then closes the channels reported by
    /// [`Channel::timed_out`].
    pub fn set_consumer_timeout(&self, after: Duration, alarm: Arc<tokio::sync::Notify>) {
        self.outlet.set_consumer_timeout(after, alarm);
    }

    /// The 406 to close this channel with, if a delivery stayed unacknowledged too long.
    pub fn timed_out(&self) -> Option<AmqpError> {
        self.outlet.timed_out()
    }

    /// Whether a publish is waiting for its content header or body.
    pub fn expects_content(&self) -> bool {
        self.pending.is_some()
    }

    fn reply(&self, method: AMQPClass) {
        self.outlet.send_method(method);
    }

    /// Handles one method on this channel.
    pub fn handle_method(&mut self, cx: &Session<'_>, method: AMQPClass) -> Result<(), AmqpError> {
        let ids = (method.get_amqp_class_id(), method.get_amqp_method_id());
        self.dispatch(cx, method)
            .map_err(|e| e.on_method(ids.0, ids.1))
    }

    fn dispatch(&mut self, cx: &Session<'_>, method: AMQPClass) -> Result<(), AmqpError> {
        // Every other method sees the acks before it settled, as if each had been applied
        // when it arrived.
        if !matches!(method, AMQPClass::Basic(basic::AMQPMethod::Ack(_))) {
            self.settle_acked();
        }
        self.forget_cancelled();
        match method {
            AMQPClass::Exchange(m) => self.exchange_method(cx, m),
            AMQPClass::Queue(m) => self.queue_method(cx, m),
            AMQPClass::Basic(m) => self.basic_method(cx, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirms.get_or_insert_with(Default::default);
                self.outlet.info.confirm.set(1);
                if !select.nowait {
                    self.reply(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                        confirm::SelectOk {},
                    )));
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(cx, m),
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                if !flow.active {
                    // RabbitMQ 3.x refuses client-initiated flow control; so do we, so that
                    // clients see the same behaviour on both brokers.
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.outlet.set_flow(flow.active);
                self.reply(AMQPClass::Channel(channel::AMQPMethod::FlowOk(
                    channel::FlowOk {
                        active: flow.active,
                    },
                )));
                if flow.active {
                    self.kick_consumed_queues();
                }
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Access(_) => {
                Err(AmqpError::not_implemented("access class is not supported"))
            }
            other => Err(AmqpError::command_invalid(format!(
                "method {}.{} is not valid on a channel",
                other.get_amqp_class_id(),
                other.get_amqp_method_id()
            ))),
        }
    }

    fn basic_method(
        &mut self,
        cx: &Session<'_>,
        method: basic::AMQPMethod,
    ) -> Result<(), AmqpError> {
        use basic::AMQPMethod as B;
        match method {
            B::Publish(publish) => self.start_publish(cx, publish),
            B::Qos(qos) => {
                // A non-zero prefetch-size was refused (540) while decoding: amq-protocol drops
                // the field (`protocol::frame::check_unsupported`).
                if qos.global {
                    self.outlet.set_global_prefetch(qos.prefetch_count.into());
                    self.kick_consumed_queues();
                } else {
                    self.consumer_prefetch = qos.prefetch_count.into();
                    self.outlet.info.prefetch.set(qos.prefetch_count.into());
                }
                self.reply(AMQPClass::Basic(B::QosOk(basic::QosOk {})));
                Ok(())
            }
            B::Consume(consume) => self.consume(cx, consume),
            B::Cancel(cancel) => {
                let tag: &str = cancel.consumer_tag.as_str();
                if self.reply.as_ref().is_some_and(|r| &*r.tag == tag) {
                    if let Some(reply) = self.reply.take() {
                        cx.vhost.unregister_reply_consumer(&reply.name);
                    }
                } else if let Some((consumer, queue)) = self.consumers.remove(tag) {
                    self.note_consumers();
                    if queue.remove_consumer(&consumer) {
                        cx.vhost.remove_queue(&queue);
                    }
                }
                if !cancel.nowait {
                    self.reply(AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                        consumer_tag: cancel.consumer_tag,
                    })));
                }
                Ok(())
            }
            B::Get(get) => {
                let name = self.queue_name(get.queue.as_str())?;
                cx.may(
                    crate::auth::Access::Read,
                    crate::auth::ResourceKind::Queue,
                    &name,
                )?;
                let queue = cx.vhost.queue_for(&name, cx.connection_id)?;
                match queue.get(get.no_ack) {
                    Some((entry, remaining)) => self
                        .outlet
                        .deliver_get(&queue, entry, remaining, get.no_ack),
                    None => self.reply(AMQPClass::Basic(B::GetEmpty(basic::GetEmpty {}))),
                }
                Ok(())
            }
            B::Ack(ack) => self.settle(cx, Settle::Ack, ack.delivery_tag, ack.multiple),
            B::Nack(nack) => self.settle(
                cx,
                Settle::Reject {
                    requeue: nack.requeue,
                },
                nack.delivery_tag,
                nack.multiple,
            ),
            B::Reject(reject) => self.settle(
                cx,
                Settle::Reject {
                    requeue: reject.requeue,
                },
                reject.delivery_tag,
                false,
            ),
            B::Recover(basic::Recover { requeue: false })
            | B::RecoverAsync(basic::RecoverAsync { requeue: false }) => {
                // Redelivering to the original consumer only is not implemented by RabbitMQ
                // either: 540 closes the connection.
                Err(AmqpError::not_implemented("requeue=false"))
            }
            B::Recover(_) | B::RecoverAsync(_) => {
                // Both forms requeue every unacked message, as RabbitMQ does. recover-ok goes
                // out first: clients expect the redeliveries after it.
                let unacked = self.outlet.take_all_unacked();
                if matches!(method, B::Recover(_)) {
                    self.reply(AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})));
                }
                requeue_grouped(unacked);
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "basic method {} is not valid from a client",
                AMQPClass::Basic(other).get_amqp_method_id()
            ))),
        }
    }

    fn consume(&mut self, cx: &Session<'_>, consume: basic::Consume) -> Result<(), AmqpError> {
        if consume.queue.as_str() == REPLY_TO_QUEUE {
            return self.consume_replies(cx, consume);
        }
        let max = cx.limits.consumer_max_per_channel;
        if self.consumers.len() >= max as usize {
            return Err(AmqpError::not_allowed(format!(
                "reached maximum ({max}) of consumers per channel"
            )));
        }
        let name = self.queue_name(consume.queue.as_str())?;
        cx.may(
            crate::auth::Access::Read,
            crate::auth::ResourceKind::Queue,
            &name,
        )?;
        let queue = cx.vhost.queue_for(&name, cx.connection_id)?;
        let tag: Name = if consume.consumer_tag.as_str().is_empty() {
            Name::from(format!("amq.ctag-{}", crate::names::random_suffix()?))
        } else {
            Name::from(consume.consumer_tag.as_str())
        };
        if self.tag_in_use(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let priority = match consume.arguments.inner().get("x-priority") {
            None => 0,
            // RabbitMQ accepts the integer field types (not timestamps) and keeps the value.
            Some(value) => crate::queue::int_value(value).ok_or_else(|| {
                AmqpError::precondition_failed(format!(
                    "invalid arg 'x-priority' for consumer '{tag}': expected an integer, got {}",
                    crate::queue::type_name(value)
                ))
            })?,
        };
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            outlet: self.outlet.clone(),
            no_ack: consume.no_ack,
            exclusive: consume.exclusive,
            priority,
            prefetch: self.consumer_prefetch,
            unacked: Default::default(),
        });
        let outlet = &self.outlet;
        let nowait = consume.nowait;
        let ok_tag = tag.clone();
        queue
            .add_consumer(consumer.clone(), || {
                if !nowait {
                    outlet.send_method(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                        basic::ConsumeOk {
                            consumer_tag: ok_tag.as_ref().into(),
                        },
                    )));
                }
            })
            .map_err(|e| match e {
                ConsumeError::ExclusiveInUse => AmqpError::access_refused(format!(
                    "queue '{name}' in vhost '{}' in exclusive use",
                    cx.vhost.name
                )),
                ConsumeError::Deleted => {
                    AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", cx.vhost.name))
                }
            })?;
        self.consumers.insert(tag, (consumer, queue));
        self.note_consumers();
        Ok(())
    }

    /// Keeps the consumer count the management API shows.
    fn note_consumers(&self) {
        self.outlet.info.consumers.set(self.consumers.len() as u64);
    }

    /// The channel's shared side: its deliveries and counts.
    pub fn outlet(&self) -> &Arc<ChannelOutlet> {
        &self.outlet
    }

    fn tag_in_use(&self, tag: &str) -> bool {
        self.consumers.contains_key(tag) || self.reply.as_ref().is_some_and(|r| &*r.tag == tag)
    }

    /// basic.consume on `amq.rabbitmq.reply-to`: the channel's direct reply-to consumer, with
    /// RabbitMQ's rules (no-ack only, one per channel).
    fn consume_replies(
        &mut self,
        cx: &Session<'_>,
        consume: basic::Consume,
    ) -> Result<(), AmqpError> {
        let given = consume.consumer_tag.as_str();
        if !given.is_empty() && self.tag_in_use(given) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{given}'"
            )));
        }
        if !consume.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let tag: Name = if given.is_empty() {
            Name::from(format!("amq.ctag-{}", crate::names::random_suffix()?))
        } else {
            Name::from(given)
        };
        let target = Arc::new(ReplyTarget {
            tag: tag.clone(),
            outlet: self.outlet.clone(),
        });
        let weak: Weak<dyn ReplyConsumer> = Arc::downgrade(&target) as Weak<ReplyTarget>;
        let name = cx.vhost.register_reply_consumer(weak)?;
        self.reply = Some(ReplyState {
            tag: tag.clone(),
            name,
            _target: target,
        });
        if !consume.nowait {
            self.reply(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                basic::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                },
            )));
        }
        Ok(())
    }

    fn settle(
        &mut self,
        cx: &Session<'_>,
        how: Settle,
        tag: u64,
        multiple: bool,
    ) -> Result<(), AmqpError> {
        if let Some(tx) = &mut self.tx {
            tx.account(publish::TX_SETTLEMENT_BYTES, cx.limits.tx_max_bytes)?;
            tx.settlements.push((how, tag, multiple));
            return Ok(());
        }
        if matches!(how, Settle::Ack) {
            // Taken now (an unknown tag fails here, in order), settled at the turn's end.
            let count = self.outlet.take_unacked(tag, multiple, &mut self.acked)?;
            self.outlet.info.acked.add(count as u64);
            return Ok(());
        }
        let mut taken = Vec::new();
        self.outlet.take_unacked(tag, multiple, &mut taken)?;
        apply_settlement(how, taken);
        if self.outlet.global_prefetch() != 0 {
            // Channel-wide credit came back: every queue consumed here may deliver again.
            self.kick_consumed_queues();
        }
        Ok(())
    }

    /// Settles the acks of the current turn in their queues, which then deliver again. The
    /// connection calls it when a read turn ends; the channel before any other method and
    /// when it closes.
    pub fn settle_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        settle_acks(&mut self.acked);
        if self.outlet.global_prefetch() != 0 {
            // Channel-wide credit came back: every queue consumed here may deliver again.
            self.kick_consumed_queues();
        }
    }

    fn tx_method(&mut self, cx: &Session<'_>, method: tx::AMQPMethod) -> Result<(), AmqpError> {
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Default::default);
                self.outlet.info.transactional.set(1);
                self.reply(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(tx) = self.tx.take() else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                let result = self.commit(cx, tx);
                self.tx = Some(TxState::default());
                let ticket = result?;
                if ticket > cx.vhost.synced() || !self.commits.is_empty() {
                    // Persistent messages were committed: commit-ok once they are on disk.
                    self.commits.push_back(ticket);
                } else {
                    self.reply(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
                }
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(tx) = &mut self.tx else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                *tx = TxState::default();
                self.reply(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})));
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "tx method {} is not valid from a client",
                AMQPClass::Tx(other).get_amqp_method_id()
            ))),
        }
    }

    fn commit(&mut self, cx: &Session<'_>, tx: TxState) -> Result<crate::store::Ticket, AmqpError> {
        let mut ticket = 0;
        for publish in tx.publishes {
            ticket = ticket.max(self.route_and_enqueue(cx, publish));
        }
        for (how, tag, multiple) in tx.settlements {
            let mut taken = Vec::new();
            let count = self.outlet.take_unacked(tag, multiple, &mut taken)?;
            if matches!(how, Settle::Ack) {
                self.outlet.info.acked.add(count as u64);
            }
            apply_settlement(how, taken);
        }
        self.kick_consumed_queues();
        Ok(ticket)
    }

    /// Resolves the empty queue name to the channel's last declared queue.
    fn queue_name(&self, name: &str) -> Result<Name, AmqpError> {
        if !name.is_empty() {
            return Ok(Name::from(name));
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    fn forget_cancelled(&mut self) {
        for tag in self.outlet.take_cancelled() {
            self.consumers.remove(&tag);
        }
        self.note_consumers();
    }

    fn kick_consumed_queues(&self) {
        let mut kicked: Vec<&Arc<Queue>> = Vec::new();
        for (_, queue) in self.consumers.values() {
            if !kicked.iter().any(|q| Arc::ptr_eq(q, queue)) {
                queue.dispatch();
                kicked.push(queue);
            }
        }
    }

    /// Feeds a content header to the pending publish.
    pub fn handle_header(
        &mut self,
        cx: &Session<'_>,
        header: Box<ContentHeader>,
    ) -> Result<(), AmqpError> {
        self.content_header(cx, header)
    }

    /// Tears the channel down: stops deliveries, cancels consumers (auto-deleting queues that
    /// lose their last one) and requeues everything unacked.
    pub fn close(&mut self, vhost: &VHost) {
        self.settle_acked();
        if let Some(reply) = self.reply.take() {
            vhost.unregister_reply_consumer(&reply.name);
        }
        let unacked = self.outlet.close();
        for (_, (consumer, queue)) in self.consumers.drain() {
            if queue.remove_consumer(&consumer) {
                vhost.remove_queue(&queue);
            }
        }
        requeue_grouped(unacked.into_iter().collect());
        self.pending = None;
    }
}

/// How deliveries are settled.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settle {
    /// basic.ack
    Ack,
    /// basic.nack / basic.reject
    Reject {
        /// Put the message back in its queue.
        requeue: bool,
    },
}

fn apply_settlement(how: Settle, mut taken: Vec<Unacked>) {
    match how {
        Settle::Ack => settle_acks(&mut taken),
        // Rejected without requeue: dead-lettered where the queue has a dead-letter exchange.
        Settle::Reject { requeue: false } => {
            for (queue, entries) in group_by_queue(taken) {
                queue.reject(entries);
            }
        }
        Settle::Reject { requeue: true } => requeue_grouped(taken),
    }
}

/// Settles acked deliveries, emptying `acked` (its allocation is kept for the next turn):
/// one `Queue::settle` (one lock, one dispatch) per queue, with the store positions of the
/// stored ones.
fn settle_acks(acked: &mut Vec<Unacked>) {
    if acked.is_empty() {
        return;
    }
    // The common case: every ack of the turn is for one queue.
    let first = &acked[0].queue;
    if acked.iter().all(|u| Arc::ptr_eq(&u.queue, first)) {
        let queue = first.clone();
        let positions: Vec<u64> = stored_positions(acked.iter());
        let count = acked.len();
        acked.clear();
        queue.settle(count, &positions);
        return;
    }
    let mut groups: Vec<(Arc<Queue>, usize, Vec<u64>)> = Vec::new();
    for unacked in acked.drain(..) {
        let position = unacked.entry.position;
        let at = match groups
            .iter()
            .position(|(q, _, _)| Arc::ptr_eq(q, &unacked.queue))
        {
            Some(at) => at,
            None => {
                groups.push((unacked.queue, 0, Vec::new()));
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        group.1 += 1;
        if position != 0 {
            group.2.push(position);
        }
    }
    for (queue, count, positions) in groups {
        queue.settle(count, &positions);
    }
}

/// The store positions of stored messages (a transient one has position 0); allocates only
/// when there is one.
fn stored_positions<'a>(unacked: impl Iterator<Item = &'a Unacked>) -> Vec<u64> {
    unacked
        .map(|u| u.entry.position)
        .filter(|&p| p != 0)
        .collect()
}

/// Unacked deliveries grouped by queue, tag order kept within each group.
fn group_by_queue(unacked: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<QueuedMessage>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
    for u in unacked {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, entries)) => entries.push(u.entry),
            None => groups.push((u.queue, vec![u.entry])),
        }
    }
    groups
}

/// Requeues unacked deliveries, one call per queue, preserving tag order.
fn requeue_grouped(unacked: Vec<Unacked>) {
    for (queue, entries) in group_by_queue(unacked) {
        queue.requeue(entries);
    }
}
