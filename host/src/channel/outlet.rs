//! The delivery side of a channel: delivery tags, unacknowledged messages, prefetch credit,
//! flow, direct reply-to deliveries and the consumer (delivery acknowledgement) timeout.
//! Queues deliver through it from whichever task published; the channel settles through it
//! from the connection's task.
//!
//! Everything a channel sends goes through here, the one place that encodes its frames into
//! the connection's writer, and each kind meets the writer's congestion rule in one way:
//! consumer deliveries wait for a drain (`write_unless_congested`), direct reply-to deliveries
//! are dropped (`write_if_room`), and what answers the connection's own requests (replies,
//! confirms, get-ok, basic.return, server cancels) is written as it comes, because the reader
//! producing it is the one that stops while the connection is congested.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connection::Writer;
use crate::exchange::Name;
use crate::message::{Message, QueuedMessage};
use crate::protocol::{AmqpError, Deliver, write_content, write_deliver, write_method};
use crate::queue::{ConnectionId, Consumer, Outlet, Queue};
use crate::stats::{Deliveries, MessageStats, OwnedCounter};
use crate::vhost::ReplyConsumer;

/// A delivered message awaiting ack, nack or reject.
pub struct Unacked {
    /// The delivery tag it was sent with.
    pub tag: u64,
    /// The queue it came from.
    pub queue: Arc<Queue>,
    /// The queue entry (position and message).
    pub entry: QueuedMessage,
    /// The consumer it went to (None for basic.get).
    pub consumer: Option<Arc<Consumer>>,
    /// When it was sent; recorded only when a consumer timeout is configured.
    pub delivered_at: Option<Instant>,
}

/// Shared delivery state of one channel.
pub struct ChannelOutlet {
    me: Weak<ChannelOutlet>,
    channel: u16,
    connection: ConnectionId,
    writer: Arc<Writer>,
    state: Mutex<OutletState>,
    /// What the management API shows of the channel; written by the channel's own task.
    pub info: ChannelCounters,
}

/// A channel's counts that only its own task changes (its publishes, acks, consumers and
/// prefetch), read by the management API.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// basic.publish received.
    pub published: OwnedCounter,
    /// Deliveries acknowledged.
    pub acked: OwnedCounter,
    /// Consumers open on it.
    pub consumers: OwnedCounter,
    /// basic.qos global=false prefetch, for consumers created next.
    pub prefetch: OwnedCounter,
    /// 1 once in confirm mode.
    pub confirm: OwnedCounter,
    /// 1 once transactional.
    pub transactional: OwnedCounter,
    /// Publishes in confirm mode not yet confirmed, as of the last read batch.
    pub unconfirmed: OwnedCounter,
}

struct OutletState {
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    /// basic.qos global=true: limit on unacked deliveries across the channel (0 = none).
    global_prefetch: u32,
    flow_active: bool,
    closed: bool,
    /// Consumers the server cancelled (their queue was deleted); the channel forgets them.
    cancelled: Vec<Name>,
    /// The delivery acknowledgement timeout, when configured.
    timeout: Option<AckTimeout>,
    /// Deliveries made, for the management API.
    delivered: Deliveries,
}

/// RabbitMQ's `consumer_timeout`: a delivery left unacknowledged longer than `after` closes the
/// channel with 406, and its unacked messages are requeued. One timer task per channel,
/// started at the first unacked delivery, sleeps until the oldest one's deadline.
struct AckTimeout {
    after: Duration,
    /// Tells the connection to look for timed-out channels.
    alarm: Arc<Notify>,
    /// Wakes this channel's timer task (None until started).
    wake: Option<Arc<Notify>>,
    fired: bool,
}

