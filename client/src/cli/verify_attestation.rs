//! `kv-client verify-attestation`: checks a saved attestation document against a bundle's
//! manifest and the nonce that was sent, and prints what was checked as JSON.
//!
//! The command knows one root, AWS Nitro Enclaves Root-G1; there is no flag for another.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;

use super::{CliError, HexBytes};
use crate::verify::{
    self, CertificateTime, ChainCheck, Expectations, SignatureCheck, VerifiedDocument, VerifyOptions,
};

/// What the command prints on stderr every time the chain is not checked.
pub const INSECURE_WARNING: &str = "kv-client: WARNING: --insecure-skip-certificate-chain: the certificate chain is \
     NOT checked against the AWS Nitro Enclaves root; anyone can make a document that passes. Use it only for the \
     emulated NSM under QEMU or a test signer, never for a real enclave.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The attestation document: a file with the COSE_Sign1 bytes, raw or base64.
    #[arg(long, value_name = "FILE")]
    pub document: PathBuf,
    /// The enclave bundle's manifest.json: the PCRs the enclave must report.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// The nonce sent with the attestation request, hex: the document must carry it.
    #[arg(long, value_name = "HEX")]
    pub nonce: HexBytes,
    /// The user_data the document must carry, hex (default: not checked).
    #[arg(long, value_name = "HEX")]
    pub user_data_hex: Option<HexBytes>,
    /// INSECURE: do not check the certificate chain (for the emulated NSM's dummy chain under
    /// QEMU or a test signer). The signature, PCRs, nonce and user_data are still checked.
    #[arg(long)]
    pub insecure_skip_certificate_chain: bool,
    /// When the certificates must be valid: now, or at the document's own timestamp (to
    /// re-check a saved document after its short-lived certificate expired).
    #[arg(long, value_enum, default_value_t = ValidAt::Now)]
    pub certificates_valid_at: ValidAt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidAt {
    Now,
    Document,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    if args.insecure_skip_certificate_chain {
        writeln!(err, "{INSECURE_WARNING}")?;
    }
    if args.nonce.0.is_empty() {
        return Err(CliError::Usage {
            flag: "--nonce",
            reason: "empty: the nonce that was sent is needed".into(),
        });
    }
    let mut expect = Expectations::from_manifest(&args.manifest, args.nonce.0.clone())?;
    if let Some(user_data) = &args.user_data_hex {
        expect = expect.with_user_data(user_data.0.clone());
    }
    let bytes = std::fs::read(&args.document)
        .map_err(|e| CliError::Read { path: args.document.clone(), source: e })?;
    let document = decode_document(&bytes);
    let opts = VerifyOptions {
        insecure_skip_chain: args.insecure_skip_certificate_chain,
        certificate_time: match args.certificates_valid_at {
            ValidAt::Now => CertificateTime::Now,
            ValidAt::Document => CertificateTime::DocumentTimestamp,
        },
    };
    let verified = verify::verify_attestation(&document, &expect, &opts)?;
    if verified.signature == SignatureCheck::AbsentEmulatedNsm {
        writeln!(
            err,
            "kv-client: WARNING: the document is unsigned (the emulated NSM): its origin is unknown"
        )?;
    }
    serde_json::to_writer_pretty(&mut *out, &summary(&verified)).map_err(|e| CliError::Output(e.into()))?;
    writeln!(out)?;
    Ok(())
}

/// Raw COSE_Sign1 bytes start with an array (0x84) or tag 18 (0xd2), neither of which is
/// printable: anything else is read as base64 (standard or URL-safe, padded or not,
/// whitespace ignored), and left as is if it is not.
pub fn decode_document(bytes: &[u8]) -> Vec<u8> {
    if matches!(bytes.first(), Some(0x84 | 0xd2)) {
        return bytes.to_vec();
    }
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [
        GeneralPurpose::new(&base64::alphabet::STANDARD, config),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, config),
    ]
    .iter()
    .find_map(|engine| engine.decode(&text).ok())
    .unwrap_or_else(|| bytes.to_vec())
}

fn hex_or_null(bytes: Option<&[u8]>) -> Value {
    bytes.map_or(Value::Null, |b| Value::String(hex::encode(b)))
}

/// The JSON the command prints.
pub fn summary(v: &VerifiedDocument) -> Value {
    let doc = &v.document;
    let pcrs: serde_json::Map<String, Value> =
        doc.pcrs.iter().map(|(i, value)| (format!("PCR{i}"), Value::String(hex::encode(value)))).collect();
    let signature = match &v.signature {
        SignatureCheck::Es384 { leaf_subject } => {
            json!({"status": "verified", "algorithm": "ES384", "leaf_subject": leaf_subject})
        }
        SignatureCheck::AbsentEmulatedNsm => json!({"status": "absent-emulated-nsm"}),
    };
    let chain = match &v.chain {
        ChainCheck::Verified { root_name, root_sha256, at } => json!({
            "status": "verified",
            "root": root_name,
            "root_sha256": root_sha256,
            "valid_at": verify::rfc3339(*at),
        }),
        ChainCheck::SkippedInsecure => json!({"status": "skipped-insecure"}),
    };
    let checked: Vec<String> = v.pcrs_checked.iter().map(|i| format!("PCR{i}")).collect();
    json!({
        "verified": true,
        "module_id": doc.module_id,
        "timestamp_ms": doc.timestamp,
        "timestamp": verify::rfc3339(doc.timestamp / 1000),
        "digest": format!("{:?}", doc.digest),
        "pcrs": pcrs,
        "public_key": hex_or_null(verify::bytes(&doc.public_key)),
        "user_data": hex_or_null(verify::bytes(&doc.user_data)),
        "nonce": hex_or_null(verify::bytes(&doc.nonce)),
        "checks": {
            "signature": signature,
            "certificate_chain": chain,
            "pcrs": {"status": "match", "checked": checked},
            "nonce": {"status": "match"},
            "user_data": {"status": if v.user_data_checked { "match" } else { "not-checked" }},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_read_raw_or_as_base64() {
        let raw = vec![0x84, 0x40, 0xa0, 0xf6, 0x40];
        assert_eq!(decode_document(&raw), raw);
        let tagged = vec![0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40];
        assert_eq!(decode_document(&tagged), tagged);
        assert_eq!(decode_document(b"hEA=\n"), vec![0x84, 0x40]);
        assert_eq!(decode_document(b"hEA"), vec![0x84, 0x40]);
        assert_eq!(decode_document(b"-_8"), vec![0xfb, 0xff]);
        assert_eq!(decode_document(b"not base64!"), b"not base64!".to_vec());
    }
}
