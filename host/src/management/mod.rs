//! The management HTTP API, compatible with RabbitMQ's for the routes its clients use
//! (docs/operations.md): basic auth against the broker's users, RabbitMQ's tags
//! (`administrator` changes everything, `monitoring` sees everything, `management` and
//! `policymaker` see the vhosts they have permissions in), RabbitMQ's JSON shapes and
//! errors (`{"error": ..., "reason": ...}` with its status codes).
//!
//! The top of the call graph: it reads the broker's state (`Shared`) and applies changes
//! through the same metadata commands as everything else (`Shared::execute_meta`, on a
//! blocking thread: each one is synced to the meta log).

mod access;
mod activity;
mod auth;
mod cluster;
mod console;
mod definitions;
mod error;
mod json;
mod messages;
mod metrics;
mod objects;
mod plugins;
mod rates;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use crate::broker::Shared;
use crate::connection::TlsServer;

pub use error::ApiError;

/// TLS handshakes of the HTTPS listener in progress at once; more wait to be accepted.
const HANDSHAKES_MAX: usize = 64;

/// Samples the message counters for the API's rates until `stopped` turns true.
pub(crate) async fn sample_rates(shared: Arc<Shared>, stopped: watch::Receiver<bool>) {
    rates::sample(shared, stopped).await;
}

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

/// Serves the API over HTTPS on `listener`, with the AMQPS listener's certificate (and its
/// reloads), until `stopped` turns true. Handshakes run in their own tasks, bounded in time
/// (the AMQPS limit) and in number, so a slow client holds up no one else.
pub(crate) async fn serve_tls(
    shared: Arc<Shared>,
    listener: TcpListener,
    server: Arc<TlsServer>,
    stopped: watch::Receiver<bool>,
) {
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            warn!(%error, "the management API's HTTPS listener has no address");
            return;
        }
    };
    let (done, incoming) = tokio::sync::mpsc::channel(HANDSHAKES_MAX);
    let mut accepting = stopped.clone();
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
        let stop = async move {
            let _ = accepting.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "management API (HTTPS): accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stop => return,
            };
            let (server, done) = (server.clone(), done.clone());
            tokio::spawn(async move {
                match server.accept(socket).await {
                    Ok((stream, _)) => {
                        let _ = done.send((stream, peer)).await;
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "management API: TLS handshake failed")
                    }
                }
                drop(permit);
            });
        }
    });
    let listener = HandshakenTls { incoming, local };
    let app = routes::router(shared).into_make_service_with_connect_info::<SocketAddr>();
    let mut stopped = stopped;
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    use axum::serve::ListenerExt;
    if let Err(error) = axum::serve(listener.tap_io(|_| {}), app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(%error, "the management API (HTTPS) stopped");
    }
}

/// The HTTPS listener as axum sees it: connections whose handshake is done.
struct HandshakenTls {
    incoming: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl axum::serve::Listener for HandshakenTls {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
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
