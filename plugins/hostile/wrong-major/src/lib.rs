//! `x-wrong-major` (hostile): a working fanout exchange built against `bourse:exchange@9.0.0`
//! (the copy in `wit/` beside this crate). It exports `bourse:exchange/router@9.0.0` and imports
//! `bourse:exchange/types@9.0.0`, so a host speaking 0.1.x must refuse to load it with a clear
//! "unsupported version" error rather than fail obscurely at instantiation.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

wit_bindgen::generate!({ path: "wit", world: "exchange-type" });

use std::collections::BTreeSet;
use std::sync::Mutex;

use bourse::exchange::types::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs, Message,
};

static BOUND: Mutex<BTreeSet<BindingId>> = Mutex::new(BTreeSet::new());

struct WrongMajor;

impl exports::bourse::exchange::router::Guest for WrongMajor {
    fn describe() -> Description {
        Description {
            name: "x-wrong-major".into(),
            version: "9.0.0".into(),
            summary: "hostile: a fanout built against bourse:exchange@9.0.0".into(),
        }
    }

    fn validate(_arguments: FieldTable) -> Result<(), String> {
        Ok(())
    }

    fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
        Ok(Inputs {
            fields: InputFields::empty(),
            headers: HeaderSelection::None,
            cacheable: true,
        })
    }

    fn validate_binding(_binding: Binding) -> Result<(), String> {
        Ok(())
    }

    fn add_binding(binding: Binding) {
        BOUND
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(binding.id);
    }

    fn remove_binding(id: BindingId) {
        BOUND.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    fn route(_message: Message) -> Result<Vec<BindingId>, String> {
        Ok(BOUND
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect())
    }
}

#[cfg(target_arch = "wasm32")]
export!(WrongMajor);
