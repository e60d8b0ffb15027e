//! The `bourse` binary: parse the configuration, set up logging, run the broker.

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
