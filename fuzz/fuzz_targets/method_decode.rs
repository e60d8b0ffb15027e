//! cargo-fuzz entry for `method_decode`; the body is [`bourse_fuzz_harness::method_decode::run`], shared with the
//! stable corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bourse_fuzz_harness::method_decode::run(data));
