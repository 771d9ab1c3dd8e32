//! The fuzz targets' checks, one module per target (docs/fuzzing.md). `fuzz_targets/NAME.rs` is
//! a one-line libFuzzer entry point calling `NAME::run`; [`TARGETS`] lists them for the seed
//! replay (`tests/replay.rs`), and the modules' encoders write the seeds
//! (`examples/gen_seeds.rs`).
//!
//! | module | input |
//! |---|---|
//! | [`socks5_request`] | raw bytes: a SOCKS5 request or reply |
//! | [`socks5_greeting`] | raw bytes: a SOCKS5 greeting |
//! | [`policy_name`] | two bytes of port, then `PATTERN \0 NAME` |
//! | [`data_csv`] | a CSV data file |
//! | [`data_avro`] | an Avro data file (the magic is prepended when absent) |
//! | [`v2_request`] | an encapsulated v2 request, or a framed plaintext |
//! | [`store_apply`] | a byte-coded sequence of record batches and tombstone cleanups |
//! | [`socks5_policy`] | policy rules, a SOCKS5 request, then what DNS answers |
#![forbid(unsafe_code)]

pub mod data_avro;
pub mod data_csv;
pub mod inflation;
pub mod policy_name;
pub mod socks5_greeting;
pub mod socks5_policy;
pub mod socks5_request;
pub mod store_apply;
pub mod v2_request;

/// A target's checks on one input: they panic when an invariant does not hold.
pub type Check = fn(&[u8]);

/// Every target: its name (the `fuzz_targets/` file, the `seeds/` and `dicts/` entries) and check.
pub const TARGETS: &[(&str, Check)] = &[
    ("socks5_request", socks5_request::run),
    ("socks5_greeting", socks5_greeting::run),
    ("policy_name", policy_name::run),
    ("data_csv", data_csv::run),
    ("data_avro", data_avro::run),
    ("v2_request", v2_request::run),
    ("store_apply", store_apply::run),
    ("socks5_policy", socks5_policy::run),
];
