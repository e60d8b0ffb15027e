//! `bourse-ctl`: the command-line tool of bourse, over its management HTTP API (RabbitMQ's
//! routes, docs/operations.md), in the manner of rabbitmqadmin: `list`, `declare`, `delete`,
//! `close`, `purge`, `get`, `publish`, `export`, `import`, `plugin`, `overview`, `whoami`.
//!
//! Layout: this file holds the clap definitions and the dispatch; `commands.rs` what each
//! command asks the API and prints, `plugins.rs` the `plugin` commands, `client.rs` the HTTP
//! client, `output.rs` tables and JSON.
//!
//! Exit status: 0 done, 1 the API refused or could not be reached (the reason on stderr),
//! 2 a usage error (clap's).

mod client;
mod cluster;
mod commands;
mod output;
mod plugins;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use client::{Client, Settings};
use output::Format;

/// Manage a bourse broker through its management HTTP API.
///
/// `--user` and `--password` (the API's login) go before the command, since `declare user`
/// and `declare permission` have their own; the other options go anywhere.
#[derive(Debug, Parser)]
#[command(name = "bourse-ctl", version, args_override_self = true)]
struct Cli {
    /// The management API's base URL (http:// or https://).
    #[arg(
        long,
        env = "BOURSE_URL",
        default_value = "http://127.0.0.1:15672",
        global = true
    )]
    url: String,
    /// The user logging in to the API.
    #[arg(long, env = "BOURSE_USER", default_value = "guest")]
    user: String,
    /// Its password.
    #[arg(
        long,
        env = "BOURSE_PASSWORD",
        default_value = "guest",
        hide_default_value = true,
        hide_env_values = true
    )]
    password: String,
    /// `table` for people, `json` (the API's own documents) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    /// A PEM file of CA certificates to trust for an https:// URL (instead of the webpki roots).
    #[arg(long, value_name = "PEM", global = true)]
    ca_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long, global = true)]
    insecure: bool,
    /// Seconds the broker may stay silent while answering one request.
    #[arg(long, value_name = "SECS", default_value_t = 60, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List objects (every vhost's unless --vhost is given).
    List {
        what: ListKind,
        /// Only this vhost's objects.
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Create or change an object.
    #[command(subcommand)]
    Declare(Declare),
    /// Delete an object.
    #[command(subcommand)]
    Delete(Delete),
    /// Close a client connection.
    #[command(subcommand)]
    Close(Close),
    /// Drop a queue's ready messages.
    #[command(subcommand)]
    Purge(Purge),
    /// Fetch messages from a queue (requeued by default).
    #[command(subcommand)]
    Get(Get),
    /// Publish one message through an exchange.
    Publish(Publish),
    /// Where a message would go (exchanges, bindings, plugins, alternate exchanges, queues),
    /// without sending it.
    Explain(Publish),
    /// Write the broker's definitions (RabbitMQ's JSON) to FILE, `-` for stdout.
    Export { file: PathBuf },
    /// Load a definitions file into the broker (`-` for stdin).
    Import { file: PathBuf },
    /// Deploy and manage a vhost's WASM exchange types.
    #[command(subcommand)]
    Plugin(plugins::PluginCommand),
    /// A cluster's members, and members added or removed.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Versions, object totals, queue totals and listeners.
    Overview,
    /// The user logged in and its tags.
    Whoami,
}

/// What `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListKind {
    Vhosts,
    Users,
    Permissions,
    Exchanges,
    Queues,
    Bindings,
    Connections,
    Channels,
    Consumers,
    Plugins,
}

