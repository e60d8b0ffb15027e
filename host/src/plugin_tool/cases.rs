//! `bourse plugin test`: routing cases from a file, run against a component in the broker's
//! own WASM host ([`crate::exchange::wasm`]) with no broker and no network.
//!
//! The file (TOML, or JSON when its name ends in `.json`) holds the exchange's arguments, its
//! bindings (each to a queue, optionally expected to be refused by `validate-binding`), then
//! messages, each with the exact set of queues it must reach. The bindings are made on one
//! exchange, in order; then every message is routed through that exchange as the broker
//! would (same limits, same decision cache), and compared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use anyhow::{Context, bail};
use serde::Deserialize;

use super::{Project, read_text};
use crate::config::Config;
use crate::exchange::wasm::PluginManager;
use crate::exchange::{Binding, Destination, Name, Registry, RoutingInput};

/// At most this many bindings, and as many messages, in one file.
pub const CASES_MAX: usize = 10_000;
/// Names (queues, keys, header names) are AMQP short strings.
const SHORT_MAX: usize = 255;
/// How deep arrays of values may nest.
const DEPTH_MAX: usize = 8;

/// A cases file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    #[serde(default)]
    pub exchange: ExchangeSpec,
    #[serde(default)]
    pub binding: Vec<BindingSpec>,
    #[serde(default)]
    pub message: Vec<MessageSpec>,
}

/// The exchange the cases run on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSpec {
    #[serde(default)]
    pub arguments: BTreeMap<String, Value>,
}

/// One binding of a queue to the exchange.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    pub queue: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub arguments: BTreeMap<String, Value>,
    /// The plugin must refuse this binding (and it is then not made).
    #[serde(default)]
    pub refused: bool,
}

/// One message and where it must go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// A label for the report (default: the routing key).
    pub name: Option<String>,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    /// The body, as text.
    #[serde(default)]
    pub body: String,
    /// The queues it must reach: exactly these, in any order.
    pub expect: Vec<String>,
}

/// A header or argument value.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, integer, float, boolean or array of those"
)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    List(Vec<Value>),
}

/// What the run found, case by case.
#[derive(Debug, Default)]
pub struct Report {
    /// The exchange type the component provides (empty on a broker).
    pub type_name: String,
    /// One line per case: (passed, text).
    pub lines: Vec<(bool, String)>,
}

impl Report {
    pub(super) fn push(&mut self, passed: bool, text: String) {
        self.lines.push((passed, text));
    }

    /// One message's case: the queues it reached against those expected.
    pub(super) fn compare(&mut self, label: &str, expected: &BTreeSet<&str>, got: &BTreeSet<&str>) {
        if got == expected {
            self.push(true, format!("{label} -> {}", list(got)));
        } else {
            self.push(
                false,
                format!("{label}: expected {}, got {}", list(expected), list(got)),
            );
        }
    }

    pub fn total(&self) -> usize {
        self.lines.len()
    }

    pub fn failed(&self) -> usize {
        self.lines.iter().filter(|(ok, _)| !ok).count()
    }

    /// Prints every case, then the totals.
    pub fn print(&self) {
        for (passed, text) in &self.lines {
            println!("{} {text}", if *passed { "ok  " } else { "FAIL" });
        }
        println!(
            "{} passed, {} failed",
            self.total() - self.failed(),
            self.failed()
        );
    }
}

/// Reads `cases` and runs it against the component `wasm` of `project`.
pub fn run_file(project: &Project, wasm: &Path, cases: &Path) -> anyhow::Result<Report> {
    let cases = parse(cases)?;
    if !wasm.is_file() {
        bail!(
            "no component at {}: run `bourse plugin build` first",
            wasm.display()
        );
    }
    // Compiled components are cached in the project, as a broker caches them in its data
    // directory: the second run skips compilation.
    let config = Config {
        data_dir: project.dir.join(".bourse"),
        ..Config::default()
    };
    let report = run(&config, wasm, &cases)?;
    if report.type_name != project.manifest.name {
        bail!(
            "{} provides exchange type {:?}, but the project is {:?} ({}): deploy and \
             `test --broker` would use the wrong name",
            wasm.display(),
            report.type_name,
            project.manifest.name,
            super::MANIFEST
        );
    }
    Ok(report)
}

