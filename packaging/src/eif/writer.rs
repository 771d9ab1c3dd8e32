//! Streaming EIF writer: one pass over the inputs, measuring PCRs and the CRC while it writes.
//!
//! The header carries the CRC of everything after it, so it is written twice: a placeholder
//! first, the real one at the end (the header's own CRC is prepended with `crc32fast`'s
//! `combine`). Section data is never held in memory as a whole.

use super::format::{self, Header, SectionKind};
use super::pcr::{Measured, Measurements, PcrHasher};
use std::io::{self, Read, Seek, SeekFrom, Write};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the EIF failed at offset {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("an EIF holds at most 32 sections; section {index} ({kind}) is one too many")]
    TooManySections { index: usize, kind: SectionKind },
    #[error(
        "section {index} ({kind}) was declared as {declared} bytes but {written} were written \
         (did an input file change during the build?)"
    )]
    SizeMismatch { index: usize, kind: SectionKind, declared: u64, written: u64 },
    #[error("reading the input for section {index} ({kind}) failed: {source}")]
    Input { index: usize, kind: SectionKind, source: io::Error },
}

pub struct EifWriter<W: Write + Seek> {
    out: W,
    header: Header,
    pos: u64,
    body_crc: crc32fast::Hasher,
    pcrs: PcrHasher,
}

/// The `Write` handed to a section's producer: counts, hashes and forwards.
pub struct SectionSink<'a, W: Write> {
    out: &'a mut W,
    crc: &'a mut crc32fast::Hasher,
    pcrs: &'a mut PcrHasher,
    measured: Measured,
    written: u64,
}

impl<W: Write> Write for SectionSink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        let done = &buf[..n];
        self.crc.update(done);
        self.pcrs.update(self.measured, done);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write + Seek> EifWriter<W> {
    /// Starts an image at the current position of `out` (which must be 0 for a file).
    pub fn new(mut out: W, flags: u16) -> Result<Self, WriteError> {
        let header = Header { flags, ..Header::new() };
        out.write_all(&header.to_bytes()).map_err(|source| WriteError::Io { offset: 0, source })?;
        Ok(EifWriter {
            out,
            header,
            pos: format::HEADER_SIZE as u64,
            body_crc: crc32fast::Hasher::new(),
            pcrs: PcrHasher::new(),
        })
    }

    /// Writes one section of `size` bytes produced by `fill`.
    pub fn section<F>(&mut self, kind: SectionKind, size: u64, fill: F) -> Result<(), WriteError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let index = self.header.section_count as usize;
        if index >= format::MAX_SECTIONS {
            return Err(WriteError::TooManySections { index, kind });
        }
        let offset = self.pos;
        let sh = format::section_header_bytes(kind, size);
        self.out.write_all(&sh).map_err(|source| WriteError::Io { offset, source })?;
        self.body_crc.update(&sh);
        let measured = match kind {
            SectionKind::Kernel | SectionKind::Cmdline => Measured::Boot,
            SectionKind::Ramdisk => {
                self.pcrs.start_ramdisk();
                Measured::Ramdisk
            }
            SectionKind::Metadata | SectionKind::Signature => Measured::NotMeasured,
        };
        let mut sink = SectionSink {
            out: &mut self.out,
            crc: &mut self.body_crc,
            pcrs: &mut self.pcrs,
            measured,
            written: 0,
        };
        fill(&mut sink).map_err(|source| WriteError::Input { index, kind, source })?;
        let written = sink.written;
        if written != size {
            return Err(WriteError::SizeMismatch { index, kind, declared: size, written });
        }
        self.header.section_offsets[index] = offset;
        self.header.section_sizes[index] = size;
        self.header.section_count += 1;
        self.pos = offset + format::SECTION_HEADER_SIZE as u64 + size;
        Ok(())
    }

    pub fn section_bytes(&mut self, kind: SectionKind, data: &[u8]) -> Result<(), WriteError> {
        self.section(kind, data.len() as u64, |w| w.write_all(data))
    }

    /// Copies exactly `size` bytes from `input` (a file, usually).
    pub fn section_from_reader<R: Read>(
        &mut self,
        kind: SectionKind,
        size: u64,
        input: R,
    ) -> Result<(), WriteError> {
        self.section(kind, size, |w| {
            io::copy(&mut input.take(size), w)?;
            Ok(())
        })
    }

    /// PCR0 of the sections written so far (signed images sign it before the signature section).
    pub fn pcr0_so_far(&self) -> [u8; 48] {
        self.pcrs.pcr0_now()
    }

    /// Measures the signing certificate (DER) into PCR8.
    pub fn set_certificate_der(&mut self, der: &[u8]) {
        self.pcrs.set_certificate_der(der);
    }

    /// Writes the final header and returns the output and the image's measurements.
    pub fn finish(mut self) -> Result<(W, Measurements), WriteError> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.header.to_bytes()[..format::CRC_OFFSET]);
        crc.combine(&self.body_crc);
        self.header.crc32 = crc.finalize();
        let io_err = |source| WriteError::Io { offset: 0, source };
        self.out.seek(SeekFrom::Start(0)).map_err(io_err)?;
        self.out.write_all(&self.header.to_bytes()).map_err(io_err)?;
        self.out.seek(SeekFrom::Start(self.pos)).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        Ok((self.out, self.pcrs.finish()))
    }
}
