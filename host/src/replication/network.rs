//! Inter-node traffic: JSON over HTTP/1.1 on the cluster listener. The server side is an axum
//! router (Raft's three RPCs, forwarded writes and membership changes); the client side is
//! hyper's client. Every request carries the cluster's shared secret as a bearer token,
//! compared in constant time; one without it is 401 and reaches nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::{Cluster, Command, Member, Status, TypeConfig};

type NodeId = u64;

/// Largest inter-node request body (a snapshot chunk, a batch of entries).
const BODY_MAX_BYTES: usize = 16 << 20;
/// How long a write or a membership change may take, from finding a leader to its commit.
pub(super) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an inter-node request failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcFailure {
    /// The peer could not be connected to.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request went out but no usable answer came back.
    #[error("{0}")]
    Network(String),
}

/// The client side: one pooled hyper client for every peer.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    secret: Arc<str>,
}

impl Client {
    pub fn new(secret: Arc<str>) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        Client {
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
            secret,
        }
    }

    /// The leader's view of the cluster (`GET /cluster/status`).
    pub async fn get_status(&self, addr: &str, limit: Duration) -> Result<Status, RpcFailure> {
        self.send(hyper::Method::GET, addr, "/cluster/status", None, limit)
            .await
    }

    /// POSTs `body` as JSON to `http://{addr}{path}` and decodes the JSON answer.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        limit: Duration,
    ) -> Result<Resp, RpcFailure> {
        let body = serde_json::to_vec(body).map_err(|e| RpcFailure::Network(e.to_string()))?;
        self.send(hyper::Method::POST, addr, path, Some(body), limit)
            .await
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        method: hyper::Method,
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Resp, RpcFailure> {
        let body = body.unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.secret))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| RpcFailure::Network(e.to_string()))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    RpcFailure::Unreachable(e.to_string())
                } else {
                    RpcFailure::Network(e.to_string())
                }
            })?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| RpcFailure::Network(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(RpcFailure::Network(format!(
                    "{addr}{path}: {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            serde_json::from_slice(&bytes).map_err(|e| RpcFailure::Network(e.to_string()))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| RpcFailure::Network(format!("{addr}{path}: no answer in {limit:?}")))?
    }
}

/// Makes the connection openraft replicates to each peer through.
pub struct Network {
    pub(super) client: Client,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// One peer, as openraft's replication and elections reach it.
pub struct Peer {
    client: Client,
    target: NodeId,
    addr: String,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, E> = self
            .client
            .post(&self.addr, path, &request, option.hard_ttl())
            .await
            .map_err(|failure| match failure {
                RpcFailure::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&failure)),
                RpcFailure::Network(_) => RPCError::Network(NetworkError::new(&failure)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("/raft/append", rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("/raft/vote", rpc, &option).await
    }
}

/// A member to add: its name and inter-node address.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Join {
    pub name: String,
    pub addr: String,
}

/// A member to remove, by name.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Leave {
    pub name: String,
}

/// Serves the cluster listener until `stopped` turns true.
pub(super) async fn serve(
    cluster: Arc<Cluster>,
    listener: tokio::net::TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/cluster/write", post(write))
        .route("/cluster/join", post(join))
        .route("/cluster/leave", post(leave))
        .route("/cluster/status", get(status))
        .layer(middleware::from_fn_with_state(cluster.clone(), authorize))
        .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(cluster);
    let shutdown = async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "the cluster listener failed");
    }
}

/// 401 unless the request carries the cluster's secret.
async fn authorize(State(cluster): State<Arc<Cluster>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = cluster.secret.as_bytes();
    if given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected)) {
        next.run(request).await
    } else {
        let body = serde_json::json!({
            "error": "not_authorised",
            "reason": "the cluster secret is required",
        });
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    }
}

/// The body as JSON of `T`, or 400.
fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(rpc) => json(&cluster.raft.append_entries(rpc).await),
        Err(response) => response,
    }
}

async fn vote(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<VoteRequest<NodeId>>(&body) {
        Ok(rpc) => json(&cluster.raft.vote(rpc).await),
        Err(response) => response,
    }
}

async fn snapshot(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(rpc) => json(&cluster.raft.install_snapshot(rpc).await),
        Err(response) => response,
    }
}

/// A write forwarded by a follower: applied here if this node leads, refused otherwise (the
/// follower then asks again wherever the leader now is).
async fn write(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<Command>(&body) {
        Ok(command) => json(&cluster.write_here(command).await),
        Err(response) => response,
    }
}

async fn join(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<Join>(&body) {
        Ok(join) => json(&cluster.join_here(join).await),
        Err(response) => response,
    }
}

async fn leave(State(cluster): State<Arc<Cluster>>, body: Bytes) -> Response {
    match decode::<Leave>(&body) {
        Ok(leave) => json(&cluster.leave_here(leave).await),
        Err(response) => response,
    }
}

async fn status(State(cluster): State<Arc<Cluster>>) -> Response {
    json(&cluster.status())
}

/// Binds the cluster listener.
pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
