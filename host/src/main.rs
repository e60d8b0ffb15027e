//! The `bourse` binary: parse the configuration, set up logging, run the broker; or, given a
//! subcommand (`bourse plugin ...`), run that tool instead (`bourse::plugin_tool`).

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc with background threads: memory freed after a burst (a drained backlog) goes back
/// to the system within seconds, where glibc's malloc kept it resident (docs/memory.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: background threads, and freed pages returned after
/// 1 s instead of its default 10 s, so a memory alarm raised by a drained burst clears within
/// seconds. (The one `unsafe` of the crate: jemalloc finds its options under this symbol;
/// nothing else defines it.)
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 43] = b"background_thread:true,dirty_decay_ms:1000\0";

fn main() -> anyhow::Result<()> {
    let mut cli = bourse::config::Cli::parse();
    if let Some(bourse::config::Command::Plugin(command)) = cli.command.take() {
        // Plugin warnings and the host's refusals, on stderr; BOURSE_LOG for more.
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_env("BOURSE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
        if let Err(error) = bourse::plugin_tool::run(command) {
            // The reasons, one after another, without a backtrace: the author's mistake, not ours.
            eprintln!("bourse plugin: {error:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let config = bourse::Config::from_cli(cli)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

/// Runs the broker until SIGINT or SIGTERM.
async fn serve(config: bourse::Config) -> anyhow::Result<()> {
    init_logging(&config);
    let broker = bourse::Broker::start(config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
    }
    // Closes client connections with 320 (bounded by SHUTDOWN_GRACE), then writes, syncs and
    // closes the message stores.
    broker.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Logs to stderr with `log_level` (or `BOURSE_LOG`) as the filter, as text or JSON lines;
/// colour only when stderr is a terminal and `NO_COLOR` is unset (docs/operations.md).
fn init_logging(config: &bourse::Config) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("BOURSE_LOG")
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|error| {
            eprintln!("log_level '{}': {error}; using info", config.log_level);
            EnvFilter::new("info")
        });
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        bourse::config::LogFormat::Json => builder.json().init(),
        bourse::config::LogFormat::Text => builder.with_ansi(colour).init(),
    }
}
