//! `CiphertextForRecipient`: a CMS (RFC 5652) EnvelopedData to the recipient's RSA key.
//!
//! ```text
//! ContentInfo ::= SEQUENCE {                      -- indefinite length (BER form)
//!   contentType  id-envelopedData (1.2.840.113549.1.7.3),
//!   content [0] EXPLICIT EnvelopedData {          -- [0] and the SEQUENCE: indefinite length
//!     version 2,
//!     recipientInfos SET { KeyTransRecipientInfo {          -- definite length (DER)
//!       version 2,
//!       rid [0] subjectKeyIdentifier (SHA-256 of the recipient's SPKI DER, first 20 bytes),
//!       keyEncryptionAlgorithm { id-RSAES-OAEP (1.2.840.113549.1.1.7), RSAES-OAEP-params {
//!         [0] hashAlgorithm { sha256 (2.16.840.1.101.3.4.2.1) },           -- no parameters
//!         [1] maskGenAlgorithm { id-mgf1 (1.2.840.113549.1.1.8), { sha256 } } } },
//!       encryptedKey RSAES-OAEP-SHA256(recipient key, 32-byte CEK, empty label) } },
//!     encryptedContentInfo {                      -- indefinite length
//!       contentType id-data (1.2.840.113549.1.7.1),
//!       contentEncryptionAlgorithm { aes256-CBC (2.16.840.1.101.3.4.1.42), OCTET STRING iv(16) },
//!       encryptedContent [0] IMPLICIT OCTET STRING  -- constructed, indefinite length, made of
//!                                                   -- definite primitive chunks of <= 1000 bytes
//!         AES-256-CBC(CEK, iv, plaintext with PKCS#7 padding) } } }
//! ```
//!
//! Real KMS returns the BER form with indefinite lengths (the AWS Nitro Enclaves SDK for C reads
//! it with a BER parser), so that is the default: an enclave-side parser that accepts only DER
//! must fail against the double. `CmsEncoding::Der` gives the same structure with definite
//! lengths throughout.
//!
//! The definite pieces are encoded by `rasn`'s DER encoder; the indefinite-length frame around
//! them is written here by hand (a tag, `0x80`, the contents, `00 00`), since no ASN.1 crate
//! emits this mixed form: rasn's CER encoder makes every constructed value indefinite and never
//! segments a short OCTET STRING.

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use rasn::prelude::*;
use rasn_cms::{
    AlgorithmIdentifier, ContentInfo, EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo,
    RecipientIdentifier, RecipientInfo,
};
use sha2::{Digest, Sha256};

/// id-RSAES-OAEP
pub const RSAES_OAEP: &Oid = Oid::ISO_MEMBER_BODY_US_RSADSI_PKCS1_RSAES_OAEP;
/// id-mgf1
pub const MGF1: &Oid = Oid::ISO_MEMBER_BODY_US_RSADSI_PKCS1_MGF1;
/// id-sha256
pub const SHA256: &Oid = Oid::JOINT_ISO_ITU_T_COUNTRY_US_ORGANIZATION_GOV_CSOR_NIST_ALGORITHMS_HASH_SHA256;
/// aes256-CBC
pub const AES256_CBC: &Oid = Oid::JOINT_ISO_ITU_T_COUNTRY_US_ORGANIZATION_GOV_CSOR_NIST_ALGORITHMS_AES256_CBC;
/// The largest primitive chunk of the segmented encryptedContent (CER's limit).
pub const CHUNK_LEN: usize = 1000;

const CEK_LEN: usize = 32;
const IV_LEN: usize = 16;
const INDEFINITE: u8 = 0x80;
const END_OF_CONTENTS: [u8; 2] = [0, 0];
const SEQUENCE: u8 = 0x30;
/// [0], constructed (the EXPLICIT content of ContentInfo, the IMPLICIT encryptedContent).
const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;

/// How `CiphertextForRecipient` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CmsEncoding {
    /// Indefinite lengths for the outer elements, as real KMS returns.
    #[default]
    Ber,
    /// Definite lengths throughout.
    Der,
}

