//! Helpers for the WASM exchange tests: the real plugins built by `plugins/build.sh`, copied
//! into a per-test plugin directory, and a broker loading them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use amq_protocol::types::FieldTable;
use bourse::exchange::wasm::PluginManager;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions};
use lapin::{BasicProperties, Confirmation, ExchangeKind};

use crate::raw::{reply_code, within};
use crate::{TempDir, TestBroker};

/// `<workspace>/plugins/dist`, where `plugins/build.sh` puts the built components. Panics with
/// instructions when it has not been built.
pub fn dist_dir() -> PathBuf {
    // scripts/test.sh says where it built them; otherwise the workspace's plugins/dist.
    let dir = std::env::var_os("BOURSE_PLUGIN_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("plugins").join("dist"));
    assert!(
        dir.join("x-consistent-hash.wasm").is_file(),
        "the WASM plugins are not built: run `plugins/build.sh` (expected {}/*.wasm)",
        dir.display()
    );
    dir
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// The bytes of a built plugin, e.g. `plugin_bytes("x-regex")`.
pub fn plugin_bytes(name: &str) -> Vec<u8> {
    let path = dist_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run `plugins/build.sh`)",
            path.display()
        )
    })
}

/// The compile cache the WASM tests share: `<workspace>/target/wasm-test-cache`.
pub fn test_cache_dir() -> PathBuf {
    workspace().join("target").join("wasm-test-cache")
}

/// Puts the tests' shared cache key (created once, next to the shared cache) into `data_dir`,
/// where a broker looks for it, so that brokers of different tests trust each other's cached
/// artifacts. A broker given another key would recompile everything, which is correct but slow.
pub fn seed_cache_key(data_dir: &Path) {
    use bourse::exchange::wasm::cache::{ArtifactCache, KEY_FILE};
    let shared = workspace().join("target").join("wasm-test-cache.key");
    // Creates the directory (0700) and the key (0600) the first time.
    if let Err(e) = ArtifactCache::open(&test_cache_dir(), &shared) {
        panic!("the tests' compile cache is unusable: {e}");
    }
    std::fs::create_dir_all(data_dir).expect("data dir");
    // `fs::copy` keeps the 0600 mode.
    std::fs::copy(&shared, data_dir.join(KEY_FILE)).expect("copy the cache key");
}

/// A broker started with a plugin directory of its own.
pub struct PluginBroker {
    /// The broker.
    pub broker: TestBroker,
    /// Its plugin directory (tests add, replace and remove files in it).
    pub dir: TempDir,
}

impl PluginBroker {
    /// Starts a broker whose plugin directory holds copies of `plugins` (names without
    /// `.wasm`), polled every 100 ms. Compiled artifacts are cached across tests under the
    /// target directory, with one MAC key for all tests (copied into each broker's data
    /// directory), so only the first test run pays for compiling.
    pub async fn start(plugins: &[&str]) -> Self {
        Self::start_with(plugins, |_| {}).await
    }

    /// Like [`start`](Self::start), letting the test adjust the configuration further.
    pub async fn start_with(plugins: &[&str], adjust: impl FnOnce(&mut bourse::Config)) -> Self {
        let dir = TempDir::new();
        for name in plugins {
            std::fs::write(dir.path.join(format!("{name}.wasm")), plugin_bytes(name))
                .expect("copy plugin");
        }
        let plugin_dir = dir.path.clone();
        let broker = TestBroker::start_with(|cfg| {
            cfg.plugin_dir = Some(plugin_dir);
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
            cfg.plugin_poll_ms = 100;
            adjust(cfg);
        })
        .await;
        Self { broker, dir }
    }

    /// The broker's plugin manager.
    pub fn plugins(&self) -> &PluginManager {
        self.broker
            .handle()
            .expect("in-process broker")
            .plugins()
            .expect("started with a plugin directory")
    }

    /// Writes `bytes` as `file` in the plugin directory atomically (write, then rename), as a
    /// deployment tool should.
    pub fn install(&self, file: &str, bytes: &[u8]) {
        let tmp = self.dir.path.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes).expect("write plugin");
        std::fs::rename(&tmp, self.dir.path.join(file)).expect("rename plugin");
    }
}

/// `plugins/guest`'s hash: FNV-1a 64 then MurmurHash3's fmix64 (what x-modulus-hash and
/// x-consistent-hash hash keys with).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// How long to wait for the directory watcher to notice a change.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);

pub use crate::exchanges::{queue, queue_on, table, text, try_bind};
pub use crate::{confirm_channel, session};

/// exchange.declare of a plugin type.
pub async fn try_declare(
    ch: &lapin::Channel,
    name: &str,
    kind: &str,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    within(ch.exchange_declare(
        name.into(),
        ExchangeKind::Custom(kind.to_owned()),
        ExchangeDeclareOptions::default(),
        args,
    ))
    .await
}

/// exchange.declare of a plugin type, which must succeed.
pub async fn declare(ch: &lapin::Channel, name: &str, kind: &str, args: FieldTable) {
    try_declare(ch, name, kind, args)
        .await
        .unwrap_or_else(|e| panic!("declare {name} of type {kind}: {e}"));
}

/// Publishes and waits for the confirm.
pub async fn publish(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Confirmation {
    let options = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let confirm = within(ch.basic_publish(exchange.into(), key.into(), options, body, properties))
        .await
        .unwrap_or_else(|e| panic!("publish to {exchange}: {e}"));
    within(confirm)
        .await
        .unwrap_or_else(|e| panic!("confirm from {exchange}: {e}"))
}

/// Publishes a plain message and expects a plain ack (routed somewhere, nothing returned).
pub async fn publish_acked(ch: &lapin::Channel, exchange: &str, key: &str, body: &str) {
    match publish(
        ch,
        exchange,
        key,
        body.as_bytes(),
        BasicProperties::default(),
        false,
    )
    .await
    {
        Confirmation::Ack(None) => {}
        other => panic!("publish {body:?} to {exchange} with {key:?}: expected ack, got {other:?}"),
    }
}

/// The bodies of every ready message of `queue`, in order (taken without ack).
pub async fn bodies(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap_or_else(|e| panic!("basic.get from {queue}: {e}"))
        {
            Some(msg) => out.push(String::from_utf8_lossy(&msg.delivery.data).into_owned()),
            None => return out,
        }
    }
}

/// Asserts a broker error with reply `code` whose text contains `needle`.
#[track_caller]
pub fn assert_error<T: std::fmt::Debug>(result: Result<T, lapin::Error>, code: u16, needle: &str) {
    match result {
        Ok(v) => panic!("expected error {code} ({needle:?}), got success: {v:?}"),
        Err(e) => {
            assert_eq!(reply_code(&e), Some(code), "expected {code}, got: {e}");
            assert!(
                e.to_string().contains(needle),
                "error text should contain {needle:?}: {e}"
            );
        }
    }
}

/// `x-dedup` (a fanout that drops repeated message ids) relabelled as type `x-regex`: a second
/// version of `x-regex` that routes differently, for hot-reload tests. Only the type name in
/// the component's data is rewritten (same length, so the component stays valid).
pub fn dedup_as_regex() -> Vec<u8> {
    let mut bytes = plugin_bytes("x-dedup");
    let (from, to) = (b"x-dedup", b"x-regex");
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + pos;
        // Keep the `x-deduplication-header` argument name as it is.
        if !bytes[start + from.len()..].starts_with(b"lication") {
            bytes[start..start + from.len()].copy_from_slice(to);
        }
        at = start + from.len();
    }
    bytes
}
