//! `amispec.toml`: what to bake and where. Validated completely before the first AWS call.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmiSpec {
    /// AMI name; `{content_key}` is replaced by the first 12 hex digits of the content key.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Region where the snapshot is uploaded and the image registered.
    pub region: String,
    /// Further regions the image is copied to.
    #[serde(default)]
    pub copy_to: Vec<String>,
    #[serde(default = "default_arch")]
    pub architecture: String,
    #[serde(default = "default_boot")]
    pub boot_mode: String,
    #[serde(default = "default_root")]
    pub root_device_name: String,
    #[serde(default = "yes")]
    pub ena: bool,
    /// Require IMDSv2 on instances launched from the image (imds-support v2.0).
    #[serde(default = "yes")]
    pub imds_v2: bool,
    /// NitroTPM (tpm-support v2.0); needs boot mode uefi.
    #[serde(default)]
    pub tpm: bool,
    #[serde(default)]
    pub volume: Volume,
    /// CopyImage with Encrypted=true (snapshots of the copies encrypted).
    #[serde(default)]
    pub encrypt_copies: bool,
    /// Per target region KMS key for the encrypted copy (default: the region's aws/ebs key).
    #[serde(default)]
    pub kms_key_ids: BTreeMap<String, String>,
    /// Accounts given launch permission (and create-volume permission on the snapshots).
    #[serde(default)]
    pub share_with: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// SSM parameter written in every region with that region's AMI id.
    #[serde(default)]
    pub ssm_parameter: Option<String>,
    #[serde(default)]
    pub upload: Upload,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Root volume size; 0 = the image size rounded up to GiB.
    #[serde(default)]
    pub size_gib: u64,
    #[serde(default = "default_iops")]
    pub iops: i32,
    #[serde(default = "default_throughput")]
    pub throughput: i32,
}

impl Default for Volume {
    fn default() -> Self {
        Volume { size_gib: 0, iops: default_iops(), throughput: default_throughput() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// How many times DescribeImages is asked before giving up on an image becoming available.
    #[serde(default = "default_wait_attempts")]
    pub wait_attempts: u32,
    #[serde(default = "default_wait_secs")]
    pub wait_interval_secs: u64,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            workers: default_workers(),
            max_attempts: default_attempts(),
            wait_attempts: default_wait_attempts(),
            wait_interval_secs: default_wait_secs(),
        }
    }
}

fn default_arch() -> String {
    "x86_64".into()
}
fn default_boot() -> String {
    "uefi".into()
}
fn default_root() -> String {
    "/dev/xvda".into()
}
fn yes() -> bool {
    true
}
fn default_iops() -> i32 {
    3000
}
fn default_throughput() -> i32 {
    125
}
fn default_workers() -> usize {
    64
}
fn default_attempts() -> u32 {
    5
}
fn default_wait_attempts() -> u32 {
    120
}
fn default_wait_secs() -> u64 {
    5
}

/// Tag key carrying the content key on images and snapshots (idempotency).
pub const CONTENT_KEY_TAG: &str = "kv-ami:content-key";

impl AmiSpec {
    pub fn load(path: &Path) -> Result<AmiSpec, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<AmiSpec, String> {
        let spec: AmiSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    /// Every check that can be made without AWS; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.len() < 3 || self.name.len() > 128 {
            return Err(format!("name: must be 3-128 characters, got {:?}", self.name));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "()[]./-'@_ {}".contains(c);
        if let Some(c) = self.name.chars().find(|&c| !allowed(c)) {
            return Err(format!("name: character {c:?} is not allowed in an AMI name"));
        }
        region_ok("region", &self.region)?;
        for (i, r) in self.copy_to.iter().enumerate() {
            region_ok(&format!("copy_to[{i}]"), r)?;
            if r == &self.region {
                return Err(format!("copy_to[{i}]: {r} is the source region"));
            }
            if self.copy_to[..i].contains(r) {
                return Err(format!("copy_to[{i}]: {r} is listed twice"));
            }
        }
        for (r, key) in &self.kms_key_ids {
            if !self.copy_to.contains(r) {
                return Err(format!("kms_key_ids.{r}: {r} is not in copy_to"));
            }
            if !self.encrypt_copies {
                return Err(format!("kms_key_ids.{r}: a KMS key needs encrypt_copies = true"));
            }
            let arn_ok =
                key.strip_prefix("arn:aws:kms:").is_some_and(|rest| rest.starts_with(&format!("{r}:")));
            let id_ok = key.len() == 36 && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
            if !(arn_ok || id_ok || key.starts_with("alias/")) {
                return Err(format!(
                    "kms_key_ids.{r}: {key:?} is not a key id, alias/NAME or a KMS ARN in region {r}"
                ));
            }
        }
        if !["x86_64", "arm64"].contains(&self.architecture.as_str()) {
            return Err(format!("architecture: {:?} is not x86_64 or arm64", self.architecture));
        }
        if !["uefi", "legacy-bios", "uefi-preferred"].contains(&self.boot_mode.as_str()) {
            return Err(format!(
                "boot_mode: {:?} is not uefi, legacy-bios or uefi-preferred",
                self.boot_mode
            ));
        }
        if self.architecture == "arm64" && self.boot_mode == "legacy-bios" {
            return Err("boot_mode: arm64 images boot with uefi only".into());
        }
        if self.tpm && self.boot_mode == "legacy-bios" {
            return Err("tpm: NitroTPM needs boot_mode uefi or uefi-preferred".into());
        }
        if !self.root_device_name.starts_with("/dev/") {
            return Err(format!("root_device_name: {:?} must start with /dev/", self.root_device_name));
        }
        let v = &self.volume;
        if v.size_gib > 16384 {
            return Err(format!("volume.size_gib: {} exceeds gp3's 16384", v.size_gib));
        }
        if !(3000..=80000).contains(&v.iops) {
            return Err(format!("volume.iops: {} is outside gp3's 3000-80000", v.iops));
        }
        if !(125..=2000).contains(&v.throughput) {
            return Err(format!("volume.throughput: {} is outside gp3's 125-2000 MiB/s", v.throughput));
        }
        for (i, a) in self.share_with.iter().enumerate() {
            if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("share_with[{i}]: {a:?} is not a 12-digit account id"));
            }
        }
        for k in self.tags.keys() {
            if k.starts_with("aws:") || k == CONTENT_KEY_TAG || k.is_empty() || k.len() > 128 {
                return Err(format!("tags.{k}: reserved or invalid tag key"));
            }
        }
        if let Some(p) = &self.ssm_parameter
            && (!p.starts_with('/') || p.len() > 1011 || p.contains("//"))
        {
            return Err(format!("ssm_parameter: {p:?} must be an absolute parameter path"));
        }
        let u = &self.upload;
        if !(1..=256).contains(&u.workers) {
            return Err(format!("upload.workers: {} is outside 1-256", u.workers));
        }
        if !(1..=20).contains(&u.max_attempts) {
            return Err(format!("upload.max_attempts: {} is outside 1-20", u.max_attempts));
        }
        if !(1..=10000).contains(&u.wait_attempts) {
            return Err(format!("upload.wait_attempts: {} is outside 1-10000", u.wait_attempts));
        }
        Ok(())
    }

    /// The AMI name with `{content_key}` filled in.
    pub fn ami_name(&self, content_key: &str) -> String {
        self.name.replace("{content_key}", &content_key[..content_key.len().min(12)])
    }

    pub fn all_regions(&self) -> Vec<String> {
        std::iter::once(self.region.clone()).chain(self.copy_to.iter().cloned()).collect()
    }
}

