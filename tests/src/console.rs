//! Runs the headless-browser script of the web console, `tests/console/console.mjs`, with
//! Debian's Chromium through playwright-core (`scripts/test.sh` installs both).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Where the script keeps its screenshots: `target/console-shots/`.
pub fn shots_dir() -> PathBuf {
    let shots = repo().join("target/console-shots");
    std::fs::create_dir_all(&shots).expect("create the screenshot directory");
    shots
}

/// Runs the script against the console at `url` (user guest) with `env` (see the script's
/// header) for at most `limit`; panics with its output unless it succeeds, else returns its
/// standard output.
pub async fn run_script<K, V>(url: &str, env: &[(K, V)], limit: Duration) -> String
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let script_dir = repo().join("tests/console");
    assert!(
        script_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/test.sh (or `npm ci` in {})",
        script_dir.display()
    );
    let mut node = tokio::process::Command::new("node");
    node.arg("console.mjs")
        .current_dir(&script_dir)
        .env("BOURSE_CONSOLE_URL", url)
        .env("BOURSE_USER", "guest")
        .env("BOURSE_PASSWORD", "guest")
        .env("BOURSE_SHOTS", shots_dir())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    let out: Output = tokio::time::timeout(limit, node.output())
        .await
        .expect("the browser test finished in time")
        .expect("node runs (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}
