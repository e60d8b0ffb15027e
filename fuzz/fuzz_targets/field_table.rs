//! cargo-fuzz entry for `field_table`; the body is [`bourse_fuzz_harness::field_table::run`], shared with the
//! stable corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bourse_fuzz_harness::field_table::run(data));
