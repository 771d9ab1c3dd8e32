//! The signature section of a signed EIF: CBOR of `Vec<PcrSignature>` where each entry is a map
//! `{ "signing_certificate": PEM bytes, "signature": COSE_Sign1 bytes }` (nitro-cli serializes the
//! byte vectors with serde_cbor, i.e. as arrays of small integers; a byte string is accepted too).
//!
//! Only the certificate is needed here: PCR8 is the extend of SHA-384 over its DER form. The
//! COSE signature is not verified (that needs the certificate's key and is nitro-cli's job).

use base64::Engine;
use ciborium::Value;

/// Extracts the first entry's signing certificate and returns it as DER.
pub fn certificate_der(section: &[u8]) -> Result<Vec<u8>, String> {
    let value: Value = ciborium::de::from_reader(section).map_err(|e| format!("not valid CBOR: {e}"))?;
    let entries = value.as_array().ok_or("expected a CBOR array of PCR signatures")?;
    let first = entries.first().ok_or("the array of PCR signatures is empty")?;
    let map = first.as_map().ok_or("a PCR signature is not a CBOR map")?;
    let cert = map
        .iter()
        .find(|(k, _)| k.as_text() == Some("signing_certificate"))
        .map(|(_, v)| v)
        .ok_or("no signing_certificate in the first PCR signature")?;
    let pem = bytes_of(cert).ok_or("signing_certificate is neither bytes nor an array of bytes")?;
    pem_to_der(&pem)
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Bytes(b) => Some(b.clone()),
        Value::Array(items) => {
            items.iter().map(|i| i.as_integer().and_then(|n| u8::try_from(n).ok())).collect()
        }
        _ => None,
    }
}

/// Decodes the first PEM `CERTIFICATE` block.
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the certificate PEM is not UTF-8")?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = text.find(begin).ok_or("no BEGIN CERTIFICATE line in the PEM")? + begin.len();
    let stop = text[start..].find(end).ok_or("no END CERTIFICATE line in the PEM")? + start;
    let b64: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the certificate PEM is not valid base64: {e}"))
}

/// Builds a signature section around `pem` the way nitro-cli lays it out (test fixtures and
/// the round-trip test of the reader; this does not sign anything).
pub fn section_for_certificate(pem: &[u8], cose_signature: &[u8]) -> Vec<u8> {
    let ints = |b: &[u8]| Value::Array(b.iter().map(|x| Value::Integer((*x).into())).collect());
    let entry = Value::Map(vec![
        (Value::Text("signing_certificate".into()), ints(pem)),
        (Value::Text("signature".into()), ints(cose_signature)),
    ]);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&Value::Array(vec![entry]), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_errors() {
        let der = b"\x30\x03\x02\x01\x05";
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let section = section_for_certificate(pem.as_bytes(), b"sig");
        assert_eq!(certificate_der(&section).unwrap(), der);
        assert!(certificate_der(b"\xff").unwrap_err().contains("CBOR"));
        assert!(pem_to_der(b"nothing").unwrap_err().contains("BEGIN"));
    }
}
