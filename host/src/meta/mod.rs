//! The broker's own metadata: vhosts, users, permissions and topic permissions, as a state
//! machine of [`MetaCommand`]s.
//!
//! Every change is a command, checked against the current state ([`MetaState::check`]),
//! written to `<data_dir>/meta.log` (JSON, one synced record each: `store::RecordLog`) and
//! then applied (`log.rs`). At start-up the log is replayed; an empty log is seeded from the
//! config file (RabbitMQ's rule: its default user and definitions apply on first boot only).
//! In a cluster the same commands come from the Raft log (`replication`), applied here on
//! every node.
//!
//! Nothing here is on the data path: connections read what they need (their user, their
//! grants) when they open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest name (vhost, user) or expression accepted.
pub const NAME_MAX_BYTES: usize = 255;
/// At most this many tags per user or vhost.
pub const TAGS_MAX: usize = 32;
/// At most this many names in a vhost's exchange-type allow list.
pub const EXCHANGE_TYPES_MAX: usize = 256;

/// One change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaCommand {
    /// Creates or updates a vhost.
    PutVhost {
        /// Name.
        name: String,
        /// Free text for operators.
        #[serde(default)]
        description: String,
        /// Free tags for operators.
        #[serde(default)]
        tags: Vec<String>,
    },
    /// Deletes a vhost and every permission in it.
    DeleteVhost {
        /// Name.
        name: String,
    },
    /// Creates or updates a user (RabbitMQ's hash format; an empty hash: no password login).
    PutUser {
        /// Login name.
        name: String,
        /// base64 of salt and digest.
        password_hash: String,
        /// RabbitMQ's scheme name.
        hashing_algorithm: String,
        /// RabbitMQ's user tags.
        #[serde(default)]
        tags: Vec<String>,
    },
    /// Deletes a user and its permissions.
    DeleteUser {
        /// Login name.
        name: String,
    },
    /// Sets a user's permissions in a vhost.
    SetPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// Regular expressions.
        configure: String,
        /// Regular expressions.
        write: String,
        /// Regular expressions.
        read: String,
    },
    /// Removes a user's permissions in a vhost.
    ClearPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// Sets limits of a vhost, by RabbitMQ's names (`max-connections`, `max-queues`) and
    /// bourse's ([`VHOST_LIMIT_NAMES`]: exchanges, bindings, queued bytes, publish rate, and
    /// the WASM budget); a negative value removes that limit. Limits not named keep the
    /// config file's.
    SetVhostLimits {
        /// The vhost.
        vhost: String,
        /// Limit name → value.
        limits: BTreeMap<String, i64>,
    },
    /// Sets which exchange types a vhost may declare besides the built-ins and its own
    /// plugin types: `types` None lifts the list (every type of the broker). Exchanges that
    /// exist keep working.
    SetVhostExchangeTypes {
        /// The vhost.
        vhost: String,
        /// The allowed plugin types.
        types: Option<Vec<String>>,
    },
    /// Sets a user's topic permissions on one exchange of a vhost.
    SetTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The topic exchange.
        exchange: String,
        /// Routing-key expressions.
        write: String,
        /// Routing-key expressions.
        read: String,
    },
    /// Removes a user's topic permissions in a vhost (on one exchange, or all).
    ClearTopicPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// One exchange; None: every exchange.
        exchange: Option<String>,
    },
    /// Sets limits of a user, by RabbitMQ's names (`max-connections`, `max-channels`); a
    /// negative value removes that limit. Limits not named keep the config file's.
    SetUserLimits {
        /// The user.
        user: String,
        /// Limit name → value.
        limits: BTreeMap<String, i64>,
    },
    /// Makes the component `<vhost dir>/plugins/<sha256>.wasm` the current version of
    /// exchange type `name` in `vhost` only; the version it replaces is kept for a rollback
    /// (see [`plugins`]). The file is written and synced before the command is logged.
    PutVhostPlugin {
        /// The vhost.
        vhost: String,
        /// The type name, from the component's `describe`.
        name: String,
        /// Hex SHA-256 of the component's bytes: the file's name.
        sha256: String,
    },
    /// Swaps a vhost's plugin type back to its previous version (which becomes the previous).
    RollbackVhostPlugin {
        /// The vhost.
        vhost: String,
        /// The type name.
        name: String,
    },
    /// Removes a vhost's plugin type: new declares of it are refused; existing exchanges keep
    /// routing until deleted.
    DeleteVhostPlugin {
        /// The vhost.
        vhost: String,
        /// The type name.
        name: String,
    },
}

