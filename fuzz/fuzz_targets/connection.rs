//! cargo-fuzz entry for `connection`; the body is [`bourse_fuzz_harness::connection::run`], shared with the
//! stable corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bourse_fuzz_harness::connection::run(data));
