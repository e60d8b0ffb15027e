//! `bourse plugin new`: a project that builds with no clone of the bourse repository.
//!
//! Every file comes from this binary: the templates next to this module, the WIT of the
//! broker that wrote them (`wit/exchange.wit`, so the project targets exactly the contract
//! this broker serves), and for Rust the guest helpers of `plugins/guest` as a crate inside
//! the project. `{{name}}` in a template becomes the type name.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Lang, MANIFEST, Manifest, check_name, lang_name};

/// The WIT package this broker serves, copied into every project.
const WIT: &str = include_str!("../../../wit/exchange.wit");
const CASES: &str = include_str!("templates/cases.toml");

const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml");
const RUST_LOCK: &str = include_str!("templates/rust/Cargo.lock");
const RUST_LIB: &str = include_str!("templates/rust/lib.rs");
const GUEST_CARGO: &str = include_str!("templates/rust/guest.Cargo.toml");
const GUEST_LIB: &str = include_str!("../../../plugins/guest/src/lib.rs");
const GUEST_HASH: &str = include_str!("../../../plugins/guest/src/hash.rs");
const GUEST_TABLE: &str = include_str!("../../../plugins/guest/src/table.rs");

const PYTHON_APP: &str = include_str!("templates/python/app.py");

const JS_APP: &str = include_str!("templates/js/app.js");
const JS_BUILD: &str = include_str!("templates/js/build.mjs");
const JS_PACKAGE: &str = include_str!("templates/js/package.json");
/// The example JavaScript plugin's lock: the same pinned componentize-js, so an npm cache
/// filled by `plugins/build.sh` (or by any earlier project) serves `npm ci` offline.
const JS_LOCK: &str = include_str!("../../../plugins/js/js-modulus-hash/package-lock.json");
const JS_LOCK_NAME: &str = "\"name\": \"x-js-modulus-hash\"";

/// Writes project `name` in a new directory `parent/name`; returns that directory.
pub fn new_project(parent: &Path, name: &str, lang: Lang) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    if !parent.is_dir() {
        bail!("{} is not a directory", parent.display());
    }
    let dir = parent.join(name);
    std::fs::create_dir(&dir).with_context(|| {
        if dir.exists() {
            format!("{} already exists", dir.display())
        } else {
            format!("cannot create {}", dir.display())
        }
    })?;
    let written = files(name, lang)?
        .into_iter()
        .try_for_each(|(path, text)| write_new(&dir, path, &text));
    if let Err(error) = written {
        // The directory is ours (made just above): leave nothing half-written behind.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(error);
    }
    Ok(dir)
}

/// The files of a project: (path in the project, contents).
fn files(name: &str, lang: Lang) -> anyhow::Result<Vec<(&'static str, String)>> {
    let fill = |template: &str| template.replace("{{name}}", name);
    let manifest = toml::to_string(&Manifest {
        name: name.to_owned(),
        lang,
    })?;
    let mut files = vec![
        (
            MANIFEST,
            format!(
                "# Written by `bourse plugin new`; read by the other `bourse plugin` commands.\n{manifest}"
            ),
        ),
        ("wit/exchange.wit", WIT.to_owned()),
        ("cases.toml", CASES.to_owned()),
        ("README.md", readme(name, lang)),
    ];
    match lang {
        Lang::Rust => {
            files.extend([
                (".gitignore", "/target/\n/.bourse/\n/*.wasm\n".to_owned()),
                ("Cargo.toml", fill(RUST_CARGO)),
                ("Cargo.lock", fill(RUST_LOCK)),
                ("src/lib.rs", fill(RUST_LIB)),
                ("guest/Cargo.toml", GUEST_CARGO.to_owned()),
                ("guest/src/lib.rs", guest_lib()?),
                ("guest/src/hash.rs", GUEST_HASH.to_owned()),
                ("guest/src/table.rs", GUEST_TABLE.to_owned()),
            ]);
        }
        Lang::Python => {
            files.extend([
                (
                    ".gitignore",
                    "/.bourse/\n/*.wasm\n__pycache__/\n".to_owned(),
                ),
                ("app.py", fill(PYTHON_APP)),
            ]);
        }
        Lang::Js => {
            files.extend([
                (
                    ".gitignore",
                    "/node_modules/\n/.bourse/\n/*.wasm\n".to_owned(),
                ),
                ("app.js", fill(JS_APP)),
                ("build.mjs", fill(JS_BUILD)),
                ("package.json", fill(JS_PACKAGE)),
                ("package-lock.json", js_lock(name)?),
            ]);
        }
    }
    Ok(files)
}

