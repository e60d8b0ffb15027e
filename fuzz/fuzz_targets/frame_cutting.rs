//! cargo-fuzz entry for `frame_cutting`; the body is [`bourse_fuzz_harness::frame_cutting::run`], shared with the
//! stable corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bourse_fuzz_harness::frame_cutting::run(data));
