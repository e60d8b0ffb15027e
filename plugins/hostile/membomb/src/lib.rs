//! `x-membomb` (hostile): `route` allocates 1 MiB blocks, touching every page, and keeps them
//! all until an allocation fails. Under the host's memory cap `memory.grow` is refused, the
//! allocator reports failure and the guest aborts (a trap): the host replaces the instance.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

include!("../../common.rs");

/// Grows the instance's memory without bound.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct MemBomb;

impl bourse_guest::Router for MemBomb {
    well_behaved_but_route!(
        "x-membomb",
        "hostile: route allocates until memory runs out"
    );

    fn route(_message: bourse_guest::Message) -> Result<Vec<BindingId>, String> {
        let mut hoard = HOARD.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let block = vec![0xa5u8; 1 << 20];
            hoard.push(std::hint::black_box(block));
        }
    }
}

#[cfg(target_arch = "wasm32")]
bourse_guest::export_exchange_type!(MemBomb);
