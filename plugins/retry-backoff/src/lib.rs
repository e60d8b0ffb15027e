//! `x-retry-backoff`: a `bourse:exchange@0.2` exchange type. Routes like `direct` (a binding
//! matches when its key equals the routing key or one of the CC/BCC keys) and delays each
//! message by an exponential backoff on how often it has died already, read from the
//! `x-death` header RabbitMQ-compatible dead-lettering adds:
//!
//! `delay = min(base * 2^(n-1), max)` where `n` is the `count` of the first (most recent)
//! `x-death` entry; no `x-death` (a first attempt) routes at once.
//!
//! The host holds a delayed message (durably for persistent messages on a durable exchange)
//! and puts it into the queues decided now when it is due; this plugin is not asked again.

#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::Mutex;

use bourse_guest_v0_2::{
    Binding, BindingId, Decision, Description, FieldTable, FieldValue, HeaderSelection,
    InputFields, Inputs, Message, Router,
};

/// Exchange argument: the first retry's delay in ms (default [`BASE_MS`]).
pub const BASE_ARG: &str = "x-backoff-base-ms";
/// Exchange argument: the longest delay in ms (default [`MAX_MS`]).
pub const MAX_ARG: &str = "x-backoff-max-ms";
/// Default first delay: 1 s.
pub const BASE_MS: u64 = 1_000;
/// Default longest delay: 1 h.
pub const MAX_MS: u64 = 3_600_000;
/// Largest `max` accepted: the host's own cap (2^32-1 ms, about 49.7 days).
pub const MAX_ALLOWED_MS: u64 = u32::MAX as u64;

/// The backoff of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// Reads the exchange arguments (others are the broker's, ignored).
    pub fn from_arguments(arguments: &FieldTable) -> Result<Self, String> {
        let read = |name: &str, default: u64| -> Result<u64, String> {
            match arguments.get(name) {
                None => Ok(default),
                Some(value) => value
                    .as_u64_lenient()
                    .filter(|v| *v <= MAX_ALLOWED_MS)
                    .ok_or_else(|| {
                        format!("x-retry-backoff: '{name}' must be an integer from 0 to {MAX_ALLOWED_MS}")
                    }),
            }
        };
        let backoff = Backoff {
            base_ms: read(BASE_ARG, BASE_MS)?,
            max_ms: read(MAX_ARG, MAX_MS)?,
        };
        if backoff.base_ms > backoff.max_ms {
            return Err(format!(
                "x-retry-backoff: '{BASE_ARG}' is above '{MAX_ARG}'"
            ));
        }
        Ok(backoff)
    }

    /// The delay of the `n`-th retry (`n` = 0: a first attempt, no delay).
    pub fn delay(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let shift = (n - 1).min(63) as u32;
        self.base_ms.saturating_mul(1u64 << shift).min(self.max_ms)
    }
}

/// The `count` of the first entry of the `x-death` header (0 when there is none, or when it
/// is not shaped as RabbitMQ writes it).
pub fn death_count(headers: &FieldTable) -> u64 {
    let Some(FieldValue::Array(index)) = headers.get("x-death") else {
        return 0;
    };
    let Some(FieldValue::Table(first)) = headers.nested_array(*index).and_then(|a| a.first())
    else {
        return 0;
    };
    headers
        .nested_table(*first)
        .and_then(|fields| fields.iter().find(|f| f.name == "count"))
        .and_then(|f| u64::try_from(f.value.as_i64()?).ok())
        .unwrap_or(0)
}

/// One exchange's bindings (id to key) and backoff.
struct Exchange {
    keys: BTreeMap<BindingId, String>,
    backoff: Backoff,
}

static EXCHANGE: Mutex<Exchange> = Mutex::new(Exchange {
    keys: BTreeMap::new(),
    backoff: Backoff {
        base_ms: BASE_MS,
        max_ms: MAX_MS,
    },
});

fn exchange() -> std::sync::MutexGuard<'static, Exchange> {
    EXCHANGE.lock().unwrap_or_else(|e| e.into_inner())
}

