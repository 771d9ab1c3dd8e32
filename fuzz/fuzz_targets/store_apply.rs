//! kv-server's store (`Store::apply`, `Store::cleanup_tombstones`) against a model.
//!
//! The checks are in `src/store_apply.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::store_apply::run(data));
