//! Replays every committed fuzz input on stable, through the same bodies the fuzzers run: the
//! files of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`, and the hand-made seeds
//! of `bourse_fuzz_harness::seeds` (so they stay covered whatever `cargo fuzz cmin` keeps).
//! A regression file is a crash once found: it must pass now.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bourse_fuzz_harness::seeds;

/// The committed inputs of `target`, corpus then regressions, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let started = Instant::now();
    let files = inputs(target);
    for path in &files {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            // A fuzzer running on the same corpus replaces files as it reduces them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        };
        eprintln!("{target}: {}", path.display());
        run(&data);
    }
    let seeds = seeds::for_target(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for (name, data) in &seeds {
        eprintln!("{target}: seed {name}");
        run(data);
    }
    eprintln!(
        "{target}: {} files and {} seeds in {:?}",
        files.len(),
        seeds.len(),
        started.elapsed()
    );
}

#[test]
fn frame_cutting() {
    replay("frame_cutting", bourse_fuzz_harness::frame_cutting::run);
}

#[test]
fn method_decode() {
    replay("method_decode", bourse_fuzz_harness::method_decode::run);
}

#[test]
fn field_table() {
    replay("field_table", bourse_fuzz_harness::field_table::run);
}

#[test]
fn content_header() {
    replay("content_header", bourse_fuzz_harness::content_header::run);
}

#[test]
fn connection() {
    replay("connection", bourse_fuzz_harness::connection::run);
}