/// Why a command was refused (the management API maps these to its status codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    /// It names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It is malformed (name too long, invalid expression or hash).
    #[error("{0}")]
    Invalid(String),
    /// The meta log could not be written: nothing changed.
    #[error("cannot write the meta log: {0}")]
    Storage(String),
    /// In a cluster: no leader could take the change (no majority reachable). It may still
    /// be applied if it reached a leader whose answer was lost.
    #[error("the cluster cannot take changes now: {0}")]
    Unavailable(String),
}

/// A vhost's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostMeta {
    /// Free text.
    pub description: String,
    /// Free tags.
    pub tags: Vec<String>,
    /// Limits set at runtime (see [`MetaCommand::SetVhostLimits`]).
    pub limits: BTreeMap<String, i64>,
    /// The vhost's own exchange-type plugins, by type name ([`plugins`]).
    pub plugins: BTreeMap<String, plugins::VhostPluginMeta>,
    /// The exchange-type allow list set at runtime ([`MetaCommand::SetVhostExchangeTypes`]).
    pub exchange_types: Option<Vec<String>>,
}

/// The user limits a [`MetaCommand::SetUserLimits`] may name.
pub const USER_LIMIT_NAMES: [&str; 2] = ["max-connections", "max-channels"];

/// `base` (the config file's limits of a user) with its runtime limits over it.
pub fn user_limits_over(
    limits: &BTreeMap<String, i64>,
    base: crate::limits::UserLimits,
) -> crate::limits::UserLimits {
    let mut out = base;
    for (name, &value) in limits {
        let value = Some(u32::try_from(value).unwrap_or(u32::MAX));
        match name.as_str() {
            "max-connections" => out.max_connections = value,
            "max-channels" => out.max_channels = value,
            _ => {}
        }
    }
    out
}

