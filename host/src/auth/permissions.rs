//! Permissions as RabbitMQ has them: per user and vhost, three regular expressions over
//! resource names (configure, write, read), and per topic exchange two over routing keys.
//!
//! A name is allowed when the expression matches anywhere in it (RabbitMQ runs `re:run`
//! unanchored; `^...$` anchors), and the empty expression allows nothing. The default
//! exchange is checked under its name `amq.default`. Which operation needs which permission on
//! which resource is in [`crate::channel`] (`access.rs`), following RabbitMQ's table.

use regex::{Regex, RegexBuilder};

use crate::protocol::AmqpError;

/// Largest compiled expression (bounds what an operator's pattern can make the broker hold).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One of RabbitMQ's three permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create or delete a resource, or change its behaviour.
    Configure,
    /// Put messages in (publish to an exchange, bind to a queue or exchange as destination).
    Write,
    /// Take messages out (consume, get, purge; be the source of a binding).
    Read,
}

/// What kind of resource is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// An exchange.
    Exchange,
    /// A queue.
    Queue,
}

impl ResourceKind {
    fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Exchange => "exchange",
            ResourceKind::Queue => "queue",
        }
    }
}

/// An expression with its source text (shown back to operators).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    /// None for the empty expression: nothing matches.
    regex: Option<Regex>,
    /// `.*`: everything matches, without running the expression (the common grant, checked
    /// on every publish).
    everything: bool,
}

impl Pattern {
    /// Compiles `source` (bounded in size); an invalid expression is an error for the caller
    /// to report (406 in the management API, a refused config at start-up).
    pub fn new(source: &str) -> Result<Self, String> {
        let regex = if source.is_empty() {
            None
        } else {
            Some(
                RegexBuilder::new(source)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("invalid regular expression '{source}': {e}"))?,
            )
        };
        Ok(Pattern {
            source: source.to_owned(),
            regex,
            everything: source == ".*",
        })
    }

    /// Allows everything (`.*`).
    pub fn all() -> Self {
        Pattern {
            source: ".*".to_owned(),
            regex: None,
            everything: true,
        }
    }

    /// The expression as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.everything || self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// Which resources the user may configure.
    pub configure: Pattern,
    /// Which resources the user may write to.
    pub write: Pattern,
    /// Which resources the user may read from.
    pub read: Pattern,
}

impl Permissions {
    /// Everything allowed (`.*` three times, as RabbitMQ grants `guest` on `/`).
    pub fn all() -> Self {
        Permissions {
            configure: Pattern::all(),
            write: Pattern::all(),
            read: Pattern::all(),
        }
    }

    /// Checks `access` to the resource `name` of `kind`, refusing with 403 and RabbitMQ's
    /// text.
    pub fn check(
        &self,
        access: Access,
        kind: ResourceKind,
        name: &str,
        vhost: &str,
        user: &str,
    ) -> Result<(), AmqpError> {
        let name = match (kind, name) {
            (ResourceKind::Exchange, "") => "amq.default",
            _ => name,
        };
        let pattern = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        if pattern.allows(name) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
            kind.as_str()
        )))
    }
}

/// A user's permissions on the routing keys of one topic exchange (or of all of them).
#[derive(Debug, Clone)]
pub struct TopicPermissions {
    /// The exchange they apply to.
    pub exchange: String,
    /// Routing keys the user may publish with (`{username}`, `{vhost}` expanded).
    pub write: Pattern,
    /// Routing keys the user may bind a queue with to read (`{username}`, `{vhost}` expanded).
    pub read: Pattern,
}

impl TopicPermissions {
    /// Compiles RabbitMQ's topic permission for `user` in `vhost`: the variables `{username}`
    /// and `{vhost}` are replaced (escaped) before compiling.
    pub fn new(
        exchange: &str,
        write: &str,
        read: &str,
        user: &str,
        vhost: &str,
    ) -> Result<Self, String> {
        let expand = |source: &str| {
            source
                .replace("{username}", &regex::escape(user))
                .replace("{vhost}", &regex::escape(vhost))
        };
        Ok(TopicPermissions {
            exchange: exchange.to_owned(),
            write: Pattern::new(&expand(write))?,
            read: Pattern::new(&expand(read))?,
        })
    }

