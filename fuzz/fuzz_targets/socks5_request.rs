//! SOCKS5 request and reply parsers on arbitrary bytes: no panic, a consumed length within the
//!
//! The checks are in `src/socks5_request.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::socks5_request::run(data));
