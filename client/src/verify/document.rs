//! Parsing: the COSE_Sign1 envelope (tagged or untagged) and its payload, the attestation
//! document, field by field so an error names the field.
//!
//! Document layout (AWS Nitro Enclaves user guide, "Verifying the root of trust"):
//! `COSE_Sign1 = [protected: bstr({1: -35}), unprotected: {}, payload: bstr, signature: bstr]`
//! with the payload a CBOR map `{module_id: tstr, digest: "SHA384", timestamp: uint (ms),
//! pcrs: {uint => bstr}, certificate: bstr (DER), cabundle: [bstr (DER), ...],
//! public_key: bstr / nil, user_data: bstr / nil, nonce: bstr / nil}`. The size limits below
//! are the guide's "semantic validity" rules.
//!
//! QEMU's emulated NSM (`hw/virtio/virtio-nsm.c`) signs nothing: its protected header says
//! `{1: -1}`, the certificate, the single cabundle entry and the signature are 64 zero bytes.
//! [`emulated_nsm_placeholder`] recognizes exactly that shape, so that the caller can accept it
//! under the insecure option only.

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use ciborium::Value;
use coset::{CborSerializable, CoseSign1, TaggedCborSerializable};
use std::collections::BTreeMap;

use super::VerifyError;

/// COSE's tag for COSE_Sign1 (RFC 9052), the first byte of a tagged document (major type 6, 18).
const COSE_SIGN1_TAG_BYTE: u8 = 0xd2;
/// The emulated NSM's algorithm label ("we don't actually sign the data").
const EMULATED_NSM_ALG: i128 = -1;
/// The emulated NSM's certificate, cabundle entry and signature: this many zero bytes.
const EMULATED_NSM_ZEROS: usize = 64;

const MAX_PCRS: usize = 32;
const MAX_CERTIFICATE: usize = 1024;
const MAX_PUBLIC_KEY: usize = 1024;
const MAX_USER_DATA: usize = 512;
const MAX_NONCE: usize = 512;

fn malformed(field: impl Into<String>, reason: impl Into<String>) -> VerifyError {
    VerifyError::Malformed { field: field.into(), reason: reason.into() }
}

/// The COSE_Sign1 envelope, through coset.
pub(crate) fn parse_cose_sign1(document: &[u8]) -> Result<CoseSign1, VerifyError> {
    let parsed = if document.first() == Some(&COSE_SIGN1_TAG_BYTE) {
        CoseSign1::from_tagged_slice(document)
    } else {
        CoseSign1::from_slice(document)
    };
    parsed.map_err(|e| VerifyError::NotCoseSign1 { reason: e.to_string() })
}

/// The payload if `document` is exactly the emulated NSM's unsigned shape, else `None`.
pub(crate) fn emulated_nsm_placeholder(document: &[u8]) -> Option<Vec<u8>> {
    let value: Value = ciborium::from_reader(document).ok()?;
    let value = match value {
        Value::Tag(18, inner) => *inner,
        v => v,
    };
    let Value::Array(items) = value else { return None };
    let [Value::Bytes(protected), Value::Map(unprotected), Value::Bytes(payload), Value::Bytes(signature)] =
        items.as_slice()
    else {
        return None;
    };
    let header: Value = ciborium::from_reader(protected.as_slice()).ok()?;
    let alg_only = matches!(&header, Value::Map(m) if matches!(m.as_slice(),
        [(Value::Integer(k), Value::Integer(v))] if i128::from(*k) == 1 && i128::from(*v) == EMULATED_NSM_ALG));
    let zeros = |b: &[u8]| b.len() == EMULATED_NSM_ZEROS && b.iter().all(|x| *x == 0);
    if !alg_only || !unprotected.is_empty() || !zeros(signature) {
        return None;
    }
    let doc = parse_payload(payload).ok()?;
    let placeholder_chain = zeros(&doc.certificate) && doc.cabundle.len() == 1 && zeros(&doc.cabundle[0]);
    placeholder_chain.then(|| payload.clone())
}

