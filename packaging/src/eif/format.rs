//! The EIF v4 on-disk layout, as `nitro-cli build-enclave` writes it.
//!
//! Source: aws-nitro-enclaves-image-format, `src/defs/mod.rs` (`EifHeader`, `EifSectionHeader`)
//! and `src/utils/mod.rs` (`EifBuilder`). All integers are big-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  magic ".eif"
//!      4     2  version (4)
//!      6     2  flags (bit 0: aarch64)
//!      8     8  default_mem (bytes; nitro-cli writes 1 GiB)
//!     16     8  default_cpus (nitro-cli writes 2)
//!     24     2  reserved
//!     26     2  section count (at most 32)
//!     28   256  section offsets, 32 x u64 (offset of each section's header)
//!    284   256  section sizes, 32 x u64 (data bytes, without the section header)
//!    540     4  unused
//!    544     4  crc32 (IEEE) of every byte of the file except these four
//!    548        sections: 12-byte header (type u16, flags u16, size u64), then the data
//! ```
//!
//! nitro-cli orders sections kernel, cmdline, metadata, ramdisks..., signature.

use std::fmt;

/// `.eif` in ASCII.
pub const MAGIC: [u8; 4] = *b".eif";
/// The version nitro-cli writes today (V3 added the signature, V4 the metadata section).
pub const VERSION: u16 = 4;
pub const MAX_SECTIONS: usize = 32;
pub const HEADER_SIZE: usize = 548;
pub const SECTION_HEADER_SIZE: usize = 12;
/// Offset of the crc32 field: it is the last field of the header.
pub const CRC_OFFSET: usize = HEADER_SIZE - 4;
/// Header flag for aarch64 images (cleared for x86_64).
pub const FLAG_ARCH_ARM64: u16 = 0x1;
/// nitro-cli's defaults for the header (`EifBuilder::new`).
pub const DEFAULT_MEM: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_CPUS: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SectionKind {
    Kernel,
    Cmdline,
    Ramdisk,
    Signature,
    Metadata,
}

impl SectionKind {
    pub fn code(self) -> u16 {
        match self {
            SectionKind::Kernel => 1,
            SectionKind::Cmdline => 2,
            SectionKind::Ramdisk => 3,
            SectionKind::Signature => 4,
            SectionKind::Metadata => 5,
        }
    }

    /// `None` for 0 (EifSectionInvalid) and unknown codes.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => SectionKind::Kernel,
            2 => SectionKind::Cmdline,
            3 => SectionKind::Ramdisk,
            4 => SectionKind::Signature,
            5 => SectionKind::Metadata,
            _ => return None,
        })
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SectionKind::Kernel => "kernel",
            SectionKind::Cmdline => "cmdline",
            SectionKind::Ramdisk => "ramdisk",
            SectionKind::Signature => "signature",
            SectionKind::Metadata => "metadata",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub flags: u16,
    pub default_mem: u64,
    pub default_cpus: u64,
    pub reserved: u16,
    pub section_count: u16,
    pub section_offsets: [u64; MAX_SECTIONS],
    pub section_sizes: [u64; MAX_SECTIONS],
    pub unused: u32,
    pub crc32: u32,
}

impl Header {
    pub fn new() -> Self {
        Header {
            version: VERSION,
            flags: 0,
            default_mem: DEFAULT_MEM,
            default_cpus: DEFAULT_CPUS,
            reserved: 0,
            section_count: 0,
            section_offsets: [0; MAX_SECTIONS],
            section_sizes: [0; MAX_SECTIONS],
            unused: 0,
            crc32: 0,
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_be_bytes());
        b[6..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..16].copy_from_slice(&self.default_mem.to_be_bytes());
        b[16..24].copy_from_slice(&self.default_cpus.to_be_bytes());
        b[24..26].copy_from_slice(&self.reserved.to_be_bytes());
        b[26..28].copy_from_slice(&self.section_count.to_be_bytes());
        for i in 0..MAX_SECTIONS {
            b[28 + 8 * i..36 + 8 * i].copy_from_slice(&self.section_offsets[i].to_be_bytes());
            b[284 + 8 * i..292 + 8 * i].copy_from_slice(&self.section_sizes[i].to_be_bytes());
        }
        b[540..544].copy_from_slice(&self.unused.to_be_bytes());
        b[544..548].copy_from_slice(&self.crc32.to_be_bytes());
        b
    }

