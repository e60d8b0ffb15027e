//! One `Config`: command-line flags (clap) over environment variables over a TOML file.
//!
//! Every key of the TOML file has a flag and a `BOURSE_*` variable; unknown TOML keys are an
//! error so a typo never silently falls back to a default. Units come last in names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Broker settings after flags, environment and file have been merged.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the AMQP listener binds.
    pub listen: SocketAddr,
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
    /// Largest message body accepted; above it the channel is closed with 406.
    pub max_message_bytes: u64,
    /// Users created at start-up (name, password). Empty means the default `guest`/`guest`.
    pub users: Vec<(String, String)>,
    /// Whether `guest` may only log in from a loopback address (RabbitMQ's default).
    pub guest_loopback_only: bool,
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
            users: Vec::new(),
            guest_loopback_only: true,
        }
    }
}

/// The smallest frame_max a client may negotiate (AMQP 0-9-1 4.2.3, and RabbitMQ's floor).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Command-line flags; each one can also come from its environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "bourse",
    version,
    about = "An AMQP 0-9-1 broker with WebAssembly exchange types"
)]
pub struct Cli {
    /// Address and port to listen on for AMQP connections [default: 127.0.0.1:5672]
    #[arg(long, env = "BOURSE_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory holding durable definitions and persistent messages [default: ./bourse-data]
    #[arg(long, env = "BOURSE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of WASM exchange-type plugins (*.wasm) loaded at start-up
    #[arg(long, env = "BOURSE_PLUGIN_DIR", value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// TOML configuration file; flags and environment variables override its keys
    #[arg(long, env = "BOURSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Largest frame accepted, in bytes (at least 4096) [default: 131072]
    #[arg(long, env = "BOURSE_FRAME_MAX_BYTES")]
    pub frame_max_bytes: Option<u32>,
    /// Highest channel number a connection may open [default: 2047]
    #[arg(long, env = "BOURSE_CHANNEL_MAX")]
    pub channel_max: Option<u16>,
    /// Heartbeat interval proposed to clients, in seconds; 0 disables [default: 60]
    #[arg(long, env = "BOURSE_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u16>,
    /// Largest message body accepted, in bytes [default: 134217728]
    #[arg(long, env = "BOURSE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u64>,
}

/// The TOML file: the same keys as the flags, all optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    frame_max_bytes: Option<u32>,
    channel_max: Option<u16>,
    heartbeat_secs: Option<u16>,
    max_message_bytes: Option<u64>,
    guest_loopback_only: Option<bool>,
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
}

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
        let users = file
            .users
            .into_iter()
            .map(|u| (u.name, u.password))
            .collect();
        let config = Config {
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
            users,
            guest_loopback_only: file
                .guest_loopback_only
                .unwrap_or(defaults.guest_loopback_only),
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

    /// Rejects values no client could work with.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.frame_max_bytes < FRAME_MIN_SIZE {
            return Err(ConfigError::Invalid(format!(
                "frame_max_bytes must be at least {FRAME_MIN_SIZE}"
            )));
        }
        if self.channel_max == 0 {
            return Err(ConfigError::Invalid(
                "channel_max must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
