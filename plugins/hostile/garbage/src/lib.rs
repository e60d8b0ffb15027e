//! `x-garbage` (hostile): `route` returns binding ids that were never added (and duplicates of
//! them) and none of the real ones; with the routing key `mixed`, every bound id too. The host
//! must ignore unknown ids, count them, and deliver to the bound ones only.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

include!("../../common.rs");

/// Ids this instance never saw added: above every bound id, and at the top of the range.
pub fn garbage(bound: &BTreeSet<BindingId>) -> Vec<BindingId> {
    let above = bound
        .last()
        .map_or(1_000_000, |&max| max.saturating_add(1_000_000));
    let mut ids = vec![u64::MAX, u64::MAX - 1, 1 << 63, above, above];
    ids.retain(|id| !bound.contains(id));
    ids
}

struct Garbage;

impl bourse_guest::Router for Garbage {
    well_behaved_but_route!(
        "x-garbage",
        "hostile: route returns ids that were never bound"
    );

    fn route(message: bourse_guest::Message) -> Result<Vec<BindingId>, String> {
        let bound = bound();
        let mut ids = garbage(&bound);
        if message.routing_key == "mixed" {
            ids.extend(bound.iter().copied());
        }
        Ok(ids)
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(Garbage);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_returns_a_bound_id() {
        let bound: BTreeSet<BindingId> = [1, 2, 3, u64::MAX].into();
        let ids = garbage(&bound);
        assert!(!ids.is_empty());
        assert!(ids.iter().all(|id| !bound.contains(id)));
        assert!(garbage(&BTreeSet::new()).contains(&1_000_000));
    }
}
