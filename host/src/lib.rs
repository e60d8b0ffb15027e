//! bourse: an AMQP 0-9-1 broker whose exchange types can be WebAssembly components.
//!
//! Layout, outermost first (see ARCHITECTURE.md for the invariants):
//!
//! - [`broker`]: shared state and the accept loop; [`config`]: one `Config`.
//! - [`connection`]: the only code that touches sockets (handshake, frames in, frames out).
//! - [`channel`]: the per-channel state machine (publish, consume, ack, qos, confirms, tx).
//! - [`vhost`]: exchanges, queues and bindings of one tenant; routing.
//! - [`exchange`]: the exchange-type contract and the built-in types.
//! - [`queue`]: messages, consumers and dispatch.
//! - [`protocol`]: pure wire encoding and decoding on top of amq-protocol.
//! - [`auth`]: users and SASL.
//! - [`memory`]: the memory high-watermark alarm that blocks publishers.
//! - [`limits`]: limits on what clients may create, and their counters.
//! - [`stats`]: message counters for the management API and metrics.
//! - [`plugin_tool`]: `bourse plugin ...`, tooling for plugin authors (not used by the broker).

pub mod auth;
pub mod blocking;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod definitions;
pub mod exchange;
pub mod limits;
pub mod management;
pub mod memory;
pub mod message;
pub mod meta;
pub mod names;
pub mod plugin_tool;
pub mod protocol;
pub mod queue;
pub mod replication;
pub mod stats;
pub mod store;
pub mod vhost;

pub use broker::{Broker, BrokerHandle};
pub use config::Config;
