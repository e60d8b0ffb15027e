//! The real `bourse` binary as a child process, for tests that must kill the broker the hard way
//! (SIGKILL, no shutdown code runs) and start it again on the same data directory.
//!
//! The in-process [`TestBroker`](crate::TestBroker) cannot do that: killing it would kill the
//! test. Here the broker listens on a free loopback port with its data under a [`TempDir`];
//! stdout and stderr go to `broker.log` next to the data, and [`BrokerProcess::log_tail`] is
//! meant for assertion messages. With `BOURSE_KEEP_FAILED` set, the directory is kept (and its
//! path printed) when a test panics, so the segment files can be inspected.
//!
//! Which binary runs: `BOURSE_BIN` if set; otherwise `cargo build -p bourse --bin bourse` is run
//! once per test process with the profile of the test executable (a no-op taking a fraction of a
//! second when it is up to date: `cargo test -p bourse-tests` rebuilds the library the tests link,
//! never the binary, so a binary that merely exists may be stale). The binary under
//! `target/<profile>/` is then pinned to the `deps/bourse-<hash>` file it is a hard link of: the
//! uplifted path is shared by every checkout building into the same target directory, the hashed
//! one is not.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::time::{Instant, sleep, timeout};

use crate::TempDir;

/// How long a start may take until the port answers AMQP (recovery of the data included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`BrokerProcess::connect`] waits for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fresh ports tried when the first one turns out to be taken by the time the broker binds it.
const PORT_ATTEMPTS: u32 = 5;

/// How long a restart keeps retrying its fixed port while something else holds it.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// Lines of the broker's log shown by [`BrokerProcess::log_tail`] in assertion messages.
pub const LOG_TAIL_LINES: usize = 40;

/// A `bourse` child process with its own data directory and port, killed when dropped.
pub struct BrokerProcess {
    /// `None` only once `Drop` has decided to keep the directory.
    dir: Option<TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    addr: SocketAddr,
    args: Vec<OsString>,
    child: Option<Child>,
    starts: u32,
}

/// Why one start did not produce a broker answering AMQP.
#[derive(Debug)]
enum LaunchError {
    /// The broker exited because its port was taken.
    PortTaken,
    /// Anything else; the text is ready for a panic message.
    Failed(String),
}

impl BrokerProcess {
    /// Starts the broker on a free port with an empty data directory.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// Starts the broker with extra command-line flags (kept for every restart).
    pub async fn start_with_args(args: &[&str]) -> Self {
        let dir = TempDir::new();
        let data_dir = dir.path.join("data");
        let log_path = dir.path.join("broker.log");
        fs::create_dir_all(&data_dir).expect("create the data directory");
        let mut broker = Self {
            dir: Some(dir),
            data_dir,
            log_path,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            args: args.iter().map(OsString::from).collect(),
            child: None,
            starts: 0,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            broker.addr = free_port();
            match broker.launch().await {
                Ok(()) => return broker,
                Err(LaunchError::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(LaunchError::PortTaken) => {
                    panic!(
                        "{PORT_ATTEMPTS} free ports in a row were taken before the broker bound them"
                    )
                }
                Err(LaunchError::Failed(why)) => panic!("{why}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Tests run brokers side by side: no management API or Prometheus endpoint on their
    /// fixed ports unless the test asks for one.
    fn http_defaults(&self) -> Vec<&'static str> {
        let given = |flag: &str| {
            self.args
                .iter()
                .any(|a| a.to_str().is_some_and(|a| a.starts_with(flag)))
        };
        let mut out = Vec::new();
        for flag in ["--management-listen", "--prometheus-listen"] {
            if !given(flag) {
                out.extend([flag, "off"]);
            }
        }
        out
    }

    /// Kills the broker if it runs (see [`BrokerProcess::kill`]), then starts it again on the
    /// same data directory and port.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match self.launch().await {
                Ok(()) => return,
                Err(LaunchError::PortTaken) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(100)).await
                }
                Err(LaunchError::PortTaken) => panic!(
                    "restart: port {} still taken after {RESTART_PORT_WAIT:?}\n{}",
                    self.addr,
                    self.log_tail()
                ),
                Err(LaunchError::Failed(why)) => panic!("restart: {why}"),
            }
        }
    }

    /// Sends SIGKILL (what `Child::kill` does on Unix) and reaps the process. Panics if the
    /// broker is not running or had already exited on its own: a broker that dies by itself
    /// mid-test is a finding, not something to paper over.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("kill: the broker is not running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the broker had already exited ({status}) before it was killed\n{}",
                self.log_tail()
            );
        }
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("reap the killed broker");
    }

    /// Sends SIGTERM, as an operator's `kill` or a service manager would, and waits up to
    /// `limit` for the process to exit. Returns its exit status and how long it took; panics
    /// with the log's tail if it is still running at `limit` (it is then killed).
    pub async fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self
            .child
            .take()
            .expect("terminate: the broker is not running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for the broker") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the broker did not exit within {limit:?} of SIGTERM\n{}",
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the child process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The broker's listening address (127.0.0.1, fixed across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `amqp://guest:guest@ADDR/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The `--data-dir` the broker runs with.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// How many times the process has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// A connection as guest to `/`; panics with the log's tail if it does not open.
    pub async fn connect(&self) -> Connection {
        match timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&self.url(), ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => panic!(
                "cannot connect to {}: {error}\n{}",
                self.addr,
                self.log_tail()
            ),
            Err(_) => panic!(
                "no connection to {} within {CONNECT_TIMEOUT:?}\n{}",
                self.addr,
                self.log_tail()
            ),
        }
    }

    /// Waits (at most `limit`) until the running start has logged that its plugin directory
    /// is loaded (every start logs it once, after listening): from then on exchanges of those
    /// types can be declared, and durable ones of them are restored.
    pub async fn plugins_loaded(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.log().matches("plugin directory loaded").count() < self.starts() as usize {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the plugin directory was not loaded within {limit:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the broker has written so far, over all starts, without terminal colours.
    pub fn log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(&self.log_path).unwrap_or_default(),
        ))
    }

    /// The last [`LOG_TAIL_LINES`] lines of the log, framed for an assertion message.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!(
            "--- last {} lines of {} ---\n{}\n--- end of log ---",
            tail.len(),
            self.log_path.display(),
            tail.join("\n")
        )
    }

    /// One start: spawn on `self.addr`, then wait until the port speaks AMQP.
    async fn launch(&mut self) -> Result<(), LaunchError> {
        let bin = broker_binary();
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the broker log");
        writeln!(
            log,
            "=== start #{} of {} on {} ===",
            self.starts,
            bin.display(),
            self.addr
        )
        .expect("write the broker log");
        let log_start = log.seek(SeekFrom::End(0)).expect("broker log length");
        let stderr = log.try_clone().expect("clone the log handle");
        let child = Command::new(bin)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(self.http_defaults())
            .args(&self.args)
            // Plain text in the log file, whatever the subscriber's colour default.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                let since = self.log_since(log_start);
                if since.contains("cannot listen") || since.contains("Address already in use") {
                    return Err(LaunchError::PortTaken);
                }
                return Err(LaunchError::Failed(format!(
                    "the broker exited during start-up ({status})\n{}",
                    self.log_tail()
                )));
            }
            if speaks_amqp(&self.url()).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(LaunchError::Failed(format!(
                    "the broker did not answer AMQP on {} within {READY_TIMEOUT:?}\n{}",
                    self.addr,
                    self.log_tail()
                )));
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = Vec::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let _ = file.seek(SeekFrom::Start(offset));
            let _ = file.read_to_end(&mut text);
        }
        strip_ansi(&String::from_utf8_lossy(&text))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            return;
        }
        if std::env::var_os("BOURSE_KEEP_FAILED").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "keeping the failed test's broker directory {} (data/, broker.log)",
                    dir.path.display()
                );
                // Forgetting a TempDir only skips its removal.
                std::mem::forget(dir);
            }
        } else {
            eprintln!("set BOURSE_KEEP_FAILED=1 to keep the broker's data directory and log");
        }
    }
}

