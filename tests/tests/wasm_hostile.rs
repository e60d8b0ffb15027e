//! Hostile plugins: a plugin that loops, allocates without bound or panics is cut off (one
//! returning unbound binding ids is not: see `wasm_routing.rs`); the message is handled as
//! unroutable by that exchange (basic.return when mandatory, a nack when it reached no queue,
//! the alternate exchange when there is one); the instance is replaced; after repeated
//! failures the exchange is marked failed; the broker and other
//! exchanges keep working. Files that are not usable components are refused at load with a
//! clear reason and the broker starts anyway. A plugin flooding the host (`x-noisy`: 1 MiB
//! error texts and log lines, 400,000 binding ids) reaches the log cut to 1 KiB, has its
//! oversized answer treated as a failed call, and once its exchange is marked failed costs one
//! warning per 10 s, not one per message (checked on the broker's captured log).
//!
//! Each test prints how long the cut-off took (publish to confirm, which includes replacing
//! the instance), next to a publish through a healthy plugin exchange.

use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;
use bourse_tests::wasm::{
    PluginBroker, assert_error, bodies, declare, dist_dir, publish, publish_acked, queue_on,
    session, table, text, try_declare,
};
use lapin::{BasicProperties, Confirmation};

/// Generous: the deadline is 5 ms, the memory bomb stops at 16 MiB.
const CUT_OFF_BOUND: Duration = Duration::from_secs(1);

async fn timed_publish(
    ch: &lapin::Channel,
    exchange: &str,
    mandatory: bool,
) -> (Confirmation, Duration) {
    let started = Instant::now();
    let confirmation = publish(
        ch,
        exchange,
        "k",
        b"payload",
        BasicProperties::default(),
        mandatory,
    )
    .await;
    (confirmation, started.elapsed())
}

/// Declares `kind` (hostile) and a healthy x-regex exchange, each with a bound queue; checks
/// the cut-off, the replacement, the failed mark and that everything else keeps working.
async fn hostile(kind: &str) {
    let broker = PluginBroker::start(&[kind, "x-regex"]).await;
    let (conn, ch) = session(&broker.broker).await;
    declare(&ch, "bad", kind, FieldTable::default()).await;
    queue_on(&ch, "bad-q", "bad", "k").await;
    declare(&ch, "good", "x-regex", FieldTable::default()).await;
    queue_on(&ch, "good-q", "good", "k").await;

    let (ok, healthy) = timed_publish(&ch, "good", true).await;
    assert!(matches!(ok, Confirmation::Ack(None)), "{ok:?}");

    // Mandatory + confirms: returned, then nacked (it reached no queue because a plugin failed).
    let (confirmation, cut_off) = timed_publish(&ch, "bad", true).await;
    println!(
        "{kind}: cut off after {:.2} ms (publish to confirm; a healthy plugin exchange: {:.2} ms)",
        cut_off.as_secs_f64() * 1e3,
        healthy.as_secs_f64() * 1e3
    );
    match &confirmation {
        Confirmation::Nack(Some(returned)) => assert_eq!(returned.reply_code, 312),
        other => panic!("{kind}: expected basic.return then nack, got {other:?}"),
    }
    assert!(cut_off < CUT_OFF_BOUND, "{kind}: cut-off took {cut_off:?}");

    // Not mandatory: just the nack.
    let (confirmation, _) = timed_publish(&ch, "bad", false).await;
    assert!(
        matches!(confirmation, Confirmation::Nack(None)),
        "{kind}: {confirmation:?}"
    );

    // The instance was replaced (bindings replayed) after each failure.
    let status = broker.plugins().status_of(kind).expect("loaded");
    let x = &status.exchanges[0];
    assert_eq!(x.failures, 2, "{kind}: {x:?}");
    assert_eq!(x.replaced, 2, "{kind}: {x:?}");
    assert_eq!(x.bindings, 1);
    assert!(x.failed.is_none());

    // Other exchanges, and the broker, keep working meanwhile.
    publish_acked(&ch, "good", "k", "still routing").await;
    assert_eq!(bodies(&ch, "good-q").await, ["payload", "still routing"]);
    assert!(bodies(&ch, "bad-q").await.is_empty());

    // After failures_max (5) consecutive failures the exchange is marked failed: messages
    // are unroutable at once, without entering the plugin.
    for _ in 0..3 {
        timed_publish(&ch, "bad", false).await;
    }
    let x = &broker.plugins().status_of(kind).expect("loaded").exchanges[0];
    assert!(
        x.failed
            .as_deref()
            .is_some_and(|f| f.contains("5 consecutive failures")),
        "{x:?}"
    );
    let (confirmation, fast) = timed_publish(&ch, "bad", false).await;
    assert!(matches!(confirmation, Confirmation::Nack(None)));
    println!(
        "{kind}: marked failed; a publish to it is nacked in {:.2} ms",
        fast.as_secs_f64() * 1e3
    );
    assert!(bourse::exchange::wasm::status().exchanges_failed >= 1);

    // An alternate exchange takes what the failed exchange cannot route.
    declare_fanout(&ch, "ae").await;
    queue_on(&ch, "ae-q", "ae", "").await;
    declare(
        &ch,
        "bad-with-ae",
        kind,
        table(&[("alternate-exchange", text("ae"))]),
    )
    .await;
    queue_on(&ch, "bad-q2", "bad-with-ae", "k").await;
    publish_acked(&ch, "bad-with-ae", "k", "to the alternate").await;
    assert_eq!(bodies(&ch, "ae-q").await, ["to the alternate"]);

    // A new connection still works too.
    drop(ch);
    drop(conn);
    let (_conn, ch) = session(&broker.broker).await;
    publish_acked(&ch, "good", "k", "new connection").await;
    assert_eq!(bodies(&ch, "good-q").await, ["new connection"]);
}

