//! `x-noisy` (hostile): `route` floods the host with output, chosen by the routing key:
//! - `error`: answers `err` with a 1 MiB text;
//! - `log`: logs three 1 MiB lines through `logging.log` and writes one to stdout, then routes
//!   to every bound id;
//! - `ids`: answers 400,000 ids, every one of them a bound id (the first, repeated), so only
//!   their number is wrong;
//! - anything else: routes to every bound id.
//!
//! The host must cut texts and lines to its documented size, and treat the 400,000 ids as a
//! failed call.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

include!("../../common.rs");

/// Size of each text or line the plugin produces.
pub const NOISE_BYTES: usize = 1 << 20;
/// How many ids `ids` answers.
pub const IDS: usize = 400_000;

/// A text of `NOISE_BYTES` bytes starting with `label`, made of multi-byte characters so a cut
/// at a byte offset would land inside one.
pub fn noise(label: &str) -> String {
    let mut text = String::with_capacity(NOISE_BYTES + 4);
    text.push_str(label);
    // `repeat` copies in doubling blocks: fast enough to stay far inside the call deadline.
    text.push_str(&"é".repeat((NOISE_BYTES - label.len()).div_ceil(2)));
    text
}

/// What `route` answers for `key`, given the bound ids.
pub fn answer(key: &str, bound: &BTreeSet<BindingId>) -> Result<Vec<BindingId>, String> {
    match key {
        "error" => Err(noise("noisy error ")),
        "ids" => Ok(vec![bound.first().copied().unwrap_or(1); IDS]),
        _ => Ok(bound.iter().copied().collect()),
    }
}

struct Noisy;

impl bourse_guest::Router for Noisy {
    well_behaved_but_route!("x-noisy", "hostile: floods the host with text, lines and ids");

    fn route(message: bourse_guest::Message) -> Result<Vec<BindingId>, String> {
        if message.routing_key == "log" {
            for _ in 0..3 {
                bourse_guest::log(bourse_guest::Level::Warn, &noise("noisy log "));
            }
            println!("{}", noise("noisy stdout "));
        }
        answer(&message.routing_key, &bound())
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Noisy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_key() {
        let bound: BTreeSet<BindingId> = [3, 7].into();
        let text = answer("error", &bound).expect_err("error");
        assert!(text.len() >= NOISE_BYTES && text.starts_with("noisy error "));
        let ids = answer("ids", &bound).expect("ids");
        assert_eq!(ids.len(), IDS);
        assert!(ids.iter().all(|id| *id == 3));
        assert_eq!(answer("k", &bound).expect("k"), [3, 7]);
    }
}
