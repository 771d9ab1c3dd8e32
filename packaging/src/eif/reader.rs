//! Streaming EIF reader: walks the sections in file order (as nitro-cli's `EifReader` does),
//! recomputes the CRC and the PCRs, and cross-checks the header's section table.
//!
//! Each error names the section index, its type when known, and the byte offset, so that a
//! truncated download or a flipped byte can be located.

use super::format::{self, Header, SectionKind};
use super::metadata::IdentityInfo;
use super::pcr::{Measured, Measurements, PcrHasher};
use super::signature;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// Sections that are parsed in memory (metadata, signature) must be smaller than this.
const MAX_IN_MEMORY_SECTION: u64 = 16 << 20;
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: reading at offset {offset} failed: {source}")]
    Io { path: PathBuf, offset: u64, source: io::Error },
    #[error("{path}: file is {len} bytes, shorter than the 548-byte EIF header")]
    ShortHeader { path: PathBuf, len: u64 },
    #[error("{path}: bad header: {source}")]
    Header { path: PathBuf, source: format::HeaderError },
    #[error(
        "{path}: truncated in section {index} ({what}) at offset {offset}: expected {expected} \
         more bytes, the file ends after {got}"
    )]
    Truncated { path: PathBuf, index: usize, what: String, offset: u64, expected: u64, got: u64 },
    #[error("{path}: section {index} at offset {offset} has invalid type code {code}")]
    SectionType { path: PathBuf, index: usize, offset: u64, code: u16 },
    #[error(
        "{path}: section {index} ({kind}) at offset {offset}: the header's table says {field} = \
         {table}, the section is at/has {actual}"
    )]
    Table {
        path: PathBuf,
        index: usize,
        kind: SectionKind,
        offset: u64,
        field: &'static str,
        table: u64,
        actual: u64,
    },
    #[error("{path}: the header announces {announced} sections, the file holds {found}")]
    SectionCount { path: PathBuf, announced: u16, found: usize },
    #[error(
        "{path}: {extra} unexpected bytes at offset {offset}, after the last section ({index} sections announced)"
    )]
    Trailing { path: PathBuf, offset: u64, extra: u64, index: usize },
    #[error(
        "{path}: section {index} ({kind}) at offset {offset} is {size} bytes, too large to parse (limit 16 MiB)"
    )]
    TooLarge { path: PathBuf, index: usize, kind: SectionKind, offset: u64, size: u64 },
    #[error("{path}: section {index} (metadata) at offset {offset} is not valid metadata JSON: {reason}")]
    Metadata { path: PathBuf, index: usize, offset: u64, reason: String },
    #[error("{path}: section {index} (signature) at offset {offset}: {reason}")]
    Signature { path: PathBuf, index: usize, offset: u64, reason: String },
    #[error("{path}: section {index} ({kind}) at offset {offset}: section size {size} overflows")]
    Overflow { path: PathBuf, index: usize, kind: SectionKind, offset: u64, size: u64 },
    #[error(
        "{path}: CRC mismatch: the header stores {stored:08x}, the file's bytes give {computed:08x} (corrupted image)"
    )]
    Crc { path: PathBuf, stored: u32, computed: u32 },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SectionInfo {
    #[serde(rename = "Index")]
    pub index: usize,
    #[serde(rename = "Type")]
    pub kind: SectionKind,
    /// Offset of the section header.
    #[serde(rename = "Offset")]
    pub offset: u64,
    /// Data bytes, without the 12-byte section header.
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "Flags")]
    pub flags: u16,
}

/// What `describe` reports; field names follow `nitro-cli describe-eif`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Description {
    #[serde(rename = "EifVersion")]
    pub version: u16,
    #[serde(rename = "Measurements")]
    pub measurements: Measurements,
    #[serde(rename = "IsSigned")]
    pub is_signed: bool,
    #[serde(rename = "CheckCRC")]
    pub crc_ok: bool,
    #[serde(rename = "Arch")]
    pub arch: &'static str,
    #[serde(rename = "DefaultMemory")]
    pub default_mem: u64,
    #[serde(rename = "DefaultCpus")]
    pub default_cpus: u64,
    #[serde(rename = "ImageName", skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    #[serde(rename = "ImageVersion", skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    #[serde(rename = "Metadata", skip_serializing_if = "Option::is_none")]
    pub metadata: Option<IdentityInfo>,
    #[serde(rename = "Cmdline")]
    pub cmdline: String,
    #[serde(rename = "Sections")]
    pub sections: Vec<SectionInfo>,
    #[serde(rename = "FileSize")]
    pub file_size: u64,
}

/// Reads `path` and returns its description; with `require_crc` a CRC mismatch is an error,
/// otherwise it is reported in `crc_ok`.
pub fn describe(path: &Path, require_crc: bool) -> Result<Description, ReadError> {
    let file = File::open(path).map_err(|source| ReadError::Open { path: path.into(), source })?;
    let file_size = file.metadata().map_err(|source| ReadError::Open { path: path.into(), source })?.len();
    describe_reader(BufReader::with_capacity(CHUNK, file), path, file_size, require_crc)
}

