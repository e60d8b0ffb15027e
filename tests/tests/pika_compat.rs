//! Python pika compatibility: runs `tests/pika/compat.py` (pika's BlockingConnection) against
//! an in-process broker and requires it to pass.
//!
//! The interpreter and how to install pika: see `bourse_tests::python`.

use std::time::Duration;

use bourse_tests::TestBroker;
use bourse_tests::python::{require_pika, run_pika_checks};

/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs a whole test under one deadline, so a broker that stops answering an unwrapped call
/// fails the test instead of hanging it.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}

#[tokio::test]
async fn pika_blocking_connection_compat() {
    bounded(async {
        require_pika().await;
        let broker = TestBroker::start().await;
        run_pika_checks(
            "compat.py",
            &[broker.url().as_ref()],
            Duration::from_secs(60),
            "all pika checks passed",
        )
        .await;
    })
    .await;
}
