//! kv-server's CSV data-file reader on arbitrary input.
//!
//! The checks are in `src/data_csv.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::data_csv::run(data));
