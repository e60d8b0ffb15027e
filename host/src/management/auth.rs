//! Who is asking: HTTP basic auth checked against the broker's users (the same hashes and the
//! same loopback rule for guest as AMQP), and what RabbitMQ's tags let them do.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use base64::Engine as _;

use super::error::ApiError;
use crate::auth::User;
use crate::broker::Shared;

/// The authenticated user of a request that may use the API at all.
pub struct Who {
    /// The user.
    pub user: Arc<User>,
    shared: Arc<Shared>,
}

/// The tags that give access to the API.
const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "policymaker", "management"];

impl Who {
    /// `administrator`.
    pub fn is_admin(&self) -> bool {
        self.user.has_tag("administrator")
    }

    /// Sees every vhost's objects: `monitoring` or `administrator`.
    pub fn sees_all(&self) -> bool {
        self.is_admin() || self.user.has_tag("monitoring")
    }

    /// Whether the user may see `vhost`'s objects: every vhost for monitoring users, the
    /// vhosts it has permissions in for the others.
    pub fn sees_vhost(&self, vhost: &str) -> bool {
        self.sees_all() || self.shared.users.grants(&self.user.name, vhost).is_some()
    }

    /// Refuses a request that needs the `administrator` tag.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// Refuses a request that needs the `monitoring` (or `administrator`) tag.
    pub fn require_monitoring(&self) -> Result<(), ApiError> {
        if self.sees_all() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Refuses a request about `vhost` from a user who may not see it (RabbitMQ: 401).
    pub fn require_vhost(&self, vhost: &str) -> Result<(), ApiError> {
        if self.sees_vhost(vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(format!(
                "access to vhost '{vhost}' refused for user '{}'",
                self.user.name
            )))
        }
    }
}

impl<S> FromRequestParts<S> for Who
where
    Arc<Shared>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let shared = Arc::<Shared>::from_ref(state);
        let login_failed = || ApiError::not_authorised("Login failed");
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(login_failed)?;
        let encoded = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .ok_or_else(login_failed)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| login_failed())?;
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(login_failed)?;
        let (name, password) = (&decoded[..colon], &decoded[colon + 1..]);
        // The same check as an AMQP PLAIN login: `\0user\0password`.
        let mut plain = Vec::with_capacity(decoded.len() + 2);
        plain.push(0);
        plain.extend_from_slice(name);
        plain.push(0);
        plain.extend_from_slice(password);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let user = shared
            .users
            .authenticate("PLAIN", &plain, peer)
            .map_err(|_| login_failed())?;
        if !MANAGEMENT_TAGS.iter().any(|tag| user.has_tag(tag)) {
            return Err(ApiError::not_authorised("Not management user"));
        }
        Ok(Who { user, shared })
    }
}
