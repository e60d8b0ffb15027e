//! `bourse plugin deploy` and `logs`: the sibling `bourse-ctl` binary does the HTTP (its
//! `plugin deploy` and `plugin logs`), so the project has one management API client.
//!
//! Which `bourse-ctl` runs: `$BOURSE_CTL`, else the one next to this `bourse` binary, else
//! `PATH`'s. The connection options are passed through; unset, `bourse-ctl` reads its own
//! `BOURSE_URL`, `BOURSE_USER` and `BOURSE_PASSWORD` (default `http://127.0.0.1:15672`, guest).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;
use clap::Args;

use super::Project;

/// Where and as whom.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The vhost whose exchange type it is.
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// The management API's base URL [default: bourse-ctl's, http://127.0.0.1:15672]
    #[arg(long)]
    pub url: Option<String>,
    /// The user logging in to the API [default: bourse-ctl's, guest]
    #[arg(long)]
    pub user: Option<String>,
    /// Its password [default: bourse-ctl's]
    #[arg(long)]
    pub password: Option<String>,
}

/// Uploads the project's component to `remote.vhost`.
pub fn deploy(project: &Project, remote: &RemoteArgs) -> anyhow::Result<()> {
    let wasm = project.wasm();
    if !wasm.is_file() {
        bail!(
            "no component at {}: run `bourse plugin build` first",
            wasm.display()
        );
    }
    let mut args: Vec<OsString> = vec!["plugin".into(), "deploy".into(), wasm.into()];
    args.extend(["--vhost".into(), remote.vhost.clone().into()]);
    ctl(remote, &args)
}

/// Shows what the type's exchanges logged in `remote.vhost`.
pub fn logs(project: &Project, remote: &RemoteArgs) -> anyhow::Result<()> {
    let args: Vec<OsString> = [
        "plugin",
        "logs",
        &project.manifest.name,
        "--vhost",
        &remote.vhost,
    ]
    .map(OsString::from)
    .into();
    ctl(remote, &args)
}

/// Runs `bourse-ctl [connection options] ARGS`, its output the author's.
fn ctl(remote: &RemoteArgs, args: &[OsString]) -> anyhow::Result<()> {
    let mut command = ctl_command(remote);
    let status = command
        .args(args)
        .status()
        .map_err(|e| cannot_run(&command, &e))?;
    if !status.success() {
        // bourse-ctl has said why on stderr.
        bail!("bourse-ctl failed ({status})");
    }
    Ok(())
}

/// `bourse-ctl` with the connection options of `remote`.
pub(super) fn ctl_command(remote: &RemoteArgs) -> Command {
    let mut command = Command::new(ctl_binary());
    for (flag, value) in [
        ("--url", &remote.url),
        ("--user", &remote.user),
        ("--password", &remote.password),
    ] {
        if let Some(value) = value {
            command.arg(flag).arg(value);
        }
    }
    command
}

/// Why `command` did not start.
pub(super) fn cannot_run(command: &Command, error: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot run {} ({error}): install bourse-ctl next to bourse or on PATH, or set BOURSE_CTL",
        command.get_program().to_string_lossy()
    )
}

fn ctl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BOURSE_CTL") {
        return path.into();
    }
    let sibling = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let path = dir.join(format!("bourse-ctl{}", std::env::consts::EXE_SUFFIX));
        path.is_file().then_some(path)
    });
    sibling.unwrap_or_else(|| PathBuf::from("bourse-ctl"))
}
