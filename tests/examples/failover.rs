//! A lapin consumer that survives the loss of the node it is connected to: it tries the nodes
//! of a cluster in turn, and when its connection goes it connects to another one, declares
//! and consumes again (docs/cluster.md, "Clients"). `cargo test` builds it; to run it:
//!
//!   cargo run -p bourse-tests --example failover -- amqp://127.0.0.1:5672 amqp://127.0.0.1:5673

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// A connection to the first node of `nodes` that answers, trying again every second.
async fn connect(nodes: &[String]) -> Connection {
    loop {
        for uri in nodes {
            if let Ok(connection) = Connection::connect(uri, ConnectionProperties::default()).await
            {
                return connection;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Consumes queue `orders` for ever, from whichever node answers.
async fn consume(nodes: &[String], handle: impl Fn(&[u8])) {
    loop {
        let connection = connect(nodes).await;
        let Ok(channel) = connection.create_channel().await else {
            continue;
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare("orders".into(), durable, FieldTable::default())
            .await;
        let consumer = channel
            .basic_consume(
                "orders".into(),
                "worker".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let (Ok(_), Ok(mut consumer)) = (declared, consumer) else {
            continue;
        };
        while let Some(Ok(delivery)) = consumer.next().await {
            handle(&delivery.data);
            if delivery.ack(BasicAckOptions::default()).await.is_err() {
                break; // the connection is gone: connect to another node
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let nodes: Vec<String> = std::env::args().skip(1).collect();
    if nodes.is_empty() {
        eprintln!("usage: failover AMQP_URI...");
        std::process::exit(2);
    }
    consume(&nodes, |body| println!("{}", String::from_utf8_lossy(body))).await;
}
