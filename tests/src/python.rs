//! Running Python scripts (pika) from tests: the interpreter, and a bounded run that never
//! blocks the runtime driving the in-process broker.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How to make pika importable.
pub const INSTALL_HINT: &str = "python3 -m venv .venv && .venv/bin/pip install pika";
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The interpreter: `$BOURSE_PYTHON`, else `<workspace>/.venv/bin/python`, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("BOURSE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// How a script ended.
pub struct Output {
    /// Exit status 0.
    pub success: bool,
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// Everything it printed.
    pub stdout: String,
    /// Everything it printed to stderr.
    pub stderr: String,
}

/// Reads a child's pipe on a thread so a chatty child never blocks on a full pipe.
fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// Runs `python args...` to completion, killing it after `limit`. Waits without blocking the
/// runtime, which also drives the in-process broker.
pub async fn run_python(args: &[&std::ffi::OsStr], limit: Duration) -> Output {
    let py = python();
    // Run outside the workspace: from tests/, `import pika` would find the tests/pika/ script
    // directory as a namespace package.
    let mut child: Child = Command::new(&py)
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python interpreter {py:?}: {e}; set BOURSE_PYTHON or run `{INSTALL_HINT}`")
        });
    let out = collect(child.stdout.take().expect("stdout piped"));
    let err = collect(child.stderr.take().expect("stderr piped"));
    let deadline = tokio::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{py:?} {args:?} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Output {
        success: status.success(),
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Panics with the install hint unless pika is importable.
pub async fn require_pika() {
    let probe = run_python(
        &[
            "-c".as_ref(),
            "import pika; pika.BlockingConnection".as_ref(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        probe.success,
        "pika is not importable by {:?}; run `{INSTALL_HINT}` in the workspace or set \
         BOURSE_PYTHON\n{}",
        python(),
        probe.stderr
    );
}

/// A script of `tests/pika/`.
pub fn pika_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pika")
        .join(name)
}

/// Runs the pika script `name` of `tests/pika/` with `args` (bounded by `limit`), prints what
/// it printed, and requires it to exit 0 having printed `done` (its last line), so a script
/// that stopped early cannot pass.
pub async fn run_pika_checks(name: &str, args: &[&std::ffi::OsStr], limit: Duration, done: &str) {
    let script = pika_script(name);
    let mut argv = vec![script.as_os_str()];
    argv.extend_from_slice(args);
    let out = run_python(&argv, limit).await;
    println!("{}", out.stdout);
    assert!(
        out.success,
        "{name} failed (exit {:?})\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains(done),
        "{name} exited 0 without finishing its checks:\n{}",
        out.stdout
    );
}
