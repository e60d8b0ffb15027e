//! `bourse plugin ...`: tooling for plugin authors working outside this repository.
//!
//! - [`scaffold`]: `new` writes a self-contained project (the WIT, and for Rust the guest
//!   helpers) from templates built into the binary.
//! - [`toolchain`]: `build` runs the project's language toolchain and leaves `<type>.wasm`.
//! - [`cases`]: `test` loads the component in the broker's own WASM host (no broker, no
//!   network) and runs the routing cases of a TOML or JSON file.
//! - [`on_broker`]: `test --broker` runs the same cases on a broker the type is deployed to.
//! - [`remote`]: `deploy` and `logs` run the sibling `bourse-ctl` binary over the management
//!   API (one HTTP client in the project, not two).
//!
//! Everything here is the edge of the program (anyhow errors, text on stdout); nothing in the
//! broker calls it.

pub mod cases;
pub mod on_broker;
pub mod remote;
pub mod scaffold;
pub mod toolchain;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// The file `new` writes at a project's root; the other commands read it.
pub const MANIFEST: &str = "bourse-plugin.toml";

/// Largest manifest or cases file read, in bytes: these are small hand-written files.
pub const TEXT_FILE_MAX_BYTES: u64 = 1 << 20;

/// `bourse plugin <command>`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin project NAME (an exchange type name, `x-...`) in a new directory.
    New {
        /// The exchange type name, e.g. x-my-route: lowercase letters, digits and '-'.
        name: String,
        /// The language of the project.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The directory to create the project in (a new NAME/ directory is made there).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Build the project's component into <project>/<type>.wasm.
    Build(ProjectArg),
    /// Run the project's routing cases against its component, without a broker.
    Test {
        #[command(flatten)]
        project: ProjectArg,
        /// The cases file (TOML, or JSON if it ends in .json) [default: <project>/cases.toml]
        #[arg(long, value_name = "FILE")]
        cases: Option<PathBuf>,
        /// The component to test [default: <project>/<type>.wasm]
        #[arg(long, value_name = "FILE", conflicts_with = "broker")]
        wasm: Option<PathBuf>,
        /// Run the cases on a broker the type is deployed to (scratch exchange and queues,
        /// through bourse-ctl), instead of in this process.
        #[arg(long)]
        broker: bool,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
    /// Upload the component to a broker as a vhost's exchange type (a new version replaces
    /// the running one: its exchanges reload without losing their bindings).
    Deploy {
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
    /// The log lines of the type's exchanges on a broker.
    Logs {
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
}

/// Which project a command works on.
#[derive(Debug, Args)]
pub struct ProjectArg {
    /// The project directory (the one holding bourse-plugin.toml).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub project: PathBuf,
}

/// A project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js (through node).
    Js,
}

/// `bourse-plugin.toml`: what `new` decided, for the other commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The exchange type name, also the component's file name (`<name>.wasm`).
    pub name: String,
    /// The project's language.
    pub lang: Lang,
}

/// A project found on disk.
#[derive(Debug, Clone)]
pub struct Project {
    /// Its root directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Project {
    /// Reads the manifest of the project at `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(MANIFEST);
        let text = read_text(&path).with_context(|| {
            format!(
                "{} is not a plugin project (made by `bourse plugin new`)",
                dir.display()
            )
        })?;
        let manifest: Manifest =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        check_name(&manifest.name).with_context(|| format!("{}", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Where `build` leaves the component.
    pub fn wasm(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.manifest.name))
    }
}

/// Reads a small text file, refusing one over [`TEXT_FILE_MAX_BYTES`].
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    file.take(TEXT_FILE_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    if text.len() as u64 > TEXT_FILE_MAX_BYTES {
        bail!(
            "{} is larger than {} bytes",
            path.display(),
            TEXT_FILE_MAX_BYTES
        );
    }
    Ok(text)
}

/// An exchange type name a project can have: `x-` then lowercase ASCII letters, digits and
/// single dashes, at most 64 bytes. Stricter than the broker (which takes any `x-` name up to
/// 255 bytes) because the name is also a crate, a package and a file name.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let rest = name.strip_prefix("x-").unwrap_or_default();
    let ok = name.len() <= 64
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !rest.starts_with('-')
        && !rest.ends_with('-')
        && !rest.contains("--");
    if !ok {
        bail!(
            "invalid plugin name {name:?}: it must start with \"x-\", then lowercase letters, \
             digits and single dashes (e.g. x-my-route), at most 64 bytes"
        );
    }
    Ok(())
}

/// Runs one `bourse plugin` command.
pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, lang, dir } => {
            let project = scaffold::new_project(&dir, &name, lang)?;
            println!(
                "created {} ({}): next `cd {}` and `bourse plugin build`",
                project.display(),
                lang_name(lang),
                project.display()
            );
            Ok(())
        }
        PluginCommand::Build(project) => {
            let project = Project::open(&project.project)?;
            let wasm = toolchain::build(&project)?;
            let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
            println!("built {} ({size} bytes)", wasm.display());
            Ok(())
        }
        PluginCommand::Test {
            project,
            cases,
            wasm,
            broker,
            remote,
        } => {
            let project = Project::open(&project.project)?;
            let cases = cases.unwrap_or_else(|| project.dir.join("cases.toml"));
            let report = if broker {
                on_broker::run(&project, &cases::parse(&cases)?, &remote)?
            } else {
                let wasm = wasm.unwrap_or_else(|| project.wasm());
                cases::run_file(&project, &wasm, &cases)?
            };
            report.print();
            if report.failed() > 0 {
                bail!("{} of {} cases failed", report.failed(), report.total());
            }
            Ok(())
        }
        PluginCommand::Deploy { project, remote } => {
            let project = Project::open(&project.project)?;
            remote::deploy(&project, &remote)
        }
        PluginCommand::Logs { project, remote } => {
            let project = Project::open(&project.project)?;
            remote::logs(&project, &remote)
        }
    }
}

/// The language's name as `--lang` spells it.
pub fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["x-a", "x-my-route", "x-v2-hash"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = format!("x-{}", "a".repeat(63));
        for bad in [
            "", "x-", "my-route", "x-My", "x-a_b", "x--a", "x-a-", "x-a--b", "x-a/b", "x-..",
            "x-é", &long,
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