/// Parses and checks a cases file.
pub fn parse(path: &Path) -> anyhow::Result<Cases> {
    let text = read_text(path)?;
    let cases: Cases = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?
    };
    check(&cases).with_context(|| format!("{}", path.display()))?;
    Ok(cases)
}

fn check(cases: &Cases) -> anyhow::Result<()> {
    if cases.binding.len() > CASES_MAX || cases.message.len() > CASES_MAX {
        bail!("at most {CASES_MAX} bindings and {CASES_MAX} messages");
    }
    if cases.message.is_empty() {
        bail!("no [[message]] cases");
    }
    let short = |what: &str, text: &str| {
        if text.len() > SHORT_MAX {
            bail!("{what} {:?}... is over {SHORT_MAX} bytes", cut(text));
        }
        Ok(())
    };
    // Every value converts (names fit, arrays not too deep) before anything runs.
    table(&cases.exchange.arguments).context("[exchange] arguments")?;
    for binding in &cases.binding {
        table(&binding.arguments)
            .with_context(|| format!("arguments of the binding of {:?}", cut(&binding.queue)))?;
        short("queue name", &binding.queue)?;
        short("binding key", &binding.key)?;
        if binding.queue.is_empty() {
            bail!("a binding with an empty queue name");
        }
    }
    for message in &cases.message {
        table(&message.headers)
            .with_context(|| format!("headers of {:?}", cut(&message.routing_key)))?;
        short("routing key", &message.routing_key)?;
        for queue in &message.expect {
            short("queue name", queue)?;
        }
    }
    Ok(())
}

/// The first 40 characters of `text`, for messages.
fn cut(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Runs `cases` against the component at `wasm`, in a WASM host made from `config`.
pub fn run(config: &Config, wasm: &Path, cases: &Cases) -> anyhow::Result<Report> {
    let registry = Registry::default();
    let plugins = PluginManager::new(config, registry.clone())?;
    let status = plugins
        .load(wasm)
        .with_context(|| format!("{} does not load", wasm.display()))?;
    let ty = registry
        .get(&status.name)
        .with_context(|| format!("{} registered no type", status.name))?;
    println!(
        "{} {} from {}",
        status.name,
        status.current.version,
        wasm.display()
    );
    let arguments = table(&cases.exchange.arguments).context("[exchange] arguments")?;
    ty.validate(&arguments)
        .map_err(|e| anyhow::anyhow!("the plugin refused the exchange arguments: {e}"))?;
    let mut router = ty
        .create_in("/", "plugin-test", &arguments)
        .map_err(|e| anyhow::anyhow!("the plugin refused to make the exchange: {e}"))?;

    let mut report = Report {
        type_name: status.name.clone(),
        ..Report::default()
    };
    for spec in &cases.binding {
        let binding = Binding {
            destination: Destination::Queue(Name::from(spec.queue.as_str())),
            routing_key: Name::from(spec.key.as_str()),
            arguments: table(&spec.arguments)
                .with_context(|| format!("arguments of the binding of {:?}", spec.queue))?,
        };
        let label = format!("bind {:?} with key {:?}", spec.queue, spec.key);
        match (router.validate_binding(&binding), spec.refused) {
            (Ok(()), false) => router.add_binding(&binding),
            (Err(refusal), true) => report.push(true, format!("{label}: refused ({refusal})")),
            (Ok(()), true) => report.push(false, format!("{label}: accepted, expected refused")),
            (Err(refusal), false) => report.push(false, format!("{label}: refused: {refusal}")),
        }
    }

    let mut out = Vec::new();
    for spec in &cases.message {
        let label = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{:?}", spec.routing_key));
        let headers = table(&spec.headers).with_context(|| format!("headers of {label}"))?;
        let properties = BasicProperties::default().with_headers(headers);
        let input = RoutingInput {
            exchange: "plugin-test",
            routing_key: &spec.routing_key,
            properties: &properties,
            body: spec.body.as_bytes(),
        };
        out.clear();
        if let Err(error) = router.route(&input, &mut out) {
            report.push(false, format!("{label}: route failed: {error}"));
            continue;
        }
        let got: BTreeSet<&str> = out
            .iter()
            .filter_map(|d| match d {
                Destination::Queue(q) => Some(&**q),
                Destination::Exchange(_) => None,
            })
            .collect();
        let expected: BTreeSet<&str> = spec.expect.iter().map(String::as_str).collect();
        report.compare(&label, &expected, &got);
    }
    Ok(report)
}

fn list(queues: &BTreeSet<&str>) -> String {
    if queues.is_empty() {
        return "(no queue)".to_owned();
    }
    queues.iter().copied().collect::<Vec<_>>().join(", ")
}

/// A field table of `values`: text as long strings, integers as signed 64-bit, floats as
/// doubles, arrays as field arrays.
pub fn table(values: &BTreeMap<String, Value>) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::default();
    for (name, value) in values {
        if name.len() > SHORT_MAX {
            bail!("field name {:?}... is over {SHORT_MAX} bytes", cut(name));
        }
        table.insert(ShortString::from(name.as_str()), amqp(value, 0)?);
    }
    Ok(table)
}

