//! Shared harness for the integration tests: starts a bourse broker in-process on 127.0.0.1:0
//! and connects real AMQP clients to it ([`process`] runs the real binary instead, for tests that
//! kill it).
//!
//! Set `BOURSE_TEST_AMQP_URL` (e.g. `amqp://guest:guest@127.0.0.1:5673/%2f`) to run the same
//! scenarios against another broker, such as RabbitMQ, and compare behaviour.

pub mod basic;
pub mod connection;
pub mod console;
pub mod crash;
pub mod ctl;
pub mod exchanges;
pub mod http;
pub mod process;
pub mod python;
pub mod raw;
pub mod tenancy;
pub mod wasm;

use std::net::SocketAddr;
use std::time::Duration;

use bourse::{Broker, BrokerHandle, Config};
use lapin::{Channel, Connection, ConnectionProperties};

/// A broker for one test; stopped when dropped.
pub struct TestBroker {
    handle: Option<BrokerHandle>,
    url: String,
    config: Option<Config>,
    _data_dir: Option<TempDir>,
}

impl TestBroker {
    /// Starts a broker with the default configuration on an ephemeral loopback port.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after letting the test adjust its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        if let Ok(url) = std::env::var("BOURSE_TEST_AMQP_URL") {
            return Self {
                handle: None,
                url,
                config: None,
                _data_dir: None,
            };
        }
        let data_dir = TempDir::new();
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.path.clone(),
            ..Config::default()
        };
        adjust(&mut config);
        let handle = Broker::start(config.clone()).await.expect("broker starts");
        // Plugins compile in the background: tests start from a loaded broker.
        handle.plugins_loaded().await;
        let url = format!("amqp://guest:guest@{}/%2f", handle.local_addr());
        Self {
            handle: Some(handle),
            url,
            config: Some(config),
            _data_dir: Some(data_dir),
        }
    }

    /// Stops the in-process broker cleanly (its message stores written, synced and closed)
    /// and starts a new one on the same data directory, as an operator's restart would; the
    /// new one listens on another port. Close client connections first.
    pub async fn restart(&mut self) {
        let handle = self
            .handle
            .take()
            .expect("restart needs the in-process broker");
        handle.shutdown().await;
        let config = self.config.clone().expect("in-process broker has a config");
        let handle = Broker::start(config).await.expect("broker restarts");
        handle.plugins_loaded().await;
        self.url = format!("amqp://guest:guest@{}/%2f", handle.local_addr());
        self.handle = Some(handle);
    }

    /// Shuts the in-process broker down as SIGTERM would ([`BrokerHandle::shutdown`]: open
    /// connections get connection.close 320) and returns how long that took.
    pub async fn shutdown(&mut self) -> Duration {
        let handle = self
            .handle
            .take()
            .expect("shutdown needs the in-process broker");
        let started = tokio::time::Instant::now();
        handle.shutdown().await;
        started.elapsed()
    }

    /// The broker's listening address.
    pub fn addr(&self) -> SocketAddr {
        match &self.handle {
            Some(h) => h.local_addr(),
            None => {
                let rest = self.url.split('@').nth(1).expect("url has a host");
                let host = rest.split('/').next().expect("url has host:port");
                host.parse().expect("url host is ADDR:PORT")
            }
        }
    }

    /// The in-process broker, when the test is not pointed at another broker.
    pub fn handle(&self) -> Option<&BrokerHandle> {
        self.handle.as_ref()
    }

    /// `amqp://guest:guest@ADDR/%2f`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection as guest to the default vhost.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connects")
    }

    /// A connection and one open channel.
    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.expect("channel opens");
        (conn, ch)
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    /// The directory.
    pub path: std::path::PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "bourse-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self { path }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Waits up to `limit` for `check` to become true, polling every 10 ms.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection with one channel in confirm mode.
pub async fn session(broker: &TestBroker) -> (Connection, Channel) {
    let (conn, _) = raw::within(broker.channel()).await;
    let ch = confirm_channel(&conn).await;
    (conn, ch)
}

/// A new channel of `conn` in confirm mode (also used again after a channel error).
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = raw::within(conn.create_channel())
        .await
        .expect("channel opens");
    raw::within(ch.confirm_select(lapin::options::ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    ch
}

/// Runs a whole test under one deadline, so a broker that stops answering fails the test
/// instead of hanging it.
pub async fn bounded(limit: Duration, test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

/// A name unique to this process, so tests can also run against a shared broker.
pub fn uniq(base: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{base}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
