//! The on-disk cache of compiled plugin artifacts, and why the broker may trust what it reads
//! back from it.
//!
//! A cached artifact is native code: `Component::deserialize` maps it executable and runs it.
//! Whoever can write a file the broker deserializes runs code in the broker, so two guards
//! stand between the cache directory and `deserialize`:
//!
//! 1. **The directory.** It is created with mode 0700. At start-up a directory that group or
//!    others can write, or that another user owns, is refused: the broker logs a warning naming
//!    the directory and the fix, and compiles every plugin without a cache (start-up does not
//!    fail: a cache only saves time).
//! 2. **A keyed MAC per artifact.** A random 32-byte key is created once in the data directory
//!    (`<data_dir>/wasm-cache.key`, mode 0600; a key file that group or others can read or
//!    write, or that another user owns, is refused like the directory). Each artifact file is
//!    `MAGIC`, then HMAC-SHA256 under that key of (the component's SHA-256, the engine
//!    compatibility hash, the broker version, the artifact bytes), then the artifact. The MAC
//!    is checked in constant time over the bytes in memory, and only those bytes are
//!    deserialized; a missing or wrong MAC (a tampered file, another artifact's bytes, a file
//!    of an older format) discards the file with a warning, and the component is compiled
//!    again and the file rewritten.
//!
//! So a file is deserialized only if this broker (someone holding the key) wrote it for exactly
//! this component and engine.
//!
//! **Pruning.** A file is touched (its mtime set to now) whenever it is loaded, and
//! [`ArtifactCache::prune`] deletes the artifacts no loaded plugin uses that were neither
//! written nor loaded for [`PRUNE_UNUSED_AFTER`], and temporary files left by a crash. The grace
//! period spares a cache directory shared by several brokers (and a plugin version removed a
//! moment ago, which may come back).

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::{debug, warn};

/// The first bytes of every artifact file (format version 1).
pub const MAGIC: &[u8; 8] = b"bourseA1";
/// Length of the MAC key and of a MAC.
pub const KEY_BYTES: usize = 32;
/// Name of the key file in the data directory.
pub const KEY_FILE: &str = "wasm-cache.key";
/// An artifact no loaded plugin uses is deleted once it has been neither written nor loaded
/// for this long.
pub const PRUNE_UNUSED_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// Why a cache directory or key file is not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheRefused {
    /// Group or others may write the directory.
    #[error(
        "cache directory {0} is writable by group or others; \
         compiling plugins without a cache (chmod 700 it to use it)"
    )]
    DirWritable(PathBuf),
    /// Another user owns the directory.
    #[error(
        "cache directory {dir} is owned by uid {owner}, not by the broker's uid {me}; \
         compiling plugins without a cache"
    )]
    DirOwner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The broker's effective uid.
        me: u32,
    },
    /// Not a directory.
    #[error("cache path {0} is not a directory; compiling plugins without a cache")]
    NotDir(PathBuf),
    /// The key file may be read or written by others, or is owned by another user.
    #[error(
        "cache key {0} is accessible to group or others or owned by another user; \
         compiling plugins without a cache (delete it, the broker creates a new one)"
    )]
    KeyExposed(PathBuf),
    /// An I/O error creating or reading the directory or key.
    #[error("cache {path}: {error}; compiling plugins without a cache")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// A checked cache directory and its MAC key.
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish()
    }
}

/// Where an artifact of a component goes, and what its MAC covers besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct ArtifactId<'a> {
    /// SHA-256 of the component bytes, hex.
    pub sha256: &'a str,
    /// The engine's compatibility hash, as the runtime spells it.
    pub compatibility: &'a str,
}

impl ArtifactId<'_> {
    fn file_name(&self) -> String {
        format!(
            "{}-{}-{}.cwasm",
            self.sha256,
            self.compatibility,
            env!("CARGO_PKG_VERSION")
        )
    }
}

