//! The framing of plaintext messages (the draft's §2.1.2): before encryption and after
//! decryption, every request and response is
//!
//! ```text
//! byte 0      bits 7-2 unused, bits 1-0 compression (0 none, 1 brotli, 2 gzip, 3 reserved)
//! bytes 1-4   payload length, big-endian
//! then        the payload (CBOR), then zero padding
//! ```
//!
//! Requests are never compressed. Responses are padded to one of the sizes 0, 128 B, 256 B, …,
//! 1 MiB, 2 MiB, so that their length says little about their content; a response that would
//! be larger than 2 MiB is an error. Requests are padded to the same sizes (the draft allows any
//! zero padding), without the upper bound.

use std::fmt;

use crate::ProtocolError;

/// The framing header: the compression byte and the 4-byte length.
pub const HEADER_LEN: usize = 5;
/// The largest framed response (the draft's last padding size).
pub const MAX_RESPONSE_LEN: usize = 2 * 1024 * 1024;
/// The smallest padding size above zero.
pub const MIN_PADDED_LEN: usize = 128;

/// The compression named in the framing header; for responses, of each compression group's
/// content (the outer CBOR is not compressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Brotli,
    Gzip,
}

impl Compression {
    /// The 2-bit value of the framing header.
    pub fn bits(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Brotli => 1,
            Compression::Gzip => 2,
        }
    }

    pub fn from_bits(bits: u8) -> Result<Compression, ProtocolError> {
        match bits & 0b11 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Brotli),
            2 => Ok(Compression::Gzip),
            other => Err(ProtocolError::ReservedCompression(other)),
        }
    }

    /// The name used in the request's `acceptCompression`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Brotli => "brotli",
            Compression::Gzip => "gzip",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "none" => Some(Compression::None),
            "brotli" => Some(Compression::Brotli),
            "gzip" => Some(Compression::Gzip),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The padding size for a framed message of `len` bytes: 0 for 0, else the smallest power of
/// two that is at least `len` and at least [`MIN_PADDED_LEN`].
pub fn padded_len(len: usize) -> usize {
    if len == 0 { 0 } else { len.max(MIN_PADDED_LEN).next_power_of_two() }
}

/// Frames `payload` with `compression`, zero-padded to `padded_len` bytes in total (no padding if
/// that is less than header + payload).
pub fn frame(compression: Compression, payload: &[u8], padded_len: usize) -> Result<Vec<u8>, ProtocolError> {
    let declared = u32::try_from(payload.len()).map_err(|_| ProtocolError::Oversize {
        what: "framed payload",
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    let total = padded_len.max(HEADER_LEN + payload.len());
    let mut out = Vec::with_capacity(total);
    out.push(compression.bits());
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(total, 0);
    Ok(out)
}

/// A request: uncompressed, padded to the next padding size.
pub fn frame_request(payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    frame(Compression::None, payload, padded_len(HEADER_LEN + payload.len()))
}

/// A response whose compression groups are compressed with `compression`, padded to the next
/// padding size; more than [`MAX_RESPONSE_LEN`] is an error.
pub fn frame_response(compression: Compression, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let len = HEADER_LEN + payload.len();
    if len > MAX_RESPONSE_LEN {
        return Err(ProtocolError::Oversize { what: "framed response", len, max: MAX_RESPONSE_LEN });
    }
    frame(compression, payload, padded_len(len))
}

/// Splits a framed message into its compression and payload; the padding is ignored (the
/// draft: "discarding the rest"). The unused high bits of the first byte are ignored too.
pub fn unframe(message: &[u8]) -> Result<(Compression, &[u8]), ProtocolError> {
    let Some((header, rest)) = message.split_first_chunk::<HEADER_LEN>() else {
        return Err(ProtocolError::Truncated { what: "framed message", len: message.len(), min: HEADER_LEN });
    };
    let compression = Compression::from_bits(header[0])?;
    let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let payload =
        rest.get(..declared).ok_or(ProtocolError::FramingLength { declared, available: rest.len() })?;
    Ok((compression, payload))
}

/// A request's payload: [`unframe`], and the compression must be "none".
pub fn unframe_request(message: &[u8]) -> Result<&[u8], ProtocolError> {
    match unframe(message)? {
        (Compression::None, payload) => Ok(payload),
        (other, _) => Err(ProtocolError::CompressedRequest(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout_and_round_trip() {
        let framed = frame(Compression::Gzip, b"abc", 0).unwrap();
        assert_eq!(framed, [2, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&framed).unwrap(), (Compression::Gzip, &b"abc"[..]));
        // Unused high bits are ignored.
        let mut high = framed.clone();
        high[0] |= 0b1111_1100;
        assert_eq!(unframe(&high).unwrap(), (Compression::Gzip, &b"abc"[..]));
    }

    #[test]
    fn padding_sizes_are_the_drafts() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 128);
        assert_eq!(padded_len(128), 128);
        assert_eq!(padded_len(129), 256);
        assert_eq!(padded_len(1024 * 1024 + 1), 2 * 1024 * 1024);
        let framed = frame_response(Compression::None, &[7; 200]).unwrap();
        assert_eq!(framed.len(), 256);
        assert!(framed[205..].iter().all(|&b| b == 0), "zero padding");
        assert_eq!(unframe(&framed).unwrap().1, &[7; 200][..]);
        let request = frame_request(b"x").unwrap();
        assert_eq!(request.len(), 128);
        assert_eq!(unframe_request(&request).unwrap(), b"x");
    }

    #[test]
    fn a_response_over_2_mib_is_refused() {
        let payload = vec![0; MAX_RESPONSE_LEN - HEADER_LEN];
        assert_eq!(frame_response(Compression::None, &payload).unwrap().len(), MAX_RESPONSE_LEN);
        let payload = vec![0; MAX_RESPONSE_LEN - HEADER_LEN + 1];
        let err = frame_response(Compression::None, &payload).unwrap_err();
        assert!(matches!(err, ProtocolError::Oversize { max: MAX_RESPONSE_LEN, .. }), "{err}");
    }

    #[test]
    fn bad_headers_are_named() {
        assert!(matches!(unframe(&[0, 0, 0]), Err(ProtocolError::Truncated { len: 3, min: 5, .. })));
        assert!(matches!(
            unframe(&[0, 0, 0, 0, 9, 1, 2]),
            Err(ProtocolError::FramingLength { declared: 9, available: 2 })
        ));
        assert_eq!(unframe(&[3, 0, 0, 0, 0]), Err(ProtocolError::ReservedCompression(3)));
        assert_eq!(
            unframe_request(&[2, 0, 0, 0, 0]),
            Err(ProtocolError::CompressedRequest(Compression::Gzip))
        );
        assert_eq!(unframe(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap_err().reason(), "bad_framing");
    }

    proptest! {
        #[test]
        fn unframe_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unframe(&bytes);
        }

        #[test]
        fn frame_then_unframe(payload in proptest::collection::vec(any::<u8>(), 0..600), pad in 0usize..2000) {
            let framed = frame(Compression::None, &payload, pad).unwrap();
            prop_assert_eq!(framed.len(), pad.max(HEADER_LEN + payload.len()));
            prop_assert_eq!(unframe_request(&framed).unwrap(), &payload[..]);
        }
    }
}