#[derive(Debug, thiserror::Error)]
pub enum CmsError {
    /// the system RNG failed
    #[error("the system random number generator failed")]
    Random,
    /// RSA-OAEP refused the key (the message is rsa's, not key material)
    #[error("RSA-OAEP encryption to the recipient's key failed: {0}")]
    Rsa(String),
    /// an ASN.1 encoding or decoding failed
    #[error("CMS encoding: {0}")]
    Asn1(String),
    /// the envelope is not what this module writes
    #[error("CMS envelope: {0}")]
    Shape(String),
}

fn asn1<E: std::fmt::Display>(e: E) -> CmsError {
    CmsError::Asn1(e.to_string())
}

fn der<T: Encode>(value: &T) -> Result<Vec<u8>, CmsError> {
    rasn::der::encode(value).map_err(asn1)
}

/// RSAES-OAEP-params (RFC 4055 §4.1) with SHA-256 and MGF1-SHA-256; pSourceAlgorithm is the
/// default (empty label) and so omitted.
#[derive(AsnType, Encode, Decode, Debug, Clone, PartialEq, Eq)]
pub struct RsaesOaepParams {
    #[rasn(tag(explicit(0)))]
    pub hash_algorithm: AlgorithmIdentifier,
    #[rasn(tag(explicit(1)))]
    pub mask_gen_algorithm: AlgorithmIdentifier,
}

fn sha256_identifier() -> AlgorithmIdentifier {
    AlgorithmIdentifier { algorithm: SHA256.to_owned(), parameters: None }
}

/// The keyEncryptionAlgorithm of every envelope the double makes.
pub fn oaep_sha256_identifier() -> Result<AlgorithmIdentifier, CmsError> {
    let params = RsaesOaepParams {
        hash_algorithm: sha256_identifier(),
        mask_gen_algorithm: AlgorithmIdentifier {
            algorithm: MGF1.to_owned(),
            parameters: Some(Any::new(der(&sha256_identifier())?)),
        },
    };
    Ok(AlgorithmIdentifier { algorithm: RSAES_OAEP.to_owned(), parameters: Some(Any::new(der(&params)?)) })
}

/// The rid: any value derived from the key would do; this is SHA-256 of the SPKI, 20 bytes.
pub fn subject_key_identifier(public_key_der: &[u8]) -> Vec<u8> {
    Sha256::digest(public_key_der)[..20].to_vec()
}

/// Wraps `plaintext` (a data key) for the holder of `public_key`'s private key.
pub fn envelope(
    public_key: &rsa::PublicKey,
    public_key_der: &[u8],
    plaintext: &[u8],
    encoding: CmsEncoding,
) -> Result<Vec<u8>, CmsError> {
    let mut cek = [0u8; CEK_LEN];
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut cek).map_err(|_| CmsError::Random)?;
    getrandom::fill(&mut iv).map_err(|_| CmsError::Random)?;
    let encrypted_content = cbc::Encryptor::<Aes256>::new_from_slices(&cek, &iv)
        .map_err(asn1)?
        .encrypt_padded_vec::<Pkcs7>(plaintext);
    let encrypted_key = public_key.oaep_encrypt::<Sha256>(&cek).map_err(|e| CmsError::Rsa(e.to_string()))?;
    cek.fill(0);

    let recipient_infos =
        SetOf::from_vec(vec![RecipientInfo::KeyTransRecipientInfo(KeyTransRecipientInfo {
            version: 2.into(),
            rid: RecipientIdentifier::SubjectKeyIdentifier(subject_key_identifier(public_key_der).into()),
            key_encryption_algorithm: oaep_sha256_identifier()?,
            encrypted_key: encrypted_key.into(),
        })]);
    let content_encryption_algorithm = AlgorithmIdentifier {
        algorithm: AES256_CBC.to_owned(),
        parameters: Some(Any::new(der(&OctetString::from(iv.to_vec()))?)),
    };

    match encoding {
        CmsEncoding::Der => {
            let enveloped = EnvelopedData {
                version: 2.into(),
                originator_info: None,
                recipient_infos,
                encrypted_content_info: EncryptedContentInfo {
                    content_type: rasn_cms::CONTENT_DATA.to_owned(),
                    content_encryption_algorithm,
                    encrypted_content: Some(encrypted_content.into()),
                },
                unprotected_attrs: None,
            };
            der(&ContentInfo {
                content_type: rasn_cms::CONTENT_ENVELOPED_DATA.to_owned(),
                content: Any::new(der(&enveloped)?),
            })
        }
        CmsEncoding::Ber => {
            let mut out = Vec::with_capacity(encrypted_content.len() + 512);
            indefinite(&mut out, SEQUENCE, |out| {
                out.extend(der(&rasn_cms::CONTENT_ENVELOPED_DATA.to_owned())?);
                indefinite(out, CONTEXT_0_CONSTRUCTED, |out| {
                    indefinite(out, SEQUENCE, |out| {
                        out.extend(der(&Integer::from(2))?);
                        out.extend(der(&recipient_infos)?);
                        indefinite(out, SEQUENCE, |out| {
                            out.extend(der(&rasn_cms::CONTENT_DATA.to_owned())?);
                            out.extend(der(&content_encryption_algorithm)?);
                            indefinite(out, CONTEXT_0_CONSTRUCTED, |out| {
                                for chunk in encrypted_content.chunks(CHUNK_LEN) {
                                    out.extend(der(&OctetString::from(chunk.to_vec()))?);
                                }
                                Ok(())
                            })
                        })
                    })
                })
            })?;
            Ok(out)
        }
    }
}

