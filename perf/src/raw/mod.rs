//! `--client raw`: lean publishers and consumers written directly on tokio TCP and
//! amq-protocol's frame codecs, so that on a small machine the broker, not the client library,
//! sets the message rate. Topology is still declared with lapin (see `load`); only the
//! publish/consume hot path is raw.
//!
//! Each publisher and each consumer has its own connection with one channel (1); heartbeats
//! are off. Submodules: `codec` (pure: publish templates, the streaming inbound parser,
//! confirm bookkeeping), `conn` (handshake, read buffer), `publisher`, `consumer`.

mod codec;
mod conn;
mod consumer;
mod publisher;

pub use consumer::RawConsumer;
pub use publisher::RawPublisher;