impl ArtifactCache {
    /// The cache of a broker: `wasm_cache_dir` (else `<data_dir>/wasm-cache`) with the key in
    /// `data_dir`. `None`, after a warning saying why, when either may not be trusted.
    pub fn for_config(config: &crate::config::Config) -> Option<Self> {
        let dir = super::runtime::cache_dir(config);
        match Self::open(&dir, &config.data_dir.join(KEY_FILE)) {
            Ok(cache) => Some(cache),
            Err(refused) => {
                warn!(error = %refused, "WASM compile cache not used");
                None
            }
        }
    }

    /// Opens (creating with mode 0700) the cache directory `dir`, and reads (creating with
    /// mode 0600) the key at `key_path`, refusing either if others could write it.
    pub fn open(dir: &Path, key_path: &Path) -> Result<Self, CacheRefused> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| CacheRefused::Io { path, error }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let meta = std::fs::metadata(dir).map_err(io(dir))?;
        if !meta.is_dir() {
            return Err(CacheRefused::NotDir(dir.to_owned()));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(CacheRefused::DirOwner {
                dir: dir.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(CacheRefused::DirWritable(dir.to_owned()));
        }
        let key = read_or_create_key(key_path, me)?;
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the artifact of `id`.
    pub fn path(&self, id: ArtifactId<'_>) -> PathBuf {
        self.dir.join(id.file_name())
    }

    fn mac(&self, id: ArtifactId<'_>, artifact: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Each field length-prefixed, so no two different inputs feed the same bytes.
        for part in [
            id.sha256.as_bytes(),
            id.compatibility.as_bytes(),
            env!("CARGO_PKG_VERSION").as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.update(&(artifact.len() as u64).to_le_bytes());
        mac.update(artifact);
        mac
    }

    /// The artifact of `id` if a file with a valid MAC is there; `None` if there is no file,
    /// and `None` with a warning if the file is not one this broker wrote for `id` (it is then
    /// deleted, and the caller compiles and stores a fresh one).
    pub fn load(&self, id: ArtifactId<'_>) -> Option<Vec<u8>> {
        let path = self.path(id);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read a cached plugin artifact; recompiling");
                return None;
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = file.read_to_end(&mut bytes) {
            warn!(path = %path.display(), error = %e, "cannot read a cached plugin artifact; recompiling");
            return None;
        }
        let header = MAGIC.len() + KEY_BYTES;
        let verdict = if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
            Err("no MAC (not a file of this format)")
        } else {
            let (tag, artifact) = bytes[MAGIC.len()..].split_at(KEY_BYTES);
            // `verify_slice` compares in constant time.
            self.mac(id, artifact)
                .verify_slice(tag)
                .map_err(|_| "MAC mismatch (modified, or not written for this component)")
        };
        match verdict {
            Ok(()) => {
                bytes.drain(..header);
                // Marks it used, for `prune`.
                let _ = file.set_modified(std::time::SystemTime::now());
                Some(bytes)
            }
            Err(why) => {
                warn!(path = %path.display(), reason = why,
                    "cached plugin artifact discarded without loading it; recompiling");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `artifact` for `id` with its MAC, atomically (a temporary file, then a rename).
    pub fn store(&self, id: ArtifactId<'_>, artifact: &[u8]) -> std::io::Result<()> {
        let path = self.path(id);
        let tag = self.mac(id, artifact).finalize().into_bytes();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&tag)?;
            file.write_all(artifact)?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            debug!(path = %path.display(), "compiled plugin cached");
        }
        written
    }
}

impl ArtifactCache {
    /// Deletes the artifacts of components whose SHA-256 is not in `in_use` and that were
    /// neither written nor loaded for `unused_for`, and temporary files as old; only files
    /// named as this cache names them. Returns (files deleted, their bytes).
    pub fn prune(
        &self,
        in_use: &std::collections::HashSet<String>,
        unused_for: std::time::Duration,
    ) -> (usize, u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        let now = std::time::SystemTime::now();
        let (mut files, mut bytes) = (0, 0);
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(sha256) = artifact_sha256(name) else {
                continue;
            };
            if in_use.contains(sha256) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let idle = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || idle < unused_for {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    files += 1;
                    bytes += meta.len();
                    debug!(file = %name, "unused plugin artifact pruned");
                }
                Err(e) => warn!(file = %name, error = %e, "cannot prune a plugin artifact"),
            }
        }
        (files, bytes)
    }
}

/// The component hash an artifact or temporary file of this cache is named after:
/// `<sha256>-<compatibility>-<version>.cwasm` or `.tmp<pid>`; `None` for any other name.
fn artifact_sha256(name: &str) -> Option<&str> {
    let (sha256, rest) = name.split_once('-')?;
    let well_named = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    let ours = rest.ends_with(".cwasm")
        || rest
            .rsplit_once(".tmp")
            .is_some_and(|(_, pid)| pid.bytes().all(|b| b.is_ascii_digit()));
    (well_named && ours).then_some(sha256)
}

/// Reads the key at `path`, or creates it (32 random bytes, mode 0600) if there is none or the
/// file is ours but not a whole key (a crash while creating it).
fn read_or_create_key(path: &Path, me: u32) -> Result<[u8; KEY_BYTES], CacheRefused> {
    let io = |error| CacheRefused::Io {
        path: path.to_owned(),
        error,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.is_file() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
                return Err(CacheRefused::KeyExposed(path.to_owned()));
            }
            let bytes = std::fs::read(path).map_err(io)?;
            if let Ok(key) = <[u8; KEY_BYTES]>::try_from(bytes.as_slice()) {
                return Ok(key);
            }
            warn!(path = %path.display(), "cache key file truncated; creating a new key");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut key = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // A temporary name of this call's own (threads of one process may race here), linked to
    // the final name only if nothing is there yet: whoever loses the race uses the winner's.
    let tmp = path.with_extension(format!("tmp{}.{}", std::process::id(), fastrand::u64(..)));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = std::fs::read(path).map_err(io)?;
            <[u8; KEY_BYTES]>::try_from(bytes.as_slice())
                .map_err(|_| io(std::io::Error::other("cache key file has the wrong length")))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_racing_to_create_the_key_all_get_the_one_on_disk() {
        let dir = temp();
        let path = dir.join("k.key");
        let me = rustix::process::geteuid().as_raw();
        let keys: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| read_or_create_key(&path, me).expect("key")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let on_disk = std::fs::read(&path).expect("key file");
        assert!(keys.iter().all(|k| k[..] == on_disk[..]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn temp() -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bourse-cache-unit-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    const ID: ArtifactId<'static> = ArtifactId {
        sha256: "aa",
        compatibility: "cc",
    };

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn creates_the_dir_0700_and_the_key_0600_once() {
        let root = temp();
        let dir = root.join("a/b/cache");
        let key = root.join("data").join(KEY_FILE);
        let cache = ArtifactCache::open(&dir, &key).expect("open");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&key), 0o600);
        let first = std::fs::read(&key).expect("key");
        assert_eq!(first.len(), KEY_BYTES);
        drop(cache);
        ArtifactCache::open(&dir, &key).expect("reopen");
        assert_eq!(std::fs::read(&key).expect("key"), first, "key created once");
    }

    #[test]
    fn a_dir_others_can_write_is_refused() {
        let root = temp();
        let dir = root.join("cache");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let refused = ArtifactCache::open(&dir, &root.join(KEY_FILE)).expect_err("refused");
        assert!(matches!(refused, CacheRefused::DirWritable(_)), "{refused}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).expect("chmod");
        assert!(ArtifactCache::open(&dir, &root.join(KEY_FILE)).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(ArtifactCache::open(&dir, &root.join(KEY_FILE)).is_ok());
    }

    #[test]
    fn a_dir_of_another_user_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("not root: cannot give a directory to another user; skipped");
            return;
        }
        let root = temp();
        let dir = root.join("cache");
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
        let refused = ArtifactCache::open(&dir, &root.join(KEY_FILE)).expect_err("refused");
        assert!(
            matches!(refused, CacheRefused::DirOwner { .. }),
            "{refused}"
        );
    }

    #[test]
    fn an_exposed_key_is_refused() {
        let root = temp();
        let key = root.join(KEY_FILE);
        ArtifactCache::open(&root.join("cache"), &key).expect("open");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = ArtifactCache::open(&root.join("cache"), &key).expect_err("refused");
        assert!(matches!(refused, CacheRefused::KeyExposed(_)), "{refused}");
    }

    #[test]
    fn prune_removes_old_unused_artifacts_only() {
        use std::time::{Duration, SystemTime};
        let root = temp();
        let cache = ArtifactCache::open(&root.join("cache"), &root.join(KEY_FILE)).expect("open");
        let sha = |c: char| c.to_string().repeat(64);
        let (used, old, fresh) = (sha('a'), sha('b'), sha('c'));
        for s in [&used, &old, &fresh] {
            let id = ArtifactId {
                sha256: s,
                compatibility: "cc",
            };
            cache.store(id, b"code").expect("store");
        }
        let tmp = cache.dir().join(format!("{old}-cc-1.cwasm.tmp42"));
        std::fs::write(&tmp, b"half").expect("tmp");
        let other = cache.dir().join("notes.txt");
        std::fs::write(&other, b"not ours").expect("other");
        let long_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        for entry in std::fs::read_dir(cache.dir()).expect("dir").flatten() {
            let name = entry.file_name().into_string().expect("utf-8");
            if !name.starts_with(&fresh) {
                let file = std::fs::File::options()
                    .write(true)
                    .open(entry.path())
                    .expect("open");
                file.set_modified(long_ago).expect("set mtime");
            }
        }
        let in_use = [used.clone()].into_iter().collect();
        let (files, _) = cache.prune(&in_use, PRUNE_UNUSED_AFTER);
        assert_eq!(
            files, 2,
            "the old unused artifact and the old temporary file"
        );
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(cache.dir())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf-8"))
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left.iter().any(|n| n.starts_with(&used)));
        assert!(left.iter().any(|n| n.starts_with(&fresh)));
        assert!(left.contains("notes.txt"));
        // Loading an old artifact makes it recent again.
        let id = ArtifactId {
            sha256: &used,
            compatibility: "cc",
        };
        assert!(cache.load(id).is_some());
        let (files, _) = cache.prune(&Default::default(), PRUNE_UNUSED_AFTER);
        assert_eq!(files, 0, "{used} was just loaded");
    }

