//! The newc parser used by `describe`-side checks and tests: no panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = packaging::cpio::parse(data);
});
