//! kv-server's Avro data-file reader (container + FlatBuffers rows) on arbitrary input.
//!
//! The checks are in `src/data_avro.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::data_avro::run(data));