    #[test]
    fn only_artifacts_with_a_valid_mac_come_back() {
        let root = temp();
        let cache = ArtifactCache::open(&root.join("cache"), &root.join(KEY_FILE)).expect("open");
        assert_eq!(cache.load(ID), None);
        cache.store(ID, b"native code").expect("store");
        assert_eq!(mode(&cache.path(ID)), 0o600);
        assert_eq!(cache.load(ID).as_deref(), Some(&b"native code"[..]));

        // One byte flipped: discarded (and deleted).
        let path = cache.path(ID);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(cache.load(ID), None);
        assert!(!path.exists());

        // Another component's valid file under this one's name: discarded.
        let other = ArtifactId { sha256: "bb", ..ID };
        cache.store(other, b"other code").expect("store");
        std::fs::copy(cache.path(other), &path).expect("copy");
        assert_eq!(cache.load(ID), None);
        assert_eq!(cache.load(other).as_deref(), Some(&b"other code"[..]));

        // A bare artifact (the format before MACs): discarded.
        std::fs::write(&path, b"native code").expect("write");
        assert_eq!(cache.load(ID), None);

        // Another key (another broker's data dir): discarded.
        cache.store(ID, b"native code").expect("store");
        let stranger =
            ArtifactCache::open(&root.join("cache"), &root.join("k2")).expect("open with k2");
        assert_eq!(stranger.load(ID), None);
    }
}
