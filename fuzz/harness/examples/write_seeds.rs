//! Writes the hand-made seeds of every fuzz target under `fuzz/corpus/<target>/` (run from the
//! repository root: `cargo run -p bourse-fuzz-harness --example write_seeds`), before a first
//! fuzzing run or after changing `src/seeds.rs`; then `cargo fuzz cmin` keeps what adds coverage.

use std::path::Path;

use bourse_fuzz_harness::seeds::{TARGETS, for_target};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for target in TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = for_target(target);
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
