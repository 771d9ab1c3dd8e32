//! The root certificate an attestation document's chain must end in.
//!
//! The shipped verifier knows one root: AWS's "AWS Nitro Enclaves Root-G1", the root of the AWS
//! Nitro Attestation PKI that signs every genuine NSM document (commercial partition).
//!
//! Where it comes from: AWS publishes it as `AWS_NitroEnclaves_Root-G1.zip` (one file,
//! `root.pem`) at <https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>, and
//! gives its SHA-256 fingerprint on "Verifying the root of trust" in the Nitro Enclaves user guide
//! (<https://docs.aws.amazon.com/enclaves/latest/user/verify-root.html>):
//! `64:1A:03:21:A3:E2:44:EF:E4:56:46:31:95:D6:06:31:7E:D7:CD:CC:3C:17:56:E0:98:93:F3:C6:8F:79:BB:5B`.
//! The PEM below is the same bytes as `DefaultCARoots` in hf/nitrite (`nitrite.go`), a public
//! Nitro attestation verifier, and its DER hashes to that fingerprint (checked again, before
//! every use, by [`PinnedRoot::aws_nitro_enclaves_g1`] and by a unit test). Subject
//! `C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves`, P-384, ecdsa-with-SHA384, valid
//! 2019-10-28T13:28:05Z .. 2049-10-28T14:28:05Z.

use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::{DecodePem, Encode};

/// AWS Nitro Enclaves Root-G1, as AWS ships it in `root.pem` (see the module header).
pub const AWS_NITRO_ENCLAVES_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// SHA-256 of the DER form of AWS Nitro Enclaves Root-G1, as AWS's user guide prints it.
pub const AWS_NITRO_ENCLAVES_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

pub const AWS_NITRO_ENCLAVES_ROOT_G1_NAME: &str = "AWS Nitro Enclaves Root-G1";

/// A root certificate the chain must end in: its DER form and its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedRoot {
    name: String,
    der: Vec<u8>,
    sha256: [u8; 32],
}

/// The pinned root is unusable: a defect of the build, never of the document.
#[derive(Debug, thiserror::Error)]
pub enum PinnedRootError {
    /// The embedded PEM does not decode.
    #[error("the pinned {name} certificate does not decode: {reason}")]
    Decode { name: String, reason: String },
    /// The embedded certificate is not the one AWS publishes.
    #[error("the pinned {name} certificate has SHA-256 {got}, not the published {expected}")]
    Fingerprint { name: String, expected: String, got: String },
}

impl PinnedRoot {
    /// AWS Nitro Enclaves Root-G1, checked against its published fingerprint.
    pub fn aws_nitro_enclaves_g1() -> Result<Self, PinnedRootError> {
        let name = AWS_NITRO_ENCLAVES_ROOT_G1_NAME;
        let der = Certificate::from_pem(AWS_NITRO_ENCLAVES_ROOT_G1_PEM)
            .and_then(|c| c.to_der())
            .map_err(|e| PinnedRootError::Decode { name: name.into(), reason: e.to_string() })?;
        let root = Self::from_der(name, der);
        if root.sha256_hex() != AWS_NITRO_ENCLAVES_ROOT_G1_SHA256 {
            return Err(PinnedRootError::Fingerprint {
                name: name.into(),
                expected: AWS_NITRO_ENCLAVES_ROOT_G1_SHA256.into(),
                got: root.sha256_hex(),
            });
        }
        Ok(root)
    }

    /// Another root, by its DER form: a private PKI, or a test signer's root in the tests. The
    /// `kv-client` command never takes one; it knows only [`Self::aws_nitro_enclaves_g1`].
    pub fn from_der(name: impl Into<String>, der: impl Into<Vec<u8>>) -> Self {
        let der = der.into();
        let sha256 = Sha256::digest(&der).into();
        Self { name: name.into(), der, sha256 }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_aws_root_has_the_published_fingerprint_and_subject() {
        let root = PinnedRoot::aws_nitro_enclaves_g1().expect("the embedded root decodes and matches");
        assert_eq!(root.sha256_hex(), AWS_NITRO_ENCLAVES_ROOT_G1_SHA256);
        let cert = <Certificate as x509_cert::der::Decode>::from_der(root.der()).unwrap();
        assert_eq!(cert.tbs_certificate.subject.to_string(), "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US");
        assert_eq!(cert.tbs_certificate.subject, cert.tbs_certificate.issuer, "self-signed");
    }
}
