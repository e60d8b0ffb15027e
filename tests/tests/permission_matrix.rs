//! The permission matrix (issue 11): every AMQP operation that RabbitMQ checks, tried by a user
//! with every permission and by users lacking exactly one of configure, write and read. An
//! operation must succeed for every user who has what it needs and be refused with 403
//! ACCESS_REFUSED, naming the resource RabbitMQ names, for every user who lacks one of them.
//! Also: the `user_id` property against the logged-in user, topic permissions, and vhost
//! access.

use std::time::Duration;

use bourse::config::{PermissionSeed, TopicPermissionSeed, UserSeed};
use bourse_tests::connection::lapin_connect;
use bourse_tests::raw::{reply_code, within};
use bourse_tests::{TestBroker, bounded};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Perm {
    Configure,
    Write,
    Read,
}

/// The users: `full` has everything in `/`, `no-configure`, `no-write` and `no-read` all but
/// one permission (its expression is empty, matching nothing).
const USERS: [(&str, Option<Perm>); 4] = [
    ("full", None),
    ("no-configure", Some(Perm::Configure)),
    ("no-write", Some(Perm::Write)),
    ("no-read", Some(Perm::Read)),
];

async fn start() -> TestBroker {
    TestBroker::start_with(|cfg| {
        cfg.users = vec![UserSeed::clear("guest", "guest")];
        cfg.permissions = vec![PermissionSeed {
            user: "guest".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }];
        for (user, lacking) in USERS {
            cfg.users.push(UserSeed::clear(user, "pw"));
            let allow = |p: Perm| if lacking == Some(p) { "" } else { ".*" };
            cfg.permissions.push(PermissionSeed {
                user: user.into(),
                vhost: "/".into(),
                configure: allow(Perm::Configure).into(),
                write: allow(Perm::Write).into(),
                read: allow(Perm::Read).into(),
            });
        }
        cfg.users.push(UserSeed::clear("tess", "pw"));
        cfg.permissions.push(PermissionSeed {
            user: "tess".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        });
        cfg.topic_permissions = vec![TopicPermissionSeed {
            user: "tess".into(),
            vhost: "/".into(),
            exchange: "logs".into(),
            write: "^{username}\\.".into(),
            read: "^(shared|{username})\\.".into(),
        }];
    })
    .await
}

async fn login(broker: &TestBroker, user: &str) -> Connection {
    let url = broker.url().replace("guest:guest@", &format!("{user}:pw@"));
    lapin_connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e}"))
}

fn args(key: &str, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(key.into(), AMQPValue::LongString(value.into()));
    t
}

/// One operation of the matrix: what it needs, and which resource a refusal names for each
/// missing permission (`{u}` is replaced by the user's name, which makes names unique).
struct Case {
    op: &'static str,
    needs: &'static [(Perm, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        op: "exchange.declare",
        needs: &[(Perm::Configure, "exchange 'x.{u}'")],
    },
    Case {
        op: "exchange.declare alternate-exchange",
        needs: &[
            (Perm::Configure, "exchange 'xa.{u}'"),
            (Perm::Write, "exchange 'ae'"),
            (Perm::Read, "exchange 'xa.{u}'"),
        ],
    },
    Case {
        op: "exchange.declare passive",
        needs: &[],
    },
    Case {
        op: "exchange.delete",
        needs: &[(Perm::Configure, "exchange 'del.{u}'")],
    },
    Case {
        op: "exchange.bind",
        needs: &[
            (Perm::Write, "exchange 'dst'"),
            (Perm::Read, "exchange 'src'"),
        ],
    },
    Case {
        op: "exchange.unbind",
        needs: &[
            (Perm::Write, "exchange 'dst'"),
            (Perm::Read, "exchange 'src'"),
        ],
    },
    Case {
        op: "queue.declare",
        needs: &[(Perm::Configure, "queue 'q.{u}'")],
    },
    Case {
        op: "queue.declare x-dead-letter-exchange",
        needs: &[
            (Perm::Configure, "queue 'qd.{u}'"),
            (Perm::Write, "exchange 'dlx'"),
            (Perm::Read, "queue 'qd.{u}'"),
        ],
    },
    Case {
        op: "queue.declare passive",
        needs: &[],
    },
    Case {
        op: "queue.delete",
        needs: &[(Perm::Configure, "queue 'qdel.{u}'")],
    },
    Case {
        op: "queue.purge",
        needs: &[(Perm::Read, "queue 'shared'")],
    },
    Case {
        op: "queue.bind",
        needs: &[
            (Perm::Write, "queue 'shared'"),
            (Perm::Read, "exchange 'src'"),
        ],
    },
    Case {
        op: "queue.unbind",
        needs: &[
            (Perm::Write, "queue 'shared'"),
            (Perm::Read, "exchange 'src'"),
        ],
    },
    Case {
        op: "basic.publish",
        needs: &[(Perm::Write, "exchange 'src'")],
    },
    Case {
        op: "basic.publish default exchange",
        needs: &[(Perm::Write, "exchange 'amq.default'")],
    },
    Case {
        op: "basic.get",
        needs: &[(Perm::Read, "queue 'shared'")],
    },
    Case {
        op: "basic.consume",
        needs: &[(Perm::Read, "queue 'shared'")],
    },
];