/// The vhost an object lives in.
#[derive(Debug, Clone, Args)]
pub struct VhostArg {
    /// The vhost.
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

#[derive(Debug, Subcommand)]
pub enum Declare {
    /// A vhost.
    Vhost {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated tags.
        #[arg(long)]
        tags: Option<String>,
    },
    /// A user (or a new password and tags for one).
    User {
        name: String,
        #[arg(long)]
        password: String,
        /// Comma-separated tags: administrator, monitoring, policymaker, management.
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// A user's permissions in a vhost (regular expressions on resource names).
    Permission {
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    /// An exchange.
    Exchange {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        /// direct, fanout, topic, headers, or a plugin's type.
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        /// A JSON object.
        #[arg(long, value_name = "JSON", value_parser = json_object)]
        arguments: Option<serde_json::Value>,
    },
    /// A queue.
    Queue {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// A JSON object, e.g. '{"x-max-length": 10}'.
        #[arg(long, value_name = "JSON", value_parser = json_object)]
        arguments: Option<serde_json::Value>,
    },
    /// A binding from an exchange to a queue or an exchange.
    Binding(BindingArgs),
}

/// Which binding.
#[derive(Debug, Clone, Args)]
pub struct BindingArgs {
    #[command(flatten)]
    pub vhost: VhostArg,
    /// The exchange it starts from.
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub destination: String,
    #[arg(long, value_enum, default_value_t = DestinationType::Queue)]
    pub destination_type: DestinationType,
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// A JSON object (declare only).
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub arguments: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DestinationType {
    Queue,
    Exchange,
}

impl DestinationType {
    /// The letter in the bindings routes (`q`, `e`).
    pub fn letter(self) -> &'static str {
        match self {
            Self::Queue => "q",
            Self::Exchange => "e",
        }
    }

    /// The `destination_type` the API lists.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Exchange => "exchange",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Delete {
    /// A vhost, with everything in it (its connections are closed).
    Vhost { name: String },
    /// A user (its connections are closed).
    User { name: String },
    /// An exchange.
    Exchange {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// A queue and its messages.
    Queue {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// A user's permissions in a vhost.
    Permission {
        #[command(flatten)]
        vhost: VhostArg,
        #[arg(long)]
        user: String,
    },
    /// A binding, found by source, destination and routing key.
    Binding(BindingArgs),
}

#[derive(Debug, Subcommand)]
pub enum Close {
    /// A connection by its name (`list connections`).
    Connection {
        name: String,
        /// The text sent to the client with 320 CONNECTION_FORCED.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Purge {
    /// A queue.
    Queue {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum Get {
    /// A queue.
    Queue {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
        /// How many messages at most.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Put them back in the queue after reading them.
        #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
        requeue: bool,
    },
}

#[derive(Debug, Args)]
pub struct Publish {
    #[command(flatten)]
    pub vhost: VhostArg,
    /// `amq.default` is the default exchange.
    #[arg(long, default_value = "amq.default")]
    pub exchange: String,
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// The body, as text.
    #[arg(long, default_value = "")]
    pub payload: String,
    /// AMQP properties as JSON, e.g. '{"delivery_mode": 2, "headers": {"k": "v"}}'.
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub properties: Option<serde_json::Value>,
}

/// A JSON object given on the command line (a usage error, exit 2, otherwise).
fn json_object(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("expected a JSON object".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`| head`): nothing more to say to it.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bourse-ctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&Settings {
        url: cli.url,
        user: cli.user,
        password: cli.password,
        ca_file: cli.ca_file,
        insecure: cli.insecure,
        timeout: Duration::from_secs(cli.timeout),
    })?;
    let format = cli.format;
    match cli.command {
        Command::List { what, vhost } => commands::list(&client, format, what, vhost.as_deref()),
        Command::Declare(what) => commands::declare(&client, format, what),
        Command::Delete(what) => commands::delete(&client, format, what),
        Command::Close(Close::Connection { name, reason }) => {
            commands::close_connection(&client, format, &name, reason.as_deref())
        }
        Command::Purge(Purge::Queue { name, vhost }) => {
            commands::purge(&client, format, &vhost.vhost, &name)
        }
        Command::Get(Get::Queue {
            name,
            vhost,
            count,
            requeue,
        }) => commands::get(&client, format, &vhost.vhost, &name, count, requeue),
        Command::Publish(publish) => commands::publish(&client, format, &publish),
        Command::Explain(message) => commands::explain(&client, format, &message),
        Command::Export { file } => commands::export(&client, &file),
        Command::Import { file } => commands::import(&client, format, &file),
        Command::Plugin(command) => plugins::run(&client, format, command),
        Command::Cluster(command) => cluster::run(&client, format, command),
        Command::Overview => Ok(output::print_object(format, &client.get("/api/overview")?)?),
        Command::Whoami => Ok(output::print_object(format, &client.get("/api/whoami")?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn login_options_go_before_the_command_and_the_rest_anywhere() {
        let cli = Cli::try_parse_from([
            "bourse-ctl",
            "--user",
            "admin",
            "declare",
            "permission",
            "--user",
            "alice",
            "--vhost",
            "t",
            "--format",
            "json",
        ])
        .expect("parses");
        assert_eq!(cli.user, "admin");
        assert_eq!(cli.format, Format::Json);
        match cli.command {
            Command::Declare(Declare::Permission { vhost, user, .. }) => {
                assert_eq!((vhost.vhost.as_str(), user.as_str()), ("t", "alice"));
            }
            other => panic!("{other:?}"),
        }
        let get = Cli::try_parse_from(["bourse-ctl", "get", "queue", "q", "--requeue", "false"])
            .expect("parses");
        assert!(matches!(
            get.command,
            Command::Get(Get::Queue {
                requeue: false,
                count: 1,
                ..
            })
        ));
    }
}
