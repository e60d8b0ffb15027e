//! `bourse plugin build`: the project's own toolchain, run as a child process whose output
//! the author sees, then the component moved to `<project>/<type>.wasm`.
//!
//! - Rust: `cargo build --release --target wasm32-wasip2` (the target dir is the project's
//!   `target/`, or `CARGO_TARGET_DIR`).
//! - Python: `componentize-py -d wit -w exchange-type componentize app`.
//! - JavaScript: `npm ci` once (no `node_modules/` yet), then `node build.mjs OUT wit`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{Lang, Project};

/// The Rust target a component is built for.
pub const RUST_TARGET: &str = "wasm32-wasip2";

/// Builds `project`; returns the component's path.
pub fn build(project: &Project) -> anyhow::Result<PathBuf> {
    let out = project.wasm();
    let tmp = out.with_extension("wasm.tmp");
    match project.manifest.lang {
        Lang::Rust => build_rust(project, &tmp)?,
        Lang::Python => {
            let tool = componentize_py(&project.dir);
            run(Command::new(&tool)
                .current_dir(&project.dir)
                .args([
                    "-d",
                    "wit",
                    "-w",
                    "exchange-type",
                    "componentize",
                    "app",
                    "-o",
                ])
                .arg(&tmp))
            .context(
                "componentize-py 0.25 is needed: `pip install componentize-py==0.25.1` (in a \
                 venv at .venv/, or set COMPONENTIZE_PY to its path)",
            )?;
        }
        Lang::Js => {
            if !project
                .dir
                .join("node_modules/@bytecodealliance/componentize-js")
                .is_dir()
            {
                run(Command::new("npm").current_dir(&project.dir).args([
                    "ci",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ]))
                .context(
                    "installing componentize-js with `npm ci` (node 20+ and npm are needed)",
                )?;
            }
            run(Command::new("node")
                .current_dir(&project.dir)
                .arg("build.mjs")
                .arg(&tmp)
                .arg("wit"))
            .context("componentize-js (node build.mjs)")?;
        }
    }
    std::fs::rename(&tmp, &out).with_context(|| {
        format!(
            "the toolchain finished but left no component at {}",
            tmp.display()
        )
    })?;
    Ok(out)
}

fn build_rust(project: &Project, out: &Path) -> anyhow::Result<()> {
    if let Ok(installed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        && installed.status.success()
        && !String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|t| t.trim() == RUST_TARGET)
    {
        bail!("the {RUST_TARGET} target is not installed: `rustup target add {RUST_TARGET}`");
    }
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&project.dir)
            .args(["build", "--release", "--target", RUST_TARGET]),
    )
    .context("cargo build")?;
    // A relative CARGO_TARGET_DIR is relative to where cargo ran: the project.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| project.dir.join(dir))
        .unwrap_or_else(|| project.dir.join("target"));
    let built = target_dir
        .join(RUST_TARGET)
        .join("release")
        .join(format!("{}.wasm", project.manifest.name.replace('-', "_")));
    std::fs::copy(&built, out)
        .with_context(|| format!("cannot copy {} to {}", built.display(), out.display()))?;
    Ok(())
}

/// componentize-py: `$COMPONENTIZE_PY`, the project's `.venv/`, else `PATH`'s.
fn componentize_py(dir: &Path) -> OsString {
    if let Some(tool) = std::env::var_os("COMPONENTIZE_PY") {
        return tool;
    }
    let venv = dir.join(".venv/bin/componentize-py");
    if venv.is_file() {
        return venv.into_os_string();
    }
    "componentize-py".into()
}

/// Runs `command` with the author's terminal; an error if it cannot start or fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command.status().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("`{program}` not found")
        } else {
            anyhow::anyhow!("cannot run `{program}`: {e}")
        }
    })?;
    if !status.success() {
        bail!("`{program}` failed ({status})");
    }
    Ok(())
}
