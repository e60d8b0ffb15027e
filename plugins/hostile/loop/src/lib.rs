//! `x-loop` (hostile): `route` never returns. The host's epoch deadline must interrupt it, trap
//! the instance, replace it and replay the bindings.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

include!("../../common.rs");

struct Loop;

impl bourse_guest::Router for Loop {
    well_behaved_but_route!("x-loop", "hostile: route spins forever");

    fn route(message: bourse_guest::Message) -> Result<Vec<BindingId>, String> {
        // Busy work the optimiser cannot remove, and no way out.
        let mut h = message.routing_key.len() as u64;
        loop {
            h = std::hint::black_box(h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Loop);
