//! The web console (issue 12) in a real headless browser: `tests/console/console.mjs` drives
//! Debian's Chromium through playwright-core against a broker whose API serves the console,
//! while a lapin publisher fills a queue: it logs in, sees this node in the nodes table and the
//! queue's rate move, uploads a plugin and routes through it, replaces and rolls it back. (The
//! nodes table of a cluster is checked in cluster.rs.) Screenshots are kept in
//! `target/console-shots/`. `scripts/test.sh` installs Chromium and the npm package.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bourse_tests::connection::lapin_connect;
use bourse_tests::console::{run_script, shots_dir};
use bourse_tests::http::api_broker_with;
use bourse_tests::raw::within;
use bourse_tests::wasm::{dedup_as_regex, dist_dir, seed_cache_key, test_cache_dir};
use bourse_tests::{bounded, confirm_channel};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::test]
async fn the_console_shows_rates_and_deploys_and_rolls_back_a_plugin() {
    bounded(Duration::from_secs(180), async {
        let (broker, api) = api_broker_with(|cfg| {
            cfg.management_sample_interval_ms = 1000;
            cfg.wasm_cache_dir = Some(test_cache_dir());
            seed_cache_key(&cfg.data_dir);
        })
        .await;
        let console_url = format!("{}/", api.base());
        let index = api.get_text("/").await;
        assert!(index.1.starts_with("text/html"), "{index:?}");

        let conn = lapin_connect(broker.url()).await.unwrap();
        let ch = confirm_channel(&conn).await;
        within(ch.queue_declare(
            "console.filled".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let publisher = tokio::spawn(async move {
            // About 100 messages a second, for at most two minutes.
            for _ in 0..12_000 {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                ch.basic_publish(
                    "".into(),
                    "console.filled".into(),
                    BasicPublishOptions::default(),
                    b"filler",
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });

        let work = bourse_tests::TempDir::new();
        let v2 = work.path.join("x-regex-v2.wasm");
        std::fs::write(&v2, dedup_as_regex()).unwrap();
        let stdout = run_script(
            &console_url,
            &[
                ("BOURSE_QUEUE", "console.filled".as_ref()),
                (
                    "BOURSE_PLUGIN_V1",
                    dist_dir().join("x-regex.wasm").as_os_str(),
                ),
                ("BOURSE_PLUGIN_V2", v2.as_os_str()),
                ("BOURSE_PLUGIN_TYPE", "x-regex".as_ref()),
            ],
            Duration::from_secs(150),
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        publisher.await.unwrap();
        let shots = shots_dir();
        for shot in ["overview.png", "queues.png", "plugins.png"] {
            assert!(shots.join(shot).is_file(), "no {shot}:\n{stdout}");
        }
        // The browser rolled the plugin back to v1: the API has both versions, v2 previous.
        let plugins = api.get("/api/plugins/%2F").await.json;
        assert_eq!(plugins[0]["name"], "x-regex", "{plugins}");
        let (current, previous) = (
            &plugins[0]["current"]["sha256"],
            &plugins[0]["previous"]["sha256"],
        );
        assert!(current.is_string() && previous.is_string(), "{plugins}");
        assert_ne!(current, previous, "{plugins}");
    })
    .await;
}