/// [`describe`] over any byte stream of `file_size` bytes; `path` only names it in errors.
/// (The fuzz target and the mutation tests feed it from memory.)
pub fn describe_reader<R: Read>(
    mut input: R,
    path: &Path,
    file_size: u64,
    require_crc: bool,
) -> Result<Description, ReadError> {
    let p = || path.to_path_buf();
    let mut hbuf = [0u8; format::HEADER_SIZE];
    let got =
        read_full(&mut input, &mut hbuf).map_err(|source| ReadError::Io { path: p(), offset: 0, source })?;
    if got < format::HEADER_SIZE {
        return Err(ReadError::ShortHeader { path: p(), len: got as u64 });
    }
    let header = Header::from_bytes(&hbuf).map_err(|source| ReadError::Header { path: p(), source })?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&hbuf[..format::CRC_OFFSET]);
    let mut pcrs = PcrHasher::new();
    let mut sections = Vec::new();
    let mut metadata = None;
    let mut cmdline = Vec::new();
    let mut is_signed = false;
    let mut offset = format::HEADER_SIZE as u64;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let index = sections.len();
        let mut sh = [0u8; format::SECTION_HEADER_SIZE];
        let got =
            read_full(&mut input, &mut sh).map_err(|source| ReadError::Io { path: p(), offset, source })?;
        if got == 0 {
            break;
        }
        if index >= header.section_count as usize {
            return Err(ReadError::Trailing {
                path: p(),
                offset,
                extra: file_size.saturating_sub(offset),
                index: header.section_count as usize,
            });
        }
        if got < sh.len() {
            return Err(ReadError::Truncated {
                path: p(),
                index,
                what: "section header".into(),
                offset,
                expected: sh.len() as u64,
                got: got as u64,
            });
        }
        let (code, flags, size) = format::parse_section_header(&sh);
        let kind =
            SectionKind::from_code(code).ok_or(ReadError::SectionType { path: p(), index, offset, code })?;
        let table = |field, table: u64, actual: u64| ReadError::Table {
            path: p(),
            index,
            kind,
            offset,
            field,
            table,
            actual,
        };
        if header.section_offsets[index] != offset {
            return Err(table("offset", header.section_offsets[index], offset));
        }
        if header.section_sizes[index] != size {
            return Err(table("size", header.section_sizes[index], size));
        }
        let data_offset = offset + format::SECTION_HEADER_SIZE as u64;
        let end = data_offset.checked_add(size).ok_or(ReadError::Overflow {
            path: p(),
            index,
            kind,
            offset,
            size,
        })?;
        crc.update(&sh);
        let measured = match kind {
            SectionKind::Kernel | SectionKind::Cmdline => Measured::Boot,
            SectionKind::Ramdisk => {
                pcrs.start_ramdisk();
                Measured::Ramdisk
            }
            SectionKind::Metadata | SectionKind::Signature => Measured::NotMeasured,
        };
        let keep = matches!(kind, SectionKind::Metadata | SectionKind::Signature | SectionKind::Cmdline);
        if keep && size > MAX_IN_MEMORY_SECTION {
            return Err(ReadError::TooLarge { path: p(), index, kind, offset, size });
        }
        let mut kept = Vec::new();
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(CHUNK as u64) as usize;
            let n = read_full(&mut input, &mut chunk[..want]).map_err(|source| ReadError::Io {
                path: p(),
                offset: end - remaining,
                source,
            })?;
            if n < want {
                return Err(ReadError::Truncated {
                    path: p(),
                    index,
                    what: kind.to_string(),
                    offset: data_offset,
                    expected: size,
                    got: size - remaining + n as u64,
                });
            }
            crc.update(&chunk[..n]);
            pcrs.update(measured, &chunk[..n]);
            if keep {
                kept.extend_from_slice(&chunk[..n]);
            }
            remaining -= n as u64;
        }
        match kind {
            SectionKind::Metadata => {
                let info: IdentityInfo = serde_json::from_slice(&kept).map_err(|e| ReadError::Metadata {
                    path: p(),
                    index,
                    offset,
                    reason: e.to_string(),
                })?;
                metadata = Some(info);
            }
            SectionKind::Signature => {
                let der = signature::certificate_der(&kept).map_err(|reason| ReadError::Signature {
                    path: p(),
                    index,
                    offset,
                    reason,
                })?;
                pcrs.set_certificate_der(&der);
                is_signed = true;
            }
            SectionKind::Cmdline => cmdline = kept,
            _ => {}
        }
        sections.push(SectionInfo { index, kind, offset, size, flags });
        offset = end;
    }
    if sections.len() != header.section_count as usize {
        return Err(ReadError::SectionCount {
            path: p(),
            announced: header.section_count,
            found: sections.len(),
        });
    }
    let computed = crc.finalize();
    if require_crc && computed != header.crc32 {
        return Err(ReadError::Crc { path: p(), stored: header.crc32, computed });
    }
    Ok(Description {
        version: header.version,
        measurements: pcrs.finish(),
        is_signed,
        crc_ok: computed == header.crc32,
        arch: if header.flags & format::FLAG_ARCH_ARM64 != 0 { "aarch64" } else { "x86_64" },
        default_mem: header.default_mem,
        default_cpus: header.default_cpus,
        image_name: metadata.as_ref().map(|m: &IdentityInfo| m.img_name.clone()),
        image_version: metadata.as_ref().map(|m| m.img_version.clone()),
        metadata,
        cmdline: String::from_utf8_lossy(&cmdline).into_owned(),
        sections,
        file_size,
    })
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