fn amqp(value: &Value, depth: usize) -> anyhow::Result<AMQPValue> {
    Ok(match value {
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Int(i) => AMQPValue::LongLongInt(*i),
        Value::Float(f) => AMQPValue::Double(*f),
        Value::Text(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::List(items) => {
            if depth >= DEPTH_MAX {
                bail!("arrays nested deeper than {DEPTH_MAX}");
            }
            let items = items
                .iter()
                .map(|v| amqp(v, depth + 1))
                .collect::<anyhow::Result<Vec<_>>>()?;
            AMQPValue::FieldArray(FieldArray::from(items))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_cases(text: &str) -> anyhow::Result<Cases> {
        let cases: Cases = toml::from_str(text)?;
        check(&cases)?;
        Ok(cases)
    }

    #[test]
    fn a_file_parses_into_bindings_and_messages() {
        let cases = toml_cases(
            r#"
            [exchange]
            arguments = { mode = "fast", n = 3 }
            [[binding]]
            queue = "q"
            key = "k"
            arguments = { on = true, tags = ["a", 1, 2.5] }
            [[message]]
            routing_key = "k"
            headers = { region = "eu" }
            expect = ["q"]
            "#,
        )
        .expect("valid");
        assert_eq!(cases.binding.len(), 1);
        let arguments = table(&cases.binding[0].arguments).expect("table");
        assert_eq!(arguments.inner().len(), 2);
        let headers = table(&cases.message[0].headers).expect("table");
        assert!(matches!(
            headers.inner().get(&ShortString::from("region")),
            Some(AMQPValue::LongString(_))
        ));
    }

    #[test]
    fn hostile_files_are_refused_with_a_reason() {
        let refused = |text: &str| toml_cases(text).expect_err(text).to_string();
        assert!(refused("[[message]]\nexpect = []\nsurprise = 1").contains("surprise"));
        assert!(refused("").contains("no [[message]]"));
        assert!(
            refused("[[message]]\nheaders = { t = { a = 1 } }\nexpect = []").contains("string")
        );
        let long = format!(
            "[[message]]\nrouting_key = \"{}\"\nexpect = []",
            "k".repeat(300)
        );
        assert!(refused(&long).contains("over 255"));
        let deep = format!(
            "[[message]]\nheaders = {{ a = {}1{} }}\nexpect = []",
            "[".repeat(20),
            "]".repeat(20)
        );
        assert!(format!("{:#}", toml_cases(&deep).expect_err("too deep")).contains("deeper"));
    }
}
