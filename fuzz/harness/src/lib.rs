//! The bodies of bourse's fuzz targets, in one place for two callers: the cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` (nightly, libFuzzer) and `tests/replay.rs` (stable, `cargo test`), which
//! replays every committed corpus and regression file through the same functions.
//!
//! Each target is a module with `pub fn run(data: &[u8])` that panics when an invariant of the
//! wire layer breaks (libFuzzer records a panic, an abort or a stack overflow as a crash):
//!
//! - [`frame_cutting`]: `parse_frame` on a byte stream whole and cut into pieces agrees, never
//!   consumes an incomplete frame.
//! - [`method_decode`]: the hand-written basic.publish / basic.ack decoder agrees with
//!   amq-protocol's `parse_class`.
//! - [`field_table`]: the non-recursive depth walk (`check_table`, `check_properties`) agrees
//!   with a naive recursive walk, and amq-protocol parses only what it lets through.
//! - [`content_header`]: the plain content-header fast path agrees with the slow path.
//! - [`connection`]: a byte stream on a fresh TCP connection, after an optional valid handshake
//!   prefix, leaves the in-process broker able to serve the next client.
//!
//! See docs/fuzzing.md for how to run them.

pub mod connection;
pub mod content_header;
pub mod field_table;
pub mod frame_cutting;
pub mod method_decode;
pub mod seeds;
mod walk;
