//! exchange.* and queue.* methods: declarations, bindings, purge and delete.

use amq_protocol::protocol::{AMQPClass, exchange, queue};

use super::{Channel, Session};
use crate::auth::{Access, ResourceKind};
use crate::exchange::{Binding, Destination, Name};
use crate::names::random_suffix;
use crate::protocol::AmqpError;
use crate::queue::QueueSpec;
use crate::vhost::{ExchangeSpec, REPLY_TO_PREFIX, REPLY_TO_QUEUE};

impl Channel {
    pub(super) fn exchange_method(
        &mut self,
        cx: &Session<'_>,
        method: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        use exchange::AMQPMethod as X;
        match method {
            X::Declare(declare) => {
                let name = declare.exchange.as_str();
                // RabbitMQ refuses the default exchange even for a passive declare.
                check_not_default(name, cx)?;
                if declare.passive {
                    cx.vhost.exchange(name)?;
                } else {
                    cx.may_declare_exchange(name, &declare.arguments)?;
                    cx.vhost.declare_exchange(ExchangeSpec {
                        name: Name::from(name),
                        kind: Name::from(declare.kind.as_str()),
                        durable: declare.durable,
                        auto_delete: declare.auto_delete,
                        internal: declare.internal,
                        arguments: declare.arguments,
                    })?;
                }
                if !declare.nowait {
                    self.reply(AMQPClass::Exchange(X::DeclareOk(exchange::DeclareOk {})));
                }
                Ok(())
            }
            X::Delete(delete) => {
                cx.may(
                    Access::Configure,
                    ResourceKind::Exchange,
                    delete.exchange.as_str(),
                )?;
                cx.vhost
                    .delete_exchange(delete.exchange.as_str(), delete.if_unused)?;
                if !delete.nowait {
                    self.reply(AMQPClass::Exchange(X::DeleteOk(exchange::DeleteOk {})));
                }
                Ok(())
            }
            X::Bind(bind) => {
                check_not_default(bind.destination.as_str(), cx)?;
                cx.may(
                    Access::Write,
                    ResourceKind::Exchange,
                    bind.destination.as_str(),
                )?;
                cx.may(Access::Read, ResourceKind::Exchange, bind.source.as_str())?;
                let binding = Binding {
                    destination: Destination::Exchange(Name::from(bind.destination.as_str())),
                    routing_key: Name::from(bind.routing_key.as_str()),
                    arguments: bind.arguments,
                };
                cx.vhost.bind(bind.source.as_str(), binding)?;
                if !bind.nowait {
                    self.reply(AMQPClass::Exchange(X::BindOk(exchange::BindOk {})));
                }
                Ok(())
            }
            X::Unbind(unbind) => {
                check_not_default(unbind.destination.as_str(), cx)?;
                cx.may(
                    Access::Write,
                    ResourceKind::Exchange,
                    unbind.destination.as_str(),
                )?;
                cx.may(Access::Read, ResourceKind::Exchange, unbind.source.as_str())?;
                let binding = Binding {
                    destination: Destination::Exchange(Name::from(unbind.destination.as_str())),
                    routing_key: Name::from(unbind.routing_key.as_str()),
                    arguments: unbind.arguments,
                };
                cx.vhost.unbind(unbind.source.as_str(), &binding)?;
                if !unbind.nowait {
                    self.reply(AMQPClass::Exchange(X::UnbindOk(exchange::UnbindOk {})));
                }
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "exchange method {} is not valid from a client",
                AMQPClass::Exchange(other).get_amqp_method_id()
            ))),
        }
    }

    pub(super) fn queue_method(
        &mut self,
        cx: &Session<'_>,
        method: queue::AMQPMethod,
    ) -> Result<(), AmqpError> {
        use queue::AMQPMethod as Q;
        match method {
            Q::Declare(declare) => {
                let given = declare.queue.as_str();
                if given == REPLY_TO_QUEUE || given.starts_with(REPLY_TO_PREFIX) {
                    return self.declare_reply_queue(cx, given, declare.nowait);
                }
                let queue = if declare.passive {
                    let name = self.queue_name(declare.queue.as_str())?;
                    let queue = cx.vhost.queue_for(&name, cx.connection_id)?;
                    // A passive declare renews an x-expires lease too.
                    queue.touch();
                    queue
                } else {
                    let name = match declare.queue.as_str() {
                        "" => Name::from(format!("amq.gen-{}", random_suffix()?)),
                        given if given.starts_with("amq.") && cx.vhost.queue(given).is_err() => {
                            return Err(AmqpError::access_refused(format!(
                                "queue name '{given}' contains reserved prefix 'amq.*'"
                            )));
                        }
                        given => Name::from(given),
                    };
                    cx.may_declare_queue(&name, &declare.arguments)?;
                    cx.vhost
                        .declare_queue(QueueSpec {
                            name,
                            durable: declare.durable,
                            exclusive_owner: declare.exclusive.then_some(cx.connection_id),
                            auto_delete: declare.auto_delete,
                            arguments: declare.arguments,
                        })?
                        .queue
                };
                self.last_queue = Some(queue.name().clone());
                if !declare.nowait {
                    self.reply(AMQPClass::Queue(Q::DeclareOk(queue::DeclareOk {
                        queue: queue.name().as_ref().into(),
                        message_count: queue.message_count() as u32,
                        consumer_count: queue.consumer_count() as u32,
                    })));
                }
                Ok(())
            }
            Q::Bind(bind) => {
                let name = self.queue_name(bind.queue.as_str())?;
                cx.may(Access::Write, ResourceKind::Queue, &name)?;
                cx.may(Access::Read, ResourceKind::Exchange, bind.exchange.as_str())?;
                cx.vhost.queue_for(&name, cx.connection_id)?;
                if let Ok(exchange) = cx.vhost.exchange(bind.exchange.as_str()) {
                    cx.may_route(
                        Access::Read,
                        &exchange.spec.name,
                        &exchange.spec.kind,
                        bind.routing_key.as_str(),
                    )?;
                }
                let binding = Binding {
                    destination: Destination::Queue(name),
                    routing_key: Name::from(bind.routing_key.as_str()),
                    arguments: bind.arguments,
                };
                cx.vhost.bind(bind.exchange.as_str(), binding)?;
                if !bind.nowait {
                    self.reply(AMQPClass::Queue(Q::BindOk(queue::BindOk {})));
                }
                Ok(())
            }
            Q::Unbind(unbind) => {
                let name = self.queue_name(unbind.queue.as_str())?;
                cx.may(Access::Write, ResourceKind::Queue, &name)?;
                cx.may(
                    Access::Read,
                    ResourceKind::Exchange,
                    unbind.exchange.as_str(),
                )?;
                // A queue that is gone has no bindings left: unbind-ok (see `VHost::unbind`).
                match cx.vhost.queue_for(&name, cx.connection_id) {
                    Err(e) if e.code != crate::protocol::ReplyCode::NotFound => return Err(e),
                    _ => {}
                }
                let binding = Binding {
                    destination: Destination::Queue(name),
                    routing_key: Name::from(unbind.routing_key.as_str()),
                    arguments: unbind.arguments,
                };
                cx.vhost.unbind(unbind.exchange.as_str(), &binding)?;
                self.reply(AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})));
                Ok(())
            }
            Q::Purge(purge) => {
                let name = self.queue_name(purge.queue.as_str())?;
                cx.may(Access::Read, ResourceKind::Queue, &name)?;
                let count = cx.vhost.queue_for(&name, cx.connection_id)?.purge();
                if !purge.nowait {
                    self.reply(AMQPClass::Queue(Q::PurgeOk(queue::PurgeOk {
                        message_count: count as u32,
                    })));
                }
                Ok(())
            }
            Q::Delete(delete) => {
                let name = self.queue_name(delete.queue.as_str())?;
                cx.may(Access::Configure, ResourceKind::Queue, &name)?;
                let count = cx.vhost.delete_queue(
                    &name,
                    cx.connection_id,
                    delete.if_unused,
                    delete.if_empty,
                )?;
                if !delete.nowait {
                    self.reply(AMQPClass::Queue(Q::DeleteOk(queue::DeleteOk {
                        message_count: count as u32,
                    })));
                }
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "queue method {} is not valid from a client",
                AMQPClass::Queue(other).get_amqp_method_id()
            ))),
        }
    }
}

impl Channel {
    /// queue.declare of the direct reply-to pseudo-queue or of a reply-to name: always
    /// effectively passive (RabbitMQ): declare-ok with 0 messages and 1 consumer if the reply
    /// consumer exists, 404 otherwise.
    fn declare_reply_queue(
        &mut self,
        cx: &Session<'_>,
        name: &str,
        nowait: bool,
    ) -> Result<(), AmqpError> {
        if !cx.vhost.reply_queue_exists(name) {
            return Err(AmqpError::not_found(format!(
                "no queue '{name}' in vhost '{}'",
                cx.vhost.name
            )));
        }
        self.last_queue = Some(Name::from(name));
        if !nowait {
            self.reply(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(
                queue::DeclareOk {
                    queue: name.into(),
                    message_count: 0,
                    consumer_count: 1,
                },
            )));
        }
        Ok(())
    }
}

/// The default exchange cannot be a binding's destination (or source: see `VHost::bind`).
fn check_not_default(name: &str, cx: &Session<'_>) -> Result<(), AmqpError> {
    if name.is_empty() {
        return Err(AmqpError::access_refused(format!(
            "operation not permitted on the default exchange in vhost '{}'",
            cx.vhost.name
        )));
    }
    Ok(())
}
