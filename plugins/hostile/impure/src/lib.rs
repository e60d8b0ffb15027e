//! `x-impure` (hostile): declares its decisions cacheable (a pure function of the routing key)
//! but, depending on the routing key, reads the host's state, clock or randomness while
//! routing. The host must notice and not cache those decisions, so they are not frozen.
//!
//! By routing key: `state` increments a counter in the state store and routes to one binding
//! in turn (round robin over the bound ids in order); `clock` reads `clock.now-millis`,
//! `wasi-clock` WASI's wall clock, `random` WASI's randomness, then each routes to every
//! binding; any other key routes to every binding without a host call (cacheable for real).

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Message,
};

static BOUND: Mutex<BTreeSet<BindingId>> = Mutex::new(BTreeSet::new());

fn bound() -> MutexGuard<'static, BTreeSet<BindingId>> {
    BOUND.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `n`th bound id, round robin.
pub fn pick(bound: &BTreeSet<BindingId>, n: u64) -> Option<BindingId> {
    let len = bound.len() as u64;
    (len > 0).then(|| *bound.iter().nth((n % len) as usize).expect("in range"))
}

#[cfg(target_arch = "wasm32")]
fn next_count() -> u64 {
    use bourse_guest::state;
    // A bounded compare-and-swap loop (one instance per exchange: it succeeds at once).
    for _ in 0..16 {
        let current = state::get("count");
        let n = current
            .as_deref()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes);
        let next = (n + 1).to_le_bytes().to_vec();
        if state::compare_and_swap("count", current.as_deref(), Some(&next)) == Ok(true) {
            return n;
        }
    }
    0
}

#[cfg(target_arch = "wasm32")]
fn random_u64() -> u64 {
    unsafe extern "C" {
        // wasi-libc's, backed by `wasi:random/random`.
        fn getentropy(buffer: *mut u8, len: usize) -> i32;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is valid for writes of its length, at most 256 as getentropy requires.
    unsafe { getentropy(bytes.as_mut_ptr(), bytes.len()) };
    u64::from_le_bytes(bytes)
}

struct Impure;

#[cfg(target_arch = "wasm32")]
impl bourse_guest::Router for Impure {
    fn describe() -> Description {
        Description {
            name: "x-impure".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "hostile: claims cacheable, reads state, clock or randomness".into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        Ok(Inputs {
            fields: InputFields::ROUTING_KEY,
            headers: HeaderSelection::None,
            cacheable: true,
        })
    }

    fn validate_binding(_binding: Binding) -> Result<(), String> {
        Ok(())
    }

    fn add_binding(binding: Binding) {
        bound().insert(binding.id);
    }

    fn remove_binding(id: BindingId) {
        bound().remove(&id);
    }

    fn route(message: Message) -> Result<Vec<BindingId>, String> {
        let all = || bound().iter().copied().collect();
        match message.routing_key.as_str() {
            "state" => Ok(pick(&bound(), next_count()).into_iter().collect()),
            "clock" => {
                std::hint::black_box(bourse_guest::clock::now_millis());
                Ok(all())
            }
            "wasi-clock" => {
                std::hint::black_box(std::time::SystemTime::now());
                Ok(all())
            }
            "random" => {
                std::hint::black_box(random_u64());
                Ok(all())
            }
            _ => Ok(all()),
        }
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Impure);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_in_turn() {
        let bound: BTreeSet<BindingId> = [3, 5, 9].into();
        let picked: Vec<_> = (0..4).filter_map(|n| pick(&bound, n)).collect();
        assert_eq!(picked, [3, 5, 9, 3]);
        assert_eq!(pick(&BTreeSet::new(), 1), None);
    }
}
