//! The management HTTP API, compatible with RabbitMQ's for the routes its clients use
//! (docs/operations.md): basic auth against the broker's users, RabbitMQ's tags
//! (`administrator` changes everything, `monitoring` sees everything, `management` and
//! `policymaker` see the vhosts they have permissions in), RabbitMQ's JSON shapes and
//! errors (`{"error": ..., "reason": ...}` with its status codes).
//!
//! The top of the call graph: it reads the broker's state (`Shared`) and applies changes
//! through the same metadata commands as everything else (`Shared::execute_meta`, on a
//! blocking thread: each one is synced to the meta log).

mod auth;
mod definitions;
mod error;
mod json;
mod metrics;
mod objects;
mod plugins;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::broker::Shared;

pub use error::ApiError;

/// Serves the API on `listener` until `stopped` turns true.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
) {
    serve_router(routes::router(shared), listener, stopped).await;
}

/// Serves the Prometheus endpoint on `listener` until `stopped` turns true.
pub(crate) async fn serve_metrics(
    shared: Arc<Shared>,
    listener: TcpListener,
    stopped: watch::Receiver<bool>,
) {
    serve_router(metrics::router(shared), listener, stopped).await;
}

async fn serve_router(
    router: axum::Router,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(%error, "the management API stopped");
    }
}
