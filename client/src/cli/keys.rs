//! `kv-client keys`: fetches the server's key set (`GET /v2/keys` with a fresh nonce), checks
//! that `keySetSha256` is the digest of the keys listed and, with `--manifest`, that the
//! attestation document binds that digest for an enclave with the manifest's PCRs. Prints JSON.

use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;

use super::CliError;
use super::verify_attestation::{INSECURE_WARNING, summary};
use crate::v2::{self, AttestationCheck, CheckedKeys};
use crate::verify::{ExpectedPcrs, SignatureCheck, VerifyOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// envoy's address, http://HOST:PORT (TLS ends at the load balancer; https is not spoken).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The enclave bundle's manifest.json: verify the key set's attestation document against
    /// its PCRs. Without it the keys are only checked against their own digest.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// INSECURE: do not check the document's certificate chain (the emulated NSM, test signers).
    #[arg(long)]
    pub insecure_skip_certificate_chain: bool,
}

/// The attestation check the flags ask for (`None`: no manifest); prints the chain warning.
pub(super) fn attestation_check(
    manifest: Option<&PathBuf>,
    insecure_skip_certificate_chain: bool,
    err: &mut dyn Write,
) -> Result<Option<AttestationCheck>, CliError> {
    let Some(manifest) = manifest else { return Ok(None) };
    if insecure_skip_certificate_chain {
        writeln!(err, "{INSECURE_WARNING}")?;
    }
    let pcrs = ExpectedPcrs::from_manifest(manifest)?;
    let options =
        VerifyOptions { insecure_skip_chain: insecure_skip_certificate_chain, ..VerifyOptions::default() };
    Ok(Some(AttestationCheck { pcrs, options }))
}

pub(super) fn warn_unsigned(keys: &CheckedKeys, err: &mut dyn Write) -> std::io::Result<()> {
    if keys.verified.as_ref().is_some_and(|v| v.signature == SignatureCheck::AbsentEmulatedNsm) {
        writeln!(
            err,
            "kv-client: WARNING: the document is unsigned (the emulated NSM): its origin is unknown"
        )?;
    }
    Ok(())
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let base = v2::base_url(&args.url)?;
    let check = attestation_check(args.manifest.as_ref(), args.insecure_skip_certificate_chain, err)?;
    let keys = v2::fetch_keys(&base, check.as_ref())?;
    warn_unsigned(&keys, err)?;
    serde_json::to_writer_pretty(&mut *out, &report(&keys)).map_err(|e| CliError::Output(e.into()))?;
    writeln!(out)?;
    Ok(())
}

/// The JSON the command prints.
pub fn report(keys: &CheckedKeys) -> Value {
    let listed: Vec<Value> = keys.set.keys.iter().map(|k| json!({"id": k.id, "key": k.key})).collect();
    json!({
        "keys": listed,
        "current_key_id": format!("{:02x}", keys.key_id),
        "key_set_sha256": hex::encode(keys.digest),
        "key_set_sha256_matches": true,
        "nonce": hex::encode(keys.nonce),
        "attestation": match &keys.verified {
            Some(v) => summary(v),
            None => json!({
                "verified": false,
                "document_present": keys.set.attestation_document.is_some(),
                "attestation_unavailable": keys.set.attestation_unavailable,
            }),
        },
    })
}
