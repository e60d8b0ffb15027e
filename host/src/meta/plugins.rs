//! The metadata of per-vhost plugins: per vhost, per exchange type, the hash of the component
//! serving it and of the one before it (for a rollback).
//!
//! The commands name a component by its SHA-256 and never carry its bytes: the bytes live in
//! `<vhost dir>/plugins/<sha256>.wasm` (`exchange::wasm::tenant` writes and syncs the file,
//! then its directory, before the command is logged). A component is up to
//! `wasm_upload_max_bytes` (32 MiB by default) and the meta log is replayed whole at every
//! start and rewritten whole when compacted; bytes in it would make every start, every
//! compaction and, once the log is replicated, every Raft snapshot and append carry megabytes
//! for a line of metadata. The hash keeps the log small and the command self-checking: a
//! cluster must ship the file to a member before that member applies the command (a member
//! that finds the file missing or not matching its hash reports the type as not loaded, and
//! loads it once the file arrives), and the type name is in the command so that applying it
//! needs no compilation.

use std::collections::BTreeMap;

use super::{MetaCommand, MetaError, MetaState, NAME_MAX_BYTES};

/// One plugin type of a vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostPluginMeta {
    /// Hex SHA-256 of the component serving the type.
    pub current: String,
    /// The component a rollback goes back to.
    pub previous: Option<String>,
}

impl VhostPluginMeta {
    /// The hashes whose files must be kept.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.current.as_str()).chain(self.previous.as_deref())
    }
}

/// Whether `sha256` is 64 lowercase hex digits (it names a file).
pub fn valid_sha256(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `name` may name a vhost's plugin type: `x-…`, at most 255 bytes, not a built-in.
pub fn valid_type_name(name: &str) -> bool {
    name.starts_with("x-")
        && name.len() <= NAME_MAX_BYTES
        && !crate::exchange::builtin::all()
            .iter()
            .any(|b| b.name() == name)
}

fn plugin<'a>(
    state: &'a MetaState,
    vhost: &str,
    name: &str,
) -> Result<&'a VhostPluginMeta, MetaError> {
    state.vhost_exists(vhost)?;
    state
        .vhosts
        .get(vhost)
        .and_then(|v| v.plugins.get(name))
        .ok_or_else(|| MetaError::NotFound(format!("no plugin type '{name}' in vhost '{vhost}'")))
}

/// [`MetaState::check`] of the plugin commands.
pub(super) fn check(state: &MetaState, command: &MetaCommand) -> Result<(), MetaError> {
    match command {
        MetaCommand::PutVhostPlugin {
            vhost,
            name,
            sha256,
        } => {
            state.vhost_exists(vhost)?;
            if !valid_type_name(name) {
                return Err(MetaError::Invalid(format!(
                    "invalid exchange type name '{}': must start with \"x-\", be at most \
                     {NAME_MAX_BYTES} bytes, and not be a built-in type",
                    name.chars().take(64).collect::<String>()
                )));
            }
            if !valid_sha256(sha256) {
                return Err(MetaError::Invalid(
                    "a plugin's sha256 must be 64 lowercase hex digits".into(),
                ));
            }
            Ok(())
        }
        MetaCommand::RollbackVhostPlugin { vhost, name } => {
            match plugin(state, vhost, name)?.previous {
                Some(_) => Ok(()),
                None => Err(MetaError::Invalid(format!(
                    "plugin type '{name}' in vhost '{vhost}' has no previous version to roll \
                     back to"
                ))),
            }
        }
        MetaCommand::DeleteVhostPlugin { vhost, name } => plugin(state, vhost, name).map(|_| ()),
        _ => Ok(()),
    }
}

/// [`MetaState::apply`] of the plugin commands. Putting the current hash again changes
/// nothing (so the previous version stays the one a rollback goes to).
pub(super) fn apply(state: &mut MetaState, command: &MetaCommand) {
    match command {
        MetaCommand::PutVhostPlugin {
            vhost,
            name,
            sha256,
        } => {
            let Some(meta) = state.vhosts.get_mut(vhost) else {
                return;
            };
            match meta.plugins.get_mut(name) {
                Some(p) if p.current == *sha256 => {}
                Some(p) => p.previous = Some(std::mem::replace(&mut p.current, sha256.clone())),
                None => {
                    meta.plugins.insert(
                        name.clone(),
                        VhostPluginMeta {
                            current: sha256.clone(),
                            previous: None,
                        },
                    );
                }
            }
        }
        MetaCommand::RollbackVhostPlugin { vhost, name } => {
            if let Some(p) = state
                .vhosts
                .get_mut(vhost)
                .and_then(|v| v.plugins.get_mut(name))
                && let Some(previous) = p.previous.take()
            {
                p.previous = Some(std::mem::replace(&mut p.current, previous));
            }
        }
        MetaCommand::DeleteVhostPlugin { vhost, name } => {
            if let Some(v) = state.vhosts.get_mut(vhost) {
                v.plugins.remove(name);
            }
        }
        _ => {}
    }
}

