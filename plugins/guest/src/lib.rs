//! Guest-side SDK for `bourse:exchange@0.1.0` exchange-type plugins (and the types and
//! helpers `bourse-guest-v0-2` reuses for 0.2 plugins).
//!
//! Generates the bindings of the `exchange-type` world once (from `wit/` at the repository root)
//! and adds the helpers every plugin needs: field-table lookups, canonical text of a field value
//! (what hashing and comparisons use), and the hash shared by the hash-based plugins.
//!
//! A plugin implements [`Router`] and calls [`export_exchange_type!`]:
//!
//! ```ignore
//! struct MyType;
//! impl bourse_guest::Router for MyType { /* ... */ }
//! bourse_guest::export_exchange_type!(MyType);
//! ```
//!
//! Everything here except the generated import functions is plain Rust, so plugin logic built
//! on it is testable natively with `cargo test`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "exchange-type",
    pub_export_macro: true,
    export_macro_name: "export_exchange_type",
    default_bindings_module: "bourse_guest",
    additional_derives: [PartialEq],
});

pub mod hash;
mod table;

pub use bourse::exchange::types::{
    Binding, BindingId, Decimal, Description, Field, FieldTable, FieldValue, HeaderSelection,
    InputFields, Inputs, Message, Properties,
};
pub use bourse::exchange::{clock, logging, state};
pub use exports::bourse::exchange::router::Guest as Router;
pub use logging::Level;

/// Logs through the host (rate-limited there): use for configuration problems and rare events,
/// never per message. Native builds (unit tests) print to stderr instead.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    logging::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

impl Message {
    /// The routing keys RabbitMQ routes on: the publish routing key, then the `CC` and `BCC`
    /// keys.
    pub fn routing_keys(&self) -> impl Iterator<Item = &str> + Clone {
        std::iter::once(self.routing_key.as_str()).chain(self.cc.iter().map(String::as_str))
    }

    /// A top-level header by exact name.
    pub fn header(&self, name: &str) -> Option<&FieldValue> {
        self.headers.get(name)
    }
}
