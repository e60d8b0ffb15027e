//! The metadata store: the state in memory and `<data_dir>/meta.log` behind it, one synced
//! record per command, replayed at start-up and rewritten as a snapshot when mostly dead.

use std::path::Path;

use parking_lot::Mutex;

use super::{MetaCommand, MetaError, MetaState};
use crate::store::{RecordLog, StoreError};

/// The meta log's header: magic and format version.
pub(super) const HEADER: [u8; 8] = *b"BMETA\x00\x01\x00";
pub(super) const FILE_NAME: &str = "meta.log";
/// The log is rewritten as a snapshot when it holds this many times more records than the
/// state has entries (and at least [`COMPACT_MIN_RECORDS`]).
const COMPACT_RATIO: u64 = 4;
pub(super) const COMPACT_MIN_RECORDS: u64 = 1_000;
/// The metadata with its log.
#[derive(Debug)]
pub struct Meta {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: MetaState,
    log: RecordLog,
}

impl Meta {
    /// Opens `<data_dir>/meta.log` and replays it; when it is empty, `seed` is executed first
    /// (the config file's users, permissions and the default vhost). A record that does not
    /// decode stops the replay with an error: the broker must not start with half its users.
    pub fn open(data_dir: &Path, seed: &[MetaCommand]) -> Result<Meta, StoreError> {
        let (log, records) = RecordLog::open(data_dir, FILE_NAME, HEADER)?;
        let mut state = MetaState::default();
        for (index, record) in records.iter().enumerate() {
            let command: MetaCommand =
                serde_json::from_slice(record).map_err(|e| StoreError::Corrupt {
                    path: log.path().to_owned(),
                    offset: index as u64,
                    reason: format!("meta record {index} does not decode: {e}"),
                })?;
            state.apply(&command);
        }
        let meta = Meta {
            inner: Mutex::new(Inner { state, log }),
        };
        if records.is_empty() {
            for command in seed {
                if let Err(error) = meta.execute(command.clone()) {
                    tracing::warn!(?command, %error, "seed command refused");
                }
            }
        }
        Ok(meta)
    }

    /// Checks, logs (synced) and applies a command. Slow (an fsync): never call it on the
    /// data path or under a lock that routing takes.
    pub fn execute(&self, command: MetaCommand) -> Result<(), MetaError> {
        let mut inner = self.inner.lock();
        inner.state.check(&command)?;
        let record = serde_json::to_vec(&command).map_err(|e| MetaError::Storage(e.to_string()))?;
        inner
            .log
            .append_all(&[record])
            .map_err(|e| MetaError::Storage(e.to_string()))?;
        inner.state.apply(&command);
        let live = inner.state.len().max(1) as u64;
        if inner.log.records() >= COMPACT_MIN_RECORDS
            && inner.log.records() > COMPACT_RATIO.saturating_mul(live)
        {
            let snapshot: Vec<Vec<u8>> = inner
                .state
                .snapshot()
                .iter()
                .filter_map(|c| serde_json::to_vec(c).ok())
                .collect();
            if let Err(error) = inner.log.rewrite(&snapshot) {
                tracing::warn!(%error, "meta log compaction failed; the log is unchanged");
            }
        }
        Ok(())
    }

    /// Replaces the whole state with `commands` (a cluster snapshot): the log is rewritten
    /// with them. A command the new state refuses is skipped, as at replay.
    pub fn replace(&self, commands: &[MetaCommand]) -> Result<(), MetaError> {
        let mut state = MetaState::default();
        let mut records = Vec::with_capacity(commands.len());
        for command in commands {
            if state.check(command).is_ok() {
                state.apply(command);
                records.push(
                    serde_json::to_vec(command).map_err(|e| MetaError::Storage(e.to_string()))?,
                );
            }
        }
        let mut inner = self.inner.lock();
        inner
            .log
            .rewrite(&records)
            .map_err(|e| MetaError::Storage(e.to_string()))?;
        inner.state = state;
        Ok(())
    }

    /// Records in the log file (the compaction test).
    #[cfg(test)]
    pub(super) fn records(&self) -> u64 {
        self.inner.lock().log.records()
    }

    /// A copy of the current state.
    pub fn state(&self) -> MetaState {
        self.inner.lock().state.clone()
    }
}
