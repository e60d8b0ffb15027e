//! The `bourse:exchange@0.2.x` contract: a `router` whose `route` answers a decision (binding
//! ids and a delay) instead of binding ids alone.
//!
//! 0.2 is additive: its types and imports are 0.1's (`wit/v0.2/exchange.wit` uses them from
//! `bourse:exchange@0.1.0`), so this `bindgen!` maps them onto `v0_1`'s generated modules. The
//! host links the imports once; a component's exported `router` version (read at load,
//! `runtime.rs`) decides which of the two bindings drive it (`instance.rs`).

// As in `v0_1`: the generated bindings use `unsafe` for typed lowering; no hand-written
// `unsafe` here.
#[allow(unsafe_code)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "bourse:exchange/exchange-type@0.2.0",
        ownership: Borrowing { duplicate_if_necessary: true },
        imports: { default: trappable },
        with: {
            "bourse:exchange/types@0.1.0": super::super::v0_1::generated::bourse::exchange::types,
            "bourse:exchange/logging@0.1.0": super::super::v0_1::generated::bourse::exchange::logging,
            "bourse:exchange/clock@0.1.0": super::super::v0_1::generated::bourse::exchange::clock,
            "bourse:exchange/state@0.1.0": super::super::v0_1::generated::bourse::exchange::state,
        },
    });
}

pub use generated::ExchangeType as Bindings;
pub use generated::ExchangeTypePre as BindingsPre;
pub use generated::exports::bourse::exchange0_2_0::router::Decision;
