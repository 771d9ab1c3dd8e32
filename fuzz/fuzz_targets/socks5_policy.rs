//! A SOCKS5 CONNECT decided by the proxy's egress policy, as `vsockproxy` decides it: the check
//!
//! The checks are in `src/socks5_policy.rs`, so that the seed replay runs them without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nitro_kv_fuzz::socks5_policy::run(data));
