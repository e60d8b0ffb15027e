//! The management API through RabbitMQ's own HTTP API client for Rust (`rabbitmq_http_client`,
//! maintained by the RabbitMQ team and used by `rabbitmqadmin` 2.x), unchanged: every call it
//! makes must find the route, and every answer must deserialize into its typed responses, which
//! is the real test of "the same JSON shapes". Each step names the call, so a failure says which
//! route or field broke.

use std::time::Duration;

use bourse_tests::connection::lapin_connect;
use bourse_tests::http::api_broker;
use bourse_tests::{bounded, confirm_channel};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::{BindingDestinationType, VirtualHostLimitTarget};
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{
    BindingDeletionParams, EnforcedLimitParams, ExchangeParams, Permissions, QueueParams,
    TopicPermissions, UserParams, VirtualHostParams,
};
use serde_json::Map;

const WAIT: Duration = Duration::from_secs(10);

/// Unwraps a client call, naming it in the failure.
macro_rules! call {
    ($what:literal, $e:expr) => {
        match $e.await {
            Ok(v) => v,
            Err(e) => panic!("{}: {e:?}", $what),
        }
    };
}

#[tokio::test]
async fn rabbitmqs_http_client_works_unchanged() {
    bounded(Duration::from_secs(120), async {
        let (broker, api) = api_broker().await;
        let endpoint = format!("{}/api", api.base());
        let rc = Client::new(endpoint.as_str(), "guest", "guest");

        // Read-only views of an almost empty broker.
        let overview = call!("overview", rc.overview());
        assert_eq!(overview.object_totals.queues, 0);
        let me = call!("current_user", rc.current_user());
        assert_eq!(me.name, "guest");
        let nodes = call!("list_nodes", rc.list_nodes());
        assert_eq!(nodes.len(), 1);
        call!("get_node_info", rc.get_node_info(&nodes[0].name));
        call!(
            "health_check_cluster_wide_alarms",
            rc.health_check_cluster_wide_alarms()
        );
        call!("health_check_local_alarms", rc.health_check_local_alarms());

        // Tenancy: a vhost, a user with a RabbitMQ password hash, its permissions and limits.
        call!(
            "create_vhost",
            rc.create_vhost(&VirtualHostParams::named("tenant-a").with_description("A"))
        );
        let vhosts = call!("list_vhosts", rc.list_vhosts());
        assert!(vhosts.iter().any(|v| v.name == "tenant-a"), "{vhosts:?}");
        call!("get_vhost", rc.get_vhost("tenant-a"));
        let salt = password_hashing::salt();
        let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&salt, "s3cret");
        call!(
            "create_user",
            rc.create_user(&UserParams::management("alice", &hash))
        );
        let alice = call!("get_user", rc.get_user("alice"));
        assert_eq!(
            alice.password_hash.as_ref().map(|h| h.as_str()),
            Some(hash.as_str())
        );
        call!("list_users", rc.list_users());
        call!(
            "declare_permissions",
            rc.declare_permissions(&Permissions {
                user: "alice",
                vhost: "tenant-a",
                configure: "^a\\.",
                read: ".*",
                write: ".*",
            })
        );
        let perms = call!("get_permissions", rc.get_permissions("tenant-a", "alice"));
        assert_eq!(perms.configure, "^a\\.");
        call!("list_permissions", rc.list_permissions());
        call!("list_permissions_in", rc.list_permissions_in("tenant-a"));
        call!("list_permissions_of", rc.list_permissions_of("alice"));
        call!(
            "declare_topic_permissions",
            rc.declare_topic_permissions(&TopicPermissions {
                user: "alice",
                vhost: "tenant-a",
                exchange: "amq.topic",
                write: "^a\\.",
                read: ".*",
            })
        );
        let topic = call!("list_topic_permissions", rc.list_topic_permissions());
        assert!(topic.iter().any(|t| t.user == "alice"), "{topic:?}");
        call!(
            "set_vhost_limit",
            rc.set_vhost_limit(
                "tenant-a",
                EnforcedLimitParams::new(VirtualHostLimitTarget::MaxQueues, 50)
            )
        );
        let limits = call!("list_vhost_limits", rc.list_vhost_limits("tenant-a"));
        assert_eq!(limits.len(), 1, "{limits:?}");
        call!("list_all_vhost_limits", rc.list_all_vhost_limits());
        call!(
            "clear_vhost_limit",
            rc.clear_vhost_limit("tenant-a", VirtualHostLimitTarget::MaxQueues)
        );

        // The alice client sees only what a `management` user may.
        let alice_rc = Client::new(endpoint.as_str(), "alice", "s3cret");
        let seen = call!("list_vhosts as alice", alice_rc.list_vhosts());
        assert_eq!(
            seen.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["tenant-a"]
        );
        assert!(alice_rc.list_users().await.is_err(), "alice listed users");

        // Objects: exchanges, queues, bindings, messages.
        call!(
            "declare_exchange",
            rc.declare_exchange("/", &ExchangeParams::durable_topic("events", None))
        );
        call!(
            "declare_queue",
            rc.declare_queue(
                "/",
                &QueueParams::new_durable_classic_queue("orders", None).with_max_length(1000)
            )
        );
        call!(
            "bind_queue",
            rc.bind_queue("/", "orders", "events", Some("order.*"), None)
        );
        call!(
            "bind_exchange",
            rc.bind_exchange("/", "amq.fanout", "events", Some("audit.#"), None)
        );
        let exchanges = call!("list_exchanges", rc.list_exchanges());
        assert!(
            exchanges.iter().any(|e| e.name == "events"),
            "{exchanges:?}"
        );
        call!("list_exchanges_in", rc.list_exchanges_in("/"));
        let events = call!("get_exchange_info", rc.get_exchange_info("/", "events"));
        assert_eq!(events.exchange_type, "topic");
        let bindings = call!("list_queue_bindings", rc.list_queue_bindings("/", "orders"));
        assert!(
            bindings.iter().any(|b| b.routing_key == "order.*"),
            "{bindings:?}"
        );
        call!("list_bindings", rc.list_bindings());
        call!("list_bindings_in", rc.list_bindings_in("/"));
        call!(
            "list_exchange_bindings_with_source",
            rc.list_exchange_bindings_with_source("/", "events")
        );

        let routed = call!(
            "publish_message",
            rc.publish_message("/", "events", "order.1", "first", Map::new())
        );
        assert!(routed.routed);
        call!(
            "publish_message",
            rc.publish_message("/", "events", "order.2", "second", Map::new())
        );
        let (two, queue) = api
            .get_until("/api/queues/%2F/orders", WAIT, |q| q["messages"] == 2)
            .await;
        assert!(two, "{queue}");
        let info = call!("get_queue_info", rc.get_queue_info("/", "orders"));
        assert_eq!(info.name, "orders");
        call!("list_queues", rc.list_queues());
        call!("list_queues_in", rc.list_queues_in("/"));
        let got = call!(
            "get_messages",
            rc.get_messages("/", "orders", 1, "ack_requeue_false")
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, "first");
        assert_eq!(got[0].message_count, 1);
        call!("purge_queue", rc.purge_queue("/", "orders"));
        let empty = call!(
            "get_messages",
            rc.get_messages("/", "orders", 1, "ack_requeue_true")
        );
        assert!(empty.is_empty(), "{empty:?}");
        call!(
            "delete_binding",
            rc.delete_binding(
                &BindingDeletionParams {
                    virtual_host: "/",
                    source: "events",
                    destination: "orders",
                    destination_type: BindingDestinationType::Queue,
                    routing_key: "order.*",
                    arguments: None,
                },
                false
            )
        );
        let after = call!("list_queue_bindings", rc.list_queue_bindings("/", "orders"));
        assert!(
            after.iter().all(|b| b.source != "events"),
            "binding still there: {after:?}"
        );

        // Activity: a consuming connection is listed, with its channel and consumer, then closed.
        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = confirm_channel(&conn).await;
        ch.queue_declare(
            "watched".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        // Kept until the connection closes: lapin cancels a consumer that is dropped.
        let _consumer = ch
            .basic_consume(
                "watched".into(),
                "watcher".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (listed, seen) = api
            .get_until("/api/consumers", WAIT, |c| {
                c.as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
        assert!(listed, "{seen}");
        let consumers = call!("list_consumers", rc.list_consumers());
        assert_eq!(consumers.len(), 1, "{consumers:?}");
        call!("list_consumers_in", rc.list_consumers_in("/"));
        let channels = call!("list_channels", rc.list_channels());
        assert!(!channels.is_empty());
        call!("list_channels_in", rc.list_channels_in("/"));
        let connections = call!("list_connections", rc.list_connections());
        assert_eq!(connections.len(), 1, "{connections:?}");
        let name = connections[0].name.clone();
        call!("get_connection_info", rc.get_connection_info(&name));
        call!("list_channels_on", rc.list_channels_on(&name));
        call!(
            "close_connection",
            rc.close_connection(&name, Some("closed by the official client test"), false)
        );
        let (closed, seen) = api
            .get_until("/api/connections", WAIT, |c| {
                c.as_array().is_some_and(|a| a.is_empty())
            })
            .await;
        assert!(closed, "{seen}");

        // Definitions: export, delete, import, and the objects are back.
        let defs = call!(
            "export_cluster_wide_definitions_as_data",
            rc.export_cluster_wide_definitions_as_data()
        );
        assert!(defs.queues.iter().any(|q| q.name == "orders"));
        let vhost_defs = call!(
            "export_vhost_definitions_as_data",
            rc.export_vhost_definitions_as_data("/")
        );
        assert!(vhost_defs.exchanges.iter().any(|e| e.name == "events"));
        let json = call!(
            "export_cluster_wide_definitions",
            rc.export_cluster_wide_definitions()
        );
        call!("delete_queue", rc.delete_queue("/", "orders", false));
        call!("delete_exchange", rc.delete_exchange("/", "events", false));
        call!(
            "delete_queue (idempotently)",
            rc.delete_queue("/", "orders", true)
        );
        call!(
            "import_definitions",
            rc.import_definitions(serde_json::from_str(&json).unwrap())
        );
        call!(
            "get_queue_info (imported)",
            rc.get_queue_info("/", "orders")
        );
        call!(
            "get_exchange_info (imported)",
            rc.get_exchange_info("/", "events")
        );

        call!("delete_user", rc.delete_user("alice", false));
        call!("delete_vhost", rc.delete_vhost("tenant-a", false));
        assert!(rc.get_vhost("tenant-a").await.is_err());
    })
    .await;
}
