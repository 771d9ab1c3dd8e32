//! Any byte string given to the EIF reader yields a description or an error, never a panic,
//! and never an allocation driven by a size field (sections are streamed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    for require_crc in [true, false] {
        let _ = packaging::eif::describe_reader(data, Path::new("fuzz.eif"), data.len() as u64, require_crc);
    }
});
