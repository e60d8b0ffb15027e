//! Guest-side SDK for `bourse:exchange@0.2.0` exchange-type plugins: a `router` whose `route`
//! answers a [`Decision`] (binding ids and a delay in ms).
//!
//! 0.2 keeps 0.1's types and imports, so they are `bourse-guest`'s (re-exported here with its
//! helpers: `FieldTable::get`, `Message::routing_keys`, `log`, ...); only the exported
//! interface is generated here. (A crate of its own: wit-bindgen names its export macro's
//! helper after the world, `exchange-type` in both versions, so the two cannot share a crate.)
//!
//! ```ignore
//! struct MyType;
//! impl bourse_guest_v0_2::Router for MyType { /* ... */ }
//! bourse_guest_v0_2::export_exchange_type!(MyType);
//! ```

wit_bindgen::generate!({
    path: "../../wit/v0.2",
    world: "bourse:exchange/exchange-type@0.2.0",
    with: {
        "bourse:exchange/types@0.1.0": bourse_guest::bourse::exchange::types,
        "bourse:exchange/logging@0.1.0": bourse_guest::bourse::exchange::logging,
        "bourse:exchange/clock@0.1.0": bourse_guest::bourse::exchange::clock,
        "bourse:exchange/state@0.1.0": bourse_guest::bourse::exchange::state,
    },
    pub_export_macro: true,
    export_macro_name: "export_exchange_type",
    default_bindings_module: "bourse_guest_v0_2",
    additional_derives: [PartialEq],
});

pub use crate::exports::bourse::exchange0_2_0::router::{Decision, Guest as Router};
pub use bourse_guest::{
    Binding, BindingId, Decimal, Description, Field, FieldTable, FieldValue, HeaderSelection,
    InputFields, Inputs, Level, Message, Properties, clock, hash, log, logging, state,
};
