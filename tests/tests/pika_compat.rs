//! Python pika compatibility: runs `tests/pika/compat.py` (pika's BlockingConnection) against
//! an in-process broker and requires it to pass.
//!
//! The interpreter is `$BOURSE_PYTHON`, else `<workspace>/.venv/bin/python`, else `python3`.
//! pika must be importable; set it up with
//! `python3 -m venv .venv && .venv/bin/pip install pika`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bourse_tests::TestBroker;

const INSTALL_HINT: &str = "python3 -m venv .venv && .venv/bin/pip install pika";
/// Upper bound for one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs a whole test under one deadline, so a broker that stops answering an unwrapped call
/// fails the test instead of hanging it.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    bourse_tests::bounded(TEST_LIMIT, test).await;
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("BOURSE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

struct Output {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
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
async fn run_python(args: &[&std::ffi::OsStr], limit: Duration) -> Output {
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

#[tokio::test]
async fn pika_blocking_connection_compat() {
    bounded(async {
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

        let broker = TestBroker::start().await;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pika/compat.py");
        let out = run_python(
            &[script.as_os_str(), broker.url().as_ref()],
            Duration::from_secs(60),
        )
        .await;
        println!("{}", out.stdout);
        assert!(
            out.success,
            "compat.py failed (exit {:?})\nstdout:\n{}\nstderr:\n{}",
            out.code, out.stdout, out.stderr
        );
        assert!(
            out.stdout.contains("all pika checks passed"),
            "compat.py exited 0 without finishing its checks:\n{}",
            out.stdout
        );
    })
    .await;
}
