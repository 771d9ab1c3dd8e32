//! The v2 API over HTTP, as envoy serves it: fetch and check the key set (`GET /v2/keys`), and
//! one encrypted lookup (`POST /v2/oblivious_getvalues`). All cryptography is kv-protocol's.
//!
//! http:// only: TLS ends at the load balancer in front of envoy, and what protects a query
//! from everything behind it is the encryption to the enclave's keys, not the transport.

use std::time::Duration;

use kv_protocol::cbor::{self, PartitionOutput, Request};
use kv_protocol::keys::{PublicKey, PublicKeySet, key_set_user_data};
use kv_protocol::{ProtocolError, client, framing, suite};

use crate::verify::{self, Expectations, ExpectedPcrs, VerifiedDocument, VerifyError, VerifyOptions};

/// The key endpoint and the oblivious route (envoy's HTTP paths, docs/kv-server.md).
pub const KEYS_PATH: &str = "/v2/keys";
pub const OBLIVIOUS_PATH: &str = "/v2/oblivious_getvalues";
/// The most a key set answer may be.
pub const MAX_KEYS_BODY: u64 = 256 * 1024;
/// The most one decompressed compression group may be.
pub const MAX_GROUP_LEN: usize = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    /// The URL is not `http://HOST:PORT`.
    #[error("--url {url}: {reason}")]
    Url { url: String, reason: &'static str },
    /// No HTTP answer (connection, timeout, malformed HTTP): the transport side.
    #[error("{method} {url}: no answer: {reason}")]
    Transport { method: &'static str, url: String, reason: String },
    /// The server (envoy or kv-server) answered with an error status.
    #[error("{method} {url}: the server answered HTTP {status}: {body}")]
    Status { method: &'static str, url: String, status: u16, body: String },
    /// The key endpoint's answer does not parse or does not add up.
    #[error("GET {url}: the key set is refused: {reason}")]
    KeySet { url: String, reason: String },
    /// A manifest was given but the server sent no attestation document.
    #[error(
        "GET {url}: no attestation document, so the keys cannot be tied to the enclave image \
         (attestationUnavailable: {reason}); pass --no-attestation-check only for a server outside an enclave"
    )]
    AttestationUnavailable { url: String, reason: String },
    /// The key set's attestation document was refused.
    #[error("GET {url}: the key set's attestation document is refused: {source}")]
    Attestation { url: String, source: VerifyError },
    /// Building or encrypting the request failed (this client's side).
    #[error("building the request: {0}")]
    Request(ProtocolError),
    /// The answer does not decrypt, unframe, decode or decompress (the server's answer).
    #[error("the answer of POST {url}: {stage}: {source}")]
    Answer { url: String, stage: &'static str, source: ProtocolError },
}

/// The base URL, `http://HOST:PORT` (a trailing `/` is dropped).
pub fn base_url(url: &str) -> Result<String, V2Error> {
    let bad = |reason| V2Error::Url { url: url.to_string(), reason };
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        bad(if url.starts_with("https://") {
            "https is not supported: TLS ends at the load balancer; give envoy's http:// address"
        } else {
            "must start with http://"
        })
    })?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('?') {
        return Err(bad("must be http://HOST:PORT with no path"));
    }
    Ok(format!("http://{host}"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(TIMEOUT)).build().into()
}

fn transport<'a>(method: &'static str, url: &'a str) -> impl Fn(ureq::Error) -> V2Error + 'a {
    move |e| V2Error::Transport { method, url: url.to_string(), reason: e.to_string() }
}

fn status_error(method: &'static str, url: &str, response: &mut ureq::http::Response<ureq::Body>) -> V2Error {
    let body = response.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
    V2Error::Status {
        method,
        url: url.to_string(),
        status: response.status().as_u16(),
        body: body.trim().to_string(),
    }
}

/// The key set, checked: its digest recomputed from the keys, and its document verified when
/// expectations are given.
#[derive(Debug)]
pub struct CheckedKeys {
    pub set: PublicKeySet,
    pub digest: [u8; 32],
    /// The current key (the first listed), which requests are encrypted to.
    pub key_id: u8,
    pub key: PublicKey,
    pub nonce: [u8; 32],
    /// `None` when the attestation check was skipped.
    pub verified: Option<VerifiedDocument>,
}

/// How the key set's document is checked: `None` skips it (a server outside an enclave).
pub struct AttestationCheck {
    pub pcrs: ExpectedPcrs,
    pub options: VerifyOptions,
}

/// `GET /v2/keys?nonce=<fresh>` and the checks of [`check_keys`].
pub fn fetch_keys(base: &str, check: Option<&AttestationCheck>) -> Result<CheckedKeys, V2Error> {
    let nonce = verify::fresh_nonce().map_err(|e| V2Error::Transport {
        method: "GET",
        url: base.to_string(),
        reason: format!("no randomness for the nonce: {e}"),
    })?;
    let url = format!("{base}{KEYS_PATH}?nonce={}", hex::encode(nonce));
    let mut response = agent().get(&url).call().map_err(transport("GET", &url))?;
    if response.status().as_u16() != 200 {
        return Err(status_error("GET", &url, &mut response));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_KEYS_BODY)
        .read_to_vec()
        .map_err(transport("GET", &url))?;
    let set: PublicKeySet = serde_json::from_slice(&body)
        .map_err(|e| V2Error::KeySet { url: url.clone(), reason: format!("not the key set JSON: {e}") })?;
    check_keys(&url, set, nonce, check)
}

