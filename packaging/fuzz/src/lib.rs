//! The checks of packaging's fuzz targets; `fuzz_targets/NAME.rs` is a one-line libFuzzer entry
//! point calling `NAME::run`, and [`TARGETS`] lists them for the seed replay (`tests/replay.rs`).
#![forbid(unsafe_code)]

/// A target's checks on one input: they panic when an invariant does not hold.
pub type Check = fn(&[u8]);

/// Every target: its name (the `fuzz_targets/` file, the `seeds/` and `dicts/` entries) and check.
pub const TARGETS: &[(&str, Check)] = &[("eif_describe", eif_describe::run), ("cpio_parse", cpio_parse::run)];

pub mod eif_describe {
    //! Any byte string given to the EIF reader yields a description or an error, never a panic,
    //! and never an allocation driven by a size field (sections are streamed). A description's
    //! sections lie inside the file, one after the other.

    use std::path::Path;

    /// Bytes of an EIF header and of a section header (packaging/src/eif/format.rs).
    const HEADER: u64 = 548;
    const SECTION_HEADER: u64 = 12;

    pub fn run(data: &[u8]) {
        for require_crc in [true, false] {
            let path = Path::new("fuzz.eif");
            let Ok(d) = packaging::eif::describe_reader(data, path, data.len() as u64, require_crc) else {
                continue;
            };
            assert_eq!(d.file_size, data.len() as u64);
            let mut next = HEADER;
            for s in &d.sections {
                assert_eq!(s.offset, next, "section {} does not follow the one before", s.index);
                next = s.offset + SECTION_HEADER + s.size;
            }
            assert_eq!(next, data.len() as u64, "the sections do not end at the end of the file");
        }
    }
}

pub mod cpio_parse {
    //! The newc parser used by `describe --list` and the tests: no panic on any input, and the
    //! entries it returns are disjoint pieces of the input (each a header of at least 112 bytes,
    //! name and padding included, then its data), so they never add up to more than the input.

    pub fn run(data: &[u8]) {
        let Ok(entries) = packaging::cpio::parse(data) else { return };
        let total: usize = entries.iter().map(|(_, _, content)| 112 + content.len()).sum();
        assert!(total <= data.len(), "{} entries of {total} bytes from {} bytes", entries.len(), data.len());
    }
}
