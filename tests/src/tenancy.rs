//! Helpers of the tenancy tests: the metadata commands that make vhosts, users, grants and
//! limits, and URLs that log in as a user to a vhost.

use std::collections::BTreeMap;

use bourse::auth::{Algorithm, PasswordHash};
use bourse::meta::MetaCommand;

/// Creates vhost `name`.
pub fn put_vhost(name: &str) -> MetaCommand {
    MetaCommand::PutVhost {
        name: name.into(),
        description: String::new(),
        tags: vec![],
    }
}

/// Creates user `name` with `password` and `tags`.
pub fn put_user(name: &str, password: &str, tags: &[&str]) -> MetaCommand {
    MetaCommand::PutUser {
        name: name.into(),
        password_hash: PasswordHash::new(password, Algorithm::Sha256)
            .expect("hash")
            .to_rabbit(),
        hashing_algorithm: "rabbit_password_hashing_sha256".into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// Lets `user` configure what `configure` matches in `vhost`, and write and read everything.
pub fn grant(user: &str, vhost: &str, configure: &str) -> MetaCommand {
    MetaCommand::SetPermissions {
        user: user.into(),
        vhost: vhost.into(),
        configure: configure.into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

/// Lets `user` do everything in `vhost`.
pub fn grant_all(user: &str, vhost: &str) -> MetaCommand {
    grant(user, vhost, ".*")
}

/// Limits by name, as `SetVhostLimits` and `SetUserLimits` take them.
pub fn limits(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Sets limits of `vhost`.
pub fn vhost_limits(vhost: &str, pairs: &[(&str, i64)]) -> MetaCommand {
    MetaCommand::SetVhostLimits {
        vhost: vhost.into(),
        limits: limits(pairs),
    }
}

/// `base` (a test broker's `amqp://guest:guest@ADDR/%2f`) for `vhost` (URL-encoded).
pub fn vhost_url(base: &str, vhost: &str) -> String {
    base.replace("/%2f", &format!("/{vhost}"))
}

/// `base` for `user` with `password` in `vhost`.
pub fn user_url(base: &str, user: &str, password: &str, vhost: &str) -> String {
    vhost_url(base, vhost).replace("guest:guest@", &format!("{user}:{password}@"))
}
