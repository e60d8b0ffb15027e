//! `x-panic` (hostile): `route` panics. With `panic = "abort"` that is a wasm `unreachable`
//! trap after the panic message is written to the guest's stderr: the host replaces the
//! instance and replays the bindings.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

include!("../../common.rs");

struct Panic;

impl bourse_guest::Router for Panic {
    well_behaved_but_route!("x-panic", "hostile: route panics");

    fn route(message: bourse_guest::Message) -> Result<Vec<BindingId>, String> {
        panic!(
            "x-panic: deliberate panic routing {:?}",
            message.routing_key
        );
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Panic);
