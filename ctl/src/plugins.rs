//! The `plugin` commands and `list plugins`, over bourse's own `/api/plugins` routes: a vhost's
//! WASM exchange types deployed (a new version of an existing type replaces it), rolled back
//! and removed, and every type's versions, state and per-exchange stats.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::VhostArg;
use crate::client::{Client, seg};
use crate::commands::array;
use crate::output::{Format, cell, line, print_done, print_json, print_rows};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Upload a component as the vhost's exchange type of the name it describes (a new type,
    /// or the new version of that type, which replaces the current one).
    Deploy {
        file: PathBuf,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Go back to the type's previous version.
    Rollback {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Remove the type from the vhost (its exchanges keep routing).
    Remove {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Bring a WASM exchange back into service (one marked failed after repeated plugin
    /// failures): a fresh instance, its bindings replayed, failures forgotten.
    Reset {
        /// The exchange.
        exchange: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Run FILE, a new version of type NAME, beside the active one on live traffic: its
    /// decisions are compared, never used, until `promote` or `drop-shadow`.
    Shadow {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// The shadow trial of type NAME: messages compared, mismatches and recent examples.
    ShadowStatus {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Make the shadow candidate of type NAME its version (a hot reload to it).
    Promote {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Stop the shadow trial of type NAME and forget its candidate.
    DropShadow {
        name: String,
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Load again every file of the broker's plugin directory that was refused, changed or
    /// not (e.g. a new version whose reload an exchange refused). Administrators only.
    Retry,
    /// Versions, sha256, state and per-exchange stats (every type, or NAME's).
    Status(Which),
    /// The log lines of the type's exchanges, if the broker reports them.
    Logs {
        name: String,
        #[command(flatten)]
        scope: ScopeArg,
    },
}

#[derive(Debug, Args)]
pub struct Which {
    name: Option<String>,
    #[command(flatten)]
    scope: ScopeArg,
}

/// Which plugins are looked at.
#[derive(Debug, Args)]
pub struct ScopeArg {
    /// Only this vhost's own types (default: the broker's and every vhost's).
    #[arg(long)]
    vhost: Option<String>,
}

/// Runs one `plugin` command.
pub fn run(client: &Client, format: Format, command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Deploy { file, vhost } => deploy(client, format, &file, &vhost.vhost),
        PluginCommand::Shadow { name, file, vhost } => {
            let opened = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let length = opened.metadata()?.len();
            let path = format!("/api/plugins/{}/{}/shadow", seg(&vhost.vhost), seg(&name));
            let trial = client
                .put_stream(&path, "application/wasm", length, opened)?
                .json;
            let sentence = format!(
                "shadow trial of '{name}' in vhost '{}' started: {} runs beside {}",
                vhost.vhost,
                describe_version(&trial["candidate"]),
                describe_version(&trial["active"])
            );
            print_done(format, &sentence, &trial)?;
            Ok(())
        }
        PluginCommand::ShadowStatus { name, vhost } => {
            let path = format!("/api/plugins/{}/{}/shadow", seg(&vhost.vhost), seg(&name));
            let trial = client.get(&path)?;
            if format == Format::Json {
                return Ok(print_json(&trial)?);
            }
            line(format!(
                "'{name}': candidate {} beside {}: {} compared, {} mismatches, {} candidate failures",
                describe_version(&trial["candidate"]),
                describe_version(&trial["active"]),
                cell(Some(&trial["compared"])),
                cell(Some(&trial["mismatches"])),
                cell(Some(&trial["candidate_failures"]))
            ))?;
            let side = |v: &Value| match v.get("destinations") {
                Some(to) => format!("[{}]", cell(Some(to))),
                None => format!("error: {}", cell(v.get("error"))),
            };
            for example in trial["examples"].as_array().into_iter().flatten() {
                line(format!(
                    "  exchange {} key '{}': active {} / candidate {}",
                    cell(Some(&example["exchange"])),
                    cell(Some(&example["routing_key"])),
                    side(&example["active"]),
                    side(&example["candidate"])
                ))?;
            }
            Ok(())
        }
        PluginCommand::Promote { name, vhost } => {
            let path = format!(
                "/api/plugins/{}/{}/shadow/promote",
                seg(&vhost.vhost),
                seg(&name)
            );
            let status = client.post_empty(&path)?.json;
            let sentence = format!(
                "shadow candidate promoted: '{name}' in vhost '{}' now runs {}",
                vhost.vhost,
                describe_version(&status["current"])
            );
            print_done(format, &sentence, &status)?;
            Ok(())
        }
        PluginCommand::DropShadow { name, vhost } => {
            let path = format!("/api/plugins/{}/{}/shadow", seg(&vhost.vhost), seg(&name));
            let reply = client.delete(&path, &[])?;
            let sentence = format!(
                "shadow trial of '{name}' in vhost '{}' dropped",
                vhost.vhost
            );
            print_done(format, &sentence, &reply.json)?;
            Ok(())
        }
        PluginCommand::Rollback { name, vhost } => {
            let path = format!("/api/plugins/{}/{}/rollback", seg(&vhost.vhost), seg(&name));
            let status = client.post_empty(&path)?.json;
            let sentence = format!(
                "plugin type '{name}' in vhost '{}' rolled back to {}",
                vhost.vhost,
                describe_version(&status["current"])
            );
            print_done(format, &sentence, &status)?;
            Ok(())
        }
        PluginCommand::Remove { name, vhost } => {
            let path = format!("/api/plugins/{}/{}", seg(&vhost.vhost), seg(&name));
            let reply = client.delete(&path, &[])?;
            let sentence = format!(
                "plugin type '{name}' removed from vhost '{}' (its exchanges keep routing)",
                vhost.vhost
            );
            print_done(format, &sentence, &reply.json)?;
            Ok(())
        }
        PluginCommand::Reset { exchange, vhost } => {
            let path = format!(
                "/api/plugins/{}/exchanges/{}/reset",
                seg(&vhost.vhost),
                seg(&exchange)
            );
            let status = client.post_empty(&path)?.json;
            let sentence = format!(
                "exchange '{exchange}' in vhost '{}' reset (plugin version {})",
                vhost.vhost,
                cell(Some(&status["plugin_version"]))
            );
            print_done(format, &sentence, &status)?;
            Ok(())
        }
        PluginCommand::Retry => {
            let report = client.post_empty("/api/plugins/retry")?.json;
            if format == Format::Json {
                print_json(&report)?;
                return Ok(());
            }
            let mut any = false;
            for loaded in report["loaded"].as_array().into_iter().flatten() {
                any = true;
                line(format!(
                    "loaded {} ({})",
                    cell(Some(&loaded["file"])),
                    cell(Some(&loaded["name"]))
                ))?;
            }
            for refused in report["refused"].as_array().into_iter().flatten() {
                any = true;
                line(format!(
                    "refused {}: {}",
                    cell(Some(&refused["file"])),
                    cell(Some(&refused["reason"]))
                ))?;
            }
            if !any {
                line("no refused plugin files")?;
            }
            Ok(())
        }
        PluginCommand::Status(which) => status(client, format, which),
        PluginCommand::Logs { name, scope } => logs(client, format, &name, scope.vhost.as_deref()),
    }
}

/// The plugin types the user sees: every one, or `vhost`'s own.
fn fetch(client: &Client, vhost: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let route = match vhost {
        Some(v) => format!("/api/plugins/{}", seg(v)),
        None => "/api/plugins".to_owned(),
    };
    array(client.get(&route)?, &route)
}

/// The types named `name` (one per scope), an error if there is none.
fn named(client: &Client, name: &str, vhost: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let found: Vec<Value> = fetch(client, vhost)?
        .into_iter()
        .filter(|p| p["name"] == name)
        .collect();
    if found.is_empty() {
        match vhost {
            Some(v) => bail!("no plugin type '{name}' in vhost '{v}'"),
            None => bail!("no plugin type '{name}'"),
        }
    }
    Ok(found)
}

/// `list plugins`: one line per type.
pub fn list(client: &Client, format: Format, vhost: Option<&str>) -> anyhow::Result<()> {
    let plugins = fetch(client, vhost)?;
    if format == Format::Json {
        print_json(&Value::Array(plugins))?;
        return Ok(());
    }
    let rows: Vec<Value> = plugins
        .iter()
        .map(|p| {
            json!({
                "name": p["name"], "scope": p["scope"], "state": p["state"],
                "version": p["current"]["version"],
                "sha256": short(&p["current"]["sha256"]),
                "previous": p["previous"]["version"],
                "exchanges": p["exchanges"].as_array().map_or(0, Vec::len),
            })
        })
        .collect();
    print_rows(
        format,
        &rows,
        &[
            ("name", "name"),
            ("scope", "scope"),
            ("state", "state"),
            ("version", "version"),
            ("sha256", "sha256"),
            ("previous", "previous"),
            ("exchanges", "exchanges"),
        ],
    )?;
    Ok(())
}

/// The first 12 hex digits of a sha256.
fn short(sha: &Value) -> Value {
    match sha.as_str() {
        Some(s) => s.chars().take(12).collect::<String>().into(),
        None => Value::Null,
    }
}

fn describe_version(v: &Value) -> String {
    format!(
        "version {} (sha256 {})",
        cell(v.get("version")),
        cell(v.get("sha256"))
    )
}

/// `plugin deploy FILE`: the component streamed as the body.
fn deploy(client: &Client, format: Format, file: &PathBuf, vhost: &str) -> anyhow::Result<()> {
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let length = opened.metadata()?.len();
    let path = format!("/api/plugins/{}", seg(vhost));
    let status = client
        .post_stream(&path, "application/wasm", length, opened)?
        .json;
    if format == Format::Json {
        print_json(&status)?;
        return Ok(());
    }
    let mut sentence = format!(
        "deployed plugin type '{}' in vhost '{vhost}': {}",
        cell(status.get("name")),
        describe_version(&status["current"])
    );
    if status["previous"].is_object() {
        sentence.push_str(&format!(
            ", replacing {}",
            describe_version(&status["previous"])
        ));
    }
    line(sentence)?;
    Ok(())
}

/// `plugin status [NAME]`: a table of versions, then one of exchanges.
fn status(client: &Client, format: Format, which: Which) -> anyhow::Result<()> {
    let vhost = which.scope.vhost.as_deref();
    let plugins = match &which.name {
        Some(name) => named(client, name, vhost)?,
        None => fetch(client, vhost)?,
    };
    if format == Format::Json {
        print_json(&Value::Array(plugins))?;
        return Ok(());
    }
    let mut versions = Vec::new();
    let mut exchanges = Vec::new();
    for p in &plugins {
        for slot in ["current", "previous"] {
            if p[slot].is_object() {
                let mut row = p[slot].clone();
                row["name"] = p["name"].clone();
                row["scope"] = p["scope"].clone();
                row["state"] = p["state"].clone();
                row["slot"] = slot.into();
                versions.push(row);
            }
        }
        for x in p["exchanges"].as_array().into_iter().flatten() {
            let mut row = x.clone();
            row["plugin"] = p["name"].clone();
            exchanges.push(row);
        }
    }
    print_rows(
        format,
        &versions,
        &[
            ("name", "name"),
            ("scope", "scope"),
            ("state", "state"),
            ("slot", "slot"),
            ("version", "version"),
            ("sha256", "sha256"),
            ("origin", "origin"),
            ("compile_ms", "compile_ms"),
            ("from_cache", "from_cache"),
        ],
    )?;
    print_rows(
        format,
        &exchanges,
        &[
            ("plugin", "plugin"),
            ("vhost", "vhost"),
            ("exchange", "name"),
            ("version", "plugin_version"),
            ("bindings", "bindings"),
            ("routed", "routed"),
            ("cache_hits", "cache_hits"),
            ("failures", "failures"),
            ("deadlines", "deadlines"),
            ("caps", "caps"),
            ("traps", "traps"),
            ("failed", "failed"),
        ],
    )?;
    Ok(())
}

/// `plugin logs NAME`: the `logs` of the type and of each of its exchanges.
fn logs(client: &Client, format: Format, name: &str, vhost: Option<&str>) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for p in named(client, name, vhost)? {
        let scope = cell(p.get("scope"));
        if let Some(lines) = p.get("logs") {
            found.push(json!({"scope": scope, "exchange": null, "logs": lines}));
        }
        for x in p["exchanges"].as_array().into_iter().flatten() {
            if let Some(lines) = x.get("logs") {
                found.push(
                    json!({"scope": scope, "vhost": x["vhost"], "exchange": x["name"],
                                  "logs": lines}),
                );
            }
        }
    }
    if found.is_empty() {
        bail!("the broker reports no logs for plugin type '{name}' (no `logs` in /api/plugins)");
    }
    if format == Format::Json {
        print_json(&Value::Array(found))?;
        return Ok(());
    }
    for source in &found {
        let from = match source["exchange"].as_str() {
            Some(x) => format!("{}/{x}", cell(source.get("vhost"))),
            None => cell(source.get("scope")),
        };
        for entry in source["logs"].as_array().into_iter().flatten() {
            line(format!("[{from}] {}", log_line(entry)))?;
        }
    }
    Ok(())
}

/// One log entry: a string as it is; an object's time, level and message when it has them.
fn log_line(entry: &Value) -> String {
    let Some(map) = entry.as_object() else {
        return cell(Some(entry));
    };
    let pick = |keys: &[&str]| keys.iter().find_map(|k| map.get(*k)).map(|v| cell(Some(v)));
    match pick(&["message", "msg", "line", "text"]) {
        Some(message) => [
            pick(&["time", "timestamp", "at"]),
            pick(&["level"]),
            Some(message),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" "),
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_show_time_level_and_message() {
        assert_eq!(log_line(&json!("plain")), "plain");
        assert_eq!(
            log_line(&json!({"time": "t1", "level": "info", "message": "hi"})),
            "t1 info hi"
        );
        assert_eq!(log_line(&json!({"x": 1})), r#"{"x":1}"#);
    }

    #[test]
    fn shas_are_shortened_for_the_list() {
        assert_eq!(short(&json!("0123456789abcdef")), json!("0123456789ab"));
        assert_eq!(short(&Value::Null), Value::Null);
    }
}