async fn declare_fanout(ch: &lapin::Channel, name: &str) {
    bourse_tests::raw::within(ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("declare fanout");
}

#[tokio::test]
async fn an_infinite_loop_is_cut_off_at_the_deadline() {
    hostile("x-loop").await;
}

#[tokio::test]
async fn a_memory_bomb_is_cut_off_at_the_memory_cap() {
    hostile("x-membomb").await;
}

#[tokio::test]
async fn a_panic_traps_and_the_instance_is_replaced() {
    hostile("x-panic").await;
}

#[tokio::test]
async fn the_deadline_follows_the_per_vhost_limit() {
    let broker = PluginBroker::start_with(&["x-loop"], |cfg| {
        cfg.vhost_limits.insert(
            "/".into(),
            bourse::config::VhostLimitOverrides {
                wasm_call_deadline_ms: Some(40),
                ..Default::default()
            },
        );
    })
    .await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "slow", "x-loop", FieldTable::default()).await;
    queue_on(&ch, "q", "slow", "k").await;
    let (confirmation, cut_off) = timed_publish(&ch, "slow", false).await;
    assert!(matches!(confirmation, Confirmation::Nack(None)));
    println!(
        "x-loop with a 40 ms deadline for vhost '/': cut off after {:.1} ms",
        cut_off.as_secs_f64() * 1e3
    );
    assert!(cut_off >= Duration::from_millis(38), "{cut_off:?}");
    assert!(cut_off < CUT_OFF_BOUND);
}

#[tokio::test]
async fn unusable_files_are_refused_at_load_and_the_broker_starts() {
    let broker = PluginBroker::start(&[
        "x-wrong-major",
        "not-a-component",
        "random-bytes",
        "x-regex",
    ])
    .await;
    // The good one loaded; the others did not.
    let loaded: Vec<String> = broker
        .plugins()
        .status()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(loaded, ["x-regex"]);
    let refusal = |file: &str| {
        broker
            .plugins()
            .load(&dist_dir().join(file))
            .expect_err("refused")
            .to_string()
    };
    let wrong = refusal("x-wrong-major.wasm");
    println!("x-wrong-major.wasm: {wrong}");
    assert!(
        wrong.contains("bourse:exchange@9.0.0") && wrong.contains("0.1.x"),
        "{wrong}"
    );
    let core = refusal("not-a-component.wasm");
    println!("not-a-component.wasm: {core}");
    assert!(
        core.contains("core WebAssembly module, not a component"),
        "{core}"
    );
    let random = refusal("random-bytes.wasm");
    println!("random-bytes.wasm: {random}");
    assert!(random.contains("not a WebAssembly file"), "{random}");

    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "r", "x-regex", FieldTable::default()).await;
    queue_on(&ch, "q", "r", "a.*").await;
    publish_acked(&ch, "r", "abc", "m").await;
    assert_eq!(bodies(&ch, "q").await, ["m"]);
    let err = try_declare(&ch, "w", "x-wrong-major", FieldTable::default()).await;
    assert_error(err, 406, "x-wrong-major");
}

/// The broker's log, captured for the whole test binary (tests tell their lines apart by
/// exchange name), at debug level.
mod log {
    use std::io::Write;
    use std::sync::{Mutex, MutexGuard, Once};

    static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn buffer() -> MutexGuard<'static, Vec<u8>> {
        LOG.lock().unwrap_or_else(|e| e.into_inner())
    }

    struct Sink;

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            buffer().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Starts capturing (once per process).
    pub fn capture() {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
                .with_ansi(false)
                .with_writer(|| Sink)
                .try_init();
        });
    }

    /// The captured lines containing every one of `needles`.
    pub fn lines(needles: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&buffer())
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// The first `n` characters of `line`, for printing.
    pub fn head(line: &str, n: usize) -> String {
        line.chars().take(n).collect()
    }
}