    /// Checks `access` (write or read) with `routing_key` on this topic exchange.
    pub fn check(
        &self,
        access: Access,
        routing_key: &str,
        vhost: &str,
        user: &str,
    ) -> Result<(), AmqpError> {
        let pattern = match access {
            Access::Read => &self.read,
            _ => &self.write,
        };
        if pattern.allows(routing_key) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to topic '{routing_key}' in exchange '{}' in vhost '{vhost}' refused for user \
             '{user}'",
            self.exchange
        )))
    }
}

/// What one user may do in one vhost, resolved when a connection opens the vhost.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// Configure, write and read.
    pub permissions: Permissions,
    /// Topic permissions, per topic exchange (RabbitMQ: none means no restriction).
    pub topics: Vec<TopicPermissions>,
}

impl Grants {
    /// Checks `access` to a resource (403 with RabbitMQ's text).
    pub fn check(&self, access: Access, kind: ResourceKind, name: &str) -> Result<(), AmqpError> {
        self.permissions
            .check(access, kind, name, &self.vhost, &self.user)
    }

    /// Checks a routing key against the topic permissions of topic exchange `exchange`: publish
    /// (write) or bind a queue (read). No topic permission for the exchange allows all.
    pub fn check_topic(
        &self,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        if self.topics.is_empty() {
            return Ok(());
        }
        for topic in self.topics.iter().filter(|t| t.exchange == exchange) {
            topic.check(access, routing_key, &self.vhost, &self.user)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permissions(configure: &str, write: &str, read: &str) -> Permissions {
        Permissions {
            configure: Pattern::new(configure).expect("valid"),
            write: Pattern::new(write).expect("valid"),
            read: Pattern::new(read).expect("valid"),
        }
    }

    #[test]
    fn patterns_match_anywhere_and_the_empty_one_matches_nothing() {
        let p = permissions("^tenant-a\\.", "", ".*");
        let check = |access, kind, name: &str| p.check(access, kind, name, "/", "alice");
        assert!(check(Access::Configure, ResourceKind::Queue, "tenant-a.jobs").is_ok());
        let refused =
            check(Access::Configure, ResourceKind::Queue, "tenant-b.jobs").expect_err("refused");
        assert_eq!(refused.code, crate::protocol::ReplyCode::AccessRefused);
        assert_eq!(
            refused.text,
            "ACCESS_REFUSED - access to queue 'tenant-b.jobs' in vhost '/' refused for user 'alice'"
        );
        assert!(check(Access::Write, ResourceKind::Exchange, "anything").is_err());
        assert!(check(Access::Read, ResourceKind::Queue, "").is_ok());
        let default = permissions("", "^amq\\.default$", "");
        let error = default
            .check(Access::Write, ResourceKind::Exchange, "", "v", "bob")
            .map(|()| "allowed");
        assert_eq!(error.ok(), Some("allowed"), "'' is checked as amq.default");
        assert!(Pattern::new("(unclosed").is_err());
        assert!(
            Pattern::new(&"a{1000}{1000}".repeat(10)).is_err(),
            "bounded size"
        );
    }

    #[test]
    fn topic_permissions_expand_their_variables_escaped() {
        let t = TopicPermissions::new("logs", "^{username}\\.", "^{vhost}\\.", "a.b", "v*")
            .expect("valid");
        assert!(t.check(Access::Write, "a.b.info", "v*", "a.b").is_ok());
        assert!(
            t.check(Access::Write, "aXb.info", "v*", "a.b").is_err(),
            "dot escaped"
        );
        assert!(t.check(Access::Read, "v*.x", "v*", "a.b").is_ok());
        let refused = t
            .check(Access::Read, "vvv.x", "v*", "a.b")
            .expect_err("refused");
        assert_eq!(
            refused.text,
            "ACCESS_REFUSED - access to topic 'vvv.x' in exchange 'logs' in vhost 'v*' refused \
             for user 'a.b'"
        );
    }
}
