//! The policy's rule compiler and name matcher on arbitrary input.
//!
//! The checks are in `src/policy_name.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::policy_name::run(data));
