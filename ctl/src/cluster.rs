//! The `cluster` commands, over `/api/cluster`: the members with their roles and lag, and
//! members added and removed at runtime (docs/cluster.md).

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Client, seg};
use crate::output::{Format, print_done, print_json, print_rows};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The members: role, leader, voter, and how far each is behind the leader's log.
    Status,
    /// Add a running node (started with the cluster's secret) as a member.
    Join {
        /// Its node name.
        name: String,
        /// Its inter-node address (HOST:PORT).
        address: String,
    },
    /// Remove a member.
    Leave {
        /// Its node name.
        name: String,
    },
}

pub fn run(client: &Client, format: Format, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => {
            let status = client.get("/api/cluster")?;
            if format == Format::Json {
                return Ok(print_json(&status)?);
            }
            let rows: Vec<Value> = status["members"].as_array().cloned().unwrap_or_default();
            print_rows(
                format,
                &rows,
                &[
                    ("name", "name"),
                    ("address", "addr"),
                    ("leader", "leader"),
                    ("voter", "voter"),
                    ("matched index", "matched_index"),
                    ("lag", "lag"),
                ],
            )?;
            Ok(())
        }
        ClusterCommand::Join { name, address } => {
            let body = json!({ "name": name, "address": address });
            let answer = client.post("/api/cluster/members", &body)?.json;
            print_done(
                format,
                &format!("node '{name}' joined the cluster"),
                &answer,
            )?;
            Ok(())
        }
        ClusterCommand::Leave { name } => {
            let path = format!("/api/cluster/members/{}", seg(&name));
            let answer = client.delete(&path, &[])?.json;
            print_done(format, &format!("node '{name}' left the cluster"), &answer)?;
            Ok(())
        }
    }
}
