//! The checks are in `src/lib.rs` (`cpio_parse`), so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| packaging_fuzz::cpio_parse::run(data));