/// The attestation document in a COSE payload, each field checked for type and size.
pub(crate) fn parse_payload(payload: &[u8]) -> Result<AttestationDoc, VerifyError> {
    let value: Value = ciborium::from_reader(payload).map_err(|e| malformed("payload", e.to_string()))?;
    let Value::Map(entries) = value else {
        return Err(malformed("payload", format!("a CBOR {}, not a map", kind(&value))));
    };
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(malformed("payload", format!("a {} key, not text", kind(&key))));
        };
        if fields.contains_key(&key) {
            return Err(malformed(key, "appears twice"));
        }
        fields.insert(key, value);
    }
    let mut take = |field: &'static str| fields.remove(field);

    let module_id = match take("module_id") {
        Some(Value::Text(t)) if !t.is_empty() => t,
        other => return Err(wrong("module_id", other, "non-empty text")),
    };
    let digest = match take("digest") {
        Some(Value::Text(t)) if t == "SHA384" => Digest::SHA384,
        Some(Value::Text(t)) => return Err(malformed("digest", format!("{t:?}, not \"SHA384\""))),
        other => return Err(wrong("digest", other, "text")),
    };
    let timestamp = match take("timestamp") {
        Some(Value::Integer(i)) => u64::try_from(i128::from(i))
            .ok()
            .filter(|t| *t > 0)
            .ok_or_else(|| malformed("timestamp", format!("{}, not a positive number", i128::from(i))))?,
        other => return Err(wrong("timestamp", other, "an unsigned integer")),
    };
    let pcrs = match take("pcrs") {
        Some(Value::Map(m)) => parse_pcrs(m)?,
        other => return Err(wrong("pcrs", other, "a map")),
    };
    let certificate = match take("certificate") {
        Some(Value::Bytes(b)) if (1..=MAX_CERTIFICATE).contains(&b.len()) => b,
        Some(Value::Bytes(b)) => {
            return Err(malformed("certificate", format!("{} bytes, not 1 to {MAX_CERTIFICATE}", b.len())));
        }
        other => return Err(wrong("certificate", other, "a byte string")),
    };
    let cabundle = match take("cabundle") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Bytes(b) if (1..=MAX_CERTIFICATE).contains(&b.len()) => Ok(b),
                Value::Bytes(b) => Err(malformed(
                    format!("cabundle[{i}]"),
                    format!("{} bytes, not 1 to {MAX_CERTIFICATE}", b.len()),
                )),
                v => Err(wrong(&format!("cabundle[{i}]"), Some(v), "a byte string")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err(malformed("cabundle", "empty")),
        other => return Err(wrong("cabundle", other, "an array")),
    };
    let public_key = optional_bytes("public_key", take("public_key"), MAX_PUBLIC_KEY)?;
    let user_data = optional_bytes("user_data", take("user_data"), MAX_USER_DATA)?;
    let nonce = optional_bytes("nonce", take("nonce"), MAX_NONCE)?;
    Ok(AttestationDoc::new(
        module_id,
        digest,
        timestamp,
        pcrs,
        certificate,
        cabundle,
        user_data,
        nonce,
        public_key,
    ))
}

fn parse_pcrs(entries: Vec<(Value, Value)>) -> Result<BTreeMap<usize, Vec<u8>>, VerifyError> {
    if entries.is_empty() || entries.len() > MAX_PCRS {
        return Err(malformed("pcrs", format!("{} entries, not 1 to {MAX_PCRS}", entries.len())));
    }
    let mut pcrs = BTreeMap::new();
    for (key, value) in entries {
        let index = match key {
            Value::Integer(i) => usize::try_from(i128::from(i)).ok().filter(|i| *i < MAX_PCRS),
            _ => None,
        }
        .ok_or_else(|| malformed("pcrs", format!("key {key:?} is not a PCR index 0 to {}", MAX_PCRS - 1)))?;
        let field = format!("pcrs[{index}]");
        let bytes = match value {
            Value::Bytes(b) if [32, 48, 64].contains(&b.len()) => b,
            Value::Bytes(b) => return Err(malformed(field, format!("{} bytes, not 32, 48 or 64", b.len()))),
            v => return Err(wrong(&field, Some(v), "a byte string")),
        };
        if pcrs.insert(index, bytes).is_some() {
            return Err(malformed(field, "appears twice"));
        }
    }
    Ok(pcrs)
}

/// An optional byte string: absent, nil and (as the NSM omits them) empty all read as `None`.
fn optional_bytes(field: &str, value: Option<Value>, max: usize) -> Result<Option<Vec<u8>>, VerifyError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) if b.len() > max => {
            Err(malformed(field, format!("{} bytes, more than {max}", b.len())))
        }
        Some(Value::Bytes(b)) => Ok((!b.is_empty()).then_some(b)),
        other => Err(wrong(field, other, "a byte string or nil")),
    }
}

