//! The compile cache of WASM plugins is not a way into the broker: an artifact is deserialized
//! (run as native code) only if its keyed MAC checks out, so a tampered artifact, or another
//! component's artifact under this one's name, is discarded and the component recompiled; and
//! a cache directory that others can write, or that another user owns, is not used at all.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use amq_protocol::types::FieldTable;
use bourse_tests::TempDir;
use bourse_tests::wasm::{PluginBroker, bodies, declare, publish_acked, queue_on, session};

const PLUGINS: [&str; 2] = ["x-modulus-hash", "x-consistent-hash"];

fn from_cache(broker: &PluginBroker, name: &str) -> bool {
    broker
        .plugins()
        .status_of(name)
        .unwrap_or_else(|e| panic!("{name} not loaded: {e}"))
        .current
        .from_cache
}

fn sha256(broker: &PluginBroker, name: &str) -> String {
    broker
        .plugins()
        .status_of(name)
        .expect("loaded")
        .current
        .sha256
}

/// The artifact file of the component with hash `sha256` in `dir`.
fn artifact(dir: &Path, sha256: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(sha256) && n.ends_with(".cwasm"))
        })
        .collect();
    assert_eq!(found.len(), 1, "one artifact of {sha256} in {dir:?}");
    found[0].clone()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).expect("read dir").count()
}

/// Both plugins route: each exchange with one bound queue delivers what is published to it.
async fn both_route(broker: &PluginBroker) {
    let (conn, ch) = session(&broker.broker).await;
    for (i, kind) in PLUGINS.iter().enumerate() {
        let exchange = format!("e{i}-{}", fastrand::u32(..));
        let queue = format!("{exchange}-q");
        declare(&ch, &exchange, kind, FieldTable::default()).await;
        queue_on(&ch, &queue, &exchange, "1").await;
        publish_acked(&ch, &exchange, "some key", "m").await;
        assert_eq!(bodies(&ch, &queue).await, ["m"], "{kind}");
    }
    drop(ch);
    drop(conn);
}

#[tokio::test]
async fn a_tampered_or_swapped_artifact_is_recompiled_not_loaded() {
    let cache = TempDir::new();
    let dir = cache.path.join("new").join("cache");
    let cache_dir = dir.clone();
    let mut broker = PluginBroker::start_with(&PLUGINS, move |cfg| {
        cfg.wasm_cache_dir = Some(cache_dir);
    })
    .await;
    // A fresh directory: created 0700, both compiled and cached.
    let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "cache dir mode {mode:o}");
    for name in PLUGINS {
        assert!(!from_cache(&broker, name), "{name}: first start compiles");
    }
    broker.broker.restart().await;
    for name in PLUGINS {
        assert!(
            from_cache(&broker, name),
            "{name}: a restart loads the artifact"
        );
    }

    // x-consistent-hash's artifact replaced by x-modulus-hash's (a valid artifact, written by
    // this broker, for another component); then one byte of x-modulus-hash's flipped.
    let modulus = artifact(&dir, &sha256(&broker, PLUGINS[0]));
    let consistent = artifact(&dir, &sha256(&broker, PLUGINS[1]));
    std::fs::copy(&modulus, &consistent).expect("swap");
    let mut bytes = std::fs::read(&modulus).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&modulus, &bytes).expect("tamper");

    broker.broker.restart().await;
    // Each is recompiled from its own component, not loaded from the file: the swapped file
    // would have made x-consistent-hash's file describe itself as x-modulus-hash.
    let loaded: Vec<String> = broker
        .plugins()
        .status()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(loaded, ["x-consistent-hash", "x-modulus-hash"]);
    for name in PLUGINS {
        assert!(!from_cache(&broker, name), "{name}: recompiled");
    }
    both_route(&broker).await;
    assert_ne!(std::fs::read(&modulus).expect("read"), bytes, "rewritten");

    // The rewritten files are trusted again.
    broker.broker.restart().await;
    for name in PLUGINS {
        assert!(
            from_cache(&broker, name),
            "{name}: the rewritten artifact loads"
        );
    }
    both_route(&broker).await;
}

/// Starts a broker twice on the cache directory `dir`; the second start must not have used it.
async fn refused(dir: &Path) {
    let cache_dir = dir.to_owned();
    let mut broker = PluginBroker::start_with(&PLUGINS[..1], move |cfg| {
        cfg.wasm_cache_dir = Some(cache_dir);
    })
    .await;
    broker.broker.restart().await;
    assert!(!from_cache(&broker, PLUGINS[0]), "the cache was used");
    assert_eq!(files_in(dir), 0, "something was written into {dir:?}");
    one_routes(&broker).await;
}

async fn one_routes(broker: &PluginBroker) {
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "m", PLUGINS[0], FieldTable::default()).await;
    queue_on(&ch, "m-q", "m", "1").await;
    publish_acked(&ch, "m", "k", "m").await;
    assert_eq!(bodies(&ch, "m-q").await, ["m"]);
}

#[tokio::test]
async fn a_cache_dir_others_can_write_is_not_used() {
    let dir = TempDir::new();
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    refused(&dir.path).await;
}

#[tokio::test]
async fn a_cache_dir_of_another_user_is_not_used() {
    let dir = TempDir::new();
    if std::os::unix::fs::chown(&dir.path, Some(65534), Some(65534)).is_err() {
        println!("cannot give a directory to another user (not root); skipped");
        return;
    }
    refused(&dir.path).await;
}
