//! What each command asks the API and prints (the `plugin` commands are in `plugins.rs`).
//! Paths follow docs/operations.md; every name in them goes through [`seg`].

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use ureq::http::StatusCode;

use crate::client::{Client, Error, seg};
use crate::output::{self, Column, Format, cell, field, line, print_done, print_json, print_rows};
use crate::{BindingArgs, Declare, Delete, ListKind, Publish};

/// Files at least this large get a progress bar on import (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 1024 * 1024;

/// How one kind of object is listed: the route of all of them, whether `{route}/{vhost}`
/// lists one vhost's (else the field that says the vhost, filtered here), and the columns.
struct Listing {
    route: &'static str,
    per_vhost_route: bool,
    vhost_field: Option<&'static str>,
    columns: &'static [Column],
}

fn listing(kind: ListKind) -> Listing {
    let (route, per_vhost_route, vhost_field, columns): (_, _, _, &[Column]) = match kind {
        ListKind::Vhosts => (
            "/api/vhosts",
            false,
            Some("name"),
            &[
                ("name", "name"),
                ("description", "description"),
                ("tags", "tags"),
                ("messages", "messages"),
                ("messages_ready", "messages_ready"),
                ("messages_unacknowledged", "messages_unacknowledged"),
            ],
        ),
        ListKind::Users => (
            "/api/users",
            false,
            None,
            &[
                ("name", "name"),
                ("tags", "tags"),
                ("hashing_algorithm", "hashing_algorithm"),
            ],
        ),
        ListKind::Permissions => (
            "/api/permissions",
            false,
            Some("vhost"),
            &[
                ("user", "user"),
                ("vhost", "vhost"),
                ("configure", "configure"),
                ("write", "write"),
                ("read", "read"),
            ],
        ),
        ListKind::Exchanges => (
            "/api/exchanges",
            true,
            None,
            &[
                ("vhost", "vhost"),
                ("name", "name"),
                ("type", "type"),
                ("durable", "durable"),
                ("auto_delete", "auto_delete"),
                ("internal", "internal"),
                ("arguments", "arguments"),
            ],
        ),
        ListKind::Queues => (
            "/api/queues",
            true,
            None,
            &[
                ("vhost", "vhost"),
                ("name", "name"),
                ("messages_ready", "messages_ready"),
                ("messages_unacknowledged", "messages_unacknowledged"),
                ("consumers", "consumers"),
                ("publish/s", "message_stats.publish_details.rate"),
                ("deliver_get/s", "message_stats.deliver_get_details.rate"),
            ],
        ),
        ListKind::Bindings => (
            "/api/bindings",
            true,
            None,
            &[
                ("vhost", "vhost"),
                ("source", "source"),
                ("destination", "destination"),
                ("destination_type", "destination_type"),
                ("routing_key", "routing_key"),
                ("arguments", "arguments"),
            ],
        ),
        ListKind::Connections => (
            "/api/connections",
            false,
            Some("vhost"),
            &[
                ("name", "name"),
                ("user", "user"),
                ("vhost", "vhost"),
                ("state", "state"),
                ("channels", "channels"),
                ("ssl", "ssl"),
            ],
        ),
        ListKind::Channels => (
            "/api/channels",
            false,
            Some("vhost"),
            &[
                ("name", "name"),
                ("user", "user"),
                ("vhost", "vhost"),
                ("state", "state"),
                ("consumers", "consumer_count"),
                ("messages_unacknowledged", "messages_unacknowledged"),
                ("prefetch_count", "prefetch_count"),
                ("confirm", "confirm"),
            ],
        ),
        ListKind::Consumers => (
            "/api/consumers",
            false,
            Some("queue.vhost"),
            &[
                ("vhost", "queue.vhost"),
                ("queue", "queue.name"),
                ("consumer_tag", "consumer_tag"),
                ("channel", "channel_details.name"),
                ("ack_required", "ack_required"),
                ("prefetch_count", "prefetch_count"),
                ("exclusive", "exclusive"),
                ("active", "active"),
            ],
        ),
        ListKind::Plugins => unreachable!("plugins are listed by plugins::list"),
    };
    Listing {
        route,
        per_vhost_route,
        vhost_field,
        columns,
    }
}

/// `list KIND`: every vhost's objects, or `vhost`'s.
pub fn list(
    client: &Client,
    format: Format,
    kind: ListKind,
    vhost: Option<&str>,
) -> anyhow::Result<()> {
    if kind == ListKind::Plugins {
        return crate::plugins::list(client, format, vhost);
    }
    let listing = listing(kind);
    let route = match vhost {
        Some(v) if listing.per_vhost_route => format!("{}/{}", listing.route, seg(v)),
        _ => listing.route.to_owned(),
    };
    let mut rows = array(client.get(&route)?, &route)?;
    if let (Some(v), Some(key), false) = (vhost, listing.vhost_field, listing.per_vhost_route) {
        rows.retain(|row| field(row, key).and_then(Value::as_str) == Some(v));
    }
    print_rows(format, &rows, listing.columns)?;
    Ok(())
}

