//! Who may manage a vhost's own exchange-type plugins (upload, replace, roll back, remove).
//!
//! The rule follows how RabbitMQ splits its management rights: a plugin changes what
//! exchanges of a vhost do, as a policy does, so it takes the rights a policy takes, narrowed
//! by the configure permission that declaring an exchange takes:
//!
//! - a user tagged `administrator` may manage the plugins of every vhost;
//! - a user tagged `policymaker` may manage the plugins of a vhost where it has permissions,
//!   for a type name its configure expression allows (`.*`: any type; `^x-acme-` only the
//!   types named so);
//! - nobody else may (`management` and `monitoring` users only look).
//!
//! The type name is the one the component gives in `describe`, so an upload is checked once
//! the component is compiled and described, and before anything is written or logged.

use super::{Grants, User};

/// Why a user may not manage a vhost's plugin type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginAccessDenied {
    /// Neither `administrator` nor `policymaker`.
    #[error(
        "user '{user}' may not manage plugins: it needs the 'administrator' or 'policymaker' tag"
    )]
    Tag {
        /// The user.
        user: String,
    },
    /// A policymaker without permissions in the vhost.
    #[error("user '{user}' has no permissions in vhost '{vhost}'")]
    NoPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// A policymaker whose configure expression does not allow the type name.
    #[error(
        "user '{user}' may not manage plugin type '{name}' in vhost '{vhost}': its configure \
         permission does not allow that name"
    )]
    Configure {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The type name.
        name: String,
    },
}

/// Whether `user`, with `grants` in `vhost` (None: no permissions there), may upload,
/// replace, roll back or remove the plugin type `name` of `vhost` (see the module doc).
/// `name` None: the type is not known yet (an upload before it is compiled); every check but
/// the configure pattern's, so a user who may upload nothing costs the broker no compile.
pub fn may_manage_vhost_plugin(
    user: &User,
    grants: Option<&Grants>,
    vhost: &str,
    name: Option<&str>,
) -> Result<(), PluginAccessDenied> {
    if user.has_tag("administrator") {
        return Ok(());
    }
    if !user.has_tag("policymaker") {
        return Err(PluginAccessDenied::Tag {
            user: user.name.clone(),
        });
    }
    let Some(grants) = grants.filter(|g| g.vhost == vhost) else {
        return Err(PluginAccessDenied::NoPermissions {
            user: user.name.clone(),
            vhost: vhost.to_owned(),
        });
    };
    let Some(name) = name else { return Ok(()) };
    if grants.permissions.configure.allows(name) {
        Ok(())
    } else {
        Err(PluginAccessDenied::Configure {
            user: user.name.clone(),
            vhost: vhost.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Pattern, Permissions};

    fn user(tags: &[&str]) -> User {
        User {
            name: "u".into(),
            password: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn grants(vhost: &str, configure: &str) -> Grants {
        Grants {
            user: "u".into(),
            vhost: vhost.into(),
            permissions: Permissions {
                configure: Pattern::new(configure).expect("pattern"),
                write: Pattern::all(),
                read: Pattern::all(),
            },
            topics: vec![],
        }
    }

    #[test]
    fn administrators_may_everywhere_without_permissions() {
        assert_eq!(
            may_manage_vhost_plugin(&user(&["administrator"]), None, "a", Some("x-foo")),
            Ok(())
        );
    }

    #[test]
    fn policymakers_need_permissions_whose_configure_allows_the_name() {
        let pm = user(&["policymaker"]);
        assert_eq!(
            may_manage_vhost_plugin(&pm, Some(&grants("a", ".*")), "a", Some("x-foo")),
            Ok(())
        );
        assert_eq!(
            may_manage_vhost_plugin(
                &pm,
                Some(&grants("a", "^x-acme-")),
                "a",
                Some("x-acme-route")
            ),
            Ok(())
        );
        assert!(matches!(
            may_manage_vhost_plugin(&pm, Some(&grants("a", "^x-acme-")), "a", Some("x-foo")),
            Err(PluginAccessDenied::Configure { .. })
        ));
        assert!(matches!(
            may_manage_vhost_plugin(&pm, Some(&grants("a", "")), "a", Some("x-foo")),
            Err(PluginAccessDenied::Configure { .. })
        ));
        assert!(matches!(
            may_manage_vhost_plugin(&pm, None, "a", Some("x-foo")),
            Err(PluginAccessDenied::NoPermissions { .. })
        ));
        // Before the name is known: everything but the pattern.
        assert_eq!(
            may_manage_vhost_plugin(&pm, Some(&grants("a", "")), "a", None),
            Ok(())
        );
        assert!(matches!(
            may_manage_vhost_plugin(&pm, None, "a", None),
            Err(PluginAccessDenied::NoPermissions { .. })
        ));
        // Grants of another vhost do not count.
        assert!(matches!(
            may_manage_vhost_plugin(&pm, Some(&grants("b", ".*")), "a", Some("x-foo")),
            Err(PluginAccessDenied::NoPermissions { .. })
        ));
    }

    #[test]
    fn other_users_may_not_even_with_full_permissions() {
        for tags in [&[][..], &["management"], &["monitoring"]] {
            assert!(matches!(
                may_manage_vhost_plugin(&user(tags), Some(&grants("a", ".*")), "a", Some("x-foo")),
                Err(PluginAccessDenied::Tag { .. })
            ));
        }
    }
}