/// The commands rebuilding `plugins` of `vhost`: the previous version put first, then the
/// current one over it.
pub(super) fn snapshot(
    vhost: &str,
    plugins: &BTreeMap<String, VhostPluginMeta>,
    out: &mut Vec<MetaCommand>,
) {
    for (name, p) in plugins {
        for sha256 in p.previous.iter().chain(std::iter::once(&p.current)) {
            out.push(MetaCommand::PutVhostPlugin {
                vhost: vhost.to_owned(),
                name: name.clone(),
                sha256: sha256.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(name: &str, sha: char) -> MetaCommand {
        MetaCommand::PutVhostPlugin {
            vhost: "a".into(),
            name: name.into(),
            sha256: sha.to_string().repeat(64),
        }
    }

    fn state() -> MetaState {
        let mut state = MetaState::default();
        state.apply(&MetaCommand::PutVhost {
            name: "a".into(),
            description: String::new(),
            tags: vec![],
        });
        state
    }

    fn run(state: &mut MetaState, command: MetaCommand) -> Result<(), MetaError> {
        state.check(&command)?;
        state.apply(&command);
        Ok(())
    }

    #[test]
    fn put_keeps_the_previous_version_and_rollback_swaps_them() {
        let mut s = state();
        run(&mut s, put("x-foo", 'a')).expect("put");
        let rollback = MetaCommand::RollbackVhostPlugin {
            vhost: "a".into(),
            name: "x-foo".into(),
        };
        assert!(matches!(
            run(&mut s, rollback.clone()),
            Err(MetaError::Invalid(_))
        ));
        run(&mut s, put("x-foo", 'b')).expect("replace");
        run(&mut s, put("x-foo", 'b')).expect("same again");
        let p = &s.vhosts["a"].plugins["x-foo"];
        assert_eq!(
            (
                p.current.as_bytes()[0],
                p.previous.as_ref().map(|h| h.as_bytes()[0])
            ),
            (b'b', Some(b'a'))
        );
        run(&mut s, rollback).expect("rollback");
        let p = s.vhosts["a"].plugins["x-foo"].clone();
        assert_eq!(p.current, "a".repeat(64));
        assert_eq!(p.previous, Some("b".repeat(64)));

        // The snapshot rebuilds the same state.
        let mut rebuilt = MetaState::default();
        for command in s.snapshot() {
            rebuilt.check(&command).expect("snapshot command checks");
            rebuilt.apply(&command);
        }
        assert_eq!(rebuilt, s);

        run(
            &mut s,
            MetaCommand::DeleteVhostPlugin {
                vhost: "a".into(),
                name: "x-foo".into(),
            },
        )
        .expect("delete");
        assert!(s.vhosts["a"].plugins.is_empty());
    }

    #[test]
    fn bad_names_hashes_and_vhosts_are_refused() {
        let mut s = state();
        for name in ["direct", "topic", "foo", ""] {
            assert!(matches!(
                run(&mut s, put(name, 'a')),
                Err(MetaError::Invalid(_))
            ));
        }
        let long = format!("x-{}", "a".repeat(300));
        assert!(run(&mut s, put(&long, 'a')).is_err());
        for sha256 in ["ab".to_owned(), "A".repeat(64), "../".repeat(21) + "a"] {
            let command = MetaCommand::PutVhostPlugin {
                vhost: "a".into(),
                name: "x-foo".into(),
                sha256,
            };
            assert!(matches!(run(&mut s, command), Err(MetaError::Invalid(_))));
        }
        let elsewhere = MetaCommand::PutVhostPlugin {
            vhost: "b".into(),
            name: "x-foo".into(),
            sha256: "a".repeat(64),
        };
        assert!(matches!(
            run(&mut s, elsewhere),
            Err(MetaError::NotFound(_))
        ));
        let missing = MetaCommand::DeleteVhostPlugin {
            vhost: "a".into(),
            name: "x-foo".into(),
        };
        assert!(matches!(run(&mut s, missing), Err(MetaError::NotFound(_))));
    }

    #[test]
    fn a_vhost_put_again_keeps_its_plugins_and_a_deleted_one_loses_them() {
        let mut s = state();
        run(&mut s, put("x-foo", 'a')).expect("put");
        run(
            &mut s,
            MetaCommand::PutVhost {
                name: "a".into(),
                description: "new text".into(),
                tags: vec![],
            },
        )
        .expect("update vhost");
        assert_eq!(s.vhosts["a"].plugins.len(), 1);
        run(&mut s, MetaCommand::DeleteVhost { name: "a".into() }).expect("delete");
        run(
            &mut s,
            MetaCommand::PutVhost {
                name: "a".into(),
                description: String::new(),
                tags: vec![],
            },
        )
        .expect("again");
        assert!(s.vhosts["a"].plugins.is_empty());
    }
}