/// The items of an answer that must be a JSON array.
pub fn array(value: Value, route: &str) -> anyhow::Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        other => bail!("GET {route}: expected a JSON array, got {other}"),
    }
}

/// "created" for 201, "updated" for 204, as the API tells them apart.
fn outcome(status: StatusCode) -> &'static str {
    if status == StatusCode::CREATED {
        "created"
    } else {
        "updated"
    }
}

fn in_vhost(vhost: &str) -> String {
    format!("in vhost '{vhost}'")
}

/// `declare ...`.
pub fn declare(client: &Client, format: Format, what: Declare) -> anyhow::Result<()> {
    let (path, body, what): (String, Value, String) = match what {
        Declare::Vhost {
            name,
            description,
            tags,
        } => {
            let mut body = Map::new();
            if let Some(d) = description {
                body.insert("description".into(), d.into());
            }
            if let Some(t) = tags {
                body.insert("tags".into(), t.into());
            }
            let path = format!("/api/vhosts/{}", seg(&name));
            (path, Value::Object(body), format!("vhost '{name}'"))
        }
        Declare::User {
            name,
            password,
            tags,
        } => (
            format!("/api/users/{}", seg(&name)),
            json!({ "password": password, "tags": tags }),
            format!("user '{name}'"),
        ),
        Declare::Permission {
            vhost,
            user,
            configure,
            write,
            read,
        } => (
            format!("/api/permissions/{}/{}", seg(&vhost.vhost), seg(&user)),
            json!({ "configure": configure, "write": write, "read": read }),
            format!("permissions of user '{user}' {}", in_vhost(&vhost.vhost)),
        ),
        Declare::Exchange {
            name,
            vhost,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
        } => (
            format!("/api/exchanges/{}/{}", seg(&vhost.vhost), seg(&name)),
            json!({
                "type": kind, "durable": durable, "auto_delete": auto_delete,
                "internal": internal, "arguments": arguments.unwrap_or_else(|| json!({})),
            }),
            format!("exchange '{name}' {}", in_vhost(&vhost.vhost)),
        ),
        Declare::Queue {
            name,
            vhost,
            durable,
            auto_delete,
            arguments,
        } => (
            format!("/api/queues/{}/{}", seg(&vhost.vhost), seg(&name)),
            json!({
                "durable": durable, "auto_delete": auto_delete,
                "arguments": arguments.unwrap_or_else(|| json!({})),
            }),
            format!("queue '{name}' {}", in_vhost(&vhost.vhost)),
        ),
        Declare::Binding(b) => {
            let reply = client.post(
                &binding_route(&b),
                &json!({
                    "routing_key": b.routing_key,
                    "arguments": b.arguments.clone().unwrap_or_else(|| json!({})),
                }),
            )?;
            print_done(
                format,
                &format!("{} created", describe_binding(&b)),
                &reply.json,
            )?;
            return Ok(());
        }
    };
    let reply = client.put(&path, &body)?;
    print_done(
        format,
        &format!("{what} {}", outcome(reply.status)),
        &reply.json,
    )?;
    Ok(())
}

/// `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
fn binding_route(b: &BindingArgs) -> String {
    format!(
        "/api/bindings/{}/e/{}/{}/{}",
        seg(&b.vhost.vhost),
        seg(&b.source),
        b.destination_type.letter(),
        seg(&b.destination)
    )
}

fn describe_binding(b: &BindingArgs) -> String {
    format!(
        "binding from exchange '{}' to {} '{}' with routing key '{}' {}",
        b.source,
        b.destination_type.name(),
        b.destination,
        b.routing_key,
        in_vhost(&b.vhost.vhost)
    )
}

