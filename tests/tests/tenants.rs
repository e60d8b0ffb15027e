//! Vhosts and users at runtime (issue 11): created and deleted through the broker's metadata
//! commands, durable across restarts, each vhost with its own queues; deleting a vhost closes
//! its connections with 320.

use std::time::Duration;

use bourse::meta::MetaCommand;
use bourse_tests::connection::lapin_connect;
use bourse_tests::process::BrokerProcess;
use bourse_tests::raw::{Handshake, RawClient, reply_code, within};
use bourse_tests::tenancy::{grant_all, limits, put_user, put_vhost, user_url, vhost_url};
use bourse_tests::{TestBroker, bounded, eventually};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

fn url(broker: &TestBroker, user: &str, password: &str, vhost: &str) -> String {
    user_url(broker.url(), user, password, vhost)
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
            put_user("alice", "pw", &[]),
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

fn raw_login(user: &str, password: &str, vhost: &str) -> Handshake {
    Handshake {
        user: user.into(),
        password: password.into(),
        vhost: vhost.into(),
        ..Handshake::default()
    }
}

#[tokio::test]
async fn deleting_a_user_or_revoking_its_access_closes_its_connections_with_320() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [
            put_vhost("t"),
            put_user("alice", "pw", &[]),
            grant_all("alice", "t"),
            grant_all("alice", "/"),
            put_user("bob", "pw", &[]),
            grant_all("bob", "t"),
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let (mut alice_t, _) =
            RawClient::open_with(broker.addr(), raw_login("alice", "pw", "t")).await;
        let (mut alice_root, _) =
            RawClient::open_with(broker.addr(), raw_login("alice", "pw", "/")).await;
        let bob = lapin_connect(&url(&broker, "bob", "pw", "t"))
            .await
            .expect("bob");

        // Revoking alice's access to `t` closes only that connection.
        handle
            .execute(MetaCommand::ClearPermissions {
                user: "alice".into(),
                vhost: "t".into(),
            })
            .await
            .expect("clear");
        let closed = alice_t.expect_connection_close_code(320).await;
        assert_eq!(
            closed.text, "CONNECTION_FORCED - access to vhost 't' was revoked for user 'alice'",
            "{closed:?}"
        );
        assert!(
            !alice_root.wait_closed(Duration::from_millis(300)).await,
            "her connection to / stays"
        );

        // Deleting her closes the rest; bob is untouched.
        handle
            .execute(MetaCommand::DeleteUser {
                name: "alice".into(),
            })
            .await
            .expect("delete");
        let closed = alice_root.expect_connection_close_code(320).await;
        assert_eq!(
            closed.text, "CONNECTION_FORCED - user 'alice' was deleted",
            "{closed:?}"
        );
        assert!(bob.status().connected());
        declare_count(&bob, "still-here").await;
        match lapin_connect(&url(&broker, "alice", "pw", "%2f")).await {
            Ok(_) => panic!("a deleted user logged in"),
            Err(e) => assert_eq!(reply_code(&e), Some(403), "{e}"),
        }
    })
    .await;
}