/// The digest recomputed from `keys` must equal `keySetSha256`; with `check`, the document
/// must pass verification with the nonce sent and `user_data` = prefix || digest.
pub fn check_keys(
    url: &str,
    set: PublicKeySet,
    nonce: [u8; 32],
    check: Option<&AttestationCheck>,
) -> Result<CheckedKeys, V2Error> {
    let refused = |reason: String| V2Error::KeySet { url: url.to_string(), reason };
    let keys = set.parse_keys().map_err(|e| refused(e.to_string()))?;
    let (key_id, key) = *keys.first().ok_or_else(|| refused("no keys".into()))?;
    let digest = set.computed_sha256().map_err(|e| refused(e.to_string()))?;
    if hex::encode(digest) != set.key_set_sha256.to_ascii_lowercase() {
        return Err(refused(format!(
            "keySetSha256 is {} but the keys listed hash to {}",
            set.key_set_sha256,
            hex::encode(digest)
        )));
    }
    let verified = match check {
        None => None,
        Some(check) => {
            let document = set.attestation_document_bytes().map_err(|e| refused(e.to_string()))?;
            let Some(document) = document else {
                let reason = set.attestation_unavailable.clone().unwrap_or_else(|| "not given".into());
                return Err(V2Error::AttestationUnavailable { url: url.to_string(), reason });
            };
            let expect = Expectations::new(check.pcrs.clone(), nonce.to_vec())
                .with_user_data(key_set_user_data(&digest));
            let verified = verify::verify_attestation(&document, &expect, &check.options)
                .map_err(|source| V2Error::Attestation { url: url.to_string(), source })?;
            Some(verified)
        }
    };
    Ok(CheckedKeys { set, digest, key_id, key, nonce, verified })
}

/// One compression group of the answer, decompressed and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub compression_group_id: u64,
    pub partitions: Vec<PartitionOutput>,
}

/// Encrypts `request` to the current key, POSTs it to the oblivious route and returns the
/// answer's groups.
pub fn lookup(base: &str, keys: &CheckedKeys, request: &Request) -> Result<Vec<Group>, V2Error> {
    let payload = cbor::encode_request(request).map_err(V2Error::Request)?;
    let framed = framing::frame_request(&payload).map_err(V2Error::Request)?;
    let (message, context) =
        client::encrypt_request(keys.key_id, &keys.key, &framed).map_err(V2Error::Request)?;
    let url = format!("{base}{OBLIVIOUS_PATH}");
    let mut response = agent()
        .post(&url)
        .header("Content-Type", suite::REQUEST_LABEL)
        .send(&message[..])
        .map_err(transport("POST", &url))?;
    if response.status().as_u16() != 200 {
        return Err(status_error("POST", &url, &mut response));
    }
    let limit = u64::try_from(framing::MAX_RESPONSE_LEN + suite::MIN_RESPONSE_LEN).unwrap_or(u64::MAX);
    let body =
        response.body_mut().with_config().limit(limit).read_to_vec().map_err(transport("POST", &url))?;
    let url = url.as_str();
    let answer = |stage| move |source| V2Error::Answer { url: url.to_string(), stage, source };
    let plaintext = context.decrypt_response(&body).map_err(answer("decryption"))?;
    let (compression, payload) = framing::unframe(&plaintext).map_err(answer("framing"))?;
    let response = cbor::decode_response(payload).map_err(answer("CBOR"))?;
    response
        .compression_groups
        .iter()
        .map(|group| {
            let partitions =
                group.partition_outputs(compression, MAX_GROUP_LEN).map_err(answer("compression group"))?;
            Ok(Group { compression_group_id: group.compression_group_id, partitions })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_protocol::keys::{KeyPair, PublicKeyEntry, key_set_sha256};

    #[test]
    fn urls_are_http_host_port() {
        assert_eq!(base_url("http://127.0.0.1:51052/").unwrap(), "http://127.0.0.1:51052");
        assert!(base_url("https://kv.example").unwrap_err().to_string().contains("load balancer"));
        assert!(base_url("127.0.0.1:1").is_err());
        assert!(base_url("http://h/v2/keys").is_err());
    }

    fn key_set() -> PublicKeySet {
        let pair = KeyPair::generate(0xa3).unwrap();
        PublicKeySet {
            keys: vec![PublicKeyEntry::new(pair.id, &pair.public)],
            key_set_sha256: hex::encode(key_set_sha256([(pair.id, &pair.public)])),
            attestation_document: None,
            attestation_unavailable: Some("no NSM device (/dev/nsm)".into()),
        }
    }

    #[test]
    fn the_digest_must_match_the_keys() {
        let checked = check_keys("u", key_set(), [0; 32], None).unwrap();
        assert_eq!(checked.key_id, 0xa3);
        let mut wrong = key_set();
        wrong.key_set_sha256 = hex::encode([0u8; 32]);
        let e = check_keys("u", wrong, [0; 32], None).unwrap_err().to_string();
        assert!(e.contains("hash to"), "{e}");
    }

    #[test]
    fn no_document_with_a_manifest_names_the_reason() {
        let check = AttestationCheck {
            pcrs: ExpectedPcrs::new([0; 48], [0; 48], [0; 48]),
            options: VerifyOptions::insecure_skip_chain(),
        };
        let e = check_keys("u", key_set(), [0; 32], Some(&check)).unwrap_err();
        assert!(matches!(e, V2Error::AttestationUnavailable { .. }));
        assert!(e.to_string().contains("no NSM device"), "{e}");
    }
}
