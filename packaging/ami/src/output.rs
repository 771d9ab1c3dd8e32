//! What a run prints and writes with `--out`: a manifest shaped like Packer's manifest
//! post-processor output, so the same tooling reads both.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub builds: Vec<Build>,
    pub last_run_uuid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Build {
    pub name: String,
    pub builder_type: String,
    pub build_time: u64,
    /// `region:ami-id` pairs joined by commas, as Packer's amazon-ebs writes them.
    pub artifact_id: String,
    pub packer_run_uuid: String,
    pub custom_data: BTreeMap<String, String>,
    /// Ours: per region AMI id and snapshots.
    pub regions: BTreeMap<String, RegionResult>,
    pub timings_seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegionResult {
    pub ami_id: String,
    pub snapshot_ids: Vec<String>,
    /// True when an image with the same content key already existed.
    pub reused: bool,
}
