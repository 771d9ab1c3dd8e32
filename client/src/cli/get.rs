//! `kv-client get`: an encrypted v2 lookup. Fetches and checks the key set as `keys` does
//! (the attestation document is required unless `--no-attestation-check`), builds the CBOR
//! request, frames and encrypts it to the current key, POSTs it to `/v2/oblivious_getvalues`,
//! then decrypts, unframes and decompresses the answer and prints the partition outputs as JSON.

use kv_protocol::cbor::{Argument, Partition, Request, tags};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;

use super::CliError;
use super::keys::{attestation_check, warn_unsigned};
use crate::v2::{self, Group};

/// What the command prints on stderr every time the attestation is not checked.
pub const NO_ATTESTATION_WARNING: &str = "kv-client: WARNING: --no-attestation-check: the keys are NOT tied to an \
     enclave image; whoever answered GET /v2/keys (anything on the parent) may hold the private key and read \
     this query. Use it only for a server outside an enclave.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// envoy's address, http://HOST:PORT (TLS ends at the load balancer; https is not spoken).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Keys to look up (tag `keys`), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "KEY,...")]
    pub keys: Vec<String>,
    /// Render URLs to look up (tag `renderUrls`), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub render_urls: Vec<String>,
    /// Ad component render URLs to look up (tag `adComponentRenderUrls`), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub ad_component_render_urls: Vec<String>,
    /// Interest group names to look up (tag `interestGroupNames`), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub interest_group_names: Vec<String>,
    /// The compression the answer may use (`acceptCompression`).
    #[arg(long, value_enum, default_value_t = AcceptCompression::Gzip)]
    pub compression: AcceptCompression,
    /// Sends the same arguments in N partitions (ids 0..N), each its own compression group.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub partitions: u64,
    /// The enclave bundle's manifest.json: the key set's document must match its PCRs.
    #[arg(long, value_name = "FILE", required_unless_present = "no_attestation_check")]
    pub manifest: Option<PathBuf>,
    /// INSECURE: encrypt to keys that are not checked against any enclave image.
    #[arg(long, conflicts_with = "manifest")]
    pub no_attestation_check: bool,
    /// INSECURE: do not check the document's certificate chain (the emulated NSM, test signers).
    #[arg(long)]
    pub insecure_skip_certificate_chain: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AcceptCompression {
    None,
    Gzip,
}

impl Args {
    /// The CBOR request the flags describe.
    pub fn request(&self) -> Request {
        let arguments: Vec<Argument> = [
            (tags::KEYS, &self.keys),
            (tags::RENDER_URLS, &self.render_urls),
            (tags::AD_COMPONENT_RENDER_URLS, &self.ad_component_render_urls),
            (tags::INTEREST_GROUP_NAMES, &self.interest_group_names),
        ]
        .into_iter()
        .filter(|(_, data)| !data.is_empty())
        .map(|(tag, data)| Argument { tags: vec![tag.to_string()], data: data.clone() })
        .collect();
        let accept = match self.compression {
            AcceptCompression::None => vec!["none".to_string()],
            AcceptCompression::Gzip => vec!["none".to_string(), "gzip".to_string()],
        };
        Request {
            partitions: (0..self.partitions)
                .map(|id| Partition {
                    id,
                    compression_group_id: id,
                    metadata: None,
                    arguments: arguments.clone(),
                })
                .collect(),
            accept_compression: accept,
            ..Default::default()
        }
    }

    fn requested(&self) -> Vec<&String> {
        let mut all: Vec<&String> =
            [&self.keys, &self.render_urls, &self.ad_component_render_urls, &self.interest_group_names]
                .into_iter()
                .flatten()
                .collect();
        all.sort();
        all.dedup();
        all
    }
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let base = v2::base_url(&args.url)?;
    if args.requested().is_empty() {
        return Err(CliError::Usage {
            flag: "--keys",
            reason: "nothing to look up: give --keys, --render-urls, --ad-component-render-urls or --interest-group-names"
                .into(),
        });
    }
    if args.no_attestation_check {
        writeln!(err, "{NO_ATTESTATION_WARNING}")?;
    }
    let check = attestation_check(args.manifest.as_ref(), args.insecure_skip_certificate_chain, err)?;
    let keys = v2::fetch_keys(&base, check.as_ref())?;
    warn_unsigned(&keys, err)?;
    let groups = v2::lookup(&base, &keys, &args.request())?;
    serde_json::to_writer_pretty(&mut *out, &report(args, &keys, &groups))
        .map_err(|e| CliError::Output(e.into()))?;
    writeln!(out)?;
    Ok(())
}

/// The JSON the command prints: the groups' partition outputs as the server sent them, and the
/// requested keys that no partition returned.
fn report(args: &Args, keys: &v2::CheckedKeys, groups: &[Group]) -> Value {
    let found: std::collections::BTreeSet<&String> = groups
        .iter()
        .flat_map(|g| &g.partitions)
        .flat_map(|p| &p.key_group_outputs)
        .flat_map(|k| k.key_values.keys())
        .collect();
    let missing: Vec<&String> = args.requested().into_iter().filter(|k| !found.contains(k)).collect();
    json!({
        "key_id": format!("{:02x}", keys.key_id),
        "attestation_verified": keys.verified.is_some(),
        "compressionGroups": groups.iter().map(|g| json!({
            "compressionGroupId": g.compression_group_id,
            "content": g.partitions,
        })).collect::<Vec<_>>(),
        "missing": missing,
    })
}
