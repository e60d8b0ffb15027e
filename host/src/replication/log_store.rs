//! Raft's log and vote on disk: one record log (`store::RecordLog`, every append synced) of
//! [`LogRecord`]s under `<data_dir>/cluster/`, replayed into memory at start-up and rewritten
//! from memory once it holds far more records than live entries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::store::{RecordLog, StoreError};

const HEADER: [u8; 8] = *b"BRAFT\x00\x01\x00";
const FILE_NAME: &str = "raft.log";
/// The log is rewritten when it holds this many more records than live entries.
const COMPACT_SLACK: u64 = 1_000;

type NodeId = u64;

/// One change to the log's state, in the order it happened.
#[derive(Debug, Serialize, Deserialize)]
enum LogRecord {
    Vote(Vote<NodeId>),
    Append(Vec<Entry<TypeConfig>>),
    /// Entries from this index on were removed (a new leader overwrote them).
    Truncate(u64),
    /// Entries up to and including this log id were removed (a snapshot holds them).
    Purge(LogId<NodeId>),
}

/// The log store; clones share it (one is the log reader openraft asks for).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    file: RecordLog,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens (creating) `dir/raft.log` and replays it.
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        let (file, records) = RecordLog::open(dir, FILE_NAME, HEADER)?;
        let mut inner = Inner {
            file,
            entries: BTreeMap::new(),
            vote: None,
            purged: None,
        };
        for (index, record) in records.iter().enumerate() {
            let record: LogRecord =
                serde_json::from_slice(record).map_err(|e| StoreError::Corrupt {
                    path: inner.file.path().to_owned(),
                    offset: index as u64,
                    reason: format!("raft log record {index} does not decode: {e}"),
                })?;
            inner.replay(record);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Runs `write` on the store on a blocking thread (it syncs a file).
    async fn blocking<R: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Inner) -> Result<R, StorageError<NodeId>> + Send + 'static,
    ) -> Result<R, StorageError<NodeId>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || write(&mut inner.lock()))
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::error(e)).into())
            .and_then(|r| r)
    }
}

impl Inner {
    fn replay(&mut self, record: LogRecord) {
        match record {
            LogRecord::Vote(vote) => self.vote = Some(vote),
            LogRecord::Append(entries) => {
                for entry in entries {
                    self.entries.insert(entry.get_log_id().index, entry);
                }
            }
            LogRecord::Truncate(from) => {
                self.entries.split_off(&from);
            }
            LogRecord::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
        }
    }

    /// Writes `record` (synced), then applies it in memory.
    fn write(&mut self, record: LogRecord) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.file
            .append_all(&[bytes])
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.replay(record);
        self.compact();
        Ok(())
    }

    /// Rewrites the file from memory when most of its records are dead.
    fn compact(&mut self) {
        let live = self.entries.len() as u64 + 2;
        if self.file.records() < live + COMPACT_SLACK {
            return;
        }
        let mut records = Vec::new();
        if let Some(vote) = &self.vote {
            records.push(LogRecord::Vote(*vote));
        }
        if let Some(purged) = self.purged {
            records.push(LogRecord::Purge(purged));
        }
        records.push(LogRecord::Append(self.entries.values().cloned().collect()));
        let payloads: Vec<Vec<u8>> = records
            .iter()
            .filter_map(|r| serde_json::to_vec(r).ok())
            .collect();
        if let Err(error) = self.file.rewrite(&payloads) {
            tracing::warn!(%error, "raft log compaction failed; the log is unchanged");
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.blocking(move |inner| inner.write(LogRecord::Vote(vote)))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let result = self
            .blocking(move |inner| inner.write(LogRecord::Append(entries)))
            .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |inner| inner.write(LogRecord::Truncate(log_id.index)))
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |inner| inner.write(LogRecord::Purge(log_id)))
            .await
    }
}
