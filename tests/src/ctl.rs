//! The real `bourse-ctl` binary as a child process, for the CLI's tests (`tests/ctl.rs`):
//! each run is bounded in time, with its exit code, stdout and stderr captured.
//!
//! Which binary runs: `BOURSE_CTL_BIN` if set; otherwise `cargo build -p bourse-ctl --bin
//! bourse-ctl` is run once per test process into the test executable's target directory and
//! profile, as [`process`](crate::process) does for the broker (a no-op when up to date).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{Instant, sleep};

use crate::TempDir;

/// How long one run of the tool may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The tool pointed at one management API, as one user.
#[derive(Debug, Clone)]
pub struct Ctl {
    url: String,
    user: String,
    password: String,
}

/// What one run did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    /// The tool for the API at `addr`, as guest.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_url(&format!("http://{addr}"))
    }

    /// The tool for the API at `url`, as guest.
    pub fn with_url(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            user: "guest".into(),
            password: "guest".into(),
        }
    }

    /// The same API as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            url: self.url.clone(),
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// Runs `bourse-ctl --url URL --user U --password P ARGS...`, killed after [`RUN_TIMEOUT`].
    pub async fn run(&self, args: &[&str]) -> Run {
        let out = TempDir::new();
        let (stdout, stderr) = (out.path.join("stdout"), out.path.join("stderr"));
        let file = |path: &Path| std::fs::File::create(path).expect("create an output file");
        let mut child = Command::new(ctl_binary())
            .args(["--url", &self.url, "--user", &self.user, "--password"])
            .arg(&self.password)
            .args(args)
            .env_remove("BOURSE_URL")
            .env_remove("BOURSE_USER")
            .env_remove("BOURSE_PASSWORD")
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ctl_binary().display()));
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for bourse-ctl") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bourse-ctl {args:?} did not finish within {RUN_TIMEOUT:?}; stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(10)).await;
        };
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        Run {
            code: status.code(),
            stdout: read(&stdout),
            stderr: read(&stderr),
        }
    }

    /// Runs and expects exit code 0.
    #[track_caller]
    pub fn ok<'a>(&'a self, args: &'a [&'a str]) -> impl std::future::Future<Output = Run> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let run = self.run(args).await;
            assert_eq!(
                run.code,
                Some(0),
                "bourse-ctl {args:?} at {caller}: {run:?}"
            );
            run
        }
    }

    /// Runs with `--format json`, expects exit code 0, and parses stdout.
    #[track_caller]
    pub fn json<'a>(
        &'a self,
        args: &'a [&'a str],
    ) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let mut all = args.to_vec();
            all.extend(["--format", "json"]);
            let run = self.run(&all).await;
            assert_eq!(run.code, Some(0), "bourse-ctl {all:?} at {caller}: {run:?}");
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
                panic!("bourse-ctl {all:?} at {caller}: stdout is not JSON ({e}): {run:?}")
            })
        }
    }
}

/// The `bourse-ctl` binary; built (once per process) if need be. See the module docs.
pub fn ctl_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate) {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("BOURSE_CTL_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("BOURSE_CTL_BIN={} is not a file", bin.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(Path::parent)
        .ok_or_else(|| {
            format!(
                "the test executable {} is not in a target/<profile>/deps directory; set BOURSE_CTL_BIN",
                exe.display()
            )
        })?;
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory has a parent");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args([
            "build",
            "-p",
            "bourse-ctl",
            "--bin",
            "bourse-ctl",
            "--target-dir",
        ])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let out = build
        .output()
        .map_err(|e| format!("cannot run cargo to build bourse-ctl: {e}; set BOURSE_CTL_BIN"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        return Err(format!(
            "`cargo build -p bourse-ctl` failed ({}):\n{}",
            out.status,
            lines[lines.len().saturating_sub(30)..].join("\n")
        ));
    }
    let bin = profile_dir.join(format!("bourse-ctl{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the build succeeded but {} is missing",
            bin.display()
        ))
    }
}
