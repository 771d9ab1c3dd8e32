//! SOCKS5 greeting parser on arbitrary bytes: no panic, and a parsed greeting re-encodes to the
//!
//! The checks are in `src/socks5_greeting.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::socks5_greeting::run(data));
