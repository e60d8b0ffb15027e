//! The cluster settings (`[cluster]` in the file, `--node-name` and `--cluster-*` flags): this
//! node's name, its inter-node listener, the members to form the cluster with, and the shared
//! secret every inter-node request carries. No node name: a single node, as without a cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Cli, ConfigError};

/// Shortest shared secret accepted, in bytes.
pub const SECRET_MIN_BYTES: usize = 16;

/// A node's cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`, `.`).
    pub node_name: String,
    /// Address the inter-node listener (Raft and forwarded writes) binds.
    pub listen: SocketAddr,
    /// The members the cluster is formed with on first start, this node included: name to
    /// inter-node address. Nodes added later join through the API.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Whether peers were given: without them the node forms nothing and waits to be added
    /// to a cluster (`POST /api/cluster/members` on a member).
    pub form: bool,
    /// The secret every inter-node request carries.
    pub secret: String,
}

/// The `[cluster]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    node_name: Option<String>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    peers: Vec<String>,
    secret_file: Option<PathBuf>,
}

/// The cluster settings from flags over the file; None without a node name.
pub(super) fn cluster_settings(
    cli: &Cli,
    file: Option<&ClusterFile>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let empty = ClusterFile::default();
    let file = file.unwrap_or(&empty);
    let Some(node_name) = cli.node_name.clone().or(file.node_name.clone()) else {
        if cli.cluster_listen.is_some() || !cli.cluster_peers.is_empty() {
            return Err(invalid("the cluster settings need node_name"));
        }
        return Ok(None);
    };
    check_name(&node_name)?;
    let listen = cli
        .cluster_listen
        .or(file.listen)
        .ok_or_else(|| invalid("a cluster node needs cluster_listen (its inter-node address)"))?;
    let peer_list = if cli.cluster_peers.is_empty() {
        &file.peers
    } else {
        &cli.cluster_peers
    };
    let mut peers = BTreeMap::new();
    for peer in peer_list {
        let (name, addr) = parse_peer(peer)?;
        if peers.insert(name.clone(), addr).is_some() {
            return Err(invalid(format!("cluster peer {name} is named twice")));
        }
    }
    match peers.get(&node_name) {
        Some(addr) if *addr != listen => {
            return Err(invalid(format!(
                "cluster peer {node_name} (this node) is given as {addr}, but cluster_listen is {listen}"
            )));
        }
        Some(_) => {}
        None => {
            peers.insert(node_name.clone(), listen);
        }
    }
    let secret = match (
        cli.cluster_secret.clone(),
        cli.cluster_secret_file
            .as_ref()
            .or(file.secret_file.as_ref()),
    ) {
        (Some(secret), _) => secret,
        (None, Some(path)) => read_secret(path)?,
        (None, None) => {
            return Err(invalid(
                "a cluster node needs a shared secret: cluster_secret_file or BOURSE_CLUSTER_SECRET",
            ));
        }
    };
    if secret.len() < SECRET_MIN_BYTES {
        return Err(invalid(format!(
            "the cluster secret must be at least {SECRET_MIN_BYTES} bytes"
        )));
    }
    Ok(Some(ClusterConfig {
        node_name,
        listen,
        form: !peer_list.is_empty(),
        peers,
        secret,
    }))
}

/// `NAME=ADDR:PORT`.
fn parse_peer(peer: &str) -> Result<(String, SocketAddr), ConfigError> {
    let (name, addr) = peer
        .split_once('=')
        .ok_or_else(|| invalid(format!("cluster peer {peer:?} is not NAME=ADDR:PORT")))?;
    check_name(name)?;
    let addr = addr
        .parse()
        .map_err(|e| invalid(format!("cluster peer {name}: {addr:?}: {e}")))?;
    Ok((name.to_owned(), addr))
}

/// A node name: 1-64 bytes of letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "node name {name:?}: 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(reason.into())
}
