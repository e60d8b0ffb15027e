//! The delivery side of a channel: delivery tags, unacknowledged messages, prefetch credit and
//! flow. Queues deliver through it from whichever task published; the channel settles through
//! it from the connection's task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::protocol::{AMQPClass, basic};
use parking_lot::Mutex;

use crate::connection::Writer;
use crate::exchange::Name;
use crate::message::QueuedMessage;
use crate::protocol::{AmqpError, write_content, write_method};
use crate::queue::{Consumer, Outlet, Queue};

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
}

/// Shared delivery state of one channel.
pub struct ChannelOutlet {
    channel: u16,
    writer: Arc<Writer>,
    state: Mutex<OutletState>,
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
}

impl ChannelOutlet {
    /// The outlet of a newly opened channel.
    pub fn new(channel: u16, writer: Arc<Writer>) -> Arc<Self> {
        Arc::new(Self {
            channel,
            writer,
            state: Mutex::new(OutletState {
                next_tag: 0,
                unacked: VecDeque::new(),
                global_prefetch: 0,
                flow_active: true,
                closed: false,
                cancelled: Vec::new(),
            }),
        })
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
        std::mem::take(&mut state.unacked)
    }

    /// Consumer tags the server cancelled since the last call.
    pub fn take_cancelled(&self) -> Vec<Name> {
        std::mem::take(&mut self.state.lock().cancelled)
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
        let frame_max = self.writer.frame_max();
        self.writer.write(|out| {
            write_method(
                out,
                self.channel,
                AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                    delivery_tag: tag,
                    redelivered: entry.redelivered,
                    exchange: message.exchange.as_ref().into(),
                    routing_key: message.routing_key.as_ref().into(),
                    message_count: remaining as u32,
                })),
            );
            write_content(
                out,
                self.channel,
                &message.raw_properties,
                &message.body,
                frame_max,
            );
        });
        if !no_ack {
            state.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                entry,
                consumer: None,
            });
        }
    }

    /// Removes the unacked deliveries an ack/nack/reject names: one tag, or with `multiple`
    /// every tag up to it (0 with `multiple` means all). An unknown tag is 406.
    pub fn take_unacked(&self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let mut state = self.state.lock();
        let taken: Vec<Unacked> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let end = state.unacked.partition_point(|u| u.tag <= upto);
            if end == 0 && tag != 0 {
                return Err(unknown_tag(tag));
            }
            state.unacked.drain(..end).collect()
        } else {
            match state.unacked.binary_search_by_key(&tag, |u| u.tag) {
                Ok(at) => state.unacked.remove(at).into_iter().collect(),
                Err(_) => return Err(unknown_tag(tag)),
            }
        };
        drop(state);
        for unacked in &taken {
            if let Some(consumer) = &unacked.consumer {
                consumer.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(taken)
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
            write_method(
                out,
                self.channel,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: consumer.tag.as_ref().into(),
                    delivery_tag: tag,
                    redelivered: entry.redelivered,
                    exchange: message.exchange.as_ref().into(),
                    routing_key: message.routing_key.as_ref().into(),
                })),
            );
            write_content(
                out,
                self.channel,
                &message.raw_properties,
                &message.body,
                frame_max,
            );
        });
        if written.is_none() {
            return Err(entry);
        }
        state.next_tag = tag;
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            state.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                entry,
                consumer: Some(consumer.clone()),
            });
        }
        Ok(())
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
