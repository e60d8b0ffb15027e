//! Replication: the cluster's one Raft group for the broker's metadata, on openraft (pinned in
//! the workspace manifest; everything openraft-specific stays in this module, so upgrading it
//! touches nothing else).
//!
//! - `log_store.rs`: Raft's log and vote, synced to `<data_dir>/cluster/raft.log`.
//! - `state_machine.rs`: committed [`Command`]s applied through the [`Applier`] trait, which
//!   this module owns and the broker implements (replication never calls the broker
//!   otherwise); the applied position in `<data_dir>/cluster/applied.json`.
//! - `network.rs`: the inter-node listener (Raft RPCs, writes forwarded to the leader,
//!   membership changes), JSON over HTTP with the shared secret, and its client.
//!
//! A write goes to the leader (forwarded there by a follower), is committed once a majority
//! has it on disk, and is applied on every node in log order; the caller gets the leader's
//! apply result. Docs: docs/cluster.md.

// openraft's storage and network traits return its own error types (`StorageError` is over
// 200 bytes); their size is not ours to choose.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::watch;

pub use network::{Join, Leave};

use crate::config::ClusterConfig;
use crate::meta::{MetaCommand, MetaError};

openraft::declare_raft_types!(
    /// bourse's Raft types: metadata commands in, their results out, members named.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A cluster member as Raft records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name.
    pub name: String,
    /// Its inter-node address.
    pub addr: String,
}

/// A change to the replicated state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Vhosts, users, permissions, limits, vhost plugins.
    Meta(MetaCommand),
}

/// What applying a command gave: its refusal, the same on every node, or nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply(pub Result<(), MetaError>);

/// The broker, as the state machine sees it.
pub trait Applier: Send + Sync + 'static {
    /// Applies a committed command to this node. `Err` is a failure to store it (this node
    /// then stops taking part); a refusal by the state is `Ok(Reply(Err(..)))`.
    fn apply(&self, command: &Command) -> Result<Reply, String>;
    /// This node's replicated state, as commands that rebuild it.
    fn snapshot(&self) -> Vec<Command>;
    /// Replaces this node's replicated state with a snapshot's.
    fn install(&self, commands: &[Command]) -> Result<(), String>;
}

/// Raft's timing: heartbeats every 150 ms, an election after 0.6-1.2 s without one.
const HEARTBEAT_MS: u64 = 150;
const ELECTION_MIN_MS: u64 = 600;
const ELECTION_MAX_MS: u64 = 1_200;
/// Between two tries of a write while there is no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The id Raft knows a node by: the first 8 bytes of SHA-256 of its name.
pub fn node_id(name: &str) -> u64 {
    let digest = sha2::Sha256::digest(name.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Why a cluster operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader took it in time.
    #[error("{0}")]
    Unavailable(String),
    /// The leader refused it (a membership change that is not allowed now).
    #[error("{0}")]
    Refused(String),
}

/// What a node answers a forwarded request with.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer<T> {
    /// Done by this node, the leader.
    Done(T),
    /// This node does not lead (any more): ask the leader.
    NotLeader,
    /// It failed here.
    Failed(String),
}

/// A membership change's outcome: done, refused because this node does not lead, or failed
/// (the reason, for the caller).
fn membership_answer<T>(
    result: Result<T, RaftError<u64, ClientWriteError<u64, Member>>>,
) -> Answer<Result<(), String>> {
    match result {
        Ok(_) => Answer::Done(Ok(())),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Answer::NotLeader,
        Err(error) => Answer::Done(Err(error.to_string())),
    }
}

/// One member in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Its inter-node address.
    pub addr: String,
    /// Whether it votes (false: a learner catching up).
    pub voter: bool,
    /// Whether it leads.
    pub leader: bool,
    /// The last log index the leader knows it holds (on the leader only).
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's log (on the leader only).
    pub lag: Option<u64>,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub node: String,
    /// Its role: leader, follower, candidate or learner.
    pub role: String,
    /// The leader's name, when known.
    pub leader: Option<String>,
    /// The current Raft term.
    pub term: u64,
    /// This node's last log index.
    pub last_log_index: Option<u64>,
    /// The last index it applied.
    pub last_applied_index: Option<u64>,
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// A running cluster node.
pub struct Cluster {
    id: u64,
    name: String,
    raft: Raft<TypeConfig>,
    client: network::Client,
    secret: Arc<str>,
    stop: watch::Sender<bool>,
}

