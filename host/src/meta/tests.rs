use super::log::{COMPACT_MIN_RECORDS, FILE_NAME, HEADER};
use super::*;
use crate::store::RecordLog;

fn user(name: &str) -> MetaCommand {
    let hash = crate::auth::PasswordHash::new("pw", crate::auth::Algorithm::Sha256)
        .expect("hash")
        .to_rabbit();
    MetaCommand::PutUser {
        name: name.into(),
        password_hash: hash,
        hashing_algorithm: "rabbit_password_hashing_sha256".into(),
        tags: vec!["management".into()],
    }
}

fn vhost(name: &str) -> MetaCommand {
    MetaCommand::PutVhost {
        name: name.into(),
        description: String::new(),
        tags: vec![],
    }
}

fn grant(user: &str, vhost: &str) -> MetaCommand {
    MetaCommand::SetPermissions {
        user: user.into(),
        vhost: vhost.into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: "^q".into(),
    }
}

#[test]
fn commands_are_checked_logged_and_replayed() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let meta = Meta::open(dir.path(), &[vhost("/"), user("guest")]).expect("open");
        meta.execute(vhost("tenant-a")).expect("vhost");
        meta.execute(user("alice")).expect("user");
        meta.execute(grant("alice", "tenant-a")).expect("grant");
        assert!(matches!(
            meta.execute(grant("alice", "nowhere")),
            Err(MetaError::NotFound(_))
        ));
        assert!(matches!(
            meta.execute(MetaCommand::SetPermissions {
                user: "alice".into(),
                vhost: "/".into(),
                configure: "(".into(),
                write: "".into(),
                read: "".into(),
            }),
            Err(MetaError::Invalid(_))
        ));
        assert!(meta.execute(vhost(&"v".repeat(300))).is_err());
    }
    // Reopened: the seed is not applied again (the log is not empty) and everything is back.
    let meta = Meta::open(dir.path(), &[vhost("seed-only")]).expect("reopen");
    let state = meta.state();
    assert_eq!(state.vhosts.keys().collect::<Vec<_>>(), ["/", "tenant-a"]);
    assert!(state.users.contains_key("alice") && state.users.contains_key("guest"));
    assert_eq!(
        state.permissions[&("alice".to_owned(), "tenant-a".to_owned())].read,
        "^q"
    );
}

#[test]
fn deleting_a_vhost_or_user_takes_its_permissions_with_it() {
    let dir = tempfile::tempdir().expect("dir");
    let meta =
        Meta::open(dir.path(), &[vhost("/"), vhost("t"), user("a"), user("b")]).expect("open");
    meta.execute(grant("a", "t")).expect("grant");
    meta.execute(grant("b", "t")).expect("grant");
    meta.execute(grant("b", "/")).expect("grant");
    meta.execute(MetaCommand::SetTopicPermissions {
        user: "a".into(),
        vhost: "t".into(),
        exchange: "logs".into(),
        write: "^a".into(),
        read: ".*".into(),
    })
    .expect("topic");
    meta.execute(MetaCommand::DeleteVhost { name: "t".into() })
        .expect("delete vhost");
    let state = meta.state();
    assert_eq!(state.permissions.len(), 1, "only b on / is left");
    assert!(state.topic_permissions.is_empty());
    meta.execute(MetaCommand::DeleteUser { name: "b".into() })
        .expect("delete user");
    assert!(meta.state().permissions.is_empty());
    assert!(matches!(
        meta.execute(MetaCommand::DeleteUser { name: "b".into() }),
        Err(MetaError::NotFound(_))
    ));
}

#[test]
fn a_long_log_is_compacted_into_a_snapshot() {
    let dir = tempfile::tempdir().expect("dir");
    let meta = Meta::open(dir.path(), &[vhost("/"), user("a")]).expect("open");
    for i in 0..(COMPACT_MIN_RECORDS * 2) {
        let read = format!("^r{i}");
        meta.execute(MetaCommand::SetPermissions {
            user: "a".into(),
            vhost: "/".into(),
            configure: "".into(),
            write: "".into(),
            read,
        })
        .expect("grant");
    }
    let records = meta.records();
    assert!(
        records < COMPACT_MIN_RECORDS + 10,
        "{records} records after compaction"
    );
    drop(meta);
    let meta = Meta::open(dir.path(), &[]).expect("reopen");
    let last = format!("^r{}", COMPACT_MIN_RECORDS * 2 - 1);
    assert_eq!(
        meta.state().permissions[&("a".to_owned(), "/".to_owned())].read,
        last
    );
}

#[test]
fn a_record_that_does_not_decode_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let (mut log, _) = RecordLog::open(dir.path(), FILE_NAME, HEADER).expect("log");
        log.append_all(&[b"{\"op\":\"no_such_op\"}".to_vec()])
            .expect("append");
    }
    assert!(Meta::open(dir.path(), &[]).is_err());
}