struct RetryBackoff;

impl Router for RetryBackoff {
    fn describe() -> Description {
        Description {
            name: "x-retry-backoff".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "direct routing, delayed by exponential backoff on the x-death count".into(),
        }
    }

    fn validate(arguments: FieldTable) -> Result<(), String> {
        Backoff::from_arguments(&arguments).map(|_| ())
    }

    fn init(_exchange: String, arguments: FieldTable) -> Result<Inputs, String> {
        exchange().backoff = Backoff::from_arguments(&arguments)?;
        Ok(Inputs {
            fields: InputFields::ROUTING_KEY,
            headers: HeaderSelection::Named(vec!["x-death".into()]),
            // The delay is a function of the inputs too (the host never caches a delayed
            // decision anyway).
            cacheable: true,
        })
    }

    fn validate_binding(_binding: Binding) -> Result<(), String> {
        Ok(())
    }

    fn add_binding(binding: Binding) {
        exchange().keys.insert(binding.id, binding.key);
    }

    fn remove_binding(id: BindingId) {
        exchange().keys.remove(&id);
    }

    fn route(message: Message) -> Result<Decision, String> {
        let exchange = exchange();
        let bindings = exchange
            .keys
            .iter()
            .filter(|(_, key)| message.routing_keys().any(|k| k == key.as_str()))
            .map(|(id, _)| *id)
            .collect();
        Ok(Decision {
            bindings,
            delay_ms: exchange.backoff.delay(death_count(&message.headers)),
        })
    }
}

// Native builds (unit tests) skip the export: its symbol names are not valid for native linkers.
#[cfg(target_arch = "wasm32")]
bourse_guest_v0_2::export_exchange_type!(RetryBackoff);

#[cfg(test)]
mod tests {
    use super::*;
    use bourse_guest_v0_2::Field;

    #[test]
    fn the_delay_doubles_per_death_up_to_the_cap() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 1_000,
        };
        let delays: Vec<u64> = (0..7).map(|n| b.delay(n)).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.delay(u64::MAX), 1_000);
    }

    #[test]
    fn arguments_are_checked() {
        let args = |base: i64, max: i64| {
            FieldTable::from_entries([
                (BASE_ARG, FieldValue::Int64(base)),
                (MAX_ARG, FieldValue::Int64(max)),
            ])
        };
        assert_eq!(
            Backoff::from_arguments(&args(10, 20)),
            Ok(Backoff {
                base_ms: 10,
                max_ms: 20
            })
        );
        assert!(Backoff::from_arguments(&args(30, 20)).is_err());
        assert!(Backoff::from_arguments(&args(-1, 20)).is_err());
        assert!(Backoff::from_arguments(&args(1, 1 << 40)).is_err());
        assert_eq!(
            Backoff::from_arguments(&FieldTable::empty()),
            Ok(Backoff {
                base_ms: BASE_MS,
                max_ms: MAX_MS
            })
        );
    }

    #[test]
    fn the_count_comes_from_the_first_x_death_entry() {
        // {x-death: [{count: 3, reason: "rejected"}, {count: 9}]}
        let headers = FieldTable {
            entries: vec![Field {
                name: "x-death".into(),
                value: FieldValue::Array(0),
            }],
            tables: vec![
                vec![
                    Field {
                        name: "count".into(),
                        value: FieldValue::Int64(3),
                    },
                    Field {
                        name: "reason".into(),
                        value: FieldValue::LongString("rejected".into()),
                    },
                ],
                vec![Field {
                    name: "count".into(),
                    value: FieldValue::Int64(9),
                }],
            ],
            arrays: vec![vec![FieldValue::Table(0), FieldValue::Table(1)]],
        };
        assert_eq!(death_count(&headers), 3);
        assert_eq!(death_count(&FieldTable::empty()), 0);
        let wrong = FieldTable::from_entries([("x-death", FieldValue::Int64(5))]);
        assert_eq!(death_count(&wrong), 0);
    }
}