impl ChannelOutlet {
    /// The outlet of a newly opened channel.
    pub fn new(channel: u16, connection: ConnectionId, writer: Arc<Writer>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            channel,
            connection,
            writer,
            info: ChannelCounters::default(),
            state: Mutex::new(OutletState {
                next_tag: 0,
                unacked: VecDeque::new(),
                global_prefetch: 0,
                flow_active: true,
                closed: false,
                cancelled: Vec::new(),
                timeout: None,
                delivered: Deliveries::default(),
            }),
        })
    }

    /// Closes the channel (through the connection, woken by `alarm`) when a delivery stays
    /// unacknowledged longer than `after`.
    pub fn set_consumer_timeout(&self, after: Duration, alarm: Arc<Notify>) {
        self.state.lock().timeout = Some(AckTimeout {
            after,
            alarm,
            wake: None,
            fired: false,
        });
    }

    /// The timeout error if the consumer timeout fired, RabbitMQ's text included.
    pub fn timed_out(&self) -> Option<AmqpError> {
        let state = self.state.lock();
        let timeout = state.timeout.as_ref().filter(|t| t.fired)?;
        Some(AmqpError::precondition_failed(format!(
            "delivery acknowledgement on channel {} timed out. Timeout value used: {} ms. This \
             timeout value can be configured, see consumers doc guide to learn more",
            self.channel,
            timeout.after.as_millis()
        )))
    }

    /// Sends a direct reply-to delivery to the reply consumer `tag` (no ack expected), unless
    /// the connection is congested or the channel closed; returns whether it was sent.
    pub fn deliver_reply(&self, tag: &str, message: &Message) -> bool {
        let mut state = self.state.lock();
        if state.closed {
            return false;
        }
        let delivery_tag = state.next_tag + 1;
        let frame_max = self.writer.frame_max();
        let sent = self.writer.write_if_room(|out| {
            write_deliver(
                out,
                self.channel,
                Deliver {
                    consumer_tag: tag,
                    delivery_tag,
                    redelivered: false,
                    exchange: message.exchange(),
                    routing_key: message.routing_key(),
                },
            );
            write_content(
                out,
                self.channel,
                message.raw_properties(),
                message.body(),
                frame_max,
            );
        });
        if sent.is_some() {
            state.next_tag = delivery_tag;
        }
        sent.is_some()
    }

    /// Whether the connection would take a delivery now (not congested, not closing).
    pub fn has_room(&self) -> bool {
        !self.writer.is_congested() && !self.writer.is_closing()
    }

    /// Sets the channel-wide prefetch (basic.qos global=true).
    pub fn set_global_prefetch(&self, count: u32) {
        self.state.lock().global_prefetch = count;
    }

    /// The channel-wide prefetch (0 = none).
    pub fn global_prefetch(&self) -> u32 {
        self.state.lock().global_prefetch
    }

    /// channel.flow: pauses or resumes deliveries.
    pub fn set_flow(&self, active: bool) {
        self.state.lock().flow_active = active;
    }

    /// Stops all deliveries and hands back every unacked message, in tag order.
    pub fn close(&self) -> VecDeque<Unacked> {
        let mut state = self.state.lock();
        state.closed = true;
        if let Some(wake) = state.timeout.as_ref().and_then(|t| t.wake.as_ref()) {
            wake.notify_one();
        }
        std::mem::take(&mut state.unacked)
    }

    /// Consumer tags the server cancelled since the last call.
    pub fn take_cancelled(&self) -> Vec<Name> {
        std::mem::take(&mut self.state.lock().cancelled)
    }

    /// Sends a method the channel answers a request with (a reply, consume-ok, a publisher
    /// confirm). Like get-ok and basic.return it is written whatever the congestion: it only
    /// follows something the connection's reader read, and that reader stops reading while the
    /// connection is congested (the one congestion rule, `connection/writer.rs`).
    pub fn send_method(&self, method: AMQPClass) {
        self.writer
            .write(|out| write_method(out, self.channel, method));
    }

    /// Sends basic.return of `message` with `reply_code` and `reply_text` (a mandatory message
    /// that reached no queue), written as [`send_method`](Self::send_method) is.
    pub fn send_return(&self, message: &Message, reply_code: u16, reply_text: &str) {
        let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code,
            reply_text: reply_text.into(),
            exchange: message.exchange().as_ref().into(),
            routing_key: message.routing_key().as_ref().into(),
        }));
        self.send_with_content(method, message);
    }

    /// Writes `method` followed by `message`'s content (basic.return, get-ok), as
    /// [`send_method`](Self::send_method) writes: answers to the connection's own requests.
    fn send_with_content(&self, method: AMQPClass, message: &Message) {
        let frame_max = self.writer.frame_max();
        self.writer.write(|out| {
            write_method(out, self.channel, method);
            write_content(
                out,
                self.channel,
                message.raw_properties(),
                message.body(),
                frame_max,
            );
        });
    }

    /// Delivers a basic.get result, recording it as unacked unless `no_ack`.
    pub fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        entry: QueuedMessage,
        remaining: usize,
        no_ack: bool,
    ) {
        let mut state = self.state.lock();
        state.next_tag += 1;
        let tag = state.next_tag;
        let message = &entry.message;
        let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered: entry.redelivered(),
            exchange: message.exchange().as_ref().into(),
            routing_key: message.routing_key().as_ref().into(),
            message_count: remaining as u32,
        }));
        self.send_with_content(method, message);
        state.delivered.count(true, no_ack, entry.redelivered());
        if !no_ack {
            let delivered_at = self.watch_delivery(&mut state);
            state.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                entry,
                consumer: None,
                delivered_at,
            });
        }
    }

    /// Whether the channel is still open.
    pub fn is_open(&self) -> bool {
        !self.state.lock().closed
    }

    /// The channel's number.
    pub fn number(&self) -> u16 {
        self.channel
    }

    /// The connection it belongs to.
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// Its message counts: deliveries (counted under the delivery lock), publishes and acks.
    pub fn message_stats(&self) -> MessageStats {
        let delivered = self.state.lock().delivered;
        MessageStats {
            publish: self.info.published.get(),
            delivered,
            ack: self.info.acked.get(),
        }
    }

    /// Deliveries waiting for an ack.
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked.len()
    }

    /// With a consumer timeout: the delivery time to record, and the timer started or woken
    /// when this is the only unacked delivery.
    fn watch_delivery(&self, state: &mut OutletState) -> Option<Instant> {
        state.timeout.as_ref()?;
        let was_idle = state.unacked.is_empty();
        let timeout = state.timeout.as_mut()?;
        let now = Instant::now();
        if was_idle {
            match &timeout.wake {
                Some(wake) => wake.notify_one(),
                None => {
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let wake = Arc::new(Notify::new());
                        timeout.wake = Some(wake.clone());
                        runtime.spawn(watch_acks(self.me.clone(), wake));
                    }
                }
            }
        }
        Some(now)
    }

    /// The oldest unacked delivery's deadline; None when nothing waits. Marks the channel
    /// timed out (and raises the connection's alarm) once a deadline has passed.
    fn ack_deadline(&self) -> Result<Option<Instant>, ()> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(());
        }
        let oldest = state.unacked.front().and_then(|u| u.delivered_at);
        let Some(timeout) = state.timeout.as_mut() else {
            return Err(());
        };
        if timeout.fired {
            return Err(());
        }
        let Some(deadline) = oldest.and_then(|at| at.checked_add(timeout.after)) else {
            return Ok(None);
        };
        if deadline <= Instant::now() {
            timeout.fired = true;
            timeout.alarm.notify_one();
            return Err(());
        }
        Ok(Some(deadline))
    }

    /// Moves the unacked deliveries an ack/nack/reject names into `into`: one tag, or with
    /// `multiple` every tag up to it (0 with `multiple` means all); returns how many. An
    /// unknown tag is 406 and moves nothing.
    pub fn take_unacked(
        &self,
        tag: u64,
        multiple: bool,
        into: &mut Vec<Unacked>,
    ) -> Result<usize, AmqpError> {
        let start = into.len();
        let mut state = self.state.lock();
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let end = state.unacked.partition_point(|u| u.tag <= upto);
            if end == 0 && tag != 0 {
                return Err(unknown_tag(tag));
            }
            into.extend(state.unacked.drain(..end));
        } else {
            // Acks mostly come in delivery order: the oldest tag is the likely one.
            let at = match state.unacked.front() {
                Some(front) if front.tag == tag => 0,
                _ => state
                    .unacked
                    .binary_search_by_key(&tag, |u| u.tag)
                    .map_err(|_| unknown_tag(tag))?,
            };
            into.extend(state.unacked.remove(at));
        }
        drop(state);
        for unacked in &into[start..] {
            if let Some(consumer) = &unacked.consumer {
                consumer.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(into.len() - start)
    }

    /// Every unacked delivery, for basic.recover.
    pub fn take_all_unacked(&self) -> Vec<Unacked> {
        let taken: Vec<Unacked> = self.state.lock().unacked.drain(..).collect();
        for unacked in &taken {
            if let Some(consumer) = &unacked.consumer {
                consumer.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        taken
    }
}

/// The consumer-timeout timer of one channel: sleeps until the oldest unacked delivery's
/// deadline, re-reading it after every wake-up (acks move it later), until it fires or the
/// channel closes.
async fn watch_acks(outlet: Weak<ChannelOutlet>, wake: Arc<Notify>) {
    loop {
        let deadline = match outlet.upgrade().map(|o| o.ack_deadline()) {
            Some(Ok(deadline)) => deadline,
            _ => return,
        };
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// A channel's direct reply-to consumer, registered with the vhost.
pub struct ReplyTarget {
    /// The consumer tag replies are delivered with.
    pub tag: Name,
    /// The channel.
    pub outlet: Arc<ChannelOutlet>,
}

impl ReplyConsumer for ReplyTarget {
    fn deliver_reply(&self, message: &Arc<Message>) -> bool {
        self.outlet.deliver_reply(&self.tag, message)
    }

    fn has_room(&self) -> bool {
        self.outlet.has_room()
    }
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition_failed(format!("unknown delivery tag {tag}"))
}

impl Outlet for ChannelOutlet {
    fn offer(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        entry: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        let mut state = self.state.lock();
        if state.closed || !state.flow_active {
            return Err(entry);
        }
        if !consumer.no_ack
            && state.global_prefetch != 0
            && state.unacked.len() >= state.global_prefetch as usize
        {
            return Err(entry);
        }
        let tag = state.next_tag + 1;
        let message = &entry.message;
        let frame_max = self.writer.frame_max();
        let written = self.writer.write_unless_congested(queue, |out| {
            write_deliver(
                out,
                self.channel,
                Deliver {
                    consumer_tag: &consumer.tag,
                    delivery_tag: tag,
                    redelivered: entry.redelivered(),
                    exchange: message.exchange(),
                    routing_key: message.routing_key(),
                },
            );
            write_content(
                out,
                self.channel,
                message.raw_properties(),
                message.body(),
                frame_max,
            );
        });
        if written.is_none() {
            return Err(entry);
        }
        state.next_tag = tag;
        state
            .delivered
            .count(false, consumer.no_ack, entry.redelivered());
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            let delivered_at = self.watch_delivery(&mut state);
            state.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                entry,
                consumer: Some(consumer.clone()),
                delivered_at,
            });
        }
        Ok(())
    }

    fn channel(&self) -> Option<(ConnectionId, u16)> {
        Some((self.connection, self.channel))
    }

    fn cancelled_by_server(&self, consumer: &Consumer) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        state.cancelled.push(consumer.tag.clone());
        self.writer.write(|out| {
            write_method(
                out,
                self.channel,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: consumer.tag.as_ref().into(),
                    nowait: true,
                })),
            )
        });
    }
}
