//! cargo-fuzz entry for `content_header`; the body is [`bourse_fuzz_harness::content_header::run`], shared with the
//! stable corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bourse_fuzz_harness::content_header::run(data));
