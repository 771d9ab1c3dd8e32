//! What the caller expects of a document: the enclave image's PCRs (from a bundle's
//! `manifest.json`, as `kv-packager bundle` writes it), the nonce it sent, and optionally the
//! `user_data` the server must have put there.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bytes of one PCR: SHA-384, the only digest Nitro Enclaves use.
pub const PCR_LEN: usize = 48;
/// `HashAlgorithm` as nitro-cli and `kv-packager` write it (`packaging/src/eif/pcr.rs`).
pub const MANIFEST_HASH_ALGORITHM: &str = "Sha384 { ... }";

/// PCR values an enclave must report, by index: PCR0/1/2 always, PCR8 for a signed image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPcrs {
    values: BTreeMap<usize, [u8; PCR_LEN]>,
}

impl ExpectedPcrs {
    pub fn new(pcr0: [u8; PCR_LEN], pcr1: [u8; PCR_LEN], pcr2: [u8; PCR_LEN]) -> Self {
        Self { values: BTreeMap::from([(0, pcr0), (1, pcr1), (2, pcr2)]) }
    }

    /// Also require PCR8 (the image's signing certificate).
    pub fn with_pcr8(mut self, pcr8: [u8; PCR_LEN]) -> Self {
        self.values.insert(8, pcr8);
        self
    }

    /// The `pcrs` object of a bundle's `manifest.json`.
    pub fn from_manifest(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read(path).map_err(|e| ManifestError::Read { path: path.into(), source: e })?;
        let manifest: ManifestPcrs = serde_json::from_slice(&text)
            .map_err(|e| ManifestError::Parse { path: path.into(), reason: e.to_string() })?;
        let m = manifest.pcrs;
        if m.hash_algorithm != MANIFEST_HASH_ALGORITHM {
            return Err(ManifestError::Field {
                path: path.into(),
                field: "pcrs.HashAlgorithm",
                reason: format!("{:?}, not {MANIFEST_HASH_ALGORITHM:?}", m.hash_algorithm),
            });
        }
        let pcr = |field: &'static str, value: &str| {
            parse_pcr(value).map_err(|reason| ManifestError::Field { path: path.into(), field, reason })
        };
        let mut pcrs =
            Self::new(pcr("pcrs.PCR0", &m.pcr0)?, pcr("pcrs.PCR1", &m.pcr1)?, pcr("pcrs.PCR2", &m.pcr2)?);
        if let Some(p) = &m.pcr8 {
            pcrs = pcrs.with_pcr8(pcr("pcrs.PCR8", p)?);
        }
        Ok(pcrs)
    }

    /// (index, value), in index order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[u8; PCR_LEN])> {
        self.values.iter().map(|(i, v)| (*i, v))
    }
}

/// A PCR as hex (96 digits, either case).
pub fn parse_pcr(value: &str) -> Result<[u8; PCR_LEN], String> {
    let bytes = hex::decode(value).map_err(|e| format!("{value:?} is not hex: {e}"))?;
    <[u8; PCR_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, not {PCR_LEN} (SHA-384)", bytes.len()))
}

/// The part of `manifest.json` read here; the rest of the manifest is ignored.
#[derive(Deserialize)]
struct ManifestPcrs {
    pcrs: ManifestMeasurements,
}

/// `packaging::eif::Measurements`, as serialized.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestMeasurements {
    #[serde(rename = "HashAlgorithm")]
    hash_algorithm: String,
    #[serde(rename = "PCR0")]
    pcr0: String,
    #[serde(rename = "PCR1")]
    pcr1: String,
    #[serde(rename = "PCR2")]
    pcr2: String,
    #[serde(rename = "PCR8", default)]
    pcr8: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Not JSON, or no usable `pcrs` object.
    #[error("{path}: not a bundle manifest with a pcrs object: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: {field}: {reason}")]
    Field { path: PathBuf, field: &'static str, reason: String },
}

/// Everything a document is checked against, besides its signature and chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectations {
    pub pcrs: ExpectedPcrs,
    /// The nonce this client sent with its request: the document must carry exactly these
    /// bytes, so it was made for this request (freshness). Never empty.
    pub nonce: Vec<u8>,
    /// If set, `user_data` must be exactly these bytes (the server puts
    /// `nitro-kv:keyset:v1:` || SHA-256 of its key set there).
    pub user_data: Option<Vec<u8>>,
}

impl Expectations {
    pub fn new(pcrs: ExpectedPcrs, nonce: impl Into<Vec<u8>>) -> Self {
        Self { pcrs, nonce: nonce.into(), user_data: None }
    }

    /// The PCRs of a bundle's `manifest.json` and the nonce sent.
    pub fn from_manifest(path: &Path, nonce: impl Into<Vec<u8>>) -> Result<Self, ManifestError> {
        Ok(Self::new(ExpectedPcrs::from_manifest(path)?, nonce))
    }

    pub fn with_user_data(mut self, user_data: impl Into<Vec<u8>>) -> Self {
        self.user_data = Some(user_data.into());
        self
    }
}

/// 32 bytes from the operating system's random source: a nonce for one attestation request.
pub fn fresh_nonce() -> Result<[u8; 32], getrandom::Error> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("manifest.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    const A: &str =
        "2ff0600d1b962b63634f0313e646634a143f95d798eccdd210564ac3313f53262057af4fde74e8f0dad2025402dc8398";
    const B: &str =
        "9da17983a5534d581283dffe90cc72487e6c7a9eeede83643032569fe8fab9960fa074382dc8a66d886e6fec14e5f026";

    #[test]
    fn reads_the_pcrs_of_a_bundle_manifest_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &format!(
                r#"{{"format":1,"files":[],"pcrs":{{"HashAlgorithm":"Sha384 {{ ... }}","PCR0":"{A}","PCR1":"{B}","PCR2":"{A}","PCR8":"{B}"}}}}"#
            ),
        );
        let pcrs = ExpectedPcrs::from_manifest(&path).unwrap();
        let got: Vec<(usize, String)> = pcrs.iter().map(|(i, v)| (i, hex::encode(v))).collect();
        assert_eq!(got, vec![(0, A.into()), (1, B.into()), (2, A.into()), (8, B.into())]);
    }

    #[test]
    fn names_the_file_and_field_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &format!(
                r#"{{"pcrs":{{"HashAlgorithm":"Sha384 {{ ... }}","PCR0":"{A}","PCR1":"abc","PCR2":"{A}"}}}}"#
            ),
        );
        let e = ExpectedPcrs::from_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("manifest.json") && e.contains("pcrs.PCR1"), "{e}");

        let path = write(
            dir.path(),
            &format!(r#"{{"pcrs":{{"HashAlgorithm":"Sha256","PCR0":"{A}","PCR1":"{A}","PCR2":"{A}"}}}}"#),
        );
        let e = ExpectedPcrs::from_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("pcrs.HashAlgorithm"), "{e}");

        let path = write(dir.path(), r#"{"format":1}"#);
        let e = ExpectedPcrs::from_manifest(&path).unwrap_err().to_string();
        assert!(e.contains("pcrs"), "{e}");

        let e = ExpectedPcrs::from_manifest(&dir.path().join("missing.json")).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn fresh_nonces_differ() {
        assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
    }
}