impl Cluster {
    /// Opens this node's Raft state under `data_dir/cluster`, starts Raft and the inter-node
    /// listener, and on a first start forms the cluster from `config.peers` (the node with the
    /// smallest name does it; the others wait to hear from it). A node given no peers forms
    /// nothing: it waits to be added by a member.
    pub async fn start(
        config: &ClusterConfig,
        data_dir: &Path,
        applier: Arc<dyn Applier>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let dir = data_dir.join("cluster");
        let log = log_store::LogStore::open(&dir).context("cannot open the raft log")?;
        let machine = state_machine::StateMachine::open(&dir, applier)
            .context("cannot read the cluster's applied state")?;
        let raft_config = openraft::Config {
            cluster_name: "bourse".to_owned(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            ..Default::default()
        }
        .validate()
        .context("raft configuration")?;
        let secret: Arc<str> = config.secret.as_str().into();
        let client = network::Client::new(secret.clone());
        let id = node_id(&config.node_name);
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            network::Network {
                client: client.clone(),
            },
            log,
            machine,
        )
        .await
        .context("cannot start raft")?;
        let listener = network::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (cluster)", config.listen))?;
        let (stop, stopped) = watch::channel(false);
        let cluster = Arc::new(Cluster {
            id,
            name: config.node_name.clone(),
            raft,
            client,
            secret,
            stop,
        });
        tokio::spawn(network::serve(cluster.clone(), listener, stopped));
        let first = config.form && config.peers.keys().next() == Some(&config.node_name);
        if first && !cluster.raft.is_initialized().await.unwrap_or(true) {
            let members: BTreeMap<u64, Member> = config
                .peers
                .iter()
                .map(|(name, addr)| {
                    let member = Member {
                        name: name.clone(),
                        addr: addr.to_string(),
                    };
                    (node_id(name), member)
                })
                .collect();
            if let Err(error) = cluster.raft.initialize(members).await {
                tracing::warn!(%error, "forming the cluster");
            }
        }
        tracing::info!(node = %config.node_name, listen = %config.listen, "cluster node started");
        Ok(cluster)
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Commits `command` through the leader (wherever it is) and returns its result, once
    /// this node has applied it too: what the caller reads next on this node includes it.
    pub async fn write(&self, command: Command) -> Result<Reply, ClusterError> {
        let (reply, index) = self
            .through_leader("/cluster/write", command, |cluster, command| {
                Box::pin(cluster.write_here(command))
            })
            .await?;
        if let Err(error) = self
            .raft
            .wait(Some(network::FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "a write applied here")
            .await
        {
            tracing::warn!(%error, "a committed write is not applied on this node yet");
        }
        Ok(reply)
    }

    /// Adds a member (as a learner until it caught up, then a voter).
    pub async fn join(&self, join: Join) -> Result<(), ClusterError> {
        self.through_leader("/cluster/join", join, |cluster, join| {
            Box::pin(cluster.join_here(join))
        })
        .await?
        .map_err(ClusterError::Refused)
    }

    /// Removes a member.
    pub async fn leave(&self, leave: Leave) -> Result<(), ClusterError> {
        self.through_leader("/cluster/leave", leave, |cluster, leave| {
            Box::pin(cluster.leave_here(leave))
        })
        .await?
        .map_err(ClusterError::Refused)
    }

    /// Runs `here` on this node if it leads, or sends `request` to the leader's `path`;
    /// tries again while there is no leader, or the one asked no longer leads or cannot be
    /// reached (then nothing was done), for at most the forwarding timeout.
    async fn through_leader<Req, T>(
        &self,
        path: &str,
        request: Req,
        here: impl for<'a> Fn(
            &'a Cluster,
            Req,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Answer<T>> + Send + 'a>,
        >,
    ) -> Result<T, ClusterError>
    where
        Req: Serialize + Clone,
        T: serde::de::DeserializeOwned,
    {
        let deadline = tokio::time::Instant::now() + network::FORWARD_TIMEOUT;
        let mut last = "no leader".to_owned();
        while tokio::time::Instant::now() < deadline {
            let leader = self.raft.metrics().borrow().current_leader;
            let answer = match leader {
                Some(leader) if leader == self.id => here(self, request.clone()).await,
                Some(leader) => match self.member(leader) {
                    Some(member) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match self.client.post(&member.addr, path, &request, left).await {
                            Ok(answer) => answer,
                            Err(network::RpcFailure::Unreachable(e)) => {
                                last = format!("leader {} unreachable: {e}", member.name);
                                Answer::NotLeader
                            }
                            Err(e) => {
                                return Err(ClusterError::Unavailable(format!(
                                    "leader {}: {e}",
                                    member.name
                                )));
                            }
                        }
                    }
                    None => Answer::NotLeader,
                },
                None => Answer::NotLeader,
            };
            match answer {
                Answer::Done(value) => return Ok(value),
                Answer::Failed(reason) => return Err(ClusterError::Unavailable(reason)),
                Answer::NotLeader => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
        Err(ClusterError::Unavailable(format!(
            "no leader took it in {:?} ({last})",
            network::FORWARD_TIMEOUT
        )))
    }

    /// A member of the current membership, by id.
    fn member(&self, id: u64) -> Option<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// Commits `command` if this node leads; its result and log index.
    /// A leader that lost its majority cannot commit: after the forwarding timeout the write
    /// is answered as failed (it may still commit later if the majority comes back).
    async fn write_here(&self, command: Command) -> Answer<(Reply, u64)> {
        let written = self.raft.client_write(command);
        match tokio::time::timeout(network::FORWARD_TIMEOUT, written).await {
            Ok(Ok(response)) => Answer::Done((response.data, response.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Answer::NotLeader,
            Ok(Err(error)) => Answer::Failed(error.to_string()),
            Err(_) => Answer::Failed(format!(
                "no majority confirmed it within {:?}",
                network::FORWARD_TIMEOUT
            )),
        }
    }

    /// Adds `join` as a learner, then makes it a voter, if this node leads.
    async fn join_here(&self, join: Join) -> Answer<Result<(), String>> {
        let id = node_id(&join.name);
        let member = Member {
            name: join.name,
            addr: join.addr,
        };
        match membership_answer(self.raft.add_learner(id, member, true).await) {
            Answer::Done(Ok(())) => {}
            refused => return refused,
        }
        let voters = BTreeSet::from([id]);
        membership_answer(
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await,
        )
    }

    /// Removes `leave` from the membership, if this node leads.
    async fn leave_here(&self, leave: Leave) -> Answer<Result<(), String>> {
        let id = node_id(&leave.name);
        if self.member(id).is_none() {
            return Answer::Done(Err(format!("{} is not a member", leave.name)));
        }
        let ids = BTreeSet::from([id]);
        membership_answer(
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids), false)
                .await,
        )
    }

    /// The cluster as this node sees it; the replicas' lag only on the leader.
    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let name_of = |id: u64| membership.get_node(&id).map(|m| m.name.clone());
        let last = metrics.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, member)| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|log_id| log_id.map_or(0, |l| l.index));
                let matched = if *id == self.id && metrics.state == ServerState::Leader {
                    last
                } else {
                    matched
                };
                MemberStatus {
                    name: member.name.clone(),
                    addr: member.addr.clone(),
                    voter: voters.contains(id),
                    leader: metrics.current_leader == Some(*id),
                    matched_index: matched,
                    lag: matched.map(|m| last.unwrap_or(0).saturating_sub(m)),
                }
            })
            .collect();
        Status {
            node: self.name.clone(),
            role: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            leader: metrics.current_leader.and_then(name_of),
            term: metrics.current_term,
            last_log_index: last,
            last_applied_index: metrics.last_applied.map(|l| l.index),
            members,
        }
    }

    /// The cluster as the leader sees it (with the replicas' lag), or as this node does when
    /// the leader cannot be asked.
    pub async fn status_from_leader(&self) -> Status {
        let leader = self.raft.metrics().borrow().current_leader;
        if let Some(member) = leader
            .filter(|l| *l != self.id)
            .and_then(|l| self.member(l))
        {
            let asked: Result<Status, _> = self
                .client
                .get_status(&member.addr, Duration::from_secs(1))
                .await;
            if let Ok(mut status) = asked {
                status.node = self.name.clone();
                let mine = self.status();
                status.role = mine.role;
                status.last_applied_index = mine.last_applied_index;
                status.last_log_index = mine.last_log_index;
                return status;
            }
        }
        self.status()
    }

    /// Asks every other member for its own view (each at most `limit`); None for one that
    /// did not answer. In membership order, this node included (its own status).
    pub async fn probe_members(&self, limit: Duration) -> Vec<(MemberStatus, Option<Status>)> {
        let view = self.status_from_leader().await;
        let asks = view.members.into_iter().map(|member| async move {
            let status = if member.name == self.name {
                Some(self.status())
            } else {
                self.client.get_status(&member.addr, limit).await.ok()
            };
            (member, status)
        });
        futures::future::join_all(asks).await
    }

    /// Stops Raft and the inter-node listener.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "stopping raft");
        }
    }
}
