//! `bourse plugin test --broker`: the same routing cases, run on a broker where the type is
//! deployed, through `bourse-ctl` (JSON output): a scratch exchange of the type and a scratch
//! queue per named queue are declared, the bindings made, each message published through the
//! management API and every queue read (`get`, not requeued) to see which got it; then the
//! scratch objects are deleted. This is the message routed by the plugin inside a broker.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

use super::Project;
use super::cases::{Cases, Report, Value};
use super::remote::{RemoteArgs, cannot_run, ctl_command};

/// At most this many messages and distinct queues on a broker (each message costs one
/// request per queue).
pub const BROKER_MESSAGES_MAX: usize = 200;
pub const BROKER_QUEUES_MAX: usize = 20;

/// Runs `cases` on the broker of `remote`.
pub fn run(project: &Project, cases: &Cases, remote: &RemoteArgs) -> anyhow::Result<Report> {
    let name = &project.manifest.name;
    let prefix = format!("plugin-test.{name}");
    let queues: BTreeSet<&str> = cases
        .binding
        .iter()
        .map(|b| b.queue.as_str())
        .chain(
            cases
                .message
                .iter()
                .flat_map(|m| m.expect.iter().map(String::as_str)),
        )
        .collect();
    if cases.message.len() > BROKER_MESSAGES_MAX || queues.len() > BROKER_QUEUES_MAX {
        bail!(
            "on a broker, at most {BROKER_MESSAGES_MAX} messages and {BROKER_QUEUES_MAX} \
             queues (this file has {} and {})",
            cases.message.len(),
            queues.len()
        );
    }
    let scratch = |queue: &str| format!("{prefix}.{queue}");
    let ctl = Ctl { remote };
    let vhost = remote.vhost.as_str();

    // Left over from an interrupted run: gone before we start (absent is fine).
    ctl.cleanup(&prefix, &queues, &scratch);
    let mut declare = vec![
        "declare", "exchange", &prefix, "--type", name, "--vhost", vhost,
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if !cases.exchange.arguments.is_empty() {
        declare.extend([
            "--arguments".into(),
            json_map(&cases.exchange.arguments).to_string(),
        ]);
    }
    let result = ctl
        .json(&declare)
        .with_context(|| format!("declaring exchange {prefix} of type {name} (deployed?)"))
        .and_then(|_| run_declared(&ctl, cases, &prefix, &queues, &scratch, vhost));
    ctl.cleanup(&prefix, &queues, &scratch);
    result
}

fn run_declared(
    ctl: &Ctl<'_>,
    cases: &Cases,
    exchange: &str,
    queues: &BTreeSet<&str>,
    scratch: &dyn Fn(&str) -> String,
    vhost: &str,
) -> anyhow::Result<Report> {
    for queue in queues {
        ctl.json(&args(&[
            "declare",
            "queue",
            &scratch(queue),
            "--vhost",
            vhost,
        ]))?;
    }
    let mut report = Report::default();
    for spec in &cases.binding {
        let mut bind = args(&[
            "declare",
            "binding",
            "--source",
            exchange,
            "--destination",
            &scratch(&spec.queue),
            "--routing-key",
            &spec.key,
            "--vhost",
            vhost,
        ]);
        if !spec.arguments.is_empty() {
            bind.extend(["--arguments".into(), json_map(&spec.arguments).to_string()]);
        }
        let label = format!("bind {:?} with key {:?}", spec.queue, spec.key);
        match (ctl.json(&bind), spec.refused) {
            (Ok(_), false) => {}
            (Err(refusal), true) => report.push(true, format!("{label}: refused ({refusal:#})")),
            (Ok(_), true) => report.push(false, format!("{label}: accepted, expected refused")),
            (Err(refusal), false) => report.push(false, format!("{label}: refused: {refusal:#}")),
        }
    }
    for spec in &cases.message {
        let label = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{:?}", spec.routing_key));
        let properties = json!({ "headers": json_map(&spec.headers) });
        ctl.json(&args(&[
            "publish",
            "--exchange",
            exchange,
            "--routing-key",
            &spec.routing_key,
            "--payload",
            &spec.body,
            "--properties",
            &properties.to_string(),
            "--vhost",
            vhost,
        ]))
        .with_context(|| format!("publishing {label}"))?;
        let mut got = BTreeSet::new();
        for queue in queues {
            let taken = ctl.json(&args(&[
                "get",
                "queue",
                &scratch(queue),
                "--count",
                "1",
                "--requeue",
                "false",
                "--vhost",
                vhost,
            ]))?;
            if taken.as_array().is_some_and(|copies| !copies.is_empty()) {
                got.insert(*queue);
            }
        }
        let expected: BTreeSet<&str> = spec.expect.iter().map(String::as_str).collect();
        report.compare(&label, &expected, &got);
    }
    Ok(report)
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Header or argument values as the management API's JSON.
fn json_map(values: &BTreeMap<String, Value>) -> Json {
    fn one(value: &Value) -> Json {
        match value {
            Value::Bool(b) => json!(b),
            Value::Int(i) => json!(i),
            Value::Float(f) => json!(f),
            Value::Text(s) => json!(s),
            // Depth is bounded by `cases::table`, which checked these values first.
            Value::List(items) => Json::Array(items.iter().map(one).collect()),
        }
    }
    Json::Object(values.iter().map(|(k, v)| (k.clone(), one(v))).collect())
}

/// `bourse-ctl --format json ...`, captured.
struct Ctl<'a> {
    remote: &'a RemoteArgs,
}

impl Ctl<'_> {
    /// Runs one command; its JSON answer (`null` when it printed nothing), or its error text.
    fn json(&self, args: &[String]) -> anyhow::Result<Json> {
        let mut command = ctl_command(self.remote);
        command
            .args(["--format", "json"])
            .args(args.iter().map(OsString::from));
        let output = command.output().map_err(|e| cannot_run(&command, &e))?;
        if !output.status.success() {
            let why = String::from_utf8_lossy(&output.stderr);
            bail!("{}", why.trim().trim_start_matches("Error: "));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        if text.trim().is_empty() {
            return Ok(Json::Null);
        }
        serde_json::from_str(&text).context("bourse-ctl printed something that is not JSON")
    }

    /// Deletes the scratch exchange and queues, ignoring what is not there.
    fn cleanup(&self, exchange: &str, queues: &BTreeSet<&str>, scratch: &dyn Fn(&str) -> String) {
        let vhost = self.remote.vhost.as_str();
        let _ = self.json(&args(&["delete", "exchange", exchange, "--vhost", vhost]));
        for queue in queues {
            let _ = self.json(&args(&[
                "delete",
                "queue",
                &scratch(queue),
                "--vhost",
                vhost,
            ]));
        }
    }
}
