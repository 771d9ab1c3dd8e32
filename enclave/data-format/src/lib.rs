//! kv-data-format: the FlatBuffers types of one data-file record (`DataRecord` and the tables and
//! unions under it), as `flatc --rust` generates them from `enclave/schema/data_loading.fbs`.
//!
//! `data_loading_generated.rs` is flatc's output, unedited and checked in (no build script, so
//! building needs no flatc); `tests/drift.rs` regenerates it and fails when the two differ. The
//! generated accessors use `unsafe` to follow offsets without checks, which is sound only on a
//! buffer that the FlatBuffers verifier has accepted: kv-server reads untrusted rows through
//! `flatbuffers::root_with_opts` and nothing else. The unsafe code is flatc's, so this crate
//! allows it, and kv-server keeps `forbid(unsafe_code)`.

#[allow(
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    deprecated,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    reason = "flatc's generated code, kept byte for byte as flatc writes it"
)]
mod generated {
    include!("data_loading_generated.rs");
}

pub use generated::kv_server::*;

/// The `flatc --version` line of the compiler that generated this crate's code (tests/drift.rs).
pub const FLATC_VERSION: &str = "flatc version 25.12.19";
