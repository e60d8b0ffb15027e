//! Durable storage: the definitions log and the message store of one vhost.
//!
//! Independent pieces, all append-only files of checksummed records (layout and
//! guarantees in `docs/storage.md`):
//!
//! - [`DefinitionsLog`]: the vhost's durable topology as a command log (declare/delete
//!   exchange and queue, bind/unbind). Every append is fsynced before it returns; the log is
//!   compacted into a snapshot of the live objects when it grows far beyond them.
//! - [`MessageStore`]: persistent messages of durable queues, one directory of segment files
//!   per queue ([`QueueStore`]). Appends only copy into memory (they run under a queue's lock);
//!   a flusher thread writes and fdatasyncs in batches (group commit) and advances a
//!   store-wide `synced` ticket, which is when publisher confirms may go out.
//! - [`PluginState`]: the `state` of the vhost's WASM exchanges, a journal written and synced
//!   in the message store's group commits (`plugin_state`).
//!
//! All detect a torn or damaged tail by length and CRC-32, report it, cut it off and keep the
//! intact records before it. Nothing here knows about frames, channels or queue semantics.

mod definitions;
mod flusher;
mod frame;
mod messages;
mod plugin_state;
mod queue_store;
mod record_log;
mod segment;

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use definitions::{
    BindingDefinition, Definition, DefinitionsLog, DefinitionsOptions, DestinationKind,
    ExchangeDefinition, QueueDefinition,
};
pub use messages::{
    MessageStore, Position, RecoveredMessage, RecoveredQueue, SEGMENT_MAX_BYTES_LIMIT,
    SIDE_SYNC_INTERVAL, StoreOptions, StoreStats, StoredMessage, Ticket,
};
pub use plugin_state::{
    ExchangeState, PluginState, StateHandle, StateLimits, StateRefused, dry_run, take_thread_ticket,
};
pub use queue_store::QueueStore;
pub use record_log::RecordLog;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system call failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done ("open", "write", "fsync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A record that passed its checksum does not decode, or a read found no valid record.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fsync failed, or the store was closed: nothing more is accepted,
    /// and nothing appended after the failure will ever be reported synced.
    #[error("message store unavailable: {0}")]
    Failed(String),
    /// The caller passed something the store cannot hold (a name too long, a position that is
    /// not in the queue).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { op, path, source }
    }
}

/// The directory of `vhost` under `data_dir`: `<data_dir>/vhosts/<sha256(vhost) in hex>`.
///
/// Vhost names may hold any character, `/` included, so they are hashed; the name itself is
/// kept in a `name` file inside (see [`prepare_vhost_dir`]).
pub fn vhost_dir(data_dir: &Path, vhost: &str) -> PathBuf {
    data_dir.join("vhosts").join(hex_name(vhost))
}

/// Creates the directory of `vhost` (and its `name` file) if missing, durably, and returns it.
pub fn prepare_vhost_dir(data_dir: &Path, vhost: &str) -> Result<PathBuf, StoreError> {
    let dir = vhost_dir(data_dir, vhost);
    create_dir_durable(&dir)?;
    write_name_file(&dir, vhost)?;
    Ok(dir)
}

/// Hex SHA-256 of a name: a file-system-safe, fixed-length directory name.
pub(crate) fn hex_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// Creates `dir` and any missing parents, fsyncing each parent whose entries changed.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(StoreError::io("create directory", dir)(e)),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Writes `<dir>/name` holding `name` unless it already holds it; fsyncs file and directory.
pub(crate) fn write_name_file(dir: &Path, name: &str) -> Result<(), StoreError> {
    let path = dir.join("name");
    if fs::read(&path).is_ok_and(|held| held == name.as_bytes()) {
        return Ok(());
    }
    let tmp = dir.join("name.tmp");
    fs::write(&tmp, name.as_bytes()).map_err(StoreError::io("write", &tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(StoreError::io("rename", &tmp))?;
    sync_dir(dir)
}

/// fsyncs a directory, making creations, renames and removals of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}