/// What guest sets up before anyone tries: the shared objects, and per user the ones its
/// delete operations remove.
async fn setup(admin: &Channel) {
    for (name, kind) in [
        ("src", ExchangeKind::Direct),
        ("dst", ExchangeKind::Direct),
        ("dlx", ExchangeKind::Fanout),
        ("ae", ExchangeKind::Fanout),
        ("logs", ExchangeKind::Topic),
    ] {
        within(admin.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("setup exchange");
    }
    within(admin.queue_declare(
        "shared".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("setup queue");
    for (user, _) in USERS {
        within(admin.exchange_declare(
            format!("del.{user}").as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("setup exchange");
        within(admin.queue_declare(
            format!("qdel.{user}").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .expect("setup queue");
    }
}

/// Runs `op` as the user of `ch` (named `u`); Ok when the broker accepted it.
async fn run(ch: &Channel, op: &str, u: &str) -> Result<(), lapin::Error> {
    let name = |base: &str| format!("{base}.{u}");
    match op {
        "exchange.declare" => {
            within(ch.exchange_declare(
                name("x").as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ))
            .await
        }
        "exchange.declare alternate-exchange" => {
            within(ch.exchange_declare(
                name("xa").as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                args("alternate-exchange", "ae"),
            ))
            .await
        }
        "exchange.declare passive" => {
            within(ch.exchange_declare(
                "src".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ))
            .await
        }
        "exchange.delete" => {
            within(ch.exchange_delete(
                name("del").as_str().into(),
                ExchangeDeleteOptions::default(),
            ))
            .await
        }
        "exchange.bind" => {
            within(ch.exchange_bind(
                "dst".into(),
                "src".into(),
                name("k").as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ))
            .await
        }
        "exchange.unbind" => {
            within(ch.exchange_unbind(
                "dst".into(),
                "src".into(),
                name("k").as_str().into(),
                ExchangeUnbindOptions::default(),
                FieldTable::default(),
            ))
            .await
        }
        "queue.declare" => within(ch.queue_declare(
            name("q").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .map(|_| ()),
        "queue.declare x-dead-letter-exchange" => within(ch.queue_declare(
            name("qd").as_str().into(),
            QueueDeclareOptions::default(),
            args("x-dead-letter-exchange", "dlx"),
        ))
        .await
        .map(|_| ()),
        "queue.declare passive" => within(ch.queue_declare(
            "shared".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .map(|_| ()),
        "queue.delete" => {
            within(ch.queue_delete(name("qdel").as_str().into(), QueueDeleteOptions::default()))
                .await
                .map(|_| ())
        }
        "queue.purge" => within(ch.queue_purge("shared".into(), QueuePurgeOptions::default()))
            .await
            .map(|_| ()),
        "queue.bind" => {
            within(ch.queue_bind(
                "shared".into(),
                "src".into(),
                name("k").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
        }
        "queue.unbind" => {
            within(ch.queue_unbind(
                "shared".into(),
                "src".into(),
                name("k").as_str().into(),
                FieldTable::default(),
            ))
            .await
        }
        "basic.publish" => publish(ch, "src", "k", BasicProperties::default()).await,
        "basic.publish default exchange" => {
            publish(ch, "", "shared", BasicProperties::default()).await
        }
        "basic.get" => within(ch.basic_get("shared".into(), BasicGetOptions { no_ack: true }))
            .await
            .map(|_| ()),
        "basic.consume" => within(ch.basic_consume(
            "shared".into(),
            name("c").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .map(|_| ()),
        other => panic!("no operation {other}"),
    }
}

/// A publish on a confirming channel: a refusal closes the channel, which the confirm shows.
async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    properties: BasicProperties,
) -> Result<(), lapin::Error> {
    within(ch.confirm_select(Default::default())).await?;
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"m",
        properties,
    ))
    .await?;
    within(confirm).await.map(|_| ())
}

#[tokio::test]
async fn every_operation_needs_exactly_rabbitmqs_permissions() {
    bounded(Duration::from_secs(120), async {
        let broker = start().await;
        let admin_conn = lapin_connect(broker.url()).await.expect("guest");
        let admin = within(admin_conn.create_channel()).await.expect("channel");
        setup(&admin).await;
        // Bindings the unbind cases remove.
        for (user, _) in USERS {
            let key = format!("k.{user}");
            within(admin.exchange_bind(
                "dst".into(),
                "src".into(),
                key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("setup e2e binding");
            within(admin.queue_bind(
                "shared".into(),
                "src".into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .expect("setup binding");
        }
        let mut checked = 0;
        for (user, lacking) in USERS {
            let conn = login(&broker, user).await;
            for case in CASES {
                let ch = within(conn.create_channel()).await.expect("channel");
                let result = run(&ch, case.op, user).await;
                let denied = lacking.and_then(|p| case.needs.iter().find(|(need, _)| *need == p));
                match (denied, result) {
                    (None, Ok(())) => {}
                    (None, Err(e)) => panic!("{user}: {} was refused: {e}", case.op),
                    (Some((perm, _)), Ok(())) => {
                        panic!("{user}: {} succeeded without {perm:?}", case.op)
                    }
                    (Some((_, resource)), Err(e)) => {
                        assert_eq!(reply_code(&e), Some(403), "{user}: {}: {e}", case.op);
                        let text = format!(
                            "access to {} in vhost '/' refused for user '{user}'",
                            resource.replace("{u}", user)
                        );
                        assert!(
                            e.to_string().contains(&text),
                            "{user}: {}: expected '{text}' in: {e}",
                            case.op
                        );
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, CASES.len() * USERS.len());
    })
    .await;
}

#[tokio::test]
async fn user_id_must_be_the_logged_in_user() {
    bounded(Duration::from_secs(30), async {
        let broker = start().await;
        let conn = login(&broker, "full").await;
        let ch = within(conn.create_channel()).await.expect("channel");
        publish(
            &ch,
            "",
            "nowhere",
            BasicProperties::default().with_user_id(ShortString::from("full")),
        )
        .await
        .expect("its own name");
        let ch = within(conn.create_channel()).await.expect("channel");
        let error = publish(
            &ch,
            "",
            "nowhere",
            BasicProperties::default().with_user_id(ShortString::from("guest")),
        )
        .await
        .expect_err("another user's name was accepted");
        assert_eq!(reply_code(&error), Some(406), "{error}");
        assert!(
            error
                .to_string()
                .contains("user_id property set to 'guest' but authenticated user was 'full'"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn topic_permissions_check_publish_and_bind_keys() {
    bounded(Duration::from_secs(30), async {
        let broker = start().await;
        let admin_conn = lapin_connect(broker.url()).await.expect("guest");
        let admin = within(admin_conn.create_channel()).await.expect("channel");
        setup(&admin).await;
        let conn = login(&broker, "tess").await;
        let try_publish = |key: &'static str| {
            let conn = &conn;
            async move {
                let ch = within(conn.create_channel()).await.expect("channel");
                publish(&ch, "logs", key, BasicProperties::default()).await
            }
        };
        let try_bind = |key: &'static str| {
            let conn = &conn;
            async move {
                let ch = within(conn.create_channel()).await.expect("channel");
                within(ch.queue_bind(
                    "shared".into(),
                    "logs".into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ))
                .await
            }
        };
        try_publish("tess.info").await.expect("write: {username}.*");
        let refused = try_publish("other.info").await.expect_err("foreign key");
        assert_eq!(reply_code(&refused), Some(403), "{refused}");
        assert!(
            refused.to_string().contains(
                "access to topic 'other.info' in exchange 'logs' in vhost '/' refused for user 'tess'"
            ),
            "{refused}"
        );
        try_bind("shared.#").await.expect("read: shared.*");
        try_bind("tess.*").await.expect("read: {username}.*");
        let refused = try_bind("other.#").await.expect_err("foreign binding key");
        assert_eq!(reply_code(&refused), Some(403), "{refused}");
        // Topic permissions concern topic exchanges only.
        try_publish_direct(&conn).await;
    })
    .await;
}

async fn try_publish_direct(conn: &Connection) {
    let ch = within(conn.create_channel()).await.expect("channel");
    publish(&ch, "src", "other.info", BasicProperties::default())
        .await
        .expect("a direct exchange ignores topic permissions");
}

#[tokio::test]
async fn vhost_access_needs_permissions_in_that_vhost() {
    bounded(Duration::from_secs(30), async {
        let broker = start().await;
        let handle = broker.handle().expect("in-process broker");
        handle
            .execute(bourse_tests::tenancy::put_vhost("other"))
            .await
            .expect("vhost");
        let url = |vhost: &str| bourse_tests::tenancy::user_url(broker.url(), "full", "pw", vhost);
        let error = match lapin_connect(&url("other")).await {
            Ok(_) => panic!("full opened a vhost it has no permissions in"),
            Err(e) => e,
        };
        assert_eq!(reply_code(&error), Some(530), "{error}");
        assert!(
            error
                .to_string()
                .contains("access to vhost 'other' refused for user 'full'"),
            "{error}"
        );
        let missing = match lapin_connect(&url("missing")).await {
            Ok(_) => panic!("a vhost that does not exist opened"),
            Err(e) => e,
        };
        assert_eq!(reply_code(&missing), Some(530), "{missing}");
        handle
            .execute(bourse_tests::tenancy::grant_all("full", "other"))
            .await
            .expect("grant");
        lapin_connect(&url("other")).await.expect("granted");
    })
    .await;
}