/// Writes `tag`, the indefinite length octet, the contents, and the end-of-contents octets.
fn indefinite(
    out: &mut Vec<u8>,
    tag: u8,
    contents: impl FnOnce(&mut Vec<u8>) -> Result<(), CmsError>,
) -> Result<(), CmsError> {
    out.extend([tag, INDEFINITE]);
    contents(out)?;
    out.extend(END_OF_CONTENTS);
    Ok(())
}

/// Opens an envelope made by [`envelope`] with the recipient's private key, reading it with
/// rasn's BER decoder (a path independent of the hand-written frame above). For tests: it is how
/// the double's own tests, and any host-side test, check what a recipient would recover.
pub fn open(private_key: &rsa::PrivateKey, envelope: &[u8]) -> Result<Vec<u8>, CmsError> {
    let info: ContentInfo = rasn::ber::decode(envelope).map_err(asn1)?;
    if info.content_type != *rasn_cms::CONTENT_ENVELOPED_DATA {
        return Err(CmsError::Shape(format!("content type {:?} is not envelopedData", info.content_type)));
    }
    let enveloped: EnvelopedData = rasn::ber::decode(info.content.as_bytes()).map_err(asn1)?;
    let [RecipientInfo::KeyTransRecipientInfo(ktri)] = enveloped.recipient_infos.to_vec().as_slice() else {
        return Err(CmsError::Shape("not exactly one KeyTransRecipientInfo".into()));
    };
    let ktri = ktri.clone();
    if ktri.key_encryption_algorithm != oaep_sha256_identifier()? {
        return Err(CmsError::Shape("keyEncryptionAlgorithm is not RSAES-OAEP with SHA-256".into()));
    }
    let eci = enveloped.encrypted_content_info;
    if eci.content_encryption_algorithm.algorithm != *AES256_CBC {
        return Err(CmsError::Shape("contentEncryptionAlgorithm is not aes256-CBC".into()));
    }
    let iv_param =
        eci.content_encryption_algorithm.parameters.ok_or_else(|| CmsError::Shape("no IV".into()))?;
    let iv: OctetString = rasn::ber::decode(iv_param.as_bytes()).map_err(asn1)?;
    let content = eci.encrypted_content.ok_or_else(|| CmsError::Shape("no encryptedContent".into()))?;
    let cek =
        private_key.oaep_decrypt::<Sha256>(&ktri.encrypted_key).map_err(|e| CmsError::Rsa(e.to_string()))?;
    cbc::Decryptor::<Aes256>::new_from_slices(&cek, &iv)
        .map_err(asn1)?
        .decrypt_padded_vec::<Pkcs7>(&content)
        .map_err(|_| CmsError::Shape("bad PKCS#7 padding".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey;
    use std::sync::OnceLock;

    /// One 2048-bit key for every test here (generation is the slow part of a debug build).
    pub(crate) fn test_key() -> &'static (rsa::PrivateKey, Vec<u8>) {
        static KEY: OnceLock<(rsa::PrivateKey, Vec<u8>)> = OnceLock::new();
        KEY.get_or_init(|| {
            let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("a 2048-bit key");
            let spki = key.to_public_key().to_public_key_der().expect("SPKI").into_vec();
            (key, spki)
        })
    }

    fn wrap(plaintext: &[u8], encoding: CmsEncoding) -> Vec<u8> {
        let (key, spki) = test_key();
        envelope(key.as_public_key(), spki, plaintext, encoding).expect("an envelope")
    }

    #[test]
    fn the_ber_form_opens_with_rasns_ber_decoder_to_the_plaintext() {
        let data_key = [0x42u8; 32];
        let (key, _) = test_key();
        assert_eq!(open(key, &wrap(&data_key, CmsEncoding::Ber)).unwrap(), data_key);
        assert_eq!(open(key, &wrap(&data_key, CmsEncoding::Der)).unwrap(), data_key);
    }

    #[test]
    fn the_ber_form_has_indefinite_outer_lengths_and_a_segmented_content() {
        let ber = wrap(&[7u8; 32], CmsEncoding::Ber);
        // ContentInfo SEQUENCE, indefinite; contentType id-envelopedData; [0] indefinite;
        // EnvelopedData SEQUENCE indefinite; version 2.
        let oid = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
        assert_eq!(&ber[..2], &[0x30, 0x80]);
        assert_eq!(&ber[2..13], &oid);
        assert_eq!(&ber[13..20], &[0xa0, 0x80, 0x30, 0x80, 0x02, 0x01, 0x02]);
        // Four levels end at the tail, after the one 48-byte chunk, itself after [0] 0x80.
        assert!(ber.ends_with(&[0u8; 10]), "five end-of-contents pairs close the frame");
        let chunk_start = ber.len() - 10 - 48 - 2;
        assert_eq!(&ber[chunk_start - 2..chunk_start + 2], &[0xa0, 0x80, 0x04, 48]);
    }

    #[test]
    fn a_der_only_parser_rejects_the_ber_form_and_accepts_the_der_form() {
        use der::Decode as _;
        let ber = wrap(&[1u8; 32], CmsEncoding::Ber);
        let err = der::Document::from_der(&ber).expect_err("a DER parser accepted indefinite lengths");
        assert!(format!("{err}").to_lowercase().contains("length"), "{err}");
        let der_form = wrap(&[1u8; 32], CmsEncoding::Der);
        der::Document::from_der(&der_form).expect("the DER form is DER");
    }

    #[test]
    fn the_ber_form_decodes_to_the_structure_the_der_form_encodes() {
        // Decode the BER with rasn, re-encode as DER: a DER parser accepts it, and its shape is
        // the same as the DER variant's (same length: the random CEK, IV and OAEP output differ).
        let ber = wrap(&[3u8; 32], CmsEncoding::Ber);
        let info: ContentInfo = rasn::ber::decode(&ber).unwrap();
        let enveloped: EnvelopedData = rasn::ber::decode(info.content.as_bytes()).unwrap();
        assert_eq!(enveloped.version, 2.into());
        let [RecipientInfo::KeyTransRecipientInfo(ktri)] = enveloped.recipient_infos.to_vec().as_slice()
        else {
            panic!("one KeyTransRecipientInfo");
        };
        assert_eq!(ktri.version, 2.into());
        let (key, spki) = test_key();
        assert_eq!(ktri.rid, RecipientIdentifier::SubjectKeyIdentifier(subject_key_identifier(spki).into()));
        assert_eq!(ktri.encrypted_key.len(), 256);
        assert!(key.oaep_decrypt::<Sha256>(&ktri.encrypted_key).is_ok());
        let reencoded = rasn::der::encode(&ContentInfo {
            content_type: info.content_type,
            content: Any::new(rasn::der::encode(&enveloped).unwrap()),
        })
        .unwrap();
        use der::Decode as _;
        der::Document::from_der(&reencoded).expect("re-encoded DER");
        assert_eq!(reencoded.len(), wrap(&[3u8; 32], CmsEncoding::Der).len());
    }

    #[test]
    fn long_plaintexts_are_segmented_in_chunks() {
        let (key, _) = test_key();
        let plaintext = vec![9u8; 2500];
        let ber = wrap(&plaintext, CmsEncoding::Ber);
        assert_eq!(open(key, &ber).unwrap(), plaintext);
        // 2512 bytes of ciphertext: chunks 1000 + 1000 + 512 (04 82 03 e8 is a 1000-byte chunk).
        assert_eq!(ber.windows(4).filter(|w| w == &[0x04, 0x82, 0x03, 0xe8]).count(), 2);
    }
}
