//! `bourse plugin ...` run as the real binary, as an author outside the repository would: for
//! each language, `new` writes a project into a temporary directory outside the repository,
//! `build` runs the language's toolchain, `test` runs the project's routing cases (and fails,
//! exit 1, on a wrong expectation), `deploy` uploads the component to an in-process broker
//! through `bourse-ctl`, `test --broker` runs the cases there, and a lapin client routes
//! messages through an exchange of the new type. `logs` then reads the type's logs; for Rust,
//! a changed rule deployed again hot-reloads the exchange in place.
//!
//! Toolchains (installed by `plugins/build.sh`): the `wasm32-wasip2` target (the Rust build
//! shares `target/plugin-tool/` across runs, so only the project's own crates rebuild);
//! componentize-py from the repository's venv (`$BOURSE_PYTHON`'s directory, else
//! `<repo>/.venv/bin`); componentize-js by `npm ci --prefer-offline` from the project's lock,
//! the lock of `plugins/js/js-modulus-hash` that `plugins/build.sh` already installed, so
//! the npm cache serves it without the network. Each language builds once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bourse_tests::ctl::ctl_binary;
use bourse_tests::process::broker_binary;
use bourse_tests::wasm::{bodies, declare, plugin_bytes, publish_acked, queue_on};
use bourse_tests::{TempDir, TestBroker, bounded, confirm_channel};
use lapin::types::FieldTable;

/// One language's whole run, builds included (a cold Rust build is about a minute on 2 cores).
const LIMIT: Duration = Duration::from_secs(600);
/// One run of the tool.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The languages run one after another: three toolchains and three brokers compiling 12-18 MB
/// components at once on 2 cores made the broker's compile of an upload slow enough to fail.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// How one run of `bourse` ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `bourse ARGS` with `env`, off the runtime (the broker runs on it), killed after
/// [`RUN_LIMIT`].
async fn bourse(args: Vec<String>, env: Vec<(String, String)>) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = TempDir::new();
        let (stdout, stderr) = (out.path.join("stdout"), out.path.join("stderr"));
        let file = |path: &Path| std::fs::File::create(path).expect("output file");
        let mut child = Command::new(broker_binary())
            .args(&args)
            .envs(env)
            .env("BOURSE_CTL", ctl_binary())
            .stdin(Stdio::null())
            .stdout(file(&stdout))
            .stderr(file(&stderr))
            .spawn()
            .expect("run bourse");
        let deadline = std::time::Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        Run {
            code: status.and_then(|s| s.code()),
            stdout: read(&stdout),
            stderr: read(&stderr),
        }
    })
    .await
    .expect("the run's thread")
}

/// `bourse ARGS`, which must exit 0.
async fn ok(args: &[&str], env: &[(String, String)]) -> Run {
    let run = bourse(args.iter().map(|a| (*a).to_owned()).collect(), env.to_vec()).await;
    assert_eq!(run.code, Some(0), "bourse {args:?}: {run:#?}");
    run
}

/// The toolchain settings a language's build needs here (see the module docs).
fn toolchain_env(lang: &str) -> Vec<(String, String)> {
    match lang {
        "rust" => vec![(
            "CARGO_TARGET_DIR".into(),
            workspace()
                .join("target/plugin-tool")
                .to_string_lossy()
                .into_owned(),
        )],
        "python" => {
            let bin = std::env::var_os("BOURSE_PYTHON")
                .map(|p| PathBuf::from(p).with_file_name("componentize-py"))
                .unwrap_or_else(|| workspace().join(".venv/bin/componentize-py"));
            vec![("COMPONENTIZE_PY".into(), bin.to_string_lossy().into_owned())]
        }
        _ => vec![("npm_config_prefer_offline".into(), "true".into())],
    }
}

