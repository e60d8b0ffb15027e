//! An append-only file of checksummed records, each synced before [`RecordLog::append_all`]
//! returns, and rewritten atomically as a snapshot when its owner compacts it. It knows
//! nothing of what the records mean: the broker's metadata log (`meta/`) keeps its commands
//! in one.
//!
//! Layout: an 8-byte header (magic and version, chosen by the owner), then framed records
//! (`frame.rs`: length, CRC-32, payload). A torn or damaged tail is reported, cut off, and the
//! intact records before it are kept.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{self, Next};
use super::{StoreError, create_dir_durable, sync_dir};

/// An open record log.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    file: File,
    header: [u8; 8],
    len: u64,
    records: u64,
    /// A write failed: nothing more is appended (what is on disk may end mid-record).
    broken: bool,
}

impl RecordLog {
    /// Opens (creating if needed) `dir/name` with `header`, and returns the payloads of its
    /// records in order.
    pub fn open(
        dir: &Path,
        name: &str,
        header: [u8; 8],
    ) -> Result<(RecordLog, Vec<Vec<u8>>), StoreError> {
        create_dir_durable(dir)?;
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        if tmp.exists() {
            // A rewrite that did not reach its rename: the log itself is intact.
            fs::remove_file(&tmp).map_err(StoreError::io("remove", &tmp))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        let data = fs::read(&path).map_err(StoreError::io("read", &path))?;
        let mut log = RecordLog {
            path,
            file,
            header,
            len: 0,
            records: 0,
            broken: false,
        };
        if data.len() < header.len() && (header.starts_with(&data) || data.iter().all(|&b| b == 0))
        {
            // New, or created by a crash before its header was durable.
            log.file
                .set_len(0)
                .and_then(|()| log.file.write_all_at(&header, 0))
                .and_then(|()| log.file.sync_all())
                .map_err(StoreError::io("write", &log.path))?;
            sync_dir(dir)?;
            log.len = header.len() as u64;
            return Ok((log, Vec::new()));
        }
        if !data.starts_with(&header) {
            return Err(StoreError::Corrupt {
                path: log.path,
                offset: 0,
                reason: "unknown header or version".into(),
            });
        }
        let mut payloads = Vec::new();
        let mut at = header.len();
        let bad = loop {
            match frame::read_record(&data, at) {
                Next::End => break None,
                Next::Bad(reason) => break Some(reason),
                Next::Record(payload, next) => {
                    payloads.push(payload.to_vec());
                    at = next;
                }
            }
        };
        if let Some(reason) = bad {
            tracing::warn!(
                file = %log.path.display(),
                offset = at,
                bytes_skipped = data.len() - at,
                reason,
                "damaged log tail cut off; the records before it are kept"
            );
            log.file
                .set_len(at as u64)
                .and_then(|()| log.file.sync_all())
                .map_err(StoreError::io("truncate", &log.path))?;
        }
        log.len = at as u64;
        log.records = payloads.len() as u64;
        Ok((log, payloads))
    }

    /// Appends records with a single fdatasync (all of them or, after a crash, a prefix).
    pub fn append_all(&mut self, payloads: &[Vec<u8>]) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::Failed(format!(
                "an earlier write to {} failed",
                self.path.display()
            )));
        }
        let mut buf = Vec::new();
        for payload in payloads {
            frame::push_record(&mut buf, &[payload]);
        }
        let result = self
            .file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = result {
            // Best effort: take back what may have been written, and write nothing more.
            let _ = self.file.set_len(self.len);
            self.broken = true;
            return Err(StoreError::Io {
                op: "append to",
                path: self.path.clone(),
                source,
            });
        }
        self.len += buf.len() as u64;
        self.records += payloads.len() as u64;
        Ok(())
    }

    /// Replaces the whole log by `payloads` (a snapshot), atomically: temporary file, fsync,
    /// rename, directory fsync.
    pub fn rewrite(&mut self, payloads: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut buf = self.header.to_vec();
        for payload in payloads {
            frame::push_record(&mut buf, &[payload]);
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(StoreError::io("create", &tmp))?;
        file.write_all(&buf)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("write", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(StoreError::io("rename", &tmp))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        self.file = file;
        self.len = buf.len() as u64;
        self.records = payloads.len() as u64;
        Ok(())
    }

    /// Records in the file.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: [u8; 8] = *b"TEST\x01\x00\x00\x00";

    #[test]
    fn records_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut log, records) = RecordLog::open(dir.path(), "t.log", HEADER).expect("open");
            assert!(records.is_empty());
            log.append_all(&[b"one".to_vec(), b"two".to_vec()])
                .expect("append");
            log.append_all(&[b"three".to_vec()]).expect("append");
        }
        let path = dir.path().join("t.log");
        let mut bytes = fs::read(&path).expect("read");
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&path, &bytes).expect("tear");
        let (mut log, records) = RecordLog::open(dir.path(), "t.log", HEADER).expect("reopen");
        assert_eq!(
            records,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        log.rewrite(&[b"snapshot".to_vec()]).expect("rewrite");
        log.append_all(&[b"after".to_vec()]).expect("append");
        drop(log);
        let (log, records) = RecordLog::open(dir.path(), "t.log", HEADER).expect("reopen");
        assert_eq!(records, [b"snapshot".to_vec(), b"after".to_vec()]);
        assert_eq!(log.records(), 2);
        assert!(RecordLog::open(dir.path(), "t.log", *b"OTHR\x01\x00\x00\x00").is_err());
    }
}
