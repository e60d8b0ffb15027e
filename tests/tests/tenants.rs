//! Vhosts and users at runtime (issue 11): created and deleted through the broker's metadata
//! commands, durable across restarts, each vhost with its own queues; deleting a vhost closes
//! its connections with 320.

use std::time::Duration;

use bourse::auth::{Algorithm, PasswordHash};
use bourse::meta::MetaCommand;
use bourse_tests::connection::lapin_connect;
use bourse_tests::raw::{reply_code, within};
use bourse_tests::{TestBroker, bounded, eventually};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

fn put_user(name: &str, password: &str) -> MetaCommand {
    MetaCommand::PutUser {
        name: name.into(),
        password_hash: PasswordHash::new(password, Algorithm::Sha256)
            .expect("hash")
            .to_rabbit(),
        hashing_algorithm: "rabbit_password_hashing_sha256".into(),
        tags: vec![],
    }
}

fn put_vhost(name: &str) -> MetaCommand {
    MetaCommand::PutVhost {
        name: name.into(),
        description: String::new(),
        tags: vec![],
    }
}

fn grant_all(user: &str, vhost: &str) -> MetaCommand {
    MetaCommand::SetPermissions {
        user: user.into(),
        vhost: vhost.into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

fn url(broker: &TestBroker, user: &str, password: &str, vhost: &str) -> String {
    broker
        .url()
        .replace("guest:guest@", &format!("{user}:{password}@"))
        .replace("/%2f", &format!("/{vhost}"))
}

async fn declare_count(conn: &lapin::Connection, queue: &str) -> u32 {
    let ch = within(conn.create_channel()).await.expect("channel");
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("declare")
    .message_count()
}

#[tokio::test]
async fn a_vhost_and_user_created_at_runtime_are_isolated_and_durable() {
    bounded(Duration::from_secs(60), async {
        let mut broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [
            put_vhost("tenant-a"),
            put_user("alice", "pw"),
            grant_all("alice", "tenant-a"),
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let alice = lapin_connect(&url(&broker, "alice", "pw", "tenant-a"))
            .await
            .expect("alice opens her vhost");
        declare_count(&alice, "jobs").await;
        let ch = within(alice.create_channel()).await.expect("channel");
        within(ch.basic_publish(
            "".into(),
            "jobs".into(),
            Default::default(),
            b"in tenant-a",
            lapin::BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .expect("publish");
        // The same name in `/` is another queue.
        let guest = lapin_connect(broker.url()).await.expect("guest");
        assert_eq!(declare_count(&guest, "jobs").await, 0);
        // alice has no permissions in `/`.
        match lapin_connect(&url(&broker, "alice", "pw", "%2f")).await {
            Ok(_) => panic!("alice opened /"),
            Err(e) => assert_eq!(reply_code(&e), Some(530), "{e}"),
        }
        let _ = alice.close(200, "bye".into()).await;
        let _ = guest.close(200, "bye".into()).await;
        broker.restart().await;
        let alice = lapin_connect(&url(&broker, "alice", "pw", "tenant-a"))
            .await
            .expect("alice and her vhost survive a restart");
        assert_eq!(declare_count(&alice, "jobs").await, 1, "her message too");
    })
    .await;
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_and_removes_it() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        handle.execute(put_vhost("doomed")).await.expect("vhost");
        handle
            .execute(grant_all("guest", "doomed"))
            .await
            .expect("grant");
        let conn = lapin_connect(&url(&broker, "guest", "guest", "doomed"))
            .await
            .expect("open");
        declare_count(&conn, "q").await;
        handle
            .execute(MetaCommand::DeleteVhost {
                name: "doomed".into(),
            })
            .await
            .expect("delete");
        assert!(
            eventually(Duration::from_secs(5), || !conn.status().connected()).await,
            "the vhost's connection was closed"
        );
        match lapin_connect(&url(&broker, "guest", "guest", "doomed")).await {
            Ok(_) => panic!("opened a deleted vhost"),
            Err(e) => {
                assert_eq!(reply_code(&e), Some(530), "{e}");
                assert!(e.to_string().contains("vhost doomed not found"), "{e}");
            }
        }
        assert!(
            handle
                .execute(MetaCommand::DeleteVhost {
                    name: "doomed".into()
                })
                .await
                .is_err(),
            "a second delete is refused"
        );
        // Recreated, it is empty.
        handle.execute(put_vhost("doomed")).await.expect("vhost");
        handle
            .execute(grant_all("guest", "doomed"))
            .await
            .expect("grant");
        let conn = lapin_connect(&url(&broker, "guest", "guest", "doomed"))
            .await
            .expect("open");
        assert_eq!(declare_count(&conn, "q").await, 0);
    })
    .await;
}

#[tokio::test]
async fn vhost_limits_change_at_runtime_and_survive_a_restart() {
    bounded(Duration::from_secs(60), async {
        let mut broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        let limits = |value: i64| MetaCommand::SetVhostLimits {
            vhost: "/".into(),
            limits: [("max-queues".to_owned(), value)].into_iter().collect(),
        };
        handle.execute(limits(1)).await.expect("limit");
        assert!(
            handle
                .execute(MetaCommand::SetVhostLimits {
                    vhost: "/".into(),
                    limits: [("max-nonsense".to_owned(), 1)].into_iter().collect(),
                })
                .await
                .is_err(),
            "unknown limits are refused"
        );
        let conn = lapin_connect(broker.url()).await.expect("connect");
        declare_count(&conn, "first").await;
        let ch = within(conn.create_channel()).await.expect("channel");
        let second = within(ch.queue_declare(
            "second".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await;
        assert_eq!(
            second.as_ref().err().and_then(reply_code),
            Some(406),
            "{second:?}"
        );
        let _ = conn.close(200, "bye".into()).await;
        broker.restart().await;
        let conn = lapin_connect(broker.url()).await.expect("connect");
        let ch = within(conn.create_channel()).await.expect("channel");
        let again = within(ch.queue_declare(
            "second".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await;
        assert_eq!(
            again.as_ref().err().and_then(reply_code),
            Some(406),
            "kept: {again:?}"
        );
        let handle = broker.handle().expect("in-process");
        handle.execute(limits(-1)).await.expect("lift the limit");
        let ch = within(conn.create_channel()).await.expect("channel");
        within(ch.queue_declare(
            "second".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("no limit any more");
    })
    .await;
}
