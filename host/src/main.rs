//! The `bourse` binary: parse the configuration, set up logging, run the broker.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc with background threads: memory freed after a burst (a drained backlog) goes back
/// to the system within seconds, where glibc's malloc kept it resident (docs/memory.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BOURSE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = bourse::Config::from_cli(bourse::config::Cli::parse())?;
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