#[tokio::test]
async fn plugin_texts_and_log_lines_are_cut_to_1_kib() {
    log::capture();
    // Taking 4 MiB of output costs a debug build of the host ~20 ms, and host functions run
    // on the plugin's deadline: give it room, this test is about sizes.
    let broker =
        PluginBroker::start_with(&["x-noisy"], |cfg| cfg.wasm.call_deadline_ms = 500).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "noisy-text", "x-noisy", FieldTable::default()).await;
    queue_on(&ch, "noisy-text-q", "noisy-text", "k").await;

    // Three 1 MiB lines through `logging.log` and one on stdout, then a normal answer.
    let started = Instant::now();
    publish_acked(&ch, "noisy-text", "log", "logged").await;
    println!(
        "4 MiB of log output taken in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(bodies(&ch, "noisy-text-q").await, ["logged"]);
    // The plugin's own `err` answer, 1 MiB long: unroutable, not a failure.
    let confirmation = publish(
        &ch,
        "noisy-text",
        "error",
        b"x",
        BasicProperties::default(),
        false,
    )
    .await;
    assert!(
        matches!(confirmation, Confirmation::Nack(None)),
        "{confirmation:?}"
    );

    let logged = log::lines(&["noisy-text", "noisy log"]);
    let stdout = log::lines(&["noisy-text", "noisy stdout"]);
    let errors = log::lines(&["noisy-text", "noisy error"]);
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert_eq!(stdout.len(), 1, "{stdout:?}");
    assert!(!errors.is_empty());
    for line in logged.iter().chain(&stdout).chain(&errors) {
        println!("{} bytes: {}", line.len(), log::head(line, 160));
        assert!(
            line.len() < 2048,
            "a {} byte line reached the log",
            line.len()
        );
        assert!(
            line.contains("bytes cut]"),
            "no cut marker: {}",
            log::head(line, 200)
        );
    }
    let x = &broker
        .plugins()
        .status_of("x-noisy")
        .expect("loaded")
        .exchanges[0];
    assert_eq!((x.failures, x.plugin_errors), (0, 1), "{x:?}");
}

#[tokio::test]
async fn a_route_answer_of_400000_ids_is_a_failed_call() {
    // Producing 400,000 ids takes a debug build several milliseconds, near the default 5 ms
    // route deadline when the machine is busy: give it room, this test is about the answer's size.
    let broker =
        PluginBroker::start_with(&["x-noisy"], |cfg| cfg.wasm.call_deadline_ms = 500).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "noisy-ids", "x-noisy", FieldTable::default()).await;
    queue_on(&ch, "noisy-ids-q", "noisy-ids", "k").await;

    let started = Instant::now();
    let confirmation = publish(
        &ch,
        "noisy-ids",
        "ids",
        b"x",
        BasicProperties::default(),
        false,
    )
    .await;
    println!(
        "400,000 ids (all of a bound id): {confirmation:?} after {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        matches!(confirmation, Confirmation::Nack(None)),
        "{confirmation:?}"
    );
    assert!(bodies(&ch, "noisy-ids-q").await.is_empty());
    let x = &broker
        .plugins()
        .status_of("x-noisy")
        .expect("loaded")
        .exchanges[0];
    assert_eq!((x.oversized, x.failures, x.replaced), (1, 1, 1), "{x:?}");

    // The replacement instance routes normally.
    publish_acked(&ch, "noisy-ids", "k", "fine").await;
    assert_eq!(bodies(&ch, "noisy-ids-q").await, ["fine"]);
}

#[tokio::test]
async fn warnings_of_a_failed_exchange_are_rate_limited() {
    log::capture();
    let broker = PluginBroker::start(&["x-noisy"]).await;
    let (_conn, ch) = session(&broker.broker).await;
    declare(&ch, "noisy-failed", "x-noisy", FieldTable::default()).await;
    queue_on(&ch, "noisy-failed-q", "noisy-failed", "k").await;
    // failures_max (5) failed calls mark the exchange failed.
    for _ in 0..5 {
        publish(
            &ch,
            "noisy-failed",
            "ids",
            b"x",
            BasicProperties::default(),
            false,
        )
        .await;
    }
    let x = &broker
        .plugins()
        .status_of("x-noisy")
        .expect("loaded")
        .exchanges[0];
    assert!(x.failed.is_some(), "{x:?}");
    for _ in 0..50 {
        let confirmation = publish(
            &ch,
            "noisy-failed",
            "k",
            b"x",
            BasicProperties::default(),
            false,
        )
        .await;
        assert!(matches!(confirmation, Confirmation::Nack(None)));
    }
    let warnings = log::lines(&["noisy-failed", " WARN "]);
    let errors = log::lines(&["noisy-failed", " ERROR "]);
    for line in warnings.iter().chain(&errors) {
        println!("{}", log::head(line, 240));
    }
    let x = &broker
        .plugins()
        .status_of("x-noisy")
        .expect("loaded")
        .exchanges[0];
    println!(
        "55 failed messages: {} warnings, {} errors, {} held back",
        warnings.len(),
        errors.len(),
        x.warnings_suppressed
    );
    assert!(warnings.len() <= 2, "{} warnings", warnings.len());
    assert_eq!(errors.len(), 1, "the exchange is marked failed once");
    assert!(x.warnings_suppressed >= 50, "{x:?}");
}