    /// Parses the fixed-size header; the caller checks magic and version (so that it can name
    /// the file in its error).
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Result<Self, HeaderError> {
        if b[0..4] != MAGIC {
            return Err(HeaderError::Magic([b[0], b[1], b[2], b[3]]));
        }
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_be_bytes(a)
        };
        let version = u16_at(4);
        if version == 0 || version > VERSION {
            return Err(HeaderError::Version(version));
        }
        let section_count = u16_at(26);
        if section_count as usize > MAX_SECTIONS {
            return Err(HeaderError::SectionCount(section_count));
        }
        let mut section_offsets = [0u64; MAX_SECTIONS];
        let mut section_sizes = [0u64; MAX_SECTIONS];
        for i in 0..MAX_SECTIONS {
            section_offsets[i] = u64_at(28 + 8 * i);
            section_sizes[i] = u64_at(284 + 8 * i);
        }
        Ok(Header {
            version,
            flags: u16_at(6),
            default_mem: u64_at(8),
            default_cpus: u64_at(16),
            reserved: u16_at(24),
            section_count,
            section_offsets,
            section_sizes,
            unused: u32::from_be_bytes([b[540], b[541], b[542], b[543]]),
            crc32: u32::from_be_bytes([b[544], b[545], b[546], b[547]]),
        })
    }
}

impl Default for Header {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not an EIF: magic is {0:02x?}, expected \".eif\" (2e 65 69 66)")]
    Magic([u8; 4]),
    #[error("unsupported EIF version {0} (this reader knows versions 1 to 4)")]
    Version(u16),
    #[error("header claims {0} sections, at most 32 are allowed")]
    SectionCount(u16),
}

pub fn section_header_bytes(kind: SectionKind, size: u64) -> [u8; SECTION_HEADER_SIZE] {
    let mut b = [0u8; SECTION_HEADER_SIZE];
    b[0..2].copy_from_slice(&kind.code().to_be_bytes());
    // flags: nitro-cli always writes 0.
    b[4..12].copy_from_slice(&size.to_be_bytes());
    b
}

/// (type code, flags, size) of a section header.
pub fn parse_section_header(b: &[u8; SECTION_HEADER_SIZE]) -> (u16, u16, u64) {
    let mut size = [0u8; 8];
    size.copy_from_slice(&b[4..12]);
    (u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]]), u64::from_be_bytes(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_the_documented_size() {
        let mut h = Header::new();
        h.section_count = 5;
        h.section_offsets[0] = 548;
        h.section_sizes[31] = u64::MAX;
        h.crc32 = 0xdead_beef;
        let b = h.to_bytes();
        assert_eq!(b.len(), 548);
        assert_eq!(&b[0..4], b".eif");
        assert_eq!(&b[4..6], &[0, 4]);
        assert_eq!(&b[544..548], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Header::from_bytes(&b).unwrap(), h);
    }

    #[test]
    fn header_rejects_bad_magic_version_and_count() {
        let mut b = Header::new().to_bytes();
        b[0] = b'x';
        assert!(matches!(Header::from_bytes(&b), Err(HeaderError::Magic(_))));
        let mut b = Header::new().to_bytes();
        b[5] = 9;
        assert_eq!(Header::from_bytes(&b), Err(HeaderError::Version(9)));
        let mut b = Header::new().to_bytes();
        b[27] = 33;
        assert_eq!(Header::from_bytes(&b), Err(HeaderError::SectionCount(33)));
    }

    #[test]
    fn section_header_layout() {
        let b = section_header_bytes(SectionKind::Ramdisk, 0x0102);
        assert_eq!(b, [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(parse_section_header(&b), (3, 0, 0x0102));
        for code in 1..=5 {
            assert_eq!(SectionKind::from_code(code).unwrap().code(), code);
        }
        assert_eq!(SectionKind::from_code(0), None);
        assert_eq!(SectionKind::from_code(6), None);
    }
}
