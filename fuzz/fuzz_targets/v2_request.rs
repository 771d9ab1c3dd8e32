//! kv-protocol's server side on arbitrary input: the encapsulated request (header, HPKE), and,
//!
//! The checks are in `src/v2_request.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::v2_request::run(data));
