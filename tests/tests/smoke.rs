//! The shortest end-to-end path: declare, publish, consume, ack.

use bourse_tests::TestBroker;
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;

#[tokio::test]
async fn publish_then_consume_round_trip() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = broker.channel().await;
    ch.queue_declare(
        "smoke".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..100u32 {
        ch.basic_publish(
            "".into(),
            "smoke".into(),
            BasicPublishOptions::default(),
            &i.to_be_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            "smoke".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..100u32 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("delivery in time")
            .expect("stream open")
            .expect("delivery ok");
        assert_eq!(delivery.data, i.to_be_bytes());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}
