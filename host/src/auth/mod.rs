//! Users and SASL authentication (PLAIN and AMQPLAIN).
//!
//! Users are kept with a salted password hash only ([`password`]: RabbitMQ's schemes, so its
//! definitions import unchanged) and RabbitMQ's user tags. A login is checked in constant time,
//! and an unknown user costs the same hash as a known one.

pub mod password;
pub mod permissions;
pub mod plugin_access;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;
use tracing::warn;

pub use password::{Algorithm, PasswordError, PasswordHash};
pub use permissions::{Access, Grants, Pattern, Permissions, ResourceKind, TopicPermissions};
pub use plugin_access::{PluginAccessDenied, may_manage_vhost_plugin};

use crate::config::{Credential, PermissionSeed, TopicPermissionSeed, UserSeed};

/// The mechanisms offered in connection.start, in preference order.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";
/// The mechanisms offered on a TLS connection whose client presented a verified certificate:
/// EXTERNAL logs in as the certificate's common name.
pub const MECHANISMS_WITH_EXTERNAL: &str = "PLAIN AMQPLAIN EXTERNAL";

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// None: the user cannot log in with a password (RabbitMQ's empty `password_hash`).
    pub password: Option<PasswordHash>,
    /// RabbitMQ's user tags (`administrator`, `monitoring`, `policymaker`, `management`, or
    /// any other word).
    pub tags: Vec<String>,
}

impl User {
    /// Whether the user has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The mechanism is not one we offer.
    #[error("unsupported authentication mechanism '{0}'")]
    Mechanism(String),
    /// The response could not be decoded for the mechanism.
    #[error("malformed {0} response")]
    Malformed(&'static str),
    /// Unknown user or wrong password.
    #[error(
        "Login was refused using authentication mechanism {0}. For details see the broker logfile."
    )]
    Refused(String),
    /// The user may only connect from loopback.
    #[error("user '{0}' can only connect via localhost")]
    LoopbackOnly(String),
}

/// The broker's users.
#[derive(Debug)]
pub struct UserStore {
    users: RwLock<HashMap<String, Arc<User>>>,
    /// (user, vhost) → configure/write/read.
    permissions: RwLock<HashMap<(String, String), Permissions>>,
    /// (user, vhost) → topic permissions per exchange.
    topics: RwLock<HashMap<(String, String), Vec<TopicPermissions>>>,
    guest_loopback_only: bool,
    /// Checked against when the user does not exist, so that a login takes as long either way.
    decoy: PasswordHash,
    /// Bumped by every [`UserStore::reload`]: open connections compare it once per read turn
    /// and take their grants again when it moved.
    generation: std::sync::atomic::AtomicU64,
}