/// Refuses a limit name not in `known`.
fn check_limit_names(
    what: &str,
    limits: &BTreeMap<String, i64>,
    known: &[&str],
) -> Result<(), MetaError> {
    match limits.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(MetaError::Invalid(format!(
            "unknown {what} limit '{}' (known: {})",
            unknown.chars().take(64).collect::<String>(),
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The vhost limits a [`MetaCommand::SetVhostLimits`] may name.
pub const VHOST_LIMIT_NAMES: [&str; 11] = [
    "max-connections",
    "max-queues",
    "max-exchanges",
    "max-bindings",
    "max-queued-bytes",
    "max-publish-rate",
    "wasm-call-deadline-ms",
    "wasm-memory-max-bytes",
    "wasm-memory-total-bytes",
    "wasm-instances-max",
    "wasm-cpu-ms-per-sec",
];

/// Longest `wasm-call-deadline-ms` accepted (a minute: beyond it a call is a hang).
pub const WASM_CALL_DEADLINE_MS_MAX: i64 = 60_000;

/// Refuses WASM budget values no exchange could work with.
fn check_wasm_limits(limits: &BTreeMap<String, i64>) -> Result<(), MetaError> {
    for (name, &value) in limits {
        if value < 0 {
            continue;
        }
        let refused = match name.as_str() {
            "wasm-call-deadline-ms" => !(1..=WASM_CALL_DEADLINE_MS_MAX).contains(&value),
            // One WASM page.
            "wasm-memory-max-bytes" => value < 65_536,
            _ => false,
        };
        if refused {
            return Err(MetaError::Invalid(format!(
                "invalid value {value} for vhost limit '{name}' (wasm-call-deadline-ms: 1 to \
                 {WASM_CALL_DEADLINE_MS_MAX}; wasm-memory-max-bytes: at least 65536)"
            )));
        }
    }
    Ok(())
}

impl VhostMeta {
    /// `base` (the config file's WASM budget of the vhost) with this vhost's runtime WASM
    /// limits over it.
    pub fn budget_over(
        &self,
        base: crate::exchange::wasm::budget::BudgetLimits,
    ) -> crate::exchange::wasm::budget::BudgetLimits {
        let mut out = base;
        for (name, &value) in &self.limits {
            let wide = u64::try_from(value).unwrap_or(u64::MAX);
            match name.as_str() {
                "wasm-call-deadline-ms" => out.call_deadline_ms = wide,
                "wasm-memory-max-bytes" => out.memory_max_bytes = wide,
                "wasm-memory-total-bytes" => out.memory_total_bytes = wide,
                "wasm-cpu-ms-per-sec" => out.cpu_ms_per_sec = wide,
                "wasm-instances-max" => {
                    out.instances_max = u32::try_from(value).unwrap_or(u32::MAX)
                }
                _ => {}
            }
        }
        out
    }

    /// `base` (the config file's limits) with this vhost's runtime limits over it.
    pub fn limits_over(&self, base: crate::limits::VhostLimits) -> crate::limits::VhostLimits {
        let mut limits = base;
        for (name, &wide) in &self.limits {
            let value = u32::try_from(wide).unwrap_or(u32::MAX);
            let wide = u64::try_from(wide).unwrap_or(u64::MAX);
            match name.as_str() {
                "max-connections" => limits.max_connections = value,
                "max-queues" => limits.max_queues = value,
                "max-exchanges" => limits.max_exchanges = value,
                "max-bindings" => limits.max_bindings = value,
                "max-queued-bytes" => limits.max_queued_bytes = wide,
                "max-publish-rate" => limits.max_publish_rate = wide,
                _ => {}
            }
        }
        limits
    }
}

/// A user's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMeta {
    /// base64 of salt and digest ("": no password login).
    pub password_hash: String,
    /// RabbitMQ's scheme name.
    pub hashing_algorithm: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// A user's permissions in a vhost, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionMeta {
    /// Expression.
    pub configure: String,
    /// Expression.
    pub write: String,
    /// Expression.
    pub read: String,
}

/// A user's topic permissions on one exchange, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermissionMeta {
    /// Expression.
    pub write: String,
    /// Expression.
    pub read: String,
}

/// Everything the commands built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaState {
    /// By name.
    pub vhosts: BTreeMap<String, VhostMeta>,
    /// By name.
    pub users: BTreeMap<String, UserMeta>,
    /// By (user, vhost).
    pub permissions: BTreeMap<(String, String), PermissionMeta>,
    /// By (user, vhost, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermissionMeta>,
    /// Runtime limits by user (see [`MetaCommand::SetUserLimits`]).
    pub user_limits: BTreeMap<String, BTreeMap<String, i64>>,
}

fn check_name(what: &str, name: &str) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > NAME_MAX_BYTES {
        return Err(MetaError::Invalid(format!(
            "{what} name must be 1 to {NAME_MAX_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), MetaError> {
    if tags.len() > TAGS_MAX
        || tags
            .iter()
            .any(|t| t.is_empty() || t.len() > NAME_MAX_BYTES)
    {
        return Err(MetaError::Invalid(format!(
            "at most {TAGS_MAX} tags of 1 to {NAME_MAX_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_pattern(source: &str) -> Result<(), MetaError> {
    crate::auth::Pattern::new(source)
        .map(|_| ())
        .map_err(MetaError::Invalid)
}

impl MetaState {
    /// Whether `command` may be applied now.
    pub fn check(&self, command: &MetaCommand) -> Result<(), MetaError> {
        match command {
            MetaCommand::PutVhost { name, tags, .. } => {
                check_name("vhost", name)?;
                check_tags(tags)
            }
            MetaCommand::DeleteVhost { name } => self.vhost_exists(name),
            MetaCommand::PutUser {
                name,
                password_hash,
                hashing_algorithm,
                tags,
            } => {
                check_name("user", name)?;
                check_tags(tags)?;
                let credential = crate::config::Credential::Hash {
                    hash: password_hash.clone(),
                    algorithm: hashing_algorithm.clone(),
                };
                credential
                    .to_hash()
                    .map(|_| ())
                    .map_err(|e| MetaError::Invalid(e.to_string()))
            }
            MetaCommand::DeleteUser { name } => self.user_exists(name),
            MetaCommand::SetPermissions {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                self.user_exists(user)?;
                self.vhost_exists(vhost)?;
                for source in [configure, write, read] {
                    check_pattern(source)?;
                }
                Ok(())
            }
            MetaCommand::ClearPermissions { user, vhost } => {
                self.user_exists(user)?;
                self.vhost_exists(vhost)
            }
            MetaCommand::SetVhostLimits { vhost, limits } => {
                self.vhost_exists(vhost)?;
                check_limit_names("vhost", limits, &VHOST_LIMIT_NAMES)?;
                check_wasm_limits(limits)
            }
            MetaCommand::SetVhostExchangeTypes { vhost, types } => {
                self.vhost_exists(vhost)?;
                let too_many = types.as_ref().is_some_and(|t| t.len() > EXCHANGE_TYPES_MAX);
                let bad = types
                    .iter()
                    .flatten()
                    .find(|t| t.is_empty() || t.len() > NAME_MAX_BYTES);
                if too_many || bad.is_some() {
                    return Err(MetaError::Invalid(format!(
                        "an exchange-type list holds at most {EXCHANGE_TYPES_MAX} names of 1 to \
                         {NAME_MAX_BYTES} bytes"
                    )));
                }
                Ok(())
            }
            MetaCommand::SetUserLimits { user, limits } => {
                self.user_exists(user)?;
                check_limit_names("user", limits, &USER_LIMIT_NAMES)
            }
            MetaCommand::SetTopicPermissions {
                user,
                vhost,
                exchange,
                write,
                read,
            } => {
                self.user_exists(user)?;
                self.vhost_exists(vhost)?;
                check_name("exchange", exchange)?;
                crate::auth::TopicPermissions::new(exchange, write, read, user, vhost)
                    .map(|_| ())
                    .map_err(MetaError::Invalid)
            }
            MetaCommand::ClearTopicPermissions { user, vhost, .. } => {
                self.user_exists(user)?;
                self.vhost_exists(vhost)
            }
            MetaCommand::PutVhostPlugin { .. }
            | MetaCommand::RollbackVhostPlugin { .. }
            | MetaCommand::DeleteVhostPlugin { .. } => plugins::check(self, command),
        }
    }

    fn vhost_exists(&self, name: &str) -> Result<(), MetaError> {
        if self.vhosts.contains_key(name) {
            Ok(())
        } else {
            Err(MetaError::NotFound(format!("vhost '{name}' not found")))
        }
    }

    fn user_exists(&self, name: &str) -> Result<(), MetaError> {
        if self.users.contains_key(name) {
            Ok(())
        } else {
            Err(MetaError::NotFound(format!("user '{name}' not found")))
        }
    }

    /// Applies a command that passed [`MetaState::check`] (replayed ones are applied as far as
    /// they still make sense: a permission for a vhost that is gone is dropped).
    pub fn apply(&mut self, command: &MetaCommand) {
        match command.clone() {
            MetaCommand::PutVhost {
                name,
                description,
                tags,
            } => {
                let (limits, plugins, exchange_types) = self
                    .vhosts
                    .get(&name)
                    .map(|v| {
                        (
                            v.limits.clone(),
                            v.plugins.clone(),
                            v.exchange_types.clone(),
                        )
                    })
                    .unwrap_or_default();
                self.vhosts.insert(
                    name,
                    VhostMeta {
                        description,
                        tags,
                        limits,
                        plugins,
                        exchange_types,
                    },
                );
            }
            MetaCommand::SetVhostLimits { vhost, limits } => {
                if let Some(meta) = self.vhosts.get_mut(&vhost) {
                    for (name, value) in limits {
                        if value < 0 {
                            meta.limits.remove(&name);
                        } else {
                            meta.limits.insert(name, value);
                        }
                    }
                }
            }
            MetaCommand::SetVhostExchangeTypes { vhost, types } => {
                if let Some(meta) = self.vhosts.get_mut(&vhost) {
                    meta.exchange_types = types;
                }
            }
            MetaCommand::DeleteVhost { name } => {
                self.vhosts.remove(&name);
                self.permissions.retain(|(_, v), _| *v != name);
                self.topic_permissions.retain(|(_, v, _), _| *v != name);
            }
            MetaCommand::PutUser {
                name,
                password_hash,
                hashing_algorithm,
                tags,
            } => {
                self.users.insert(
                    name,
                    UserMeta {
                        password_hash,
                        hashing_algorithm,
                        tags,
                    },
                );
            }
            MetaCommand::SetUserLimits { user, limits } => {
                if self.users.contains_key(&user) {
                    let meta = self.user_limits.entry(user.clone()).or_default();
                    for (name, value) in limits {
                        if value < 0 {
                            meta.remove(&name);
                        } else {
                            meta.insert(name, value);
                        }
                    }
                    if meta.is_empty() {
                        self.user_limits.remove(&user);
                    }
                }
            }
            MetaCommand::DeleteUser { name } => {
                self.users.remove(&name);
                self.user_limits.remove(&name);
                self.permissions.retain(|(u, _), _| *u != name);
                self.topic_permissions.retain(|(u, _, _), _| *u != name);
            }
            MetaCommand::SetPermissions {
                user,
                vhost,
                configure,
                write,
                read,
            } => {
                if self.users.contains_key(&user) && self.vhosts.contains_key(&vhost) {
                    self.permissions.insert(
                        (user, vhost),
                        PermissionMeta {
                            configure,
                            write,
                            read,
                        },
                    );
                }
            }
            MetaCommand::ClearPermissions { user, vhost } => {
                self.permissions.remove(&(user, vhost));
            }
            MetaCommand::SetTopicPermissions {
                user,
                vhost,
                exchange,
                write,
                read,
            } => {
                if self.users.contains_key(&user) && self.vhosts.contains_key(&vhost) {
                    self.topic_permissions
                        .insert((user, vhost, exchange), TopicPermissionMeta { write, read });
                }
            }
            MetaCommand::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => {
                self.topic_permissions.retain(|(u, v, x), _| {
                    !(*u == user && *v == vhost && exchange.as_ref().is_none_or(|e| e == x))
                });
            }
            MetaCommand::PutVhostPlugin { .. }
            | MetaCommand::RollbackVhostPlugin { .. }
            | MetaCommand::DeleteVhostPlugin { .. } => plugins::apply(self, command),
        }
    }

    /// The state as commands that rebuild it (the snapshot a compacted log holds).
    pub fn snapshot(&self) -> Vec<MetaCommand> {
        let mut out = Vec::with_capacity(self.len());
        for (name, v) in &self.vhosts {
            out.push(MetaCommand::PutVhost {
                name: name.clone(),
                description: v.description.clone(),
                tags: v.tags.clone(),
            });
            if !v.limits.is_empty() {
                out.push(MetaCommand::SetVhostLimits {
                    vhost: name.clone(),
                    limits: v.limits.clone(),
                });
            }
            if v.exchange_types.is_some() {
                out.push(MetaCommand::SetVhostExchangeTypes {
                    vhost: name.clone(),
                    types: v.exchange_types.clone(),
                });
            }
            plugins::snapshot(name, &v.plugins, &mut out);
        }
        for (name, u) in &self.users {
            out.push(MetaCommand::PutUser {
                name: name.clone(),
                password_hash: u.password_hash.clone(),
                hashing_algorithm: u.hashing_algorithm.clone(),
                tags: u.tags.clone(),
            });
        }
        for (user, limits) in &self.user_limits {
            out.push(MetaCommand::SetUserLimits {
                user: user.clone(),
                limits: limits.clone(),
            });
        }
        for ((user, vhost), p) in &self.permissions {
            out.push(MetaCommand::SetPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            });
        }
        for ((user, vhost, exchange), t) in &self.topic_permissions {
            out.push(MetaCommand::SetTopicPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                exchange: exchange.clone(),
                write: t.write.clone(),
                read: t.read.clone(),
            });
        }
        out
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.vhosts.len()
            + self.users.len()
            + self.permissions.len()
            + self.topic_permissions.len()
            + self.user_limits.len()
            + self.vhosts.values().map(|v| v.plugins.len()).sum::<usize>()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the config file puts in an empty meta log: the vhost `/`, its users (clear
/// passwords hashed now; `guest`/`guest` with tag `administrator` when none), their
/// permissions (every user `.*` on `/` when none are configured) and topic permissions.
pub fn seed(config: &crate::Config) -> Result<Vec<MetaCommand>, crate::auth::PasswordError> {
    let mut out = vec![MetaCommand::PutVhost {
        name: "/".into(),
        description: "Default virtual host".into(),
        tags: vec![],
    }];
    let guest = [crate::config::UserSeed {
        name: "guest".into(),
        credential: crate::config::Credential::Clear("guest".into()),
        tags: vec!["administrator".into()],
    }];
    let users = if config.users.is_empty() {
        &guest[..]
    } else {
        &config.users[..]
    };
    for user in users {
        let hash = user.credential.to_hash()?;
        out.push(MetaCommand::PutUser {
            name: user.name.clone(),
            password_hash: hash.as_ref().map(|h| h.to_rabbit()).unwrap_or_default(),
            hashing_algorithm: hash
                .map_or(crate::auth::Algorithm::Sha256, |h| h.algorithm())
                .rabbit_name()
                .into(),
            tags: user.tags.clone(),
        });
    }
    if config.permissions.is_empty() {
        for user in users {
            out.push(MetaCommand::SetPermissions {
                user: user.name.clone(),
                vhost: "/".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            });
        }
    }
    for p in &config.permissions {
        if p.vhost != "/" {
            out.push(MetaCommand::PutVhost {
                name: p.vhost.clone(),
                description: String::new(),
                tags: vec![],
            });
        }
        out.push(MetaCommand::SetPermissions {
            user: p.user.clone(),
            vhost: p.vhost.clone(),
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        });
    }
    for t in &config.topic_permissions {
        out.push(MetaCommand::SetTopicPermissions {
            user: t.user.clone(),
            vhost: t.vhost.clone(),
            exchange: t.exchange.clone(),
            write: t.write.clone(),
            read: t.read.clone(),
        });
    }
    Ok(out)
}

mod log;
pub mod plugins;

pub use log::Meta;
#[cfg(test)]
mod tests;