#[tokio::test]
async fn changed_permissions_apply_to_open_connections_at_once() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [
            put_vhost("t"),
            put_user("carol", "pw", &[]),
            grant_all("carol", "t"),
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let carol = lapin_connect(&url(&broker, "carol", "pw", "t"))
            .await
            .expect("carol");
        declare_count(&carol, "before").await;
        handle
            .execute(MetaCommand::SetPermissions {
                user: "carol".into(),
                vhost: "t".into(),
                configure: "^mine-.*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })
            .await
            .expect("narrow");
        // The same connection, a new channel: the narrower grant is in force.
        let ch = within(carol.create_channel()).await.expect("channel");
        let refused = within(ch.queue_declare(
            "after".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await;
        assert_eq!(
            refused.as_ref().err().and_then(reply_code),
            Some(403),
            "{refused:?}"
        );
        declare_count(&carol, "mine-after").await;
        // Widened again: allowed again, still without reconnecting.
        handle
            .execute(grant_all("carol", "t"))
            .await
            .expect("widen");
        declare_count(&carol, "after").await;
    })
    .await;
}

#[tokio::test]
async fn user_limits_change_at_runtime_and_survive_a_restart() {
    bounded(Duration::from_secs(60), async {
        let mut broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [put_user("dave", "pw", &[]), grant_all("dave", "/")] {
            handle.execute(command).await.expect("meta command");
        }
        let dave_url = url(&broker, "dave", "pw", "%2f");
        let first = lapin_connect(&dave_url).await.expect("first");
        handle
            .execute(MetaCommand::SetUserLimits {
                user: "dave".into(),
                limits: limits(&[("max-connections", 1), ("max-channels", 1)]),
            })
            .await
            .expect("limits");
        assert!(
            handle
                .execute(MetaCommand::SetUserLimits {
                    user: "dave".into(),
                    limits: limits(&[("max-queues", 1)]),
                })
                .await
                .is_err(),
            "unknown user limits are refused"
        );
        match lapin_connect(&dave_url).await {
            Ok(_) => panic!("a second connection past max-connections 1"),
            Err(e) => {
                assert_eq!(reply_code(&e), Some(530), "{e}");
                assert!(e.to_string().contains("user connection limit (1)"), "{e}");
            }
        }
        // The open connection gets the channel limit too.
        let _ch = within(first.create_channel()).await.expect("one channel");
        let second = within(first.create_channel()).await;
        assert_eq!(
            second.as_ref().err().and_then(reply_code),
            Some(530),
            "{second:?}"
        );
        drop(first);
        broker.restart().await;
        let dave_url = url(&broker, "dave", "pw", "%2f");
        let _first = lapin_connect(&dave_url).await.expect("first after restart");
        match lapin_connect(&dave_url).await {
            Ok(_) => panic!("the limit did not survive the restart"),
            Err(e) => assert_eq!(reply_code(&e), Some(530), "{e}"),
        }
        let handle = broker.handle().expect("in-process");
        handle
            .execute(MetaCommand::SetUserLimits {
                user: "dave".into(),
                limits: limits(&[("max-connections", -1)]),
            })
            .await
            .expect("lift");
        lapin_connect(&dave_url)
            .await
            .expect("no connection limit any more");
    })
    .await;
}

/// Publishes `count` messages of `size` bytes to queue `queue` and waits for their confirms.
async fn publish_confirmed(conn: &lapin::Connection, queue: &str, count: usize, size: usize) {
    let ch = bourse_tests::confirm_channel(conn).await;
    let body = vec![b'x'; size];
    let mut confirms = Vec::with_capacity(count);
    for _ in 0..count {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                &body,
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

fn state_of(handle: &bourse::BrokerHandle, user: &str) -> Vec<&'static str> {
    handle
        .connections()
        .iter()
        .filter(|c| c.user == user)
        .map(|c| c.state().as_str())
        .collect()
}

#[tokio::test]
async fn a_vhost_publish_rate_slows_its_publishers_only() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [
            put_vhost("metered"),
            put_user("erin", "pw", &[]),
            grant_all("erin", "metered"),
            MetaCommand::SetVhostLimits {
                vhost: "metered".into(),
                limits: limits(&[("max-publish-rate", 200)]),
            },
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let erin = lapin_connect(&url(&broker, "erin", "pw", "metered"))
            .await
            .expect("erin");
        declare_count(&erin, "q").await;
        let started = std::time::Instant::now();
        let metered = tokio::spawn(async move {
            // A second's burst (200), then 200/s. The wait comes after the read turn that
            // went over (confirms of that turn go first), and a turn holds up to 341
            // publishes: 1,000 take at least (1,000 - 200 - 341) / 200 = 2.3 s.
            publish_confirmed(&erin, "q", 1_000, 16).await;
            started.elapsed()
        });
        // Meanwhile her connection shows `flow`, and guest publishes in `/` unhindered.
        let mut flow_seen = false;
        for _ in 0..100 {
            if state_of(handle, "erin").contains(&"flow") {
                flow_seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(flow_seen, "the metered connection was never in flow");
        let guest = lapin_connect(broker.url()).await.expect("guest");
        declare_count(&guest, "free").await;
        publish_confirmed(&guest, "free", 2_000, 16).await;
        assert!(
            !metered.is_finished(),
            "2,000 publishes in / finished after the metered 1,000 (the rate leaked across vhosts?)"
        );
        let took = metered.await.expect("metered publisher");
        assert!(
            took >= Duration::from_millis(2_300),
            "1,000 at 200/s took {took:?}"
        );
        eprintln!("1,000 publishes at max-publish-rate 200 took {took:?}");
    })
    .await;
}

#[tokio::test]
async fn max_queued_bytes_blocks_the_vhosts_publishers_until_its_queues_drain() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [
            put_vhost("small"),
            put_user("frank", "pw", &[]),
            grant_all("frank", "small"),
            MetaCommand::SetVhostLimits {
                vhost: "small".into(),
                limits: limits(&[("max-queued-bytes", 10_000)]),
            },
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let frank = lapin_connect(&url(&broker, "frank", "pw", "small"))
            .await
            .expect("frank");
        declare_count(&frank, "buffer").await;
        publish_confirmed(&frank, "buffer", 12, 1_000).await;
        let small = handle.shared().vhost("small").expect("vhost");
        assert!(
            eventually(Duration::from_secs(5), || small.admission().is_full()).await,
            "12,000 queued bytes over a 10,000 ceiling"
        );
        // A publish now blocks its connection (as RabbitMQ's alarms: `blocked` once it
        // publishes); another vhost is not blocked.
        let frank = std::sync::Arc::new(frank);
        let waiting = {
            let frank = frank.clone();
            tokio::spawn(async move { publish_confirmed(&frank, "buffer", 1, 1_000).await })
        };
        assert!(
            eventually(Duration::from_secs(5), || state_of(handle, "frank")
                .contains(&"blocked"))
            .await,
            "the publisher is shown blocked"
        );
        let guest = lapin_connect(broker.url()).await.expect("guest");
        declare_count(&guest, "elsewhere").await;
        publish_confirmed(&guest, "elsewhere", 100, 1_000).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a blocked vhost's publish was confirmed"
        );
        // A consumer in the vhost (its own connection) drains it: publishing resumes.
        let drainer = lapin_connect(&url(&broker, "frank", "pw", "small"))
            .await
            .expect("drainer");
        let ch = within(drainer.create_channel()).await.expect("channel");
        within(ch.queue_purge("buffer".into(), Default::default()))
            .await
            .expect("purge");
        within(waiting).await.expect("resumed after the drain");
        assert!(
            eventually(Duration::from_secs(5), || state_of(handle, "frank")
                .iter()
                .all(|s| *s == "running"))
            .await
        );
    })
    .await;
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_blocked_publishers_too() {
    bounded(Duration::from_secs(60), async {
        let broker = TestBroker::start().await;
        let Some(handle) = broker.handle() else {
            return;
        };
        for command in [
            put_vhost("doomed"),
            put_user("gina", "pw", &[]),
            grant_all("gina", "doomed"),
            MetaCommand::SetVhostLimits {
                vhost: "doomed".into(),
                limits: limits(&[("max-queued-bytes", 10_000)]),
            },
        ] {
            handle.execute(command).await.expect("meta command");
        }
        let gina = lapin_connect(&url(&broker, "gina", "pw", "doomed"))
            .await
            .expect("gina");
        declare_count(&gina, "buffer").await;
        publish_confirmed(&gina, "buffer", 12, 1_000).await;
        let doomed = handle.shared().vhost("doomed").expect("vhost");
        assert!(eventually(Duration::from_secs(5), || doomed.admission().is_full()).await);
        drop(doomed);
        // A raw publisher: blocked (not reading) at the read turn after it published into
        // the full vhost, here its second publish.
        let (mut raw, _) =
            RawClient::open_with(broker.addr(), raw_login("gina", "pw", "doomed")).await;
        raw.open_channel(1).await;
        for body in [&b"one more"[..], b"and another"] {
            raw.publish(1, "", "buffer", body).await.expect("publish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            eventually(Duration::from_secs(5), || state_of(handle, "gina")
                .contains(&"blocked"))
            .await,
            "the publisher is blocked"
        );
        handle
            .execute(MetaCommand::DeleteVhost {
                name: "doomed".into(),
            })
            .await
            .expect("delete");
        // Closed at once, blocked or not, with the vhost's reason.
        let closed = within(async { raw.expect_connection_close_code(320).await }).await;
        assert_eq!(
            closed.text, "CONNECTION_FORCED - vhost 'doomed' is deleted",
            "{closed:?}"
        );
        assert!(
            eventually(Duration::from_secs(5), || state_of(handle, "gina")
                .is_empty())
            .await,
            "a connection of the deleted vhost is still open: {:?}",
            state_of(handle, "gina")
        );
    })
    .await;
}

#[tokio::test]
async fn vhosts_users_grants_and_limits_survive_a_sigkill_of_the_broker_process() {
    bounded(Duration::from_secs(120), async {
        // The binary has no metadata door yet (the management API comes next), so an
        // in-process broker writes the metadata into the process's data directory; the
        // process then restarts from it, and again after a SIGKILL.
        let mut process = BrokerProcess::start().await;
        process.kill();
        {
            let data_dir = process.data_dir().to_owned();
            let mut broker = TestBroker::start_with(|cfg| cfg.data_dir = data_dir).await;
            let handle = broker.handle().expect("in-process broker");
            for command in [
                put_vhost("kept"),
                put_user("ulla", "pw", &[]),
                grant_all("ulla", "kept"),
                MetaCommand::SetVhostLimits {
                    vhost: "kept".into(),
                    limits: limits(&[("max-queues", 1)]),
                },
            ] {
                handle.execute(command).await.expect("meta command");
            }
            broker.shutdown().await;
        }
        for round in ["restart", "after-sigkill"] {
            process.restart().await;
            let base = process.url();
            let ulla = lapin_connect(&user_url(&base, "ulla", "pw", "kept"))
                .await
                .unwrap_or_else(|e| panic!("{round}: ulla logs in: {e}\n{}", process.log_tail()));
            let ch = within(ulla.create_channel()).await.expect("channel");
            within(ch.queue_declare("one".into(), Default::default(), FieldTable::default()))
                .await
                .expect("the first queue");
            let ch = within(ulla.create_channel()).await.expect("channel");
            let second =
                within(ch.queue_declare("two".into(), Default::default(), FieldTable::default()))
                    .await;
            match second {
                Ok(_) => panic!("{round}: max-queues 1 was forgotten"),
                Err(e) => assert_eq!(reply_code(&e), Some(406), "{round}: {e}"),
            }
            // guest has no permissions in the vhost.
            match lapin_connect(&vhost_url(&base, "kept")).await {
                Ok(_) => panic!("{round}: guest opened a vhost it has no grant in"),
                Err(e) => assert_eq!(reply_code(&e), Some(530), "{round}: {e}"),
            }
            drop(ulla);
        }
    })
    .await;
}