impl UserStore {
    /// A store holding the seeded `users` (clear passwords are hashed now), or
    /// `guest`/`guest` (tag `administrator`, as RabbitMQ's) when there are none. A seed whose
    /// hash does not decode is logged and skipped ([`crate::Config::check`] refuses them first).
    pub fn new(
        users: &[UserSeed],
        permissions: &[PermissionSeed],
        topic_permissions: &[TopicPermissionSeed],
        guest_loopback_only: bool,
    ) -> Self {
        let mut map = HashMap::new();
        let guest = [UserSeed {
            name: "guest".to_owned(),
            credential: Credential::Clear("guest".to_owned()),
            tags: vec!["administrator".to_owned()],
        }];
        let users = if users.is_empty() { &guest[..] } else { users };
        for seed in users {
            match seed.credential.to_hash() {
                Ok(password) => {
                    let user = User {
                        name: seed.name.clone(),
                        password,
                        tags: seed.tags.clone(),
                    };
                    map.insert(seed.name.clone(), Arc::new(user));
                }
                Err(error) => warn!(user = %seed.name, %error, "user not created"),
            }
        }
        // Without any configured permissions every user may do everything in `/` (as
        // RabbitMQ grants its default user, and as bourse did before permissions existed).
        let mut grants = HashMap::new();
        if permissions.is_empty() {
            for name in map.keys() {
                grants.insert((name.clone(), "/".to_owned()), Permissions::all());
            }
        }
        for seed in permissions {
            match seed.compile() {
                Ok(p) => {
                    grants.insert((seed.user.clone(), seed.vhost.clone()), p);
                }
                Err(error) => {
                    warn!(user = %seed.user, vhost = %seed.vhost, %error, "permission not set")
                }
            }
        }
        let mut topics: HashMap<(String, String), Vec<TopicPermissions>> = HashMap::new();
        for seed in topic_permissions {
            match TopicPermissions::new(
                &seed.exchange,
                &seed.write,
                &seed.read,
                &seed.user,
                &seed.vhost,
            ) {
                Ok(t) => topics
                    .entry((seed.user.clone(), seed.vhost.clone()))
                    .or_default()
                    .push(t),
                Err(error) => {
                    warn!(user = %seed.user, vhost = %seed.vhost, %error, "topic permission not set")
                }
            }
        }
        Self {
            users: RwLock::new(map),
            permissions: RwLock::new(grants),
            topics: RwLock::new(topics),
            guest_loopback_only,
            decoy: PasswordHash::decoy(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Changes with every reload of users and permissions (see [`UserStore::reload`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Checks a connection.start-ok response for `mechanism` from a peer at `peer`.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        let (name, password) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            other => return Err(AuthError::Mechanism(other.to_owned())),
        };
        let user = self.users.read().get(&name).cloned();
        let matches = match user.as_ref().map(|u| u.password.as_ref()) {
            Some(Some(hash)) => hash.verify(&password),
            // No such user, or one without a password: the same work, and a refusal.
            _ => {
                self.decoy.verify(&password);
                false
            }
        };
        let user = user
            .filter(|_| matches)
            .ok_or_else(|| AuthError::Refused(mechanism.to_owned()))?;
        if user.name == "guest" && self.guest_loopback_only && !peer.is_loopback() {
            return Err(AuthError::LoopbackOnly(user.name.clone()));
        }
        Ok(user)
    }

    /// The EXTERNAL mechanism: `name` comes from a verified client certificate (its subject's
    /// common name, RabbitMQ's `ssl_cert_login_from = common_name`), so only its existence
    /// is checked, and guest's loopback rule.
    pub fn authenticate_external(&self, name: &str, peer: IpAddr) -> Result<Arc<User>, AuthError> {
        let user = self
            .users
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::Refused("EXTERNAL".to_owned()))?;
        if user.name == "guest" && self.guest_loopback_only && !peer.is_loopback() {
            return Err(AuthError::LoopbackOnly(user.name.clone()));
        }
        Ok(user)
    }

    /// Replaces every user and permission by those of `state` (after a meta command).
    pub fn reload(&self, state: &crate::meta::MetaState) {
        let mut users = HashMap::new();
        for (name, meta) in &state.users {
            let credential = Credential::Hash {
                hash: meta.password_hash.clone(),
                algorithm: meta.hashing_algorithm.clone(),
            };
            match credential.to_hash() {
                Ok(password) => {
                    let user = User {
                        name: name.clone(),
                        password,
                        tags: meta.tags.clone(),
                    };
                    users.insert(name.clone(), Arc::new(user));
                }
                Err(error) => warn!(user = %name, %error, "user not loaded"),
            }
        }
        let mut grants = HashMap::new();
        for ((user, vhost), p) in &state.permissions {
            let seed = PermissionSeed {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            };
            match seed.compile() {
                Ok(compiled) => {
                    grants.insert((user.clone(), vhost.clone()), compiled);
                }
                Err(error) => warn!(%user, %vhost, %error, "permission not loaded"),
            }
        }
        let mut topics: HashMap<(String, String), Vec<TopicPermissions>> = HashMap::new();
        for ((user, vhost, exchange), t) in &state.topic_permissions {
            match TopicPermissions::new(exchange, &t.write, &t.read, user, vhost) {
                Ok(compiled) => topics
                    .entry((user.clone(), vhost.clone()))
                    .or_default()
                    .push(compiled),
                Err(error) => warn!(%user, %vhost, %error, "topic permission not loaded"),
            }
        }
        *self.users.write() = users;
        *self.permissions.write() = grants;
        *self.topics.write() = topics;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// What `user` may do in `vhost`; None when it has no permissions there (connection.open
    /// is then refused).
    pub fn grants(&self, user: &str, vhost: &str) -> Option<Arc<Grants>> {
        let key = (user.to_owned(), vhost.to_owned());
        let permissions = self.permissions.read().get(&key).cloned()?;
        let topics = self.topics.read().get(&key).cloned().unwrap_or_default();
        Some(Arc::new(Grants {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            permissions,
            topics,
        }))
    }

    /// Looks a user up.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<Arc<User>> {
        let mut all: Vec<_> = self.users.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authzid), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("PLAIN"));
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| AuthError::Malformed("PLAIN"));
    Ok((text(user)?, text(pass)?))
}

