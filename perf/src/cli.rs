//! Command-line interface: `bourse-perf load ...` and `bourse-perf idle ...`.
//!
//! Flag names follow rabbitmq-perf-test where it has an equivalent (`-x` producers, `-y`
//! consumers, `-s` size, `-z` time, `-C` count, `-q` prefetch, `-c` confirm, `-r` rate, `-f`
//! persistent, `-a` autoack, `-u` queues, `-t` exchange type, `-e` exchange).

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "bourse-perf", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publish and consume for a bounded time or count; one JSON line of results on stdout.
    Load(Box<LoadArgs>),
    /// Open N idle connections (one channel each) and report the broker's RSS per connection.
    Idle(IdleArgs),
    /// Delayed delivery: publish rate into an x-delayed-message exchange, RSS with the
    /// messages waiting, fire rate and lateness.
    Delayed(crate::delayed::DelayedArgs),
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Broker URI; loopback addresses only.
    #[arg(
        long,
        env = "BOURSE_PERF_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// PID of the broker process: report its CPU seconds and RSS over the run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Free text copied into the JSON line (e.g. the scenario name).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Hard limit on the whole run, seconds; past it the tool reports and exits with status 2.
    /// Default: the run's own time plus 60.
    #[arg(long)]
    pub timeout_secs: Option<f64>,
}

