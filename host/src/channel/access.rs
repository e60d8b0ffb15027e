//! Which permission each operation needs on which resource: RabbitMQ's table.
//!
//! | operation | configure | write | read |
//! | --- | --- | --- | --- |
//! | exchange.declare (not passive) | exchange | alternate exchange, if any | exchange, if it names an alternate |
//! | exchange.delete | exchange | | |
//! | queue.declare (not passive) | queue | dead-letter exchange, if any | queue, if it names a dead-letter exchange |
//! | queue.delete | queue | | |
//! | exchange.bind / unbind | | destination exchange | source exchange |
//! | queue.bind / unbind | | queue | exchange (and the topic read permission on a topic exchange) |
//! | basic.publish | | exchange (and the topic write permission on a topic exchange) | |
//! | basic.get, basic.consume, queue.purge | | | queue |
//!
//! Passive declarations need nothing. Refusals are 403 ACCESS_REFUSED on the channel.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::Session;
use crate::auth::{Access, ResourceKind};
use crate::protocol::AmqpError;

impl Session<'_> {
    /// Checks one permission on one resource.
    pub(crate) fn may(
        &self,
        access: Access,
        kind: ResourceKind,
        name: &str,
    ) -> Result<(), AmqpError> {
        self.grants.check(access, kind, name)
    }

    /// exchange.declare: configure the exchange; with an alternate exchange, also write to
    /// it and read from the one declared.
    pub(crate) fn may_declare_exchange(
        &self,
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        self.may(Access::Configure, ResourceKind::Exchange, name)?;
        if let Some(alternate) = string_arg(arguments, "alternate-exchange") {
            self.may(Access::Write, ResourceKind::Exchange, alternate)?;
            self.may(Access::Read, ResourceKind::Exchange, name)?;
        }
        Ok(())
    }

    /// queue.declare: configure the queue; with a dead-letter exchange, also write to it and
    /// read from the queue.
    pub(crate) fn may_declare_queue(
        &self,
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        self.may(Access::Configure, ResourceKind::Queue, name)?;
        if let Some(dlx) = string_arg(arguments, "x-dead-letter-exchange") {
            self.may(Access::Write, ResourceKind::Exchange, dlx)?;
            self.may(Access::Read, ResourceKind::Queue, name)?;
        }
        Ok(())
    }

    /// Topic permissions: `access` (write to publish, read to bind) with `routing_key` on
    /// exchange `exchange` when it is a topic exchange.
    pub(crate) fn may_route(
        &self,
        access: Access,
        exchange: &str,
        kind: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        if kind != "topic" {
            return Ok(());
        }
        self.grants.check_topic(access, exchange, routing_key)
    }
}

fn string_arg<'a>(arguments: &'a FieldTable, key: &str) -> Option<&'a str> {
    match arguments.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}
