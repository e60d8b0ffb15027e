// Included by every hostile plugin: a well-behaved exchange type in everything but `route`, so
// the host can declare the exchange and bind queues before the misbehaviour starts.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use bourse_guest::{
    Binding, BindingId, Description, FieldTable, HeaderSelection, InputFields, Inputs,
};

static BOUND: Mutex<BTreeSet<BindingId>> = Mutex::new(BTreeSet::new());

fn bound() -> MutexGuard<'static, BTreeSet<BindingId>> {
    BOUND.lock().unwrap_or_else(|e| e.into_inner())
}

fn describe(name: &str, summary: &str) -> Description {
    Description {
        name: name.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        summary: summary.into(),
    }
}

fn validate(_arguments: FieldTable) -> Result<(), String> {
    Ok(())
}

fn init(_exchange: String, _arguments: FieldTable) -> Result<Inputs, String> {
    Ok(Inputs {
        fields: InputFields::ROUTING_KEY,
        headers: HeaderSelection::None,
        cacheable: false,
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

/// Implements every `Router` function but `route` by delegating to the functions above.
macro_rules! well_behaved_but_route {
    ($name:literal, $summary:literal) => {
        fn describe() -> bourse_guest::Description {
            describe($name, $summary)
        }
        fn validate(arguments: bourse_guest::FieldTable) -> Result<(), String> {
            validate(arguments)
        }
        fn init(
            exchange: String,
            arguments: bourse_guest::FieldTable,
        ) -> Result<bourse_guest::Inputs, String> {
            init(exchange, arguments)
        }
        fn validate_binding(binding: bourse_guest::Binding) -> Result<(), String> {
            validate_binding(binding)
        }
        fn add_binding(binding: bourse_guest::Binding) {
            add_binding(binding)
        }
        fn remove_binding(id: bourse_guest::BindingId) {
            remove_binding(id)
        }
    };
}