fn region_ok(key: &str, r: &str) -> Result<(), String> {
    let parts: Vec<&str> = r.split('-').collect();
    let ok = parts.len() >= 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if ok { Ok(()) } else { Err(format!("{key}: {r:?} is not a region name like eu-west-1")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "kv-server-{content_key}"
region = "us-east-1"
copy_to = ["eu-west-1"]
architecture = "arm64"
tpm = true
share_with = ["123456789012"]
ssm_parameter = "/kv/ami"
[tags]
service = "kv"
[volume]
size_gib = 8
[upload]
workers = 8
"#;

    #[test]
    fn parses_with_defaults() {
        let s = AmiSpec::parse(GOOD).unwrap();
        assert_eq!(s.boot_mode, "uefi");
        assert_eq!(s.volume.iops, 3000);
        assert_eq!(s.upload.workers, 8);
        assert_eq!(s.ami_name("0123456789abcdef"), "kv-server-0123456789ab");
        assert_eq!(s.all_regions(), vec!["us-east-1", "eu-west-1"]);
        let kms = GOOD.replace(
            "tpm = true",
            "tpm = true\nencrypt_copies = true\nkms_key_ids = { \"eu-west-1\" = \"arn:aws:kms:eu-west-1:1:key/x\" }",
        );
        assert_eq!(AmiSpec::parse(&kms).unwrap().kms_key_ids.len(), 1);
    }

    #[test]
    fn the_example_spec_is_valid() {
        let s = AmiSpec::parse(include_str!("../amispec.example.toml")).unwrap();
        assert_eq!(s.copy_to.len(), 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = AmiSpec::parse(&format!("{GOOD}\nbogus = 1")).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let cases = [
            ("architecture = \"arm64\"", "architecture = \"sparc\"", "architecture"),
            ("region = \"us-east-1\"", "region = \"useast\"", "region"),
            ("copy_to = [\"eu-west-1\"]", "copy_to = [\"us-east-1\"]", "copy_to[0]"),
            ("share_with = [\"123456789012\"]", "share_with = [\"12345\"]", "share_with[0]"),
            ("workers = 8", "workers = 0", "upload.workers"),
            ("size_gib = 8", "size_gib = 8\niops = 10", "volume.iops"),
            ("ssm_parameter = \"/kv/ami\"", "ssm_parameter = \"kv\"", "ssm_parameter"),
            ("tpm = true", "tpm = true\nboot_mode = \"legacy-bios\"", "boot_mode"),
            ("service = \"kv\"", "\"kv-ami:content-key\" = \"x\"", "tags."),
            (
                "tpm = true",
                "tpm = true\nkms_key_ids = { \"eu-west-1\" = \"alias/k\" }",
                "kms_key_ids.eu-west-1",
            ),
            (
                "tpm = true",
                "tpm = true\nencrypt_copies = true\nkms_key_ids = { \"eu-west-1\" = \"arn:aws:kms:us-east-1:1:key/x\" }",
                "kms_key_ids.eu-west-1",
            ),
            (
                "tpm = true",
                "tpm = true\nencrypt_copies = true\nkms_key_ids = { \"us-west-2\" = \"alias/k\" }",
                "kms_key_ids.us-west-2",
            ),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let e = AmiSpec::parse(&text).unwrap_err();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }
}
