//! The replicated state machine: committed [`Command`]s handed to the broker through the
//! [`Applier`] trait this module owns, and what was applied (last log id, membership) kept in
//! `<data_dir>/cluster/applied.json`, rewritten atomically after each applied batch.
//!
//! The broker's own files hold the applied state (the meta log); `applied.json` only says how
//! far it goes. A crash between the two re-applies a few commands at the next start: commands
//! are upserts or deletes, and one refused the second time changes nothing.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Applier, Command, Member, Reply, TypeConfig};

type NodeId = u64;

const APPLIED_FILE: &str = "applied.json";

/// How far the broker's state goes in the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

/// A snapshot's contents: the applied position and the state as commands.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied: Applied,
    commands: Vec<Command>,
}

/// A snapshot kept in memory: its description and its bytes.
type StoredSnapshot = (SnapshotMeta<NodeId, Member>, Vec<u8>);

/// The state machine; clones share it (one is the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    applier: Arc<dyn Applier>,
    path: PathBuf,
    applied: Mutex<Applied>,
    /// The last snapshot built or installed.
    current: Mutex<Option<StoredSnapshot>>,
}

impl StateMachine {
    /// Reads `dir/applied.json` (none: nothing applied yet).
    pub fn open(dir: &Path, applier: Arc<dyn Applier>) -> std::io::Result<StateMachine> {
        let path = dir.join(APPLIED_FILE);
        let applied = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => return Err(e),
        };
        Ok(StateMachine {
            inner: Arc::new(Inner {
                applier,
                path,
                applied: Mutex::new(applied),
                current: Mutex::new(None),
            }),
        })
    }
}

impl Inner {
    /// Writes `applied.json` through a synced temporary file and a rename.
    fn persist(&self, applied: &Applied) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(applied).map_err(std::io::Error::other)?,
        )?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Applies committed entries in order; a command's own refusal is its reply, a broker
    /// that cannot store what it applied is a storage error (openraft then stops this node).
    fn apply(&self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<Reply>, StorageError<NodeId>> {
        let mut replies = Vec::with_capacity(entries.len());
        let mut applied = self.applied.lock().clone();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Reply(Ok(()))),
                EntryPayload::Normal(command) => {
                    let reply = self
                        .applier
                        .apply(&command)
                        .map_err(|e| StorageIOError::apply(entry.log_id, AnyError::error(e)))?;
                    replies.push(reply);
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    replies.push(Reply(Ok(())));
                }
            }
        }
        self.persist(&applied)
            .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)))?;
        *self.applied.lock() = applied;
        Ok(replies)
    }

    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = self.applied.lock().clone();
        let data = SnapshotData {
            applied: applied.clone(),
            commands: self.applier.snapshot(),
        };
        let bytes = serde_json::to_vec(&data)
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
        let snapshot_id = match applied.last_applied {
            Some(at) => format!("{}-{}", at.leader_id, at.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        *self.current.lock() = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, Member>,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError<NodeId>> {
        let data: SnapshotData = serde_json::from_slice(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        self.applier.install(&data.commands).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e))
        })?;
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.persist(&applied)
            .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)))?;
        *self.applied.lock() = applied;
        *self.current.lock() = Some((meta.clone(), bytes));
        Ok(())
    }
}

/// Runs `work` on a blocking thread (the broker's apply and the file writes sync to disk).
async fn blocking<R: Send + 'static>(
    inner: &Arc<Inner>,
    work: impl FnOnce(&Inner) -> Result<R, StorageError<NodeId>> + Send + 'static,
) -> Result<R, StorageError<NodeId>> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || work(&inner))
        .await
        .map_err(|e| StorageIOError::write_state_machine(AnyError::error(e)).into())
        .and_then(|r| r)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        blocking(&self.inner, Inner::build_snapshot).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let applied = self.inner.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        blocking(&self.inner, move |inner| inner.apply(entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        let bytes = snapshot.into_inner();
        blocking(&self.inner, move |inner| inner.install(&meta, bytes)).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .inner
            .current
            .lock()
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
    }
}
