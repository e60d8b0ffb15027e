//! One `Config`: command-line flags (clap) over environment variables over a TOML file.
//!
//! Every key of the TOML file has a flag and a `BOURSE_*` variable; unknown TOML keys are an
//! error so a typo never silently falls back to a default. Units come last in names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::{Limits, MAX_MESSAGE_BYTES_CEILING, UserLimits, VhostLimits};

mod cli;
mod cluster;
mod file;
mod seeds;

pub use cli::{Cli, Command};
pub use cluster::{ClusterConfig, check_name as check_node_name};
use file::FileConfig;
pub use seeds::{Credential, PermissionSeed, TopicPermissionSeed, UserSeed};

/// Broker settings after flags, environment and file have been merged.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the AMQP listener binds.
    pub listen: SocketAddr,
    /// This node's cluster settings; None: a single node.
    pub cluster: Option<ClusterConfig>,
    /// Directory for durable data (definitions log, message segments).
    pub data_dir: PathBuf,
    /// Directory scanned for WASM exchange-type plugins.
    pub plugin_dir: Option<PathBuf>,
    /// Largest frame the broker accepts and offers in connection.tune.
    pub frame_max_bytes: u32,
    /// Highest channel number offered in connection.tune.
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune (0 disables).
    pub heartbeat_secs: u16,
    /// Largest message body accepted; above it the channel is closed with 406. At most
    /// [`MAX_MESSAGE_BYTES_CEILING`] (512 MiB, RabbitMQ's ceiling).
    pub max_message_bytes: u64,
    /// Limits on what clients may create (docs/limits.md); `limits.vhost` is the default of
    /// every vhost, which `vhost_limits` overrides.
    pub limits: Limits,
    /// Per-user limits (TOML: `[user_limits."alice"]`).
    pub user_limits: BTreeMap<String, UserLimits>,
    /// Users created at start-up. Empty means the default `guest`/`guest`.
    pub users: Vec<UserSeed>,
    /// Permissions at start-up (TOML `[[permissions]]`). Empty: every user may do everything
    /// in `/`.
    pub permissions: Vec<PermissionSeed>,
    /// Topic permissions at start-up (TOML `[[topic_permissions]]`).
    pub topic_permissions: Vec<TopicPermissionSeed>,
    /// Whether `guest` may only log in from a loopback address (RabbitMQ's default).
    pub guest_loopback_only: bool,
    /// Where compiled WASM components are cached [default: `<data_dir>/wasm-cache`].
    pub wasm_cache_dir: Option<PathBuf>,
    /// How often `plugin_dir` is polled for added, replaced or removed plugins; 0 disables.
    pub plugin_poll_ms: u64,
    /// Most WASM instances alive at once (sizes the engine's pooling allocator).
    pub wasm_instances_max: u32,
    /// Largest component a tenant may upload into its vhost (docs/plugins.md, "Plugins per
    /// vhost"); a larger upload is refused before it is compiled.
    pub wasm_upload_max_bytes: u64,
    /// Delivery acknowledgement timeout (RabbitMQ's `consumer_timeout`): a channel holding a
    /// delivery unacknowledged for longer is closed with 406 and its unacked messages are
    /// requeued. None (or 0 in flags and file) turns it off, the default.
    pub consumer_timeout_ms: Option<u64>,
    /// Size at which a queue's message segment file is closed and a new one started (see
    /// docs/storage.md); a fully acknowledged segment is deleted.
    pub segment_max_bytes: u32,
    /// Limits on WASM exchanges, for every vhost without an override.
    pub wasm: WasmLimits,
    /// Per-vhost overrides of `wasm` and `limits.vhost` (TOML: `[vhost_limits."/"]`).
    pub vhost_limits: BTreeMap<String, VhostLimitOverrides>,
    /// Memory high watermark as a fraction of total memory (RabbitMQ's
    /// `vm_memory_high_watermark.relative`): above it, publishing connections are blocked
    /// (docs/memory.md).
    pub memory_high_watermark: f64,
    /// Memory high watermark in bytes (RabbitMQ's `vm_memory_high_watermark.absolute`);
    /// overrides `memory_high_watermark` when set.
    pub memory_high_watermark_bytes: Option<u64>,
    /// The AMQPS listener (docs/tls.md): present when `tls_listen`, `tls_cert_file` and
    /// `tls_key_file` are all set.
    pub tls: Option<TlsSettings>,
    /// Address of the management HTTP API (docs/operations.md); None: no API. The binary's
    /// default is 127.0.0.1:15672; a `Config` built in code has none unless it asks.
    pub management_listen: Option<SocketAddr>,
    /// Address of the Prometheus endpoint (`/metrics`); None: none. The binary's default is
    /// 127.0.0.1:15692.
    pub prometheus_listen: Option<SocketAddr>,
    /// Address of the management API over HTTPS, with the AMQPS listener's certificate and
    /// key (RabbitMQ's `management.ssl.port`, usually 15671); None: no HTTPS listener.
    pub management_tls_listen: Option<SocketAddr>,
    /// How often the management API samples the message counters for its rates (RabbitMQ's
    /// `collect_statistics_interval`).
    pub management_sample_interval_ms: u64,
    /// Log filter (`info`, `debug`, `bourse=debug,info`, ...); `BOURSE_LOG` overrides it.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// A definitions file (RabbitMQ's JSON format) imported at every start, after the meta
    /// log is replayed (RabbitMQ's `load_definitions`): docs/operations.md.
    pub load_definitions: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colour only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The AMQPS listener's settings (RabbitMQ's `listeners.ssl` and `ssl_options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Address the TLS listener binds (usually port 5671).
    pub listen: SocketAddr,
    /// The server's certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates, PEM, that client certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against `ca_file`.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
    /// How often the files are checked for changes, in ms; 0 disables (reload is then only
    /// on request).
    pub reload_poll_ms: u64,
}

/// What one WASM exchange may consume. Every call runs under a deadline; every instance under
/// a memory and table cap; logs and the state store are bounded per exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WasmLimits {
    /// Deadline of one `route` call, in milliseconds (epoch ticks of 1 ms).
    pub call_deadline_ms: u64,
    /// Deadline of the other calls (`init`, `validate`, binding changes), in milliseconds.
    pub setup_deadline_ms: u64,
    /// Largest linear memory of one instance, in bytes.
    pub memory_max_bytes: u64,
    /// Largest table of one instance, in elements.
    pub table_elements_max: u64,
    /// Log lines per second per exchange (burst: 5 seconds' worth); the rest is dropped.
    pub log_lines_per_sec: u32,
    /// Entries in one exchange's `state` store.
    pub state_entries_max: u32,
    /// Bytes of the `state` stores of one vhost's exchanges together (keys, values and 32
    /// bytes per entry).
    pub state_vhost_bytes_max: u64,
    /// Consecutive failed calls (trap, deadline, garbage) before the exchange is marked failed.
    pub failures_max: u32,
    /// Routing decisions cached per exchange whose plugin declared them cacheable (0: none).
    pub route_cache_entries: u32,
    /// Milliseconds of plugin calls per second one vhost's WASM exchanges may use together
    /// (0: unlimited); over it, the vhost's publishers are slowed (state `flow`).
    pub cpu_ms_per_sec: u64,
    /// Sum of the memory caps of one vhost's WASM instances (`u64::MAX`: unlimited); a
    /// declare past it is refused with 406.
    pub memory_total_bytes: u64,
}

impl Default for WasmLimits {
    fn default() -> Self {
        Self {
            call_deadline_ms: 5,
            setup_deadline_ms: 200,
            memory_max_bytes: 16 * 1024 * 1024,
            table_elements_max: 50_000,
            log_lines_per_sec: 10,
            state_entries_max: 65_536,
            state_vhost_bytes_max: 64 * 1024 * 1024,
            failures_max: 5,
            route_cache_entries: 16_384,
            cpu_ms_per_sec: 1000,
            memory_total_bytes: u64::MAX,
        }
    }
}

/// A per-vhost override of some [`WasmLimits`] and [`VhostLimits`]; unset keys keep the
/// global value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostLimitOverrides {
    /// See [`VhostLimits::max_connections`].
    pub max_connections: Option<u32>,
    /// See [`VhostLimits::max_queues`].
    pub max_queues: Option<u32>,
    /// See [`VhostLimits::max_exchanges`].
    pub max_exchanges: Option<u32>,
    /// See [`VhostLimits::max_bindings`].
    pub max_bindings: Option<u32>,
    /// See [`VhostLimits::consumer_max_per_channel`].
    pub consumer_max_per_channel: Option<u32>,
    /// See [`VhostLimits::tx_max_bytes`].
    pub tx_max_bytes: Option<u64>,
    /// See [`VhostLimits::connection_content_max_bytes`].
    pub connection_content_max_bytes: Option<u64>,
    /// See [`VhostLimits::queue_in_memory_messages`].
    pub queue_in_memory_messages: Option<u32>,
    /// See [`VhostLimits::max_queued_bytes`].
    pub max_queued_bytes: Option<u64>,
    /// See [`VhostLimits::max_publish_rate`].
    pub max_publish_rate: Option<u64>,
    /// WASM exchanges (one instance each) the vhost may have; default `wasm_instances_max`,
    /// the broker's whole pool.
    pub wasm_instances_max: Option<u32>,
    /// See [`WasmLimits::call_deadline_ms`].
    pub wasm_call_deadline_ms: Option<u64>,
    /// See [`WasmLimits::setup_deadline_ms`].
    pub wasm_setup_deadline_ms: Option<u64>,
    /// See [`WasmLimits::memory_max_bytes`].
    pub wasm_memory_max_bytes: Option<u64>,
    /// See [`WasmLimits::table_elements_max`].
    pub wasm_table_elements_max: Option<u64>,
    /// See [`WasmLimits::log_lines_per_sec`].
    pub wasm_log_lines_per_sec: Option<u32>,
    /// See [`WasmLimits::state_entries_max`].
    pub wasm_state_entries_max: Option<u32>,
    /// See [`WasmLimits::state_vhost_bytes_max`].
    pub wasm_state_vhost_bytes_max: Option<u64>,
    /// See [`WasmLimits::failures_max`].
    pub wasm_failures_max: Option<u32>,
    /// See [`WasmLimits::route_cache_entries`].
    pub wasm_route_cache_entries: Option<u32>,
    /// See [`WasmLimits::cpu_ms_per_sec`].
    pub wasm_cpu_ms_per_sec: Option<u64>,
    /// See [`WasmLimits::memory_total_bytes`].
    pub wasm_memory_total_bytes: Option<u64>,
    /// Exchange types the vhost may declare besides the built-ins and its own plugin types
    /// (none: every type the broker has).
    pub exchange_types: Option<Vec<String>>,
}

impl VhostLimitOverrides {
    /// `base` with these overrides of vhost limits applied.
    pub fn apply_vhost(&self, base: &VhostLimits) -> VhostLimits {
        VhostLimits {
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            max_queues: self.max_queues.unwrap_or(base.max_queues),
            max_exchanges: self.max_exchanges.unwrap_or(base.max_exchanges),
            max_bindings: self.max_bindings.unwrap_or(base.max_bindings),
            consumer_max_per_channel: self
                .consumer_max_per_channel
                .unwrap_or(base.consumer_max_per_channel),
            tx_max_bytes: self.tx_max_bytes.unwrap_or(base.tx_max_bytes),
            connection_content_max_bytes: self
                .connection_content_max_bytes
                .unwrap_or(base.connection_content_max_bytes),
            queue_in_memory_messages: self
                .queue_in_memory_messages
                .unwrap_or(base.queue_in_memory_messages),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(base.max_queued_bytes),
            max_publish_rate: self.max_publish_rate.unwrap_or(base.max_publish_rate),
        }
    }

    /// `base` with these overrides of WASM limits applied.
    pub fn apply(&self, base: &WasmLimits) -> WasmLimits {
        WasmLimits {
            call_deadline_ms: self.wasm_call_deadline_ms.unwrap_or(base.call_deadline_ms),
            setup_deadline_ms: self
                .wasm_setup_deadline_ms
                .unwrap_or(base.setup_deadline_ms),
            memory_max_bytes: self.wasm_memory_max_bytes.unwrap_or(base.memory_max_bytes),
            table_elements_max: self
                .wasm_table_elements_max
                .unwrap_or(base.table_elements_max),
            log_lines_per_sec: self
                .wasm_log_lines_per_sec
                .unwrap_or(base.log_lines_per_sec),
            state_entries_max: self
                .wasm_state_entries_max
                .unwrap_or(base.state_entries_max),
            state_vhost_bytes_max: self
                .wasm_state_vhost_bytes_max
                .unwrap_or(base.state_vhost_bytes_max),
            failures_max: self.wasm_failures_max.unwrap_or(base.failures_max),
            route_cache_entries: self
                .wasm_route_cache_entries
                .unwrap_or(base.route_cache_entries),
            cpu_ms_per_sec: self.wasm_cpu_ms_per_sec.unwrap_or(base.cpu_ms_per_sec),
            memory_total_bytes: self
                .wasm_memory_total_bytes
                .unwrap_or(base.memory_total_bytes),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            data_dir: PathBuf::from("bourse-data"),
            plugin_dir: None,
            frame_max_bytes: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            max_message_bytes: 128 * 1024 * 1024,
            limits: Limits::default(),
            user_limits: BTreeMap::new(),
            users: Vec::new(),
            permissions: Vec::new(),
            topic_permissions: Vec::new(),
            guest_loopback_only: true,
            wasm_cache_dir: None,
            plugin_poll_ms: 1000,
            wasm_instances_max: 1000,
            wasm_upload_max_bytes: 32 * 1024 * 1024,
            consumer_timeout_ms: None,
            segment_max_bytes: 64 * 1024 * 1024,
            wasm: WasmLimits::default(),
            vhost_limits: BTreeMap::new(),
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: None,
            tls: None,
            cluster: None,
            management_listen: None,
            prometheus_listen: None,
            management_tls_listen: None,
            management_sample_interval_ms: 5000,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            load_definitions: None,
        }
    }
}

/// The smallest frame_max a client may negotiate (AMQP 0-9-1 4.2.3, and RabbitMQ's floor).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Merges flags (which clap already merged with the environment) over the file, if any.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let tls = tls_settings(&cli, &file)?;
        let cluster = cluster::cluster_settings(&cli, file.cluster.as_ref())?;
        let management_listen = listen_or_off(
            "management_listen",
            cli.management_listen
                .as_deref()
                .or(file.management_listen.as_deref()),
            15672,
        )?;
        let prometheus_listen = listen_or_off(
            "prometheus_listen",
            cli.prometheus_listen
                .as_deref()
                .or(file.prometheus_listen.as_deref()),
            15692,
        )?;
        let management_tls_listen = cli.management_tls_listen.or(file.management_tls_listen);
        if management_tls_listen.is_some() && tls.is_none() {
            return Err(ConfigError::Invalid(
                "management_tls_listen serves the AMQPS listener's certificate: it needs \
                 tls_listen, tls_cert_file and tls_key_file"
                    .to_owned(),
            ));
        }
        let users = file
            .users
            .into_iter()
            .map(|u| {
                let credential = match (u.password, u.password_hash) {
                    (Some(password), None) => Credential::Clear(password),
                    (None, Some(hash)) => Credential::Hash {
                        hash,
                        algorithm: u
                            .hashing_algorithm
                            .unwrap_or_else(|| "rabbit_password_hashing_sha256".to_owned()),
                    },
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "user '{}': give exactly one of password and password_hash",
                            u.name
                        )));
                    }
                };
                Ok(UserSeed {
                    name: u.name,
                    credential,
                    tags: u.tags,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let wasm = VhostLimitOverrides {
            wasm_call_deadline_ms: cli.wasm_call_deadline_ms,
            wasm_setup_deadline_ms: cli.wasm_setup_deadline_ms,
            wasm_memory_max_bytes: cli.wasm_memory_max_bytes,
            wasm_table_elements_max: cli.wasm_table_elements_max,
            wasm_log_lines_per_sec: cli.wasm_log_lines_per_sec,
            wasm_state_entries_max: cli.wasm_state_entries_max,
            wasm_state_vhost_bytes_max: cli.wasm_state_vhost_bytes_max,
            wasm_failures_max: cli.wasm_failures_max,
            wasm_route_cache_entries: cli.wasm_route_cache_entries,
            wasm_cpu_ms_per_sec: cli.wasm_cpu_ms_per_sec,
            wasm_memory_total_bytes: cli.wasm_memory_total_bytes,
            ..Default::default()
        }
        .apply(
            &VhostLimitOverrides {
                wasm_call_deadline_ms: file.wasm_call_deadline_ms,
                wasm_setup_deadline_ms: file.wasm_setup_deadline_ms,
                wasm_memory_max_bytes: file.wasm_memory_max_bytes,
                wasm_table_elements_max: file.wasm_table_elements_max,
                wasm_log_lines_per_sec: file.wasm_log_lines_per_sec,
                wasm_state_entries_max: file.wasm_state_entries_max,
                wasm_state_vhost_bytes_max: file.wasm_state_vhost_bytes_max,
                wasm_failures_max: file.wasm_failures_max,
                wasm_route_cache_entries: file.wasm_route_cache_entries,
                wasm_cpu_ms_per_sec: file.wasm_cpu_ms_per_sec,
                wasm_memory_total_bytes: file.wasm_memory_total_bytes,
                ..Default::default()
            }
            .apply(&defaults.wasm),
        );
        let base = defaults.limits;
        let limits = Limits {
            connection_max: cli
                .connection_max
                .or(file.connection_max)
                .unwrap_or(base.connection_max),
            vhost: VhostLimits {
                consumer_max_per_channel: cli
                    .consumer_max_per_channel
                    .or(file.consumer_max_per_channel)
                    .unwrap_or(base.vhost.consumer_max_per_channel),
                tx_max_bytes: cli
                    .tx_max_bytes
                    .or(file.tx_max_bytes)
                    .unwrap_or(base.vhost.tx_max_bytes),
                connection_content_max_bytes: cli
                    .connection_content_max_bytes
                    .or(file.connection_content_max_bytes)
                    .unwrap_or(base.vhost.connection_content_max_bytes),
                queue_in_memory_messages: cli
                    .queue_in_memory_messages
                    .or(file.queue_in_memory_messages)
                    .unwrap_or(base.vhost.queue_in_memory_messages)
                    .max(1),
                max_connections: cli
                    .vhost_max_connections
                    .or(file.vhost_max_connections)
                    .unwrap_or(base.vhost.max_connections),
                max_queues: cli
                    .vhost_max_queues
                    .or(file.vhost_max_queues)
                    .unwrap_or(base.vhost.max_queues),
                max_exchanges: cli
                    .vhost_max_exchanges
                    .or(file.vhost_max_exchanges)
                    .unwrap_or(base.vhost.max_exchanges),
                max_bindings: cli
                    .vhost_max_bindings
                    .or(file.vhost_max_bindings)
                    .unwrap_or(base.vhost.max_bindings),
                max_queued_bytes: cli
                    .vhost_max_queued_bytes
                    .or(file.vhost_max_queued_bytes)
                    .unwrap_or(base.vhost.max_queued_bytes),
                max_publish_rate: cli
                    .vhost_max_publish_rate
                    .or(file.vhost_max_publish_rate)
                    .unwrap_or(base.vhost.max_publish_rate),
            },
        };
        let config = Config {
            tls,
            cluster,
            management_listen,
            prometheus_listen,
            management_tls_listen,
            management_sample_interval_ms: cli
                .management_sample_interval_ms
                .or(file.management_sample_interval_ms)
                .unwrap_or(defaults.management_sample_interval_ms)
                .max(100),
            log_level: cli
                .log_level
                .or(file.log_level)
                .unwrap_or(defaults.log_level),
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            load_definitions: cli.load_definitions.or(file.load_definitions),
            listen: cli.listen.or(file.listen).unwrap_or(defaults.listen),
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir),
            plugin_dir: cli.plugin_dir.or(file.plugin_dir),
            frame_max_bytes: cli
                .frame_max_bytes
                .or(file.frame_max_bytes)
                .unwrap_or(defaults.frame_max_bytes),
            channel_max: cli
                .channel_max
                .or(file.channel_max)
                .unwrap_or(defaults.channel_max),
            heartbeat_secs: cli
                .heartbeat_secs
                .or(file.heartbeat_secs)
                .unwrap_or(defaults.heartbeat_secs),
            max_message_bytes: cli
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(defaults.max_message_bytes),
            limits,
            user_limits: file.user_limits,
            users,
            permissions: file.permissions,
            topic_permissions: file.topic_permissions,
            guest_loopback_only: file
                .guest_loopback_only
                .unwrap_or(defaults.guest_loopback_only),
            wasm_cache_dir: cli.wasm_cache_dir.or(file.wasm_cache_dir),
            plugin_poll_ms: cli
                .plugin_poll_ms
                .or(file.plugin_poll_ms)
                .unwrap_or(defaults.plugin_poll_ms),
            wasm_instances_max: cli
                .wasm_instances_max
                .or(file.wasm_instances_max)
                .unwrap_or(defaults.wasm_instances_max),
            wasm_upload_max_bytes: cli
                .wasm_upload_max_bytes
                .or(file.wasm_upload_max_bytes)
                .unwrap_or(defaults.wasm_upload_max_bytes),
            consumer_timeout_ms: cli
                .consumer_timeout_ms
                .or(file.consumer_timeout_ms)
                .filter(|&ms| ms > 0),
            segment_max_bytes: cli
                .segment_max_bytes
                .or(file.segment_max_bytes)
                .unwrap_or(defaults.segment_max_bytes),
            wasm,
            vhost_limits: file.vhost_limits,
            memory_high_watermark: cli
                .memory_high_watermark
                .or(file.memory_high_watermark)
                .unwrap_or(defaults.memory_high_watermark),
            memory_high_watermark_bytes: cli
                .memory_high_watermark_bytes
                .or(file.memory_high_watermark_bytes),
        };
        config.check()?;
        Ok(config)
    }

    fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The WASM limits in force in `vhost`: its `[vhost_limits]` entry over the global ones.
    pub fn wasm_limits(&self, vhost: &str) -> WasmLimits {
        match self.vhost_limits.get(vhost) {
            Some(overrides) => overrides.apply(&self.wasm),
            None => self.wasm.clone(),
        }
    }

    /// The limits in force in `vhost`: its `[vhost_limits]` entry over the global ones.
    pub fn vhost_limits_for(&self, vhost: &str) -> VhostLimits {
        match self.vhost_limits.get(vhost) {
            Some(overrides) => overrides.apply_vhost(&self.limits.vhost),
            None => self.limits.vhost,
        }
    }

    /// The limits of user `name` (none unless `[user_limits]` names it).
    pub fn user_limits_for(&self, name: &str) -> UserLimits {
        self.user_limits.get(name).copied().unwrap_or_default()
    }

    /// Rejects values no client could work with.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return Err(ConfigError::Invalid(format!(
                "max_message_bytes must be at most {MAX_MESSAGE_BYTES_CEILING} (512 MiB)"
            )));
        }
        if self.frame_max_bytes < FRAME_MIN_SIZE {
            return Err(ConfigError::Invalid(format!(
                "frame_max_bytes must be at least {FRAME_MIN_SIZE}"
            )));
        }
        for seed in &self.permissions {
            seed.compile().map_err(|e| {
                ConfigError::Invalid(format!(
                    "permissions of '{}' in '{}': {e}",
                    seed.user, seed.vhost
                ))
            })?;
        }
        for seed in &self.topic_permissions {
            crate::auth::TopicPermissions::new(
                &seed.exchange,
                &seed.write,
                &seed.read,
                &seed.user,
                &seed.vhost,
            )
            .map_err(|e| {
                ConfigError::Invalid(format!(
                    "topic permissions of '{}' in '{}': {e}",
                    seed.user, seed.vhost
                ))
            })?;
        }
        for user in &self.users {
            if let Credential::Hash { .. } = &user.credential
                && let Err(error) = user.credential.to_hash()
            {
                return Err(ConfigError::Invalid(format!(
                    "user '{}': {error}",
                    user.name
                )));
            }
        }
        check_wasm_limits("", &self.wasm)?;
        for vhost in self.vhost_limits.keys() {
            check_wasm_limits(vhost, &self.wasm_limits(vhost))?;
        }
        if !(4096..=1 << 30).contains(&self.segment_max_bytes) {
            return Err(ConfigError::Invalid(
                "segment_max_bytes must be between 4096 and 1073741824".into(),
            ));
        }
        if self.channel_max == 0 {
            return Err(ConfigError::Invalid(
                "channel_max must be at least 1".into(),
            ));
        }
        // Written so that NaN fails too.
        if !(self.memory_high_watermark > 0.0 && self.memory_high_watermark <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "memory_high_watermark must be a fraction of total memory in (0, 1], not {}",
                self.memory_high_watermark
            )));
        }
        if self.memory_high_watermark_bytes == Some(0) {
            return Err(ConfigError::Invalid(
                "memory_high_watermark_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Rejects WASM limits no plugin could run under (`vhost` is empty for the global ones).
fn check_wasm_limits(vhost: &str, limits: &WasmLimits) -> Result<(), ConfigError> {
    let scope = if vhost.is_empty() {
        String::new()
    } else {
        format!(" (vhost_limits.\"{vhost}\")")
    };
    if limits.call_deadline_ms == 0 || limits.setup_deadline_ms == 0 {
        return Err(ConfigError::Invalid(format!(
            "wasm_call_deadline_ms and wasm_setup_deadline_ms must be at least 1{scope}"
        )));
    }
    if limits.memory_max_bytes < 65_536 {
        return Err(ConfigError::Invalid(format!(
            "wasm_memory_max_bytes must be at least 65536 (one page){scope}"
        )));
    }
    if limits.failures_max == 0 {
        return Err(ConfigError::Invalid(format!(
            "wasm_failures_max must be at least 1{scope}"
        )));
    }
    Ok(())
}

/// An HTTP listener's address: `off` for none, loopback on `port` when not given.
fn listen_or_off(
    key: &str,
    value: Option<&str>,
    port: u16,
) -> Result<Option<SocketAddr>, ConfigError> {
    match value {
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
        Some("off") => Ok(None),
        Some(addr) => addr.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!("{key} must be ADDR:PORT or off, not '{addr}'"))
        }),
    }
}

/// The AMQPS settings of flags over file: all of listen, cert and key, or none of them.
fn tls_settings(cli: &Cli, file: &FileConfig) -> Result<Option<TlsSettings>, ConfigError> {
    let listen = cli.tls_listen.or(file.tls_listen);
    let cert_file = cli.tls_cert_file.clone().or(file.tls_cert_file.clone());
    let key_file = cli.tls_key_file.clone().or(file.tls_key_file.clone());
    let (listen, cert_file, key_file) = match (listen, cert_file, key_file) {
        (Some(listen), Some(cert), Some(key)) => (listen, cert, key),
        (None, None, None) => return Ok(None),
        _ => {
            return Err(ConfigError::Invalid(
                "the TLS listener needs all of tls_listen, tls_cert_file and tls_key_file"
                    .to_owned(),
            ));
        }
    };
    let ca_file = cli.tls_ca_file.clone().or(file.tls_ca_file.clone());
    let verify_peer = cli
        .tls_verify_peer
        .or(file.tls_verify_peer)
        .unwrap_or(false);
    if verify_peer && ca_file.is_none() {
        return Err(ConfigError::Invalid(
            "tls_verify_peer needs tls_ca_file".to_owned(),
        ));
    }
    Ok(Some(TlsSettings {
        listen,
        cert_file,
        key_file,
        ca_file,
        verify_peer,
        fail_if_no_peer_cert: cli
            .tls_fail_if_no_peer_cert
            .or(file.tls_fail_if_no_peer_cert)
            .unwrap_or(false),
        reload_poll_ms: cli
            .tls_reload_poll_ms
            .or(file.tls_reload_poll_ms)
            .unwrap_or(5000),
    }))
}

#[cfg(test)]
mod tests;
