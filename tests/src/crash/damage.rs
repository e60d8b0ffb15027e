//! Damage to a queue's newest segment file between a kill and a restart, done by reading the
//! segment format of docs/storage.md independently of the broker's own code.

use std::path::{Path, PathBuf};

/// How a segment is damaged between the kill and the restart.
#[derive(Debug, Clone, Copy)]
pub enum Damage {
    /// Four bytes inside the last record's payload inverted: its CRC no longer matches.
    FlippedBytes,
    /// The file cut in the middle of the record `from_end` records before the end, then
    /// garbage appended (starting with a plausible length, so the reader has to rely on the CRC).
    TruncatedWithGarbage { from_end: usize },
}

/// The header every `msgs.N` starts with (docs/storage.md, "Segments").
pub const SEGMENT_HEADER: &[u8; 8] = b"BSEG\x01\x00\x00\x00";

/// Record boundaries of a segment, following the framing of docs/storage.md (`len` u32 LE, a
/// CRC, `len` bytes of payload): `(offset, payload length)` of each record. The CRC is not
/// checked: the file was written by the broker and not damaged yet.
pub fn records(data: &[u8]) -> Vec<(usize, usize)> {
    assert!(
        data.starts_with(SEGMENT_HEADER),
        "segment does not start with BSEG v1: {:?}",
        &data[..data.len().min(8)]
    );
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER.len();
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || at + 8 + len > data.len() {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

/// Every file under `dir`, for failure messages.
pub fn tree(dir: &Path) -> String {
    pub fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(format!("  {} ({len} bytes)", path.display()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    if out.is_empty() {
        "  (no files)".into()
    } else {
        out.join("\n")
    }
}

/// The newest `msgs.N` of `queue`: `<data_dir>/vhosts/*/queues/*/` whose `name` is the queue.
pub fn newest_segment(data_dir: &Path, queue: &str) -> Option<PathBuf> {
    let vhosts = std::fs::read_dir(data_dir.join("vhosts")).ok()?;
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for vhost in vhosts.flatten() {
        let Ok(queues) = std::fs::read_dir(vhost.path().join("queues")) else {
            continue;
        };
        for q in queues.flatten() {
            if std::fs::read(q.path().join("name")).ok().as_deref() != Some(queue.as_bytes()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(q.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let id = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("msgs."))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(id) = id {
                    found.push((id, f.path()));
                }
            }
        }
    }
    found.into_iter().max().map(|(_, path)| path)
}

/// Damages `segment` as `damage` says; returns how many records before the damage are intact.
pub fn damage_segment(segment: &Path, damage: Damage) -> usize {
    let mut data = std::fs::read(segment).expect("read the segment");
    let recs = records(&data);
    let (kept, data) = match damage {
        Damage::FlippedBytes => {
            let (at, len) = *recs.last().expect("the segment has records");
            let mid = at + 8 + len / 2;
            for b in &mut data[mid..(mid + 4).min(at + 8 + len)] {
                *b = !*b;
            }
            (recs.len() - 1, data)
        }
        Damage::TruncatedWithGarbage { from_end } => {
            let victim = recs.len() - from_end;
            let (at, len) = recs[victim];
            data.truncate(at + 8 + len / 2);
            let mut rng = fastrand::Rng::with_seed(victim as u64);
            data.extend_from_slice(&40u32.to_le_bytes());
            data.extend((0..96).map(|_| rng.u8(1..)));
            (victim, data)
        }
    };
    std::fs::write(segment, data).expect("write the damaged segment");
    kept
}