/// The AMQP client the publishers and consumers use.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// lapin: a full client library (about a core per 150-250k msg/s).
    Lapin,
    /// Frames written and parsed directly on tokio TCP (amq-protocol codecs): pre-encoded
    /// publishes written in batches, deliveries parsed in place from a big read buffer. One
    /// connection per publisher and per consumer; topology is still declared with lapin.
    Raw,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Lapin => "lapin",
            Client::Raw => "raw",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub common: Common,

    /// Client for the publishers and consumers: lapin, or raw (a lean frame-level client, so
    /// that the broker rather than the tool limits msg/s).
    #[arg(long, value_enum, default_value_t = Client::Lapin)]
    pub client: Client,

    /// Number of publishers (each on its own channel).
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Number of consumers (each on its own channel); consumer i consumes queue i mod Q.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Connections shared by all publishers and consumers, round-robin; 0 = one per publisher
    /// and one per consumer, as rabbitmq-perf-test does. lapin only: the raw client always opens
    /// one per publisher and one per consumer.
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Body size in bytes; the first 8 carry the send time (no latency below 8 bytes).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Publishing time in seconds (0 = until --count is reached).
    #[arg(short = 'z', long = "time", default_value_t = 10.0)]
    pub time_secs: f64,
    /// Messages per publisher (0 = until --time is up).
    #[arg(short = 'C', long, default_value_t = 0)]
    pub count: u64,
    /// After publishing stops, wait at most this long for consumers to catch up.
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Rate limit per publisher, msg/s (0 = as fast as possible).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,

    /// Exchange type: direct, fanout, topic, headers, or any plugin type by name
    /// (e.g. x-consistent-hash).
    #[arg(short = 't', long, default_value = "direct")]
    pub exchange_type: String,
    /// Exchange name ("" = the default exchange, routing by queue name). Default:
    /// bourse-perf-<type>.
    #[arg(short = 'e', long)]
    pub exchange: Option<String>,
    /// Exchange argument KEY=VALUE (repeatable; a string, or an integer for x- keys).
    #[arg(long = "exchange-arg", value_name = "KEY=VALUE")]
    pub exchange_args: Vec<String>,

    /// Number of queues, named <prefix>0 .. <prefix>Q-1; deleted and re-declared at start
    /// unless --keep-topology.
    #[arg(short = 'u', long, default_value_t = 1)]
    pub queues: usize,
    /// Queue name prefix.
    #[arg(long, default_value = "bourse-perf-q")]
    pub queue_prefix: String,
    /// Queue argument KEY=VALUE (repeatable; a string, or an integer for x- keys).
    #[arg(long = "queue-arg", value_name = "KEY=VALUE")]
    pub queue_args: Vec<String>,
    /// Declare the queues durable.
    #[arg(long)]
    pub durable: bool,

    /// Number of bindings; binding i binds queue i mod Q with key --binding-key. Default: Q.
    #[arg(long)]
    pub bindings: Option<usize>,
    /// Binding key template; `{i}` is the binding index. Default by type: direct `k{i}`,
    /// topic `perf.k{i}.*`, fanout and headers empty, other types `1` (a weight).
    #[arg(long)]
    pub binding_key: Option<String>,
    /// Binding argument KEY=VALUE, `{i}` expanded (repeatable). Default for headers:
    /// x-match=all and k={i}.
    #[arg(long = "binding-arg", value_name = "KEY=VALUE")]
    pub binding_args: Vec<String>,
    /// Distinct routing keys; message m of publisher p uses key index (p + m) mod K.
    /// Default: the number of bindings (1 for fanout, 1000 for plugin types).
    #[arg(long)]
    pub keys: Option<usize>,
    /// Routing key template, `{i}` is the key index. Default by type: direct `k{i}`, topic
    /// `perf.k{i}.x`, fanout and headers empty, other types `{i}`.
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Message header KEY=VALUE, `{i}` is the key index (repeatable). Default for headers:
    /// k={i}.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,

    /// Consume with no-ack (automatic acknowledgement).
    #[arg(short = 'a', long)]
    pub autoack: bool,
    /// Prefetch count per consumer (basic.qos, global=false); 0 = unlimited.
    #[arg(short = 'q', long, default_value_t = 0)]
    pub prefetch: u16,
    /// Acknowledge every N messages with multiple=true (1 = each message).
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u32,
    /// Publisher confirms with at most this many unconfirmed messages per publisher (0 = off).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub confirm: usize,
    /// Without confirms: publishes handed to the client library but not yet written, per
    /// publisher (keeps the socket busy without queueing unboundedly in the client). lapin
    /// only: the raw client writes batches of up to 128 KiB and waits for each write.
    #[arg(long, default_value_t = 256)]
    pub write_window: usize,
    /// Persistent messages (delivery-mode 2).
    #[arg(short = 'f', long)]
    pub persistent: bool,
    /// Consumers verify the sequence word every publisher writes into bodies of 16 bytes or
    /// more: with one consumer per queue, each publisher's messages must arrive exactly once
    /// and in order (reported under `order`). Raw client only.
    #[arg(long)]
    pub check_order: bool,
    /// Consumers start only when publishing stops, and drain the backlog (scenario (j): a
    /// queue that buffers, then a consumer); the drain ends when every message has arrived,
    /// nothing arrived for 2 s, or `--drain-secs` is up. The report adds the drain rate.
    #[arg(long)]
    pub consume_after_publish: bool,
    /// The memory cost of a backlog: after publishing (usually with `-y 0`), wait (at most
    /// `--drain-secs`) until the queues hold every message sent, let the broker's RSS settle,
    /// and report RSS after minus before divided by the messages queued. Needs --broker-pid.
    #[arg(long)]
    pub backlog_rss: bool,
    /// Reuse existing queues and exchange and leave them in place at the end (default: delete
    /// and re-declare them at the start, delete them at the end). Pre-fill a queue with
    /// `-y 0 --keep-topology`, then consume it with `-x 0 --keep-topology`.
    #[arg(long)]
    pub keep_topology: bool,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open, one channel each.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Queues to declare (non-durable, on the first connection), named <prefix>0...
    #[arg(short = 'u', long, default_value_t = 0)]
    pub queues: usize,
    /// Queue name prefix.
    #[arg(long, default_value = "bourse-perf-idle-q")]
    pub queue_prefix: String,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// Longest wait for the broker's RSS to settle before and after opening, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub settle_secs: f64,
    /// How long to keep the connections open once measured, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub hold_secs: f64,
}
