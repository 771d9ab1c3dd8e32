//! The checks are in `src/lib.rs` (`eif_describe`), so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| packaging_fuzz::eif_describe::run(data));
