//! The users and permissions a configuration creates at start-up (TOML `[[users]]`,
//! `[[permissions]]`, `[[topic_permissions]]`; without users, the default `guest`), in the
//! shapes of RabbitMQ's definitions and `set_permissions`.

use serde::Deserialize;

/// A user's permissions in a vhost, as RabbitMQ's `set_permissions` takes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSeed {
    /// The user.
    pub user: String,
    /// The vhost [default: `/`].
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Regular expression of the resources the user may configure.
    pub configure: String,
    /// ... may write to.
    pub write: String,
    /// ... may read from.
    pub read: String,
}

impl PermissionSeed {
    /// Compiles the three expressions.
    pub fn compile(&self) -> Result<crate::auth::Permissions, String> {
        use crate::auth::Pattern;
        Ok(crate::auth::Permissions {
            configure: Pattern::new(&self.configure)?,
            write: Pattern::new(&self.write)?,
            read: Pattern::new(&self.read)?,
        })
    }
}

/// A user's topic permission on one topic exchange, as RabbitMQ's `set_topic_permissions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionSeed {
    /// The user.
    pub user: String,
    /// The vhost [default: `/`].
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with (`{username}`, `{vhost}` expanded).
    pub write: String,
    /// Routing keys the user may bind with to read.
    pub read: String,
}

fn default_vhost() -> String {
    "/".to_owned()
}

/// A user the configuration creates at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSeed {
    /// Login name.
    pub name: String,
    /// How the password is given.
    pub credential: Credential,
    /// RabbitMQ's user tags.
    pub tags: Vec<String>,
}

impl UserSeed {
    /// A user with a clear password and no tags.
    pub fn clear(name: &str, password: &str) -> Self {
        UserSeed {
            name: name.to_owned(),
            credential: Credential::Clear(password.to_owned()),
            tags: Vec::new(),
        }
    }
}

/// A seeded user's password: clear (hashed at start-up, never kept) or already hashed.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A clear password.
    Clear(String),
    /// RabbitMQ's `password_hash` and `hashing_algorithm`.
    Hash {
        /// base64 of salt and digest; empty: the user cannot log in with a password.
        hash: String,
        /// RabbitMQ's scheme name.
        algorithm: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Clear(_) => f.write_str("Clear(..)"),
            Credential::Hash { algorithm, .. } => write!(f, "Hash({algorithm})"),
        }
    }
}

impl Credential {
    /// The hash to keep (None: no password login).
    pub fn to_hash(&self) -> Result<Option<crate::auth::PasswordHash>, crate::auth::PasswordError> {
        use crate::auth::{Algorithm, PasswordHash};
        match self {
            Credential::Clear(password) => PasswordHash::new(password, Algorithm::Sha256).map(Some),
            Credential::Hash { hash, .. } if hash.is_empty() => Ok(None),
            Credential::Hash { hash, algorithm } => {
                PasswordHash::from_rabbit(hash, Algorithm::from_rabbit(algorithm)?).map(Some)
            }
        }
    }
}
