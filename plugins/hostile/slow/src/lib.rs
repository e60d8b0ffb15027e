//! `x-slow` (hostile): a fanout whose `init` and `validate-binding` are slow on request. They
//! busy-wait for the `spin-ms` argument (of the exchange, or of the binding) in milliseconds,
//! so the host's setup deadline cuts a large value off. Used to check that a slow declare or
//! bind stalls nobody else in the vhost.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
// `common.rs` brings a macro for plugins that misbehave only in `route`; this one does not use it.
#![allow(unused_macros)]

include!("../../common.rs");

struct Slow;

/// Busy-waits `spin-ms` milliseconds (none when absent), reading the monotonic clock.
fn spin(arguments: &FieldTable) {
    let Some(ms) = arguments.get("spin-ms").and_then(|v| v.as_u64_lenient()) else {
        return;
    };
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut h = ms;
    while std::time::Instant::now() < until {
        h = std::hint::black_box(h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
}

impl bourse_guest::Router for Slow {
    fn describe() -> Description {
        describe(
            "x-slow",
            "hostile: init and validate-binding spin for spin-ms",
        )
    }

    fn validate(arguments: FieldTable) -> Result<(), String> {
        validate(arguments)
    }

    fn init(exchange: String, arguments: FieldTable) -> Result<Inputs, String> {
        spin(&arguments);
        init(exchange, arguments)
    }

    fn validate_binding(binding: Binding) -> Result<(), String> {
        spin(&binding.arguments);
        validate_binding(binding)
    }

    fn add_binding(binding: Binding) {
        add_binding(binding)
    }

    fn remove_binding(id: BindingId) {
        remove_binding(id)
    }

    fn route(_message: bourse_guest::Message) -> Result<Vec<BindingId>, String> {
        Ok(bound().iter().copied().collect())
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Slow);