/// AMQPLAIN: a field table without its length prefix holding LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut table_bytes = Vec::with_capacity(response.len() + 4);
    table_bytes.extend_from_slice(&(response.len() as u32).to_be_bytes());
    table_bytes.extend_from_slice(response);
    // Decoded with the nesting bound: this table comes before the peer has logged in.
    let table: FieldTable = crate::protocol::decode_table(&table_bytes, "AMQPLAIN response")
        .map_err(|_| AuthError::Malformed("AMQPLAIN"))?;
    let field = |key: &str| match table.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_owned()),
        _ => Err(AuthError::Malformed("AMQPLAIN")),
    };
    Ok((field("LOGIN")?, field("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn users_are_kept_hashed_and_checked_against_the_hash() {
        let hashed = PasswordHash::new("h4sh", Algorithm::Sha512).expect("hash");
        let store = UserStore::new(
            &[
                UserSeed {
                    name: "alice".into(),
                    credential: Credential::Clear("s3cret".into()),
                    tags: vec!["monitoring".into()],
                },
                UserSeed {
                    name: "bob".into(),
                    credential: Credential::Hash {
                        hash: hashed.to_rabbit(),
                        algorithm: "rabbit_password_hashing_sha512".into(),
                    },
                    tags: vec![],
                },
                UserSeed {
                    name: "nologin".into(),
                    credential: Credential::Hash {
                        hash: String::new(),
                        algorithm: "rabbit_password_hashing_sha256".into(),
                    },
                    tags: vec![],
                },
            ],
            &[],
            &[],
            true,
        );
        let alice = store
            .authenticate("PLAIN", b"\0alice\0s3cret", LOCAL)
            .expect("alice");
        assert!(alice.has_tag("monitoring") && !alice.has_tag("administrator"));
        assert!(
            format!("{alice:?}").find("s3cret").is_none(),
            "no password kept"
        );
        assert!(store.authenticate("PLAIN", b"\0bob\0h4sh", LOCAL).is_ok());
        assert!(
            store
                .authenticate("PLAIN", b"\0bob\0s3cret", LOCAL)
                .is_err()
        );
        assert!(store.authenticate("PLAIN", b"\0nologin\0", LOCAL).is_err());
        assert!(
            store
                .authenticate("PLAIN", b"\0guest\0guest", LOCAL)
                .is_err()
        );
        assert_eq!(store.list().len(), 3);
    }

    #[test]
    fn plain_accepts_guest_from_loopback_only() {
        let store = UserStore::new(&[], &[], &[], true);
        assert!(
            store
                .get("guest")
                .is_some_and(|g| g.has_tag("administrator"))
        );
        assert!(
            store
                .authenticate("PLAIN", b"\0guest\0guest", LOCAL)
                .is_ok()
        );
        assert!(matches!(
            store.authenticate(
                "PLAIN",
                b"\0guest\0guest",
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
            ),
            Err(AuthError::LoopbackOnly(_))
        ));
        assert!(matches!(
            store.authenticate("PLAIN", b"\0guest\0nope", LOCAL),
            Err(AuthError::Refused(_))
        ));
        assert!(matches!(
            store.authenticate("PLAIN", b"guest", LOCAL),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn amqplain_reads_login_and_password() {
        let store = UserStore::new(&[], &[], &[], true);
        let response = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest";
        assert!(store.authenticate("AMQPLAIN", response, LOCAL).is_ok());
        assert!(store.authenticate("AMQPLAIN", b"\x05LOG", LOCAL).is_err());
    }
}
