//! Users and SASL authentication (PLAIN and AMQPLAIN).

use std::collections::HashMap;
use std::net::IpAddr;

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;

/// The mechanisms offered in connection.start, in preference order.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// A user account.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    password: String,
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
    users: RwLock<HashMap<String, User>>,
    guest_loopback_only: bool,
}

impl UserStore {
    /// A store holding `users`, or `guest`/`guest` when empty.
    pub fn new(users: &[(String, String)], guest_loopback_only: bool) -> Self {
        let mut map = HashMap::new();
        let defaults = [("guest".to_owned(), "guest".to_owned())];
        let users = if users.is_empty() {
            &defaults[..]
        } else {
            users
        };
        for (name, password) in users {
            map.insert(
                name.clone(),
                User {
                    name: name.clone(),
                    password: password.clone(),
                },
            );
        }
        Self {
            users: RwLock::new(map),
            guest_loopback_only,
        }
    }

    /// Checks a connection.start-ok response for `mechanism` from a peer at `peer`.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<User, AuthError> {
        let (name, password) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            other => return Err(AuthError::Mechanism(other.to_owned())),
        };
        let users = self.users.read();
        let user = users
            .get(&name)
            .filter(|u| u.password == password)
            .ok_or_else(|| AuthError::Refused(mechanism.to_owned()))?;
        if user.name == "guest" && self.guest_loopback_only && !peer.is_loopback() {
            return Err(AuthError::LoopbackOnly(user.name.clone()));
        }
        Ok(user.clone())
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
    fn plain_accepts_guest_from_loopback_only() {
        let store = UserStore::new(&[], true);
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
        let store = UserStore::new(&[], true);
        let response = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest";
        assert!(store.authenticate("AMQPLAIN", response, LOCAL).is_ok());
        assert!(store.authenticate("AMQPLAIN", b"\x05LOG", LOCAL).is_err());
    }
}
