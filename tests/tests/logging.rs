//! The broker's log (issue 12): JSON lines for collectors with `--log-format json`, plain text
//! without colour codes when the log goes to a file, the level from `--log-level`.

use std::time::Duration;

use bourse_tests::bounded;
use bourse_tests::process::BrokerProcess;

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    bounded(LIMIT, async {
        let mut broker = BrokerProcess::start_with_args(&["--log-format", "json"]).await;
        let _conn = broker.connect().await;
        broker.terminate(Duration::from_secs(30)).await;
        let log = broker.log();
        // The harness marks each start with a `===` line of its own.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("==="))
            .collect();
        assert!(lines.len() >= 3, "{log}");
        for line in &lines {
            let event: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(event["level"].is_string(), "{line}");
            assert!(event["timestamp"].is_string(), "{line}");
            assert!(event["fields"]["message"].is_string(), "{line}");
        }
        assert!(
            lines.iter().any(|l| l.contains("connection opened")),
            "{log}"
        );
    })
    .await;
}

#[tokio::test]
async fn text_logs_in_a_file_have_no_colour_and_follow_the_level() {
    bounded(LIMIT, async {
        let mut broker = BrokerProcess::start_with_args(&["--log-level", "warn"]).await;
        let _conn = broker.connect().await;
        broker.terminate(Duration::from_secs(30)).await;
        let log = broker.log();
        assert!(!log.contains('\u{1b}'), "ANSI codes in a log file: {log:?}");
        assert!(
            !log.contains("connection opened") && !log.contains(" INFO "),
            "info lines under --log-level warn: {log}"
        );
        let mut verbose = BrokerProcess::start_with_args(&["--log-level", "info"]).await;
        let _conn = verbose.connect().await;
        verbose.terminate(Duration::from_secs(30)).await;
        let log = verbose.log();
        assert!(log.contains("connection opened"), "{log}");
        assert!(!log.contains('\u{1b}'), "ANSI codes in a log file: {log:?}");
    })
    .await;
}