async fn from_nothing_to_a_routed_message(lang: &str) {
    let name = format!("x-tool-{lang}");
    let work = TempDir::new();
    assert!(
        !work.path.starts_with(workspace()),
        "the project must be outside the repository"
    );
    let dir = work.path.to_string_lossy().into_owned();
    let project = work.path.join(&name);
    let project_arg = project.to_string_lossy().into_owned();
    let env = toolchain_env(lang);

    ok(
        &["plugin", "new", &name, "--lang", lang, "--dir", &dir],
        &env,
    )
    .await;
    let again = bourse(
        ["plugin", "new", &name, "--lang", lang, "--dir", &dir]
            .map(String::from)
            .into(),
        env.clone(),
    )
    .await;
    assert_eq!(again.code, Some(1), "{again:#?}");
    assert!(again.stderr.contains("already exists"), "{again:#?}");

    ok(&["plugin", "build", "--project", &project_arg], &env).await;
    assert!(project.join(format!("{name}.wasm")).is_file());

    let tested = ok(&["plugin", "test", "--project", &project_arg], &env).await;
    assert!(tested.stdout.contains("2 passed, 0 failed"), "{tested:#?}");

    // A wrong expectation fails the run, and says which case and why.
    let wrong = project.join("wrong.toml");
    std::fs::write(
        &wrong,
        "[[binding]]\nqueue = \"orders\"\nkey = \"order.\"\n\n\
         [[message]]\nrouting_key = \"invoice.7\"\nexpect = [\"orders\"]\n",
    )
    .expect("write cases");
    let failed = bourse(
        vec![
            "plugin".into(),
            "test".into(),
            "--project".into(),
            project_arg.clone(),
            "--cases".into(),
            wrong.to_string_lossy().into_owned(),
        ],
        env.clone(),
    )
    .await;
    assert_eq!(failed.code, Some(1), "{failed:#?}");
    assert!(
        failed
            .stdout
            .contains("FAIL \"invoice.7\": expected orders, got (no queue)"),
        "{failed:#?}"
    );

    let broker = TestBroker::start_with(|cfg| {
        cfg.management_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let api = broker
        .handle()
        .expect("in-process broker")
        .management_addr()
        .expect("a management listener");
    let url = format!("http://{api}");
    let remote = [
        "--project",
        &project_arg,
        "--url",
        &url,
        "--user",
        "guest",
        "--password",
        "guest",
    ];
    let deployed = ok(&[&["plugin", "deploy"][..], &remote[..]].concat(), &env).await;
    assert!(deployed.stdout.contains(&name), "{deployed:#?}");

    // The project's cases on the broker: scratch exchange and queues, routed by the plugin.
    let on_broker = ok(
        &[&["plugin", "test", "--broker"][..], &remote[..]].concat(),
        &env,
    )
    .await;
    assert!(
        on_broker.stdout.contains("2 passed, 0 failed"),
        "{on_broker:#?}"
    );
    let wrong_arg = wrong.to_string_lossy().into_owned();
    let failed = bourse(
        [
            &["plugin", "test", "--broker", "--cases", &wrong_arg][..],
            &remote[..],
        ]
        .concat()
        .into_iter()
        .map(String::from)
        .collect(),
        env.clone(),
    )
    .await;
    assert_eq!(failed.code, Some(1), "{failed:#?}");
    assert!(
        failed
            .stdout
            .contains("FAIL \"invoice.7\": expected orders, got (no queue)"),
        "{failed:#?}"
    );

    let (_conn, ch) = {
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        (conn, ch)
    };
    declare(&ch, "demo", &name, FieldTable::default()).await;
    queue_on(&ch, "orders", "demo", "order.").await;
    queue_on(&ch, "everything", "demo", "").await;
    publish_acked(&ch, "demo", "order.eu.42", "first").await;
    publish_acked(&ch, "demo", "invoice.7", "second").await;
    assert_eq!(bodies(&ch, "orders").await, ["first"]);
    assert_eq!(bodies(&ch, "everything").await, ["first", "second"]);

    ok(&[&["plugin", "logs"][..], &remote[..]].concat(), &env).await;

    if lang == "rust" {
        // A new version, deployed over the running one: the exchange reloads in place and
        // routes by the new rule with the bindings it had (suffixes instead of prefixes).
        let lib = project.join("src/lib.rs");
        let source = std::fs::read_to_string(&lib).expect("read lib.rs");
        let changed = source.replace(
            "routing_key.starts_with(key.as_str())",
            "routing_key.ends_with(key.as_str())",
        );
        assert_ne!(source, changed, "the template's rule moved");
        std::fs::write(&lib, changed).expect("write lib.rs");
        ok(&["plugin", "build", "--project", &project_arg], &env).await;
        ok(&[&["plugin", "deploy"][..], &remote[..]].concat(), &env).await;
        publish_acked(&ch, "demo", "order.eu.42", "third").await;
        assert_eq!(bodies(&ch, "orders").await, Vec::<String>::new());
        assert_eq!(bodies(&ch, "everything").await, ["third"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_project_from_nothing_to_a_routed_message() {
    let _one_at_a_time = SERIAL.lock().await;
    bounded(LIMIT, from_nothing_to_a_routed_message("rust")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_project_from_nothing_to_a_routed_message() {
    let _one_at_a_time = SERIAL.lock().await;
    bounded(LIMIT, from_nothing_to_a_routed_message("python")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_project_from_nothing_to_a_routed_message() {
    let _one_at_a_time = SERIAL.lock().await;
    bounded(LIMIT, from_nothing_to_a_routed_message("js")).await;
}

/// Hostile input to the tool: clear errors and exit 1, never a panic (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_projects_and_cases_are_refused_clearly() {
    // Runs beside the three builds on a shared machine: generous, though alone it takes ~1 s.
    bounded(Duration::from_secs(300), async {
        let work = TempDir::new();
        let dir = work.path.to_string_lossy().into_owned();
        let refused = |args: Vec<String>, needle: &'static str| async move {
            let run = bourse(args.clone(), Vec::new()).await;
            assert_eq!(run.code, Some(1), "{args:?}: {run:#?}");
            assert!(run.stderr.contains(needle), "{args:?}: {run:#?}");
        };
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        for name in ["../x-escape", "x-", "Upper", "x-a/b"] {
            refused(
                args(&["plugin", "new", name, "--lang", "rust", "--dir", &dir]),
                "invalid plugin name",
            )
            .await;
        }
        refused(
            args(&["plugin", "build", "--project", &dir]),
            "is not a plugin project",
        )
        .await;
        ok(
            &["plugin", "new", "x-ok", "--lang", "python", "--dir", &dir],
            &[],
        )
        .await;
        let project = work.path.join("x-ok");
        let project_arg = project.to_string_lossy().into_owned();
        refused(
            args(&["plugin", "test", "--project", &project_arg]),
            "run `bourse plugin build` first",
        )
        .await;
        std::fs::write(project.join("x-ok.wasm"), b"not wasm").expect("write");
        refused(
            args(&["plugin", "test", "--project", &project_arg]),
            "not a WebAssembly file",
        )
        .await;
        // A component of another type than the project's: deploy would use the wrong name.
        std::fs::write(project.join("x-ok.wasm"), plugin_bytes("x-modulus-hash")).expect("write");
        refused(
            args(&["plugin", "test", "--project", &project_arg]),
            "provides exchange type \"x-modulus-hash\", but the project is \"x-ok\"",
        )
        .await;
        let cases = project.join("bad.json");
        std::fs::write(&cases, "{\"message\": [{\"expect\": [], \"surprise\": 1}]}")
            .expect("write");
        let cases_arg = cases.to_string_lossy().into_owned();
        refused(
            args(&[
                "plugin",
                "test",
                "--project",
                &project_arg,
                "--cases",
                &cases_arg,
            ]),
            "surprise",
        )
        .await;
        std::fs::write(
            project.join("bourse-plugin.toml"),
            "name = \"x-ok\"\nlang = \"cobol\"\n",
        )
        .expect("write");
        refused(
            args(&["plugin", "build", "--project", &project_arg]),
            "cobol",
        )
        .await;
    })
    .await;
}
