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

/// Signs PCR0 the way `nitro-cli build-enclave --signing-certificate C --private-key K` does and
/// returns the signature section: a COSE_Sign1 (ES384, ECDSA P-384 with SHA-384) whose payload
/// is the CBOR of `PcrInfo { register_index: 0, register_value: PCR0 }`.
///
/// The COSE structure (RFC 8152): `Tag(18, [protected: bstr({1: -35}), unprotected: {},
/// payload: bstr, signature: bstr(r || s)])`, the signature computed over the CBOR of
/// `["Signature1", protected, h'', payload]`.
pub fn sign_pcr0(cert_pem: &[u8], key_pem: &str, pcr0: &[u8]) -> Result<Vec<u8>, String> {
    use p384::ecdsa::{Signature, SigningKey, signature::Signer};
    use p384::pkcs8::DecodePrivateKey;
    pem_to_der(cert_pem).map_err(|e| format!("signing certificate: {e}"))?;
    let key = p384::SecretKey::from_sec1_pem(key_pem)
        .or_else(|_| p384::SecretKey::from_pkcs8_pem(key_pem))
        .map_err(|_| {
        "private key: not a PEM P-384 key (SEC1 \"EC PRIVATE KEY\" or PKCS#8)".to_string()
    })?;
    let signing = SigningKey::from(key);
    let ints = |b: &[u8]| Value::Array(b.iter().map(|x| Value::Integer((*x).into())).collect());
    // serde_cbor's encoding of nitro-cli's PcrInfo (byte vectors as arrays of integers).
    let payload = cbor(&Value::Map(vec![
        (Value::Text("register_index".into()), Value::Integer(0.into())),
        (Value::Text("register_value".into()), ints(pcr0)),
    ]));
    // {1 (alg): -35 (ES384)}
    let protected = cbor(&Value::Map(vec![(Value::Integer(1.into()), Value::Integer((-35).into()))]));
    let to_sign = cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.clone()),
    ]));
    let sig: Signature = signing.sign(&to_sign);
    let cose = cbor(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(Vec::new()),
            Value::Bytes(payload),
            Value::Bytes(sig.to_bytes().to_vec()),
        ])),
    ));
    Ok(section_for_certificate(cert_pem, &cose))
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::ser::into_writer(v, &mut out);
    out
}

/// Builds a signature section around `pem` the way nitro-cli lays it out (test fixtures and
/// the round-trip test of the reader; this does not sign anything).
pub fn section_for_certificate(pem: &[u8], cose_signature: &[u8]) -> Vec<u8> {
    let ints = |b: &[u8]| Value::Array(b.iter().map(|x| Value::Integer((*x).into())).collect());
    let entry = Value::Map(vec![
        (Value::Text("signing_certificate".into()), ints(pem)),
        (Value::Text("signature".into()), ints(cose_signature)),
    ]);
    cbor(&Value::Array(vec![entry]))
}

/// The COSE_Sign1 of the first PCR signature (for verification in tests and tools).
pub fn cose_of_section(section: &[u8]) -> Result<Vec<u8>, String> {
    let value: Value = ciborium::de::from_reader(section).map_err(|e| format!("not valid CBOR: {e}"))?;
    let first = value.as_array().and_then(|a| a.first()).ok_or("no PCR signature")?;
    let map = first.as_map().ok_or("a PCR signature is not a CBOR map")?;
    map.iter()
        .find(|(k, _)| k.as_text() == Some("signature"))
        .and_then(|(_, v)| bytes_of(v))
        .ok_or_else(|| "no signature bytes".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr0_signature_verifies_with_the_public_key() {
        use p384::ecdsa::{Signature, VerifyingKey, signature::Verifier};
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        let secret = p384::SecretKey::from_slice(&[7u8; 48]).unwrap();
        let key_pem = secret.to_sec1_pem(Default::default()).unwrap();
        let cert_pem = b"-----BEGIN CERTIFICATE-----\nMAMCAQU=\n-----END CERTIFICATE-----\n";
        let pcr0 = [0xabu8; 48];
        let section = sign_pcr0(cert_pem, &key_pem, &pcr0).unwrap();
        assert_eq!(certificate_der(&section).unwrap(), b"\x30\x03\x02\x01\x05");
        let cose: Value = ciborium::de::from_reader(&cose_of_section(&section).unwrap()[..]).unwrap();
        let Value::Tag(18, inner) = cose else { panic!("not a COSE_Sign1 tag: {cose:?}") };
        let parts = inner.as_array().unwrap();
        let (protected, payload, sig) =
            (parts[0].as_bytes().unwrap(), parts[2].as_bytes().unwrap(), parts[3].as_bytes().unwrap());
        // The payload decodes to PcrInfo { register_index: 0, register_value: PCR0 }.
        let info: Value = ciborium::de::from_reader(&payload[..]).unwrap();
        let m = info.as_map().unwrap();
        assert_eq!(m[0].0.as_text(), Some("register_index"));
        assert_eq!(bytes_of(&m[1].1).unwrap(), pcr0);
        let to_verify = cbor(&Value::Array(vec![
            Value::Text("Signature1".into()),
            Value::Bytes(protected.clone()),
            Value::Bytes(vec![]),
            Value::Bytes(payload.clone()),
        ]));
        let public = VerifyingKey::from_encoded_point(&secret.public_key().to_encoded_point(false)).unwrap();
        public.verify(&to_verify, &Signature::from_slice(sig).unwrap()).unwrap();
        assert!(sign_pcr0(cert_pem, "not a key", &pcr0).unwrap_err().contains("private key"));
    }

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