/// The guest crate's lib.rs, its WIT path moved from the repository's `wit/` (two levels up)
/// to the project's (one level up).
fn guest_lib() -> anyhow::Result<String> {
    const REPO_PATH: &str = "path: \"../../wit\"";
    if !GUEST_LIB.contains(REPO_PATH) {
        bail!("internal: plugins/guest/src/lib.rs no longer names {REPO_PATH}");
    }
    Ok(GUEST_LIB.replacen(REPO_PATH, "path: \"../wit\"", 1))
}

/// The lock file with the project's name for the package's own (the root and `""` entries).
fn js_lock(name: &str) -> anyhow::Result<String> {
    if JS_LOCK.matches(JS_LOCK_NAME).count() != 2 {
        bail!("internal: the JavaScript lock file no longer names its package twice");
    }
    Ok(JS_LOCK.replace(JS_LOCK_NAME, &format!("\"name\": \"{name}\"")))
}

fn write_new(dir: &Path, relative: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The project's README: what is where and the commands, for this language.
fn readme(name: &str, lang: Lang) -> String {
    let (source, toolchain) = match lang {
        Lang::Rust => (
            "`src/lib.rs` (the `Router` impl; `guest/` is bourse's guest helper crate with the \
             bindings of `wit/`)",
            "cargo with the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`); \
             `cargo test` runs the native unit tests",
        ),
        Lang::Python => (
            "`app.py` (the `Router` class)",
            "componentize-py 0.25 (`pip install componentize-py==0.25.1`), found as \
             `$COMPONENTIZE_PY`, `.venv/bin/componentize-py` here, or on `PATH`",
        ),
        Lang::Js => (
            "`app.js` (the exported `router` object; `build.mjs` calls componentize-js)",
            "node 20+ and npm; the first build runs `npm ci` (componentize-js, pinned by \
             `package-lock.json`)",
        ),
    };
    format!(
        "# {name}\n\n\
         A bourse exchange type ({lang}), made by `bourse plugin new`. The routing logic is in \
         {source}; `wit/exchange.wit` is the contract (`bourse:exchange@0.1.0`) and \
         `cases.toml` the routing cases.\n\n\
         Toolchain: {toolchain}.\n\n\
         ```sh\n\
         bourse plugin build                  # -> {name}.wasm\n\
         bourse plugin test                   # cases.toml against {name}.wasm, no broker needed\n\
         bourse plugin deploy --vhost /       # upload to a broker (management API; see --help)\n\
         bourse plugin logs --vhost /         # what its exchanges logged on the broker\n\
         ```\n\n\
         Then declare an exchange of type `{name}` from any AMQP client and bind queues to it.\n",
        lang = lang_name(lang),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_in_every_language() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = files("x-demo", lang).expect("templates");
            for (path, text) in &files {
                assert!(!text.contains("{{"), "{path} left a placeholder");
            }
            assert!(files.iter().any(|(p, _)| *p == "wit/exchange.wit"));
        }
        assert!(guest_lib().expect("guest lib").contains("path: \"../wit\""));
        let lock = js_lock("x-demo").expect("lock");
        assert_eq!(lock.matches("\"name\": \"x-demo\"").count(), 2);
    }
}
