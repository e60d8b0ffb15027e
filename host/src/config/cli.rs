//! The command-line flags (each also read from its environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Command-line flags; each one can also come from its environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "bourse",
    version,
    about = "An AMQP 0-9-1 broker with WebAssembly exchange types"
)]
pub struct Cli {
    /// Tools instead of the broker (`bourse plugin --help`); without one, the broker runs.
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Largest message body accepted, in bytes, at most 536870912 [default: 134217728]
    #[arg(long, env = "BOURSE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u64>,
    /// Connections open at once on the broker [default: 65536]
    #[arg(long, env = "BOURSE_CONNECTION_MAX")]
    pub connection_max: Option<u32>,
    /// Consumers on one channel [default: 65536]
    #[arg(long, env = "BOURSE_CONSUMER_MAX_PER_CHANNEL")]
    pub consumer_max_per_channel: Option<u32>,
    /// Body bytes one transaction may buffer before tx.commit [default: 268435456]
    #[arg(long, env = "BOURSE_TX_MAX_BYTES")]
    pub tx_max_bytes: Option<u64>,
    /// Bytes of still-arriving message bodies one connection may hold [default: 268435456]
    #[arg(long, env = "BOURSE_CONNECTION_CONTENT_MAX_BYTES")]
    pub connection_content_max_bytes: Option<u64>,
    /// Ready messages a queue keeps in memory before it pages to disk [default: 2048]
    #[arg(long, env = "BOURSE_QUEUE_IN_MEMORY_MESSAGES")]
    pub queue_in_memory_messages: Option<u32>,
    /// Connections open to one vhost, unless its [vhost_limits] entry says otherwise
    /// [default: 4294967295, unlimited]
    #[arg(long, env = "BOURSE_VHOST_MAX_CONNECTIONS")]
    pub vhost_max_connections: Option<u32>,
    /// Queues in one vhost [default: 100000]
    #[arg(long, env = "BOURSE_VHOST_MAX_QUEUES")]
    pub vhost_max_queues: Option<u32>,
    /// Exchanges declared in one vhost, besides the pre-declared ones [default: 10000]
    #[arg(long, env = "BOURSE_VHOST_MAX_EXCHANGES")]
    pub vhost_max_exchanges: Option<u32>,
    /// Body bytes of ready messages one vhost's queues may hold before its publishers are
    /// blocked [default: unlimited]
    #[arg(long, env = "BOURSE_VHOST_MAX_QUEUED_BYTES")]
    pub vhost_max_queued_bytes: Option<u64>,
    /// Messages per second one vhost's publishers may send together; above it they are
    /// slowed [default: 0, unlimited]
    #[arg(long, env = "BOURSE_VHOST_MAX_PUBLISH_RATE")]
    pub vhost_max_publish_rate: Option<u64>,
    /// Bindings in one vhost [default: 1000000]
    #[arg(long, env = "BOURSE_VHOST_MAX_BINDINGS")]
    pub vhost_max_bindings: Option<u32>,
    /// Cache of compiled WASM plugins [default: <data-dir>/wasm-cache]
    #[arg(long, env = "BOURSE_WASM_CACHE_DIR", value_name = "DIR")]
    pub wasm_cache_dir: Option<PathBuf>,
    /// How often the plugin directory is polled for changes, in ms; 0 disables [default: 1000]
    #[arg(long, env = "BOURSE_PLUGIN_POLL_MS")]
    pub plugin_poll_ms: Option<u64>,
    /// Most WASM instances alive at once (one per WASM exchange, plus reloads) [default: 1000]
    #[arg(long, env = "BOURSE_WASM_INSTANCES_MAX")]
    pub wasm_instances_max: Option<u32>,
    /// Largest plugin a tenant may upload into its vhost, in bytes [default: 33554432]
    #[arg(long, env = "BOURSE_WASM_UPLOAD_MAX_BYTES")]
    pub wasm_upload_max_bytes: Option<u64>,
    /// Close a channel holding a delivery unacknowledged this long, in ms; 0 disables
    /// [default: 0, off]
    #[arg(long, env = "BOURSE_CONSUMER_TIMEOUT_MS")]
    pub consumer_timeout_ms: Option<u64>,
    /// Size of a queue's message segment files, in bytes (4096 to 1 GiB) [default: 67108864]
    #[arg(long, env = "BOURSE_SEGMENT_MAX_BYTES")]
    pub segment_max_bytes: Option<u32>,
    /// Deadline of one WASM route call, in ms [default: 5]
    #[arg(long, env = "BOURSE_WASM_CALL_DEADLINE_MS")]
    pub wasm_call_deadline_ms: Option<u64>,
    /// Deadline of other WASM calls (init, bindings, validate), in ms [default: 200]
    #[arg(long, env = "BOURSE_WASM_SETUP_DEADLINE_MS")]
    pub wasm_setup_deadline_ms: Option<u64>,
    /// Largest linear memory of one WASM instance, in bytes [default: 16777216]
    #[arg(long, env = "BOURSE_WASM_MEMORY_MAX_BYTES")]
    pub wasm_memory_max_bytes: Option<u64>,
    /// Largest table of one WASM instance, in elements [default: 50000]
    #[arg(long, env = "BOURSE_WASM_TABLE_ELEMENTS_MAX")]
    pub wasm_table_elements_max: Option<u64>,
    /// Plugin log lines per second per exchange [default: 10]
    #[arg(long, env = "BOURSE_WASM_LOG_LINES_PER_SEC")]
    pub wasm_log_lines_per_sec: Option<u32>,
    /// Entries in one WASM exchange's state store [default: 65536]
    #[arg(long, env = "BOURSE_WASM_STATE_ENTRIES_MAX")]
    pub wasm_state_entries_max: Option<u32>,
    /// Bytes of one vhost's WASM exchange state stores together [default: 67108864]
    #[arg(long, env = "BOURSE_WASM_STATE_VHOST_BYTES_MAX")]
    pub wasm_state_vhost_bytes_max: Option<u64>,
    /// Consecutive failed WASM calls before an exchange is marked failed [default: 5]
    #[arg(long, env = "BOURSE_WASM_FAILURES_MAX")]
    pub wasm_failures_max: Option<u32>,
    /// Cached routing decisions per cacheable WASM exchange; 0 disables [default: 16384]
    #[arg(long, env = "BOURSE_WASM_ROUTE_CACHE_ENTRIES")]
    pub wasm_route_cache_entries: Option<u32>,
    /// Milliseconds of WASM calls per second one vhost may use; 0 unlimited [default: 1000]
    #[arg(long, env = "BOURSE_WASM_CPU_MS_PER_SEC")]
    pub wasm_cpu_ms_per_sec: Option<u64>,
    /// Sum of one vhost's WASM instance memory caps, in bytes [default: unlimited]
    #[arg(long, env = "BOURSE_WASM_MEMORY_TOTAL_BYTES")]
    pub wasm_memory_total_bytes: Option<u64>,
    /// Block publishers above this fraction of total memory, in (0, 1] [default: 0.4]
    #[arg(long, env = "BOURSE_MEMORY_HIGH_WATERMARK", value_name = "FRACTION")]
    pub memory_high_watermark: Option<f64>,
    /// Block publishers above this resident memory, in bytes; overrides the fraction
    #[arg(long, env = "BOURSE_MEMORY_HIGH_WATERMARK_BYTES")]
    pub memory_high_watermark_bytes: Option<u64>,
    /// A definitions file (RabbitMQ's JSON format) imported at every start
    #[arg(long, env = "BOURSE_LOAD_DEFINITIONS", value_name = "FILE")]
    pub load_definitions: Option<PathBuf>,
    /// Address and port of the Prometheus endpoint, or `off` [default: 127.0.0.1:15692]
    #[arg(long, env = "BOURSE_PROMETHEUS_LISTEN", value_name = "ADDR:PORT|off")]
    pub prometheus_listen: Option<String>,
    /// This node's name in a cluster; without it the broker runs as a single node
    #[arg(long, env = "BOURSE_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Address and port of the inter-node listener (Raft traffic, forwarded writes)
    #[arg(long, env = "BOURSE_CLUSTER_LISTEN", value_name = "ADDR:PORT")]
    pub cluster_listen: Option<SocketAddr>,
    /// The members to form the cluster with on first start, this node included
    #[arg(
        long,
        env = "BOURSE_CLUSTER_PEERS",
        value_name = "NAME=ADDR:PORT,...",
        value_delimiter = ','
    )]
    pub cluster_peers: Vec<String>,
    /// File holding the secret shared by the cluster's nodes (at least 16 bytes)
    #[arg(long, env = "BOURSE_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster's shared secret itself (environment only: a flag would show in `ps`)
    #[arg(
        long,
        env = "BOURSE_CLUSTER_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
    /// Address and port of the management HTTP API, or `off` [default: 127.0.0.1:15672]
    #[arg(long, env = "BOURSE_MANAGEMENT_LISTEN", value_name = "ADDR:PORT|off")]
    pub management_listen: Option<String>,
    /// Address and port of the management API over HTTPS (the AMQPS certificate and key)
    /// [default: none]
    #[arg(long, env = "BOURSE_MANAGEMENT_TLS_LISTEN", value_name = "ADDR:PORT")]
    pub management_tls_listen: Option<SocketAddr>,
    /// How often the management API samples counters for message rates [default: 5000]
    #[arg(long, env = "BOURSE_MANAGEMENT_SAMPLE_INTERVAL_MS", value_name = "MS")]
    pub management_sample_interval_ms: Option<u64>,
    /// Log filter: a level (`info`) or per-module directives (`bourse=debug,info`); the
    /// `BOURSE_LOG` variable overrides it [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format [default: text]
    #[arg(long, env = "BOURSE_LOG_FORMAT", value_enum)]
    pub log_format: Option<super::LogFormat>,
    /// Address and port of the AMQPS listener, usually 127.0.0.1:5671; needs the cert and key
    /// [default: none, no TLS listener]
    #[arg(long, env = "BOURSE_TLS_LISTEN", value_name = "ADDR:PORT")]
    pub tls_listen: Option<SocketAddr>,
    /// The server certificate chain (PEM) of the AMQPS listener
    #[arg(long, env = "BOURSE_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The server private key (PEM) of the AMQPS listener
    #[arg(long, env = "BOURSE_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to
    #[arg(long, env = "BOURSE_TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Ask AMQPS clients for a certificate and verify it [default: false]
    #[arg(long, env = "BOURSE_TLS_VERIFY_PEER")]
    pub tls_verify_peer: Option<bool>,
    /// With verification: refuse AMQPS clients without a certificate [default: false]
    #[arg(long, env = "BOURSE_TLS_FAIL_IF_NO_PEER_CERT")]
    pub tls_fail_if_no_peer_cert: Option<bool>,
    /// How often the TLS files are checked for changes, in ms; 0 disables [default: 5000]
    #[arg(long, env = "BOURSE_TLS_RELOAD_POLL_MS")]
    pub tls_reload_poll_ms: Option<u64>,
}

/// What `bourse` can do besides running the broker.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write, build, test and deploy WASM exchange-type plugins (docs/plugins.md).
    #[command(subcommand)]
    Plugin(crate::plugin_tool::PluginCommand),
}