/// `delete ...`.
pub fn delete(client: &Client, format: Format, what: Delete) -> anyhow::Result<()> {
    let (path, what) = match what {
        Delete::Vhost { name } => (
            format!("/api/vhosts/{}", seg(&name)),
            format!("vhost '{name}'"),
        ),
        Delete::User { name } => (
            format!("/api/users/{}", seg(&name)),
            format!("user '{name}'"),
        ),
        Delete::Exchange { name, vhost } => (
            format!("/api/exchanges/{}/{}", seg(&vhost.vhost), seg(&name)),
            format!("exchange '{name}' {}", in_vhost(&vhost.vhost)),
        ),
        Delete::Queue { name, vhost } => (
            format!("/api/queues/{}/{}", seg(&vhost.vhost), seg(&name)),
            format!("queue '{name}' {}", in_vhost(&vhost.vhost)),
        ),
        Delete::Permission { vhost, user } => (
            format!("/api/permissions/{}/{}", seg(&vhost.vhost), seg(&user)),
            format!("permissions of user '{user}' {}", in_vhost(&vhost.vhost)),
        ),
        Delete::Binding(b) => {
            let props = properties_key(client, &b)?;
            (
                format!("{}/{}", binding_route(&b), seg(&props)),
                describe_binding(&b),
            )
        }
    };
    let reply = client.delete(&path, &[])?;
    print_done(format, &format!("{what} deleted"), &reply.json)?;
    Ok(())
}

