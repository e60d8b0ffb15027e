//! The TOML configuration file: the same keys as the flags, all optional.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{PermissionSeed, TopicPermissionSeed, VhostLimitOverrides};
use crate::limits::UserLimits;

/// The TOML file: the same keys as the flags, all optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<SocketAddr>,
    pub(super) cluster: Option<super::cluster::ClusterFile>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) plugin_dir: Option<PathBuf>,
    pub(super) frame_max_bytes: Option<u32>,
    pub(super) channel_max: Option<u16>,
    pub(super) heartbeat_secs: Option<u16>,
    pub(super) max_message_bytes: Option<u64>,
    pub(super) connection_max: Option<u32>,
    pub(super) consumer_max_per_channel: Option<u32>,
    pub(super) tx_max_bytes: Option<u64>,
    pub(super) connection_content_max_bytes: Option<u64>,
    pub(super) queue_in_memory_messages: Option<u32>,
    pub(super) vhost_max_queued_bytes: Option<u64>,
    pub(super) vhost_max_publish_rate: Option<u64>,
    pub(super) vhost_max_connections: Option<u32>,
    pub(super) vhost_max_queues: Option<u32>,
    pub(super) vhost_max_exchanges: Option<u32>,
    pub(super) vhost_max_bindings: Option<u32>,
    #[serde(default)]
    pub(super) user_limits: BTreeMap<String, UserLimits>,
    pub(super) guest_loopback_only: Option<bool>,
    #[serde(default)]
    pub(super) users: Vec<UserEntry>,
    #[serde(default)]
    pub(super) permissions: Vec<PermissionSeed>,
    #[serde(default)]
    pub(super) topic_permissions: Vec<TopicPermissionSeed>,
    pub(super) wasm_cache_dir: Option<PathBuf>,
    pub(super) plugin_poll_ms: Option<u64>,
    pub(super) wasm_instances_max: Option<u32>,
    pub(super) wasm_upload_max_bytes: Option<u64>,
    pub(super) consumer_timeout_ms: Option<u64>,
    pub(super) segment_max_bytes: Option<u32>,
    // The global WASM limits; `[vhost_limits."NAME"]` tables take the same keys.
    pub(super) wasm_call_deadline_ms: Option<u64>,
    pub(super) wasm_setup_deadline_ms: Option<u64>,
    pub(super) wasm_memory_max_bytes: Option<u64>,
    pub(super) wasm_table_elements_max: Option<u64>,
    pub(super) wasm_log_lines_per_sec: Option<u32>,
    pub(super) wasm_state_entries_max: Option<u32>,
    pub(super) wasm_state_vhost_bytes_max: Option<u64>,
    pub(super) wasm_failures_max: Option<u32>,
    pub(super) wasm_route_cache_entries: Option<u32>,
    pub(super) wasm_cpu_ms_per_sec: Option<u64>,
    pub(super) wasm_memory_total_bytes: Option<u64>,
    #[serde(default)]
    pub(super) vhost_limits: BTreeMap<String, VhostLimitOverrides>,
    pub(super) memory_high_watermark: Option<f64>,
    pub(super) memory_high_watermark_bytes: Option<u64>,
    pub(super) management_listen: Option<String>,
    pub(super) management_tls_listen: Option<SocketAddr>,
    pub(super) management_sample_interval_ms: Option<u64>,
    pub(super) log_level: Option<String>,
    pub(super) log_format: Option<super::LogFormat>,
    pub(super) prometheus_listen: Option<String>,
    pub(super) load_definitions: Option<PathBuf>,
    pub(super) tls_listen: Option<SocketAddr>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) tls_verify_peer: Option<bool>,
    pub(super) tls_fail_if_no_peer_cert: Option<bool>,
    pub(super) tls_reload_poll_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserEntry {
    pub(super) name: String,
    /// A clear password, hashed at start-up.
    pub(super) password: Option<String>,
    /// Or RabbitMQ's `password_hash` (base64; empty: no password login).
    pub(super) password_hash: Option<String>,
    /// RabbitMQ's `hashing_algorithm` for `password_hash` [default:
    /// rabbit_password_hashing_sha256].
    pub(super) hashing_algorithm: Option<String>,
    #[serde(default)]
    pub(super) tags: Vec<String>,
}
