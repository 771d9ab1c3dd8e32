//! Compression of a response's compression groups (each group separately, so that the
//! compression ratio of one group says nothing about another): none or gzip (RFC 1952, flate2).
//! Brotli is named by the draft but not supported here; a request that accepts only brotli gets
//! uncompressed groups.

use std::io::{Read, Write};

use crate::ProtocolError;
use crate::framing::Compression;

/// The compression for a response to a request whose `acceptCompression` lists `accepted`:
/// gzip when accepted, otherwise none.
pub fn negotiate<S: AsRef<str>>(accepted: &[S]) -> Compression {
    if accepted.iter().any(|a| a.as_ref() == "gzip") { Compression::Gzip } else { Compression::None }
}

pub fn compress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing to a Vec cannot fail.
            encoder.write_all(data).map_err(|e| ProtocolError::Decompression(e.to_string()))?;
            encoder.finish().map_err(|e| ProtocolError::Decompression(e.to_string()))
        }
        Compression::Brotli => Err(ProtocolError::UnsupportedCompression(compression)),
    }
}

/// Inflates `data`; more than `max_len` bytes of output is an error (a small message must not
/// expand into gigabytes).
pub fn decompress(compression: Compression, data: &[u8], max_len: usize) -> Result<Vec<u8>, ProtocolError> {
    let too_big = |len| ProtocolError::Oversize { what: "decompressed content", len, max: max_len };
    match compression {
        Compression::None if data.len() > max_len => Err(too_big(data.len())),
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut out = Vec::new();
            let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::GzDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| ProtocolError::Decompression(e.to_string()))?;
            if out.len() > max_len {
                return Err(too_big(out.len()));
            }
            Ok(out)
        }
        Compression::Brotli => Err(ProtocolError::UnsupportedCompression(compression)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trip_and_limits() {
        let data = b"hello hello hello hello".repeat(100);
        let packed = compress(Compression::Gzip, &data).unwrap();
        assert!(packed.len() < data.len());
        assert_eq!(&packed[..2], &[0x1f, 0x8b], "a gzip member (RFC 1952)");
        assert_eq!(decompress(Compression::Gzip, &packed, data.len()).unwrap(), data);
        let err = decompress(Compression::Gzip, &packed, data.len() - 1).unwrap_err();
        assert_eq!(err.reason(), "oversize");
        assert_eq!(decompress(Compression::None, b"abc", 3).unwrap(), b"abc");
        assert_eq!(decompress(Compression::None, b"abc", 2).unwrap_err().reason(), "oversize");
        assert_eq!(decompress(Compression::Gzip, b"not gzip", 100).unwrap_err().reason(), "decompression");
        assert_eq!(compress(Compression::Brotli, b"x").unwrap_err().reason(), "unsupported_compression");
    }

    #[test]
    fn negotiation_prefers_gzip_and_falls_back_to_none() {
        assert_eq!(negotiate(&["none", "gzip"]), Compression::Gzip);
        assert_eq!(negotiate(&["gzip"]), Compression::Gzip);
        assert_eq!(negotiate(&["none"]), Compression::None);
        assert_eq!(negotiate(&["brotli"]), Compression::None);
        assert_eq!(negotiate::<&str>(&[]), Compression::None);
    }
}