/// A loopback port nothing listens on right now (bind port 0, read it, release it). Another
/// process may take it before the broker binds it; [`BrokerProcess::start`] then retries.
pub fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// Whether a guest connection to `url` opens (it is closed again at once). A whole handshake
/// rather than a bare protocol header, so the broker logs an ordinary connection, not a failed
/// handshake.
async fn speaks_amqp(url: &str) -> bool {
    let probe = async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .ok()?;
        let _ = conn.close(200, "start-up probe".into()).await;
        Some(())
    };
    matches!(timeout(Duration::from_secs(2), probe).await, Ok(Some(())))
}

/// Removes terminal colour sequences (`ESC [ ... letter`), in case the log has them anyway.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The broker binary to run; built (once per process) if need be. See the module docs.
pub fn broker_binary() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_binary) {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    }
}

fn locate_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("BOURSE_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("BOURSE_BIN={} is not a file", bin.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let deps = exe.parent().filter(|d| d.ends_with("deps")).ok_or_else(|| {
        format!(
            "the test executable {} is not in a target/<profile>/deps directory; set BOURSE_BIN",
            exe.display()
        )
    })?;
    let profile_dir = deps.parent().expect("deps has a parent");
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory has a parent");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let bin = profile_dir.join(format!("bourse{}", std::env::consts::EXE_SUFFIX));

    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "-p", "bourse", "--bin", "bourse", "--target-dir"])
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
    let shown = format!(
        "cargo build -p bourse --bin bourse --target-dir {} ({profile})",
        target_dir.display()
    );
    match build.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            return Err(format!(
                "`{shown}` failed ({}); the crash tests need the broker binary:\n{}",
                out.status,
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
        Err(error) if bin.is_file() => eprintln!(
            "cannot run `{shown}` ({error}); using the existing {}, which may be stale",
            bin.display()
        ),
        Err(error) => {
            return Err(format!(
                "no broker binary at {} and `{shown}` cannot run: {error}; build it or set BOURSE_BIN",
                bin.display()
            ));
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "`{shown}` succeeded but {} is missing",
            bin.display()
        ));
    }
    Ok(pin_to_deps(&bin, deps))
}

/// The `deps/bourse-<hash>` file that `bin` is a hard link of, else `bin` itself.
fn pin_to_deps(bin: &Path, deps: &Path) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(meta), Ok(entries)) = (fs::metadata(bin), fs::read_dir(deps)) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if !name.starts_with("bourse-") || name.contains('.') {
                    continue;
                }
                if let Ok(m) = entry.metadata()
                    && m.dev() == meta.dev()
                    && m.ino() == meta.ino()
                {
                    return entry.path();
                }
            }
        }
    }
    bin.to_path_buf()
}