fn wrong(field: &str, got: Option<Value>, expected: &str) -> VerifyError {
    match got {
        None => malformed(field, "missing"),
        Some(v) => malformed(field, format!("a CBOR {}, not {expected}", kind(&v))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "integer",
        Value::Bytes(_) => "byte string",
        Value::Float(_) => "float",
        Value::Text(_) => "text string",
        Value::Bool(_) => "boolean",
        Value::Null => "nil",
        Value::Tag(..) => "tagged value",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        _ => "value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn good_fields() -> Vec<(Value, Value)> {
        vec![
            (text("module_id"), text("i-0123-enc0456")),
            (text("digest"), text("SHA384")),
            (text("timestamp"), Value::Integer(1_700_000_000_000u64.into())),
            (text("pcrs"), Value::Map(vec![(Value::Integer(0.into()), Value::Bytes(vec![7; 48]))])),
            (text("certificate"), Value::Bytes(vec![1; 10])),
            (text("cabundle"), Value::Array(vec![Value::Bytes(vec![2; 10])])),
            (text("public_key"), Value::Null),
            (text("user_data"), Value::Bytes(vec![])),
            (text("nonce"), Value::Bytes(vec![9; 32])),
        ]
    }

    fn with(field: &str, value: Option<Value>) -> Vec<u8> {
        let mut fields: Vec<_> = good_fields().into_iter().filter(|(k, _)| k != &text(field)).collect();
        if let Some(v) = value {
            fields.push((text(field), v));
        }
        encode(&Value::Map(fields))
    }

    #[test]
    fn reads_every_field() {
        let doc = parse_payload(&encode(&Value::Map(good_fields()))).unwrap();
        assert_eq!(doc.module_id, "i-0123-enc0456");
        assert_eq!(doc.timestamp, 1_700_000_000_000);
        assert_eq!(doc.pcrs[&0].as_slice(), &[7; 48]);
        assert_eq!(doc.public_key, None);
        assert_eq!(doc.user_data, None, "empty reads as absent, as the NSM omits it");
        assert_eq!(super::super::bytes(&doc.nonce), Some(&[9u8; 32][..]));
    }

    #[test]
    fn an_error_names_the_field() {
        let cases: Vec<(&str, Option<Value>, &str)> = vec![
            ("module_id", None, "module_id: missing"),
            ("digest", Some(text("SHA256")), "digest: \"SHA256\", not \"SHA384\""),
            ("timestamp", Some(text("now")), "timestamp: a CBOR text string"),
            (
                "pcrs",
                Some(Value::Map(vec![(Value::Integer(3.into()), Value::Bytes(vec![0; 5]))])),
                "pcrs[3]: 5 bytes",
            ),
            (
                "pcrs",
                Some(Value::Map(vec![(Value::Integer(40.into()), Value::Bytes(vec![0; 48]))])),
                "pcrs: key",
            ),
            ("certificate", Some(Value::Bytes(vec![0; 2000])), "certificate: 2000 bytes"),
            ("cabundle", Some(Value::Array(vec![])), "cabundle: empty"),
            (
                "cabundle",
                Some(Value::Array(vec![Value::Bytes(vec![1]), text("x")])),
                "cabundle[1]: a CBOR text",
            ),
            ("nonce", Some(Value::Bytes(vec![0; 513])), "nonce: 513 bytes"),
            ("user_data", Some(Value::Integer(1.into())), "user_data: a CBOR integer"),
        ];
        for (field, value, expected) in cases {
            let e = parse_payload(&with(field, value)).unwrap_err().to_string();
            assert!(e.contains(expected), "{field}: {e}");
        }
        let e = parse_payload(&encode(&Value::Array(vec![]))).unwrap_err().to_string();
        assert!(e.contains("payload: a CBOR array, not a map"), "{e}");
        let e = parse_payload(&[0xff, 0x00]).unwrap_err().to_string();
        assert!(e.contains("payload"), "{e}");
    }

    #[test]
    fn not_cose_is_refused_with_the_reason() {
        let e = parse_cose_sign1(b"hello").unwrap_err().to_string();
        assert!(e.starts_with("not a COSE_Sign1"), "{e}");
        let e = parse_cose_sign1(&encode(&Value::Array(vec![Value::Null]))).unwrap_err().to_string();
        assert!(e.starts_with("not a COSE_Sign1"), "{e}");
    }
}
