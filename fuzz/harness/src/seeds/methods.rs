//! One of every method of AMQP 0-9-1 (with RabbitMQ's extensions), the seeds of
//! `method_decode` and of the streams of `frame_cutting`.

use amq_protocol::protocol::{
    AMQPClass, access, basic, channel, confirm, connection, exchange, queue, tx,
};
use amq_protocol::types::LongString;

use super::rich_table;

/// One of every method of AMQP 0-9-1 (with RabbitMQ's extensions), the tables rich.
pub fn methods() -> Vec<(String, AMQPClass)> {
    use AMQPClass as C;
    let t = rich_table;
    let list = vec![
        (
            "connection.start",
            C::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: t(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })),
        ),
        (
            "connection.start-ok",
            C::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: t(),
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            })),
        ),
        (
            "connection.secure",
            C::Connection(connection::AMQPMethod::Secure(connection::Secure {
                challenge: "c".into(),
            })),
        ),
        (
            "connection.secure-ok",
            C::Connection(connection::AMQPMethod::SecureOk(connection::SecureOk {
                response: "r".into(),
            })),
        ),
        (
            "connection.tune",
            C::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            })),
        ),
        (
            "connection.tune-ok",
            C::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        ),
        (
            "connection.open",
            C::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        (
            "connection.open-ok",
            C::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        ),
        (
            "connection.close",
            C::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
        (
            "connection.close-ok",
            C::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        ),
        (
            "connection.blocked",
            C::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low memory".into(),
            })),
        ),
        (
            "connection.unblocked",
            C::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        ),
        (
            "connection.update-secret",
            C::Connection(connection::AMQPMethod::UpdateSecret(
                connection::UpdateSecret {
                    new_secret: "s".into(),
                    reason: "r".into(),
                },
            )),
        ),
        (
            "connection.update-secret-ok",
            C::Connection(connection::AMQPMethod::UpdateSecretOk(
                connection::UpdateSecretOk {},
            )),
        ),
        (
            "channel.open",
            C::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        (
            "channel.open-ok",
            C::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        ),
        (
            "channel.flow",
            C::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
        ),
        (
            "channel.flow-ok",
            C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: true,
            })),
        ),
        (
            "channel.close",
            C::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 406,
                reply_text: "PRECONDITION_FAILED".into(),
                class_id: 50,
                method_id: 10,
            })),
        ),
        (
            "channel.close-ok",
            C::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        (
            "access.request",
            C::Access(access::AMQPMethod::Request(access::Request {
                realm: "/data".into(),
                exclusive: false,
                passive: true,
                active: true,
                write: true,
                read: true,
            })),
        ),
        (
            "access.request-ok",
            C::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
        ),
        (
            "exchange.declare",
            C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "fx".into(),
                kind: "topic".into(),
                passive: false,
                durable: false,
                auto_delete: true,
                internal: false,
                nowait: false,
                arguments: t(),
            })),
        ),
        (
            "exchange.declare-ok",
            C::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
        ),
        (
            "exchange.delete",
            C::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: "fx".into(),
                if_unused: true,
                nowait: false,
            })),
        ),
        (
            "exchange.delete-ok",
            C::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
        ),
        (
            "exchange.bind",
            C::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "fx".into(),
                source: "amq.topic".into(),
                routing_key: "a.#".into(),
                nowait: false,
                arguments: t(),
            })),
        ),
        (
            "exchange.bind-ok",
            C::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
        ),
        (
            "exchange.unbind",
            C::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "fx".into(),
                source: "amq.topic".into(),
                routing_key: "a.#".into(),
                nowait: false,
                arguments: t(),
            })),
        ),
        (
            "exchange.unbind-ok",
            C::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
        ),
        (
            "queue.declare",
            C::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "fq".into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: true,
                nowait: false,
                arguments: t(),
            })),
        ),
        (
            "queue.declare-ok",
            C::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: "fq".into(),
                message_count: 1,
                consumer_count: 2,
            })),
        ),
        (
            "queue.bind",
            C::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "fq".into(),
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: t(),
            })),
        ),
        (
            "queue.bind-ok",
            C::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
        ),
        (
            "queue.purge",
            C::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "fq".into(),
                nowait: false,
            })),
        ),
        (
            "queue.purge-ok",
            C::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                message_count: 3,
            })),
        ),
        (
            "queue.delete",
            C::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "fq".into(),
                if_unused: false,
                if_empty: true,
                nowait: false,
            })),
        ),
        (
            "queue.delete-ok",
            C::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count: 0,
            })),
        ),
        (
            "queue.unbind",
            C::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "fq".into(),
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
                arguments: t(),
            })),
        ),
        (
            "queue.unbind-ok",
            C::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        ),
        (
            "basic.qos",
            C::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 10,
                global: false,
            })),
        ),
        (
            "basic.qos-ok",
            C::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        ),
        (
            "basic.consume",
            C::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "fq".into(),
                consumer_tag: "ct".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: t(),
            })),
        ),
        (
            "basic.consume-ok",
            C::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: "ct".into(),
            })),
        ),
        (
            "basic.cancel",
            C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "ct".into(),
                nowait: false,
            })),
        ),
        (
            "basic.cancel-ok",
            C::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                consumer_tag: "ct".into(),
            })),
        ),
        (
            "basic.publish",
            C::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "fq".into(),
                mandatory: true,
                immediate: false,
            })),
        ),
        (
            "basic.publish-utf8",
            C::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "orders.eu.\u{e9}".into(),
                mandatory: false,
                immediate: true,
            })),
        ),
        (
            "basic.return",
            C::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "".into(),
                routing_key: "k".into(),
            })),
        ),
        (
            "basic.deliver",
            C::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ct".into(),
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                routing_key: "fq".into(),
            })),
        ),
        (
            "basic.get",
            C::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "fq".into(),
                no_ack: true,
            })),
        ),
        (
            "basic.get-ok",
            C::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 1,
                redelivered: true,
                exchange: "".into(),
                routing_key: "fq".into(),
                message_count: 0,
            })),
        ),
        (
            "basic.get-empty",
            C::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        ),
        (
            "basic.ack",
            C::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        ),
        (
            "basic.ack-multiple",
            C::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::MAX - 1,
                multiple: true,
            })),
        ),
        (
            "basic.reject",
            C::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 1,
                requeue: true,
            })),
        ),
        (
            "basic.recover-async",
            C::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: true,
            })),
        ),
        (
            "basic.recover",
            C::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        ),
        (
            "basic.recover-ok",
            C::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        ),
        (
            "basic.nack",
            C::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 1,
                multiple: true,
                requeue: false,
            })),
        ),
        ("tx.select", C::Tx(tx::AMQPMethod::Select(tx::Select {}))),
        (
            "tx.select-ok",
            C::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        ),
        ("tx.commit", C::Tx(tx::AMQPMethod::Commit(tx::Commit {}))),
        (
            "tx.commit-ok",
            C::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        ),
        (
            "tx.rollback",
            C::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        ),
        (
            "tx.rollback-ok",
            C::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        ),
        (
            "confirm.select",
            C::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        ),
        (
            "confirm.select-ok",
            C::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        ),
    ];
    list.into_iter()
        .map(|(name, m)| (name.to_string(), m))
        .collect()
}
