//! `bourse-perf`: a load tool for AMQP 0-9-1 brokers, modelled on rabbitmq-perf-test and built
//! on lapin, to compare bourse with RabbitMQ on the same (small) machine.
//!
//! Progress goes to stderr once a second; the result is ONE JSON line on stdout. With
//! `--broker-pid` the broker's CPU seconds and RSS over the run are included, so throughput can
//! be compared per broker CPU-second. Every run is bounded: by `--time` and/or `--count`, and by
//! a hard `--timeout-secs` past which the tool reports what it has and exits with status 2.
//! Loopback brokers only.
//!
//! Modules: `cli` (flags), `load` (publishers, timeline, report), `delayed` (delayed delivery), `consumers` (starting them), `idle` (memory per idle
//! connection or queue), `backlog` (memory per queued message), `procfs` (broker CPU and RSS), `stats` (counters, latency), `amqp`
//! (connect, argument tables), `raw` (`--client raw`: publishers and consumers on raw frames).

mod amqp;
mod backlog;
mod cli;
mod consumers;
mod delayed;
mod idle;
mod lapin_client;
mod load;
mod procfs;
mod raw;
mod stats;

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use serde_json::json;

use crate::{
    cli::{Cli, Command},
    stats::Stats,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    stats::now_ns(); // fix the time origin before any message is stamped
    // Many connections need many descriptors; raise the soft limit as far as the hard one.
    if let Err(e) = rlimit::increase_nofile_limit(1 << 20) {
        eprintln!("bourse-perf: cannot raise the open-files limit: {e}");
    }
    let (common, default_timeout) = match &cli.command {
        Command::Load(a) => {
            let run = if a.time_secs > 0.0 {
                a.time_secs
            } else {
                240.0
            };
            (a.common.clone(), run + a.drain_secs + 60.0)
        }
        Command::Delayed(a) => (
            a.common.clone(),
            (a.min_delay_ms + a.spread_ms) as f64 / 1000.0 + a.messages as f64 / 2_000.0 + 180.0,
        ),
        Command::Idle(a) => (
            a.common.clone(),
            3.0 * a.settle_secs
                + a.hold_secs
                + 60.0
                + a.connections as f64 / 20.0
                + a.queues as f64 / 500.0,
        ),
    };
    if let Err(e) = amqp::check_loopback(&common.uri) {
        eprintln!("bourse-perf: {e:#}");
        return ExitCode::from(64);
    }
    let timeout = common.timeout_secs.unwrap_or(default_timeout);

    // Last resort if the runtime itself is wedged: the process ends regardless.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(timeout + 15.0));
        eprintln!("bourse-perf: watchdog: still running {timeout} s + 15 s after start; exiting");
        std::process::exit(3);
    });

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bourse-perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stats = Arc::new(Stats::default());
    let result = runtime.block_on(async {
        let work = async {
            match cli.command {
                Command::Load(a) => load::run(*a, stats.clone()).await,
                Command::Idle(a) => idle::run(a, stats.clone()).await,
                Command::Delayed(a) => delayed::run(a, stats.clone()).await,
            }
        };
        tokio::time::timeout(Duration::from_secs_f64(timeout), work).await
    });
    let code = match result {
        Ok(Ok(report)) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("bourse-perf: {e:#}");
            let s = stats.snapshot();
            println!(
                "{}",
                json!({"label": common.label, "failed": format!("{e:#}"), "sent": s.sent,
                       "received": s.received, "errors": s.errors + 1,
                       "error_samples": stats.error_samples(), "timed_out": false})
            );
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("bourse-perf: hard timeout of {timeout} s reached");
            let s = stats.snapshot();
            println!(
                "{}",
                json!({"label": common.label, "timed_out": true, "sent": s.sent,
                       "confirmed": s.confirmed, "received": s.received, "errors": s.errors,
                       "error_samples": stats.error_samples()})
            );
            ExitCode::from(2)
        }
    };
    // lapin's I/O threads may still be closing sockets; don't wait for them.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}
