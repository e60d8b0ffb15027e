//! The `state` import: a plugin's key-value store, one per exchange, shared by every instance
//! and version serving it (trap, hot reload and rollback keep it), kept by
//! [`crate::store::PluginState`]: on disk for a durable exchange of a vhost with storage,
//! group-committed with the message store, recovered at start-up and deleted with the exchange;
//! in memory otherwise.
//!
//! Bounded: keys and values by size here, entries per exchange (`wasm_state_entries_max`) and
//! bytes per vhost (`wasm_state_vhost_bytes_max`) by the store. A refused write answers the
//! plugin `key-too-long`, `value-too-long` or `full` (the WIT has no finer word) and logs why,
//! through the exchange's rate-limited log. Nothing here waits for the disk.

use tracing::Level;

use super::host::HostState;
use super::v0_1::state;
use crate::store::{StateLimits, StateRefused};

/// Longest `state` key, in bytes.
pub const STATE_KEY_MAX_BYTES: usize = 256;
/// Longest `state` value, in bytes.
pub const STATE_VALUE_MAX_BYTES: usize = 1024;
/// Most keys one `state.keys` call returns.
pub const STATE_KEYS_PER_CALL: u32 = 1024;

impl HostState {
    fn state_limits(&self) -> StateLimits {
        StateLimits {
            entries_max: u64::from(self.ctx.limits.state_entries_max),
            vhost_bytes_max: self.ctx.limits.state_vhost_bytes_max,
        }
    }
}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.ctx.state.get(&key))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<bool, state::StateError>> {
        if key.len() > STATE_KEY_MAX_BYTES {
            return Ok(Err(state::StateError::KeyTooLong));
        }
        if new
            .as_ref()
            .is_some_and(|v| v.len() > STATE_VALUE_MAX_BYTES)
        {
            return Ok(Err(state::StateError::ValueTooLong));
        }
        let limits = self.state_limits();
        match self
            .ctx
            .state
            .compare_and_swap(&key, expected.as_deref(), new, &limits)
        {
            Ok(swapped) => Ok(Ok(swapped)),
            Err(refused) => {
                self.ctx
                    .log(Level::WARN, &format!("state write refused: {refused}"));
                Ok(Err(match refused {
                    StateRefused::ExchangeFull(_)
                    | StateRefused::VhostFull(_)
                    | StateRefused::Unavailable(_) => state::StateError::Full,
                }))
            }
        }
    }

    fn keys(&mut self, after: Option<String>, limit: u32) -> wasmtime::Result<Vec<String>> {
        let limit = limit.min(STATE_KEYS_PER_CALL) as usize;
        Ok(self.ctx.state.keys(after.as_deref(), limit))
    }
}