/// The `properties_key` of the binding `b` names: from the bindings between its source and
/// destination (`GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`, or, where the
/// broker has no such GET, the vhost's bindings filtered here), by routing key and, when
/// given, arguments.
fn properties_key(client: &Client, b: &BindingArgs) -> anyhow::Result<String> {
    let route = binding_route(b);
    let between = match client.get(&route) {
        Ok(list) => array(list, &route)?,
        Err(Error::Api { status, .. })
            if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
        {
            let all_route = format!("/api/bindings/{}", seg(&b.vhost.vhost));
            array(client.get(&all_route)?, &all_route)?
                .into_iter()
                .filter(|x| {
                    x["source"] == b.source.as_str()
                        && x["destination"] == b.destination.as_str()
                        && x["destination_type"] == b.destination_type.name()
                })
                .collect()
        }
        Err(e) => return Err(e.into()),
    };
    let matching: Vec<&Value> = between
        .iter()
        .filter(|x| x["routing_key"] == b.routing_key.as_str())
        .filter(|x| {
            b.arguments.as_ref().is_none_or(|args| {
                let theirs = x.get("arguments").cloned().unwrap_or_else(|| json!({}));
                &theirs == args
            })
        })
        .collect();
    match matching.as_slice() {
        [] => bail!("no {}", describe_binding(b)),
        [one] => one["properties_key"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the binding has no properties_key: {one}")),
        several => bail!(
            "{} bindings match the {}; tell them apart with --arguments",
            several.len(),
            describe_binding(b)
        ),
    }
}

/// `close connection NAME [--reason R]`.
pub fn close_connection(
    client: &Client,
    format: Format,
    name: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let headers: Vec<(&str, &str)> = reason.map(|r| ("x-reason", r)).into_iter().collect();
    let reply = client.delete(&format!("/api/connections/{}", seg(name)), &headers)?;
    print_done(format, &format!("connection '{name}' closed"), &reply.json)?;
    Ok(())
}

/// `purge queue NAME`.
pub fn purge(client: &Client, format: Format, vhost: &str, name: &str) -> anyhow::Result<()> {
    let path = format!("/api/queues/{}/{}/contents", seg(vhost), seg(name));
    let reply = client.delete(&path, &[])?;
    print_done(
        format,
        &format!("queue '{name}' {} purged", in_vhost(vhost)),
        &reply.json,
    )?;
    Ok(())
}

/// `get queue NAME`: RabbitMQ's array of messages.
pub fn get(
    client: &Client,
    format: Format,
    vhost: &str,
    name: &str,
    count: u32,
    requeue: bool,
) -> anyhow::Result<()> {
    let path = format!("/api/queues/{}/{}/get", seg(vhost), seg(name));
    let ackmode = if requeue {
        "ack_requeue_true"
    } else {
        "ack_requeue_false"
    };
    let body = json!({"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50000});
    let messages = array(client.post(&path, &body)?.json, &path)?;
    print_rows(
        format,
        &messages,
        &[
            ("routing_key", "routing_key"),
            ("exchange", "exchange"),
            ("redelivered", "redelivered"),
            ("message_count", "message_count"),
            ("payload_bytes", "payload_bytes"),
            ("payload_encoding", "payload_encoding"),
            ("payload", "payload"),
            ("properties", "properties"),
        ],
    )?;
    Ok(())
}

/// `publish --exchange E --routing-key K --payload P`.
pub fn publish(client: &Client, format: Format, p: &Publish) -> anyhow::Result<()> {
    let path = format!(
        "/api/exchanges/{}/{}/publish",
        seg(&p.vhost.vhost),
        seg(&p.exchange)
    );
    let body = message_body(p);
    let reply = client.post(&path, &body)?;
    let sentence = if reply.json["routed"] == true {
        "message published and routed"
    } else {
        "message published but not routed (no queue matched)"
    };
    print_done(format, sentence, &reply.json)?;
    Ok(())
}

/// The body of the publish and explain routes for `p`.
fn message_body(p: &Publish) -> Value {
    json!({
        "routing_key": p.routing_key,
        "payload": p.payload,
        "payload_encoding": "string",
        "properties": p.properties.clone().unwrap_or_else(|| json!({})),
    })
}

/// `explain`: where a message would go, without sending it (bourse's explain route): each
/// exchange on its way, what its router chose, and the queues it would reach.
pub fn explain(client: &Client, format: Format, p: &Publish) -> anyhow::Result<()> {
    let path = format!(
        "/api/exchanges/{}/{}/explain",
        seg(&p.vhost.vhost),
        seg(&p.exchange)
    );
    let body = message_body(p);
    let reply = client.post(&path, &body)?;
    if format == Format::Json {
        return Ok(print_json(&reply.json)?);
    }
    let text = |v: &Value| cell(Some(v));
    for hop in reply.json["hops"].as_array().into_iter().flatten() {
        let via = match hop["via"]["kind"].as_str() {
            Some("binding") => format!(", through a binding of {}", text(&hop["via"]["from"])),
            Some("alternate") => format!(", as alternate of {}", text(&hop["via"]["from"])),
            _ => String::new(),
        };
        line(format!(
            "exchange {} ({}){via}",
            text(&hop["exchange"]),
            text(&hop["type"])
        ))?;
        for reached in hop["reached"].as_array().into_iter().flatten() {
            let keys: Vec<String> = reached["bindings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| format!("'{}'", text(&b["routing_key"])))
                .collect();
            let keys = if keys.is_empty() {
                String::new()
            } else {
                format!(" [binding key {}]", keys.join(", "))
            };
            let missing = if reached["exists"] == false {
                " (does not exist: skipped)"
            } else {
                ""
            };
            line(format!(
                "  -> {} {}{keys}{missing}",
                text(&reached["destination_type"]),
                text(&reached["destination"])
            ))?;
        }
        if !hop["error"].is_null() {
            line(format!("  router failed: {}", text(&hop["error"])))?;
        }
        if !hop["alternate"].is_null() {
            line(format!(
                "  reached nothing: to alternate exchange {}",
                text(&hop["alternate"])
            ))?;
        }
    }
    let queues = text(&reply.json["queues"]);
    if reply.json["routed"] == true {
        line(format!("would reach: {queues}"))?;
    } else {
        line("would reach no queue (a mandatory publish would be returned)")?;
    }
    if let Some(due) = reply.json["held_until"].as_u64() {
        line(format!(
            "delayed: held until {due} ms after the epoch, then routed as above"
        ))?;
    }
    Ok(())
}

/// `export FILE`: the definitions as the broker sent them; `-` is stdout.
pub fn export(client: &Client, file: &Path) -> anyhow::Result<()> {
    let bytes = client.get_bytes("/api/definitions")?;
    if file == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        out.write_all(b"\n")?;
        return Ok(out.flush()?);
    }
    std::fs::write(file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "exported definitions to {} ({} bytes)",
        file.display(),
        bytes.len()
    );
    Ok(())
}

/// `import FILE`: streamed from the file through a progress bar of the bytes sent (`-`:
/// stdin, read first). Warnings (what the broker skipped) go to stderr.
pub fn import(client: &Client, format: Format, file: &Path) -> anyhow::Result<()> {
    let (length, reader): (u64, Box<dyn Read>) = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        (bytes.len() as u64, Box::new(std::io::Cursor::new(bytes)))
    } else {
        let opened =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        (opened.metadata()?.len(), Box::new(opened))
    };
    let bar = progress_bar(length);
    let reply = client.post_stream(
        "/api/definitions",
        "application/json",
        length,
        bar.wrap_read(reader),
    );
    bar.finish_and_clear();
    let reply = reply?;
    let warnings: Vec<String> = reply.json["warnings"]
        .as_array()
        .map(|w| w.iter().map(|x| output::cell(Some(x))).collect())
        .unwrap_or_default();
    match format {
        Format::Json => output::print_json(&reply.json)?,
        Format::Table => {
            let name = if file == Path::new("-") {
                "standard input".to_owned()
            } else {
                file.display().to_string()
            };
            output::line(format!("imported {name} ({length} bytes)"))?;
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
        }
    }
    Ok(())
}

/// A bar of `length` bytes on stderr, hidden for small files and when stderr is not a
/// terminal.
fn progress_bar(length: u64) -> ProgressBar {
    if length < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("importing");
    bar
}
