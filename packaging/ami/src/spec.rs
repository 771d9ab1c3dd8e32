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
    /// AWS Organizations given launch permission (`arn:aws:organizations::ACCOUNT:organization/o-...`).
    #[serde(default)]
    pub share_with_organizations: Vec<String>,
    /// Organizational units given launch permission (`arn:aws:organizations::ACCOUNT:ou/o-.../ou-...`).
    #[serde(default)]
    pub share_with_ous: Vec<String>,
    /// Launch permission for everyone (group `all`); the snapshots stay private.
    #[serde(default)]
    pub public: bool,
    /// EnableImageDeprecation in every region at this time (RFC 3339 UTC, e.g. 2027-06-30T00:00:00Z).
    #[serde(default)]
    pub deprecate_at: Option<String>,
    /// What happens to a snapshot or image that was created but not finished when a run fails:
    /// `delete` (default) or `keep` (so that `--state` can resume the upload).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// How `kv-ami import` turns the raw image into a snapshot.
    #[serde(default)]
    pub via: Via,
    /// Needed by `via = "s3-import"`.
    #[serde(default)]
    pub s3_import: Option<S3Import>,
    /// Needed by `kv-ami bake` (the builder-instance bake).
    #[serde(default)]
    pub bake: Option<Bake>,
    /// The boot smoke test of the new image, before any copy, share or SSM write. `kv-ami import`
    /// and `kv-ami bake` refuse a spec without it unless `--skip-smoke-test` is given.
    #[serde(default)]
    pub smoke_test: Option<SmokeTest>,
    /// Release channel (e.g. `stable`): every build gets the parameter
    /// `SSM_PREFIX/CHANNEL/builds/<first 12 of the content key>` at publish, and
    /// `SSM_PREFIX/CHANNEL/latest` moves to it only after a passed smoke test (or `kv-ami promote`).
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default = "default_ssm_prefix")]
    pub ssm_prefix: String,
    /// Several images from one bundle in one run ([`Variant`]); without it, one image as before.
    /// With it the top-level keys are what every variant shares, and only the variants are built.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// `--skip-smoke-test` (a flag, not a key): the smoke test is not run and `latest` not moved.
    #[serde(skip)]
    pub skip_smoke_test: bool,
    /// The variant this (effective, [`AmiSpec::variant_specs`]) spec builds; None without variants.
    /// Its images and snapshots carry `kv-ami:variant` and are found by it with the content key.
    #[serde(skip)]
    pub variant: Option<String>,
}

/// `[[variants]]`: one image of the bundle with its own name, tags, SSM channel, root volume and
/// smoke-test instance type. Each key left out is the top-level one; `tags` are added to the
/// top-level tags.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// 1-32 of a-z 0-9 -, unique: the tag `kv-ami:variant`, `{variant}` in names.
    pub id: String,
    /// AMI name (`{content_key}`, `{variant}` filled in). Default: the top-level `name`, which
    /// must then contain `{variant}` (AMI names are unique per region).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Default: `<top-level channel>-<id>` when the top level has a channel. Unique.
    #[serde(default)]
    pub channel: Option<String>,
    /// Added to (and overriding) the top-level `[tags]`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Replaces the top-level `[volume]` as a whole.
    #[serde(default)]
    pub volume: Option<Volume>,
    /// The instance type of this variant's smoke test (e.g. the instance family it is for).
    #[serde(default)]
    pub smoke_test_instance_type: Option<String>,
    /// Legacy AMI-id parameter of this variant (the top-level one is refused with variants).
    #[serde(default)]
    pub ssm_parameter: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// Enclave-capable instance type (the same check as `bake.instance_type`).
    #[serde(default = "default_builder_type")]
    pub instance_type: String,
    /// Instance profile of the test instance: the fleet's permissions (data, keys) plus
    /// packaging/ami/iam-smoke-test-instance-policy.json (its report tags).
    pub instance_profile: String,
    /// The fleet's instance-init launcher, rendered (terraform module kv-service, its
    /// `templates/instance_init.tftpl`); run as the test instance's user data with
    /// `KV_AMI_SMOKE_TEST=1`. Read before any AWS call.
    pub launcher: std::path::PathBuf,
    /// Subnet of the test instance (default: the default VPC's).
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// DescribeInstances checks for the instance's report tags.
    #[serde(default = "default_report_attempts")]
    pub report_attempts: u32,
    #[serde(default = "default_signal_secs")]
    pub report_interval_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    #[default]
    Delete,
    Keep,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// EBS direct APIs (StartSnapshot / PutSnapshotBlock / CompleteSnapshot).
    #[default]
    EbsDirect,
    /// PutObject to S3, then ImportSnapshot (for accounts that cannot use the EBS direct APIs).
    S3Import,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::EbsDirect => "ebs-direct",
            Via::S3Import => "s3-import",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Import {
    /// Existing bucket the raw image is put into (the object is deleted afterwards).
    pub bucket: String,
    #[serde(default = "default_import_prefix")]
    pub prefix: String,
    /// Service role of VM Import (default: AWS's default `vmimport`).
    #[serde(default)]
    pub role_name: Option<String>,
    /// DescribeImportSnapshotTasks checks before giving up (imports take 15-45 min, sometimes 100).
    #[serde(default = "default_import_attempts")]
    pub wait_attempts: u32,
    #[serde(default = "default_import_secs")]
    pub wait_interval_secs: u64,
    /// Images larger than this go up as a multipart upload of parts this size (5-5120 MiB;
    /// at most 10000 parts).
    #[serde(default = "default_part_mib")]
    pub part_size_mib: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bake {
    /// Base AMI from an SSM (public) parameter, e.g.
    /// /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64. Either this or
    /// `base_ami_name` + `base_ami_owner`.
    #[serde(default)]
    pub base_ami_ssm_parameter: Option<String>,
    /// Name filter (wildcards allowed); the newest available image of `base_ami_owner` wins.
    #[serde(default)]
    pub base_ami_name: Option<String>,
    /// `amazon`, `self` or a 12-digit account id.
    #[serde(default)]
    pub base_ami_owner: Option<String>,
    /// Must support Nitro Enclaves (RunInstances asks for EnclaveOptions).
    #[serde(default = "default_builder_type")]
    pub instance_type: String,
    /// One-time spot instance (CreateImage then reboots it instead of stopping it).
    #[serde(default)]
    pub spot: bool,
    /// Instance profile of the builder (packaging/ami/iam-builder-instance-policy.json).
    pub instance_profile: String,
    /// Subnet of the builder (default: the default VPC's).
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// Existing bucket the bundle is uploaded to (deleted again on every exit path).
    pub bucket: String,
    #[serde(default = "default_bake_prefix")]
    pub prefix: String,
    /// Envoy image pre-pulled on the builder, pinned by digest (`...@sha256:<64 hex>`).
    pub envoy_image: String,
    /// DescribeInstances checks for the builder's signal tag.
    #[serde(default = "default_signal_attempts")]
    pub signal_attempts: u32,
    #[serde(default = "default_signal_secs")]
    pub signal_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// `gp3` (default) or `io2`.
    #[serde(default, rename = "type")]
    pub volume_type: VolumeType,
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
        Volume {
            volume_type: VolumeType::Gp3,
            size_gib: 0,
            iops: default_iops(),
            throughput: default_throughput(),
        }
    }
}

/// The root volume's EBS type.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeType {
    #[default]
    Gp3,
    /// Provisioned IOPS (`iops` 100-256000; no `throughput` setting).
    Io2,
}

impl VolumeType {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Io2 => "io2",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// With `wait_interval_secs`, the bound of the image, snapshot and instance waits: the SDK's
    /// waiters poll (every 15 s, growing to 120 s) for at most `wait_attempts` x
    /// `wait_interval_secs` seconds.
    #[serde(default = "default_wait_attempts")]
    pub wait_attempts: u32,
    #[serde(default = "default_wait_secs")]
    pub wait_interval_secs: u64,
}

impl Upload {
    /// The bound of the image and snapshot waits: `wait_attempts` x `wait_interval_secs`.
    pub fn max_wait_secs(&self) -> u64 {
        u64::from(self.wait_attempts) * self.wait_interval_secs
    }
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
fn default_import_prefix() -> String {
    "kv-ami-import".into()
}
fn default_import_attempts() -> u32 {
    480
}
fn default_import_secs() -> u64 {
    15
}
fn default_part_mib() -> u64 {
    64
}
fn default_builder_type() -> String {
    "m6i.xlarge".into()
}
fn default_report_attempts() -> u32 {
    90
}
fn default_ssm_prefix() -> String {
    "/kv/ami".into()
}
fn default_bake_prefix() -> String {
    "kv-ami-bake".into()
}
fn default_signal_attempts() -> u32 {
    180
}
fn default_signal_secs() -> u64 {
    10
}

/// Tag key carrying the content key on images and snapshots (idempotency).
pub const CONTENT_KEY_TAG: &str = "kv-ami:content-key";
/// Tag key carrying the spec's `channel` on images and snapshots (`kv-ami gc` lists by it).
pub const CHANNEL_TAG: &str = "kv-ami:channel";
/// Tag key carrying the variant id on images and snapshots of a spec with `[[variants]]`
/// (with the content key, what a re-run finds a variant's image by).
pub const VARIANT_TAG: &str = "kv-ami:variant";
/// Tag key carrying the smoke test's outcome on images and snapshots: `failed` (set at once, with
/// the channel, so that `kv-ami gc` removes it after the grace period; `promote` refuses it),
/// `passed` or `skipped` (set at publish).
pub const SMOKE_TAG: &str = "kv-ami:smoke";

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
        match v.volume_type {
            VolumeType::Gp3 => {
                if v.size_gib > 16384 {
                    return Err(format!("volume.size_gib: {} exceeds gp3's 16384", v.size_gib));
                }
                if !(3000..=80000).contains(&v.iops) {
                    return Err(format!("volume.iops: {} is outside gp3's 3000-80000", v.iops));
                }
                if !(125..=2000).contains(&v.throughput) {
                    return Err(format!(
                        "volume.throughput: {} is outside gp3's 125-2000 MiB/s",
                        v.throughput
                    ));
                }
            }
            VolumeType::Io2 => {
                if v.size_gib > 65536 {
                    return Err(format!("volume.size_gib: {} exceeds io2's 65536", v.size_gib));
                }
                if !(100..=256000).contains(&v.iops) {
                    return Err(format!("volume.iops: {} is outside io2's 100-256000", v.iops));
                }
                if v.throughput != default_throughput() {
                    return Err(format!(
                        "volume.throughput: io2 has no throughput setting (got {})",
                        v.throughput
                    ));
                }
            }
        }
        for (i, a) in self.share_with.iter().enumerate() {
            if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("share_with[{i}]: {a:?} is not a 12-digit account id"));
            }
        }
        for k in self.tags.keys() {
            if k.starts_with("aws:") || k.starts_with("kv-ami:") || k.is_empty() || k.len() > 128 {
                return Err(format!("tags.{k}: reserved or invalid tag key"));
            }
        }
        if let Some(p) = &self.ssm_parameter
            && (!p.starts_with('/') || p.len() > 1011 || p.contains("//"))
        {
            return Err(format!("ssm_parameter: {p:?} must be an absolute parameter path"));
        }
        for (i, a) in self.share_with_organizations.iter().enumerate() {
            if !org_arn_ok(a) {
                return Err(format!(
                    "share_with_organizations[{i}]: {a:?} is not arn:aws:organizations::ACCOUNT:organization/o-..."
                ));
            }
        }
        for (i, a) in self.share_with_ous.iter().enumerate() {
            if !ou_arn_ok(a) {
                return Err(format!(
                    "share_with_ous[{i}]: {a:?} is not arn:aws:organizations::ACCOUNT:ou/o-.../ou-..."
                ));
            }
        }
        if self.public && self.encrypt_copies {
            return Err("public: encrypted images cannot be made public (encrypt_copies = true)".into());
        }
        if let Some(at) = &self.deprecate_at {
            deprecation_time(at, now_unix())?;
        }
        match (&self.via, &self.s3_import) {
            (Via::S3Import, None) => {
                return Err("s3_import: via = \"s3-import\" needs an [s3_import] table with a bucket".into());
            }
            (_, Some(i)) => {
                bucket_ok("s3_import.bucket", &i.bucket)?;
                prefix_ok("s3_import.prefix", &i.prefix)?;
                if let Some(r) = &i.role_name {
                    iam_name_ok("s3_import.role_name", r)?;
                }
                if !(1..=10000).contains(&i.wait_attempts) {
                    return Err(format!("s3_import.wait_attempts: {} is outside 1-10000", i.wait_attempts));
                }
                if !(5..=5120).contains(&i.part_size_mib) {
                    return Err(format!(
                        "s3_import.part_size_mib: {} is outside S3's 5-5120",
                        i.part_size_mib
                    ));
                }
            }
            _ => {}
        }
        if let Some(b) = &self.bake {
            b.validate(&self.architecture)?;
        }
        if let Some(t) = &self.smoke_test {
            instance_type_ok("smoke_test.instance_type", &t.instance_type, &self.architecture)?;
            iam_name_ok("smoke_test.instance_profile", &t.instance_profile)?;
            if let Some(s) = &t.subnet_id {
                subnet_ok("smoke_test.subnet_id", s)?;
            }
            if !(1..=10000).contains(&t.report_attempts) {
                return Err(format!("smoke_test.report_attempts: {} is outside 1-10000", t.report_attempts));
            }
        }
        if let Some(c) = &self.channel {
            let ok = (1..=64).contains(&c.len())
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && c != "latest";
            if !ok {
                return Err(format!("channel: {c:?} must be 1-64 of a-z 0-9 - (and not \"latest\")"));
            }
        }
        let p = &self.ssm_prefix;
        let prefix_ok = p.starts_with('/')
            && !p.ends_with('/')
            && p.len() <= 900
            && !p.contains("//")
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
        if !prefix_ok {
            return Err(format!("ssm_prefix: {p:?} must be an absolute parameter path like /kv/ami"));
        }
        if self.name.contains("{variant}") && self.variant.is_none() && self.variants.is_empty() {
            return Err("name: {variant} needs [[variants]]".into());
        }
        if !self.variants.is_empty() {
            self.validate_variants()?;
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

    /// The AMI name with `{content_key}` (and `{variant}`) filled in.
    pub fn ami_name(&self, content_key: &str) -> String {
        let n = self.name.replace("{content_key}", &content_key[..content_key.len().min(12)]);
        n.replace("{variant}", self.variant.as_deref().unwrap_or_default())
    }

    /// The specs a run builds: this one without `[[variants]]`, else one per variant (the
    /// top-level keys with the variant's on top, `variant` set). Validated by [`Self::validate`].
    pub fn variant_specs(&self) -> Vec<AmiSpec> {
        if self.variants.is_empty() {
            return vec![self.clone()];
        }
        self.variants.iter().map(|v| self.apply(v)).collect()
    }

    /// The effective spec of the variant `id` (`--variant`); without variants, `id` must be None.
    pub fn select_variant(&self, id: Option<&str>) -> Result<AmiSpec, String> {
        match (id, self.variants.is_empty()) {
            (None, true) => Ok(self.clone()),
            (Some(id), true) => Err(format!("--variant {id}: the spec has no [[variants]]")),
            (None, false) => Err(format!(
                "variants: the spec has {} variants ({}): pass --variant",
                self.variants.len(),
                self.variant_ids().join(", ")
            )),
            (Some(id), false) => match self.variants.iter().find(|v| v.id == id) {
                Some(v) => Ok(self.apply(v)),
                None => Err(format!("--variant {id}: not one of {}", self.variant_ids().join(", "))),
            },
        }
    }

    pub fn variant_ids(&self) -> Vec<String> {
        self.variants.iter().map(|v| v.id.clone()).collect()
    }

    fn apply(&self, v: &Variant) -> AmiSpec {
        let mut s = self.clone();
        s.variants = Vec::new();
        s.variant = Some(v.id.clone());
        if let Some(n) = &v.name {
            s.name = n.clone();
        }
        if v.description.is_some() {
            s.description = v.description.clone();
        }
        s.channel = match (&v.channel, &self.channel) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(c)) => Some(format!("{c}-{}", v.id)),
            (None, None) => None,
        };
        s.tags.extend(v.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(vol) = &v.volume {
            s.volume = vol.clone();
        }
        if let (Some(t), Some(st)) = (&v.smoke_test_instance_type, s.smoke_test.as_mut()) {
            st.instance_type = t.clone();
        }
        s.ssm_parameter = v.ssm_parameter.clone();
        s
    }

    /// Each variant's own keys, checked on its effective spec; the message names the variant.
    fn validate_variants(&self) -> Result<(), String> {
        if self.ssm_parameter.is_some() {
            return Err("ssm_parameter: every variant would write it: set it per variant".into());
        }
        let mut names = BTreeMap::new();
        let mut channels = BTreeMap::new();
        for (i, v) in self.variants.iter().enumerate() {
            let at = format!("variants[{i}] ({})", v.id);
            let ok = (1..=32).contains(&v.id.len())
                && v.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!("variants[{i}].id: {:?} must be 1-32 of a-z 0-9 -", v.id));
            }
            if self.variants[..i].iter().any(|w| w.id == v.id) {
                return Err(format!("{at}.id: {} is listed twice", v.id));
            }
            if v.smoke_test_instance_type.is_some() && self.smoke_test.is_none() {
                return Err(format!("{at}.smoke_test_instance_type: there is no [smoke_test] table"));
            }
            let s = self.apply(v);
            s.validate().map_err(|e| format!("{at}.{e}"))?;
            let name = s.ami_name(&"0".repeat(64));
            if let Some(j) = names.insert(name.clone(), i) {
                return Err(format!(
                    "{at}.name: {name:?} is also variants[{j}]'s AMI name (put {{variant}} in the name or set it per variant)"
                ));
            }
            if let Some(c) = &s.channel
                && let Some(j) = channels.insert(c.clone(), i)
            {
                return Err(format!("{at}.channel: {c:?} is also variants[{j}]'s channel"));
            }
        }
        Ok(())
    }

    /// Tags of every image and snapshot: the spec's, the content key, and Name unless given.
    pub fn image_tags(&self, content_key: &str) -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> = self.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        t.push((CONTENT_KEY_TAG.into(), content_key.to_string()));
        if let Some(c) = &self.channel {
            t.push((CHANNEL_TAG.into(), c.clone()));
        }
        if let Some(v) = &self.variant {
            t.push((VARIANT_TAG.into(), v.clone()));
        }
        if !self.tags.contains_key("Name") {
            t.push(("Name".into(), self.ami_name(content_key)));
        }
        t
    }

    /// Whether any launch permission is granted (accounts, organizations, OUs, public).
    pub fn shares(&self) -> bool {
        !self.share_with.is_empty()
            || !self.share_with_organizations.is_empty()
            || !self.share_with_ous.is_empty()
            || self.public
    }

    /// Whether this run boots the image before publishing it.
    pub fn smoke_test_on(&self) -> bool {
        self.smoke_test.is_some() && !self.skip_smoke_test
    }

    /// The channel's per-build parameter of this content key.
    pub fn build_parameter(&self, channel: &str, content_key: &str) -> String {
        format!("{}/{channel}/builds/{}", self.ssm_prefix, &content_key[..content_key.len().min(12)])
    }

    /// The channel's `latest` parameter.
    pub fn latest_parameter(&self, channel: &str) -> String {
        format!("{}/{channel}/latest", self.ssm_prefix)
    }

    pub fn all_regions(&self) -> Vec<String> {
        std::iter::once(self.region.clone()).chain(self.copy_to.iter().cloned()).collect()
    }
}

impl Bake {
    fn validate(&self, architecture: &str) -> Result<(), String> {
        match (&self.base_ami_ssm_parameter, &self.base_ami_name, &self.base_ami_owner) {
            (Some(p), None, None) => {
                if !p.starts_with('/') || p.contains("//") || p.len() > 1011 {
                    return Err(format!(
                        "bake.base_ami_ssm_parameter: {p:?} must be an absolute parameter path"
                    ));
                }
            }
            (None, Some(n), Some(o)) => {
                if n.is_empty() || n.len() > 128 {
                    return Err(format!("bake.base_ami_name: {n:?} must be 1-128 characters"));
                }
                let account = o.len() == 12 && o.bytes().all(|b| b.is_ascii_digit());
                if !(account || o == "amazon" || o == "self") {
                    return Err(format!(
                        "bake.base_ami_owner: {o:?} is not amazon, self or a 12-digit account id"
                    ));
                }
            }
            (None, Some(_), None) => return Err("bake.base_ami_owner: needed with base_ami_name".into()),
            (None, None, Some(_)) => return Err("bake.base_ami_name: needed with base_ami_owner".into()),
            (None, None, None) => {
                return Err("bake: set base_ami_ssm_parameter, or base_ami_name and base_ami_owner".into());
            }
            (Some(_), _, _) => {
                return Err(
                    "bake.base_ami_ssm_parameter: set it or base_ami_name/base_ami_owner, not both".into()
                );
            }
        }
        instance_type_ok("bake.instance_type", &self.instance_type, architecture)?;
        iam_name_ok("bake.instance_profile", &self.instance_profile)?;
        if let Some(s) = &self.subnet_id {
            subnet_ok("bake.subnet_id", s)?;
        }
        bucket_ok("bake.bucket", &self.bucket)?;
        prefix_ok("bake.prefix", &self.prefix)?;
        let e = &self.envoy_image;
        let pinned = e.split_once("@sha256:").is_some_and(|(name, d)| {
            !name.is_empty() && d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())
        });
        let chars = e.bytes().all(|b| b.is_ascii_alphanumeric() || b"./:_@-".contains(&b));
        if !pinned || !chars {
            return Err(format!(
                "bake.envoy_image: {e:?} must be pinned by digest: NAME[:TAG]@sha256:<64 hex digits>"
            ));
        }
        if !(1..=10000).contains(&self.signal_attempts) {
            return Err(format!("bake.signal_attempts: {} is outside 1-10000", self.signal_attempts));
        }
        Ok(())
    }
}

/// Nitro Enclaves need a Nitro instance with at least 4 vCPUs (2 on Graviton); burstable (t*)
/// and mac instances have none. AWS has the last word (RunInstances with EnclaveOptions).
fn instance_type_ok(key: &str, t: &str, architecture: &str) -> Result<(), String> {
    let Some((family, size)) = t.split_once('.') else {
        return Err(format!("{key}: {t:?} is not an instance type like m6i.xlarge"));
    };
    let shape = !family.is_empty()
        && family.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && size.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !shape || size.is_empty() {
        return Err(format!("{key}: {t:?} is not an instance type like m6i.xlarge"));
    }
    if family.starts_with('t') || family.starts_with("mac") {
        return Err(format!("{key}: {t}: {family} instances do not support Nitro Enclaves"));
    }
    let small = ["nano", "micro", "small", "medium"].contains(&size);
    if small || (size == "large" && architecture == "x86_64") {
        return Err(format!(
            "{key}: {t}: too few vCPUs for an enclave (x86_64 needs at least 4: xlarge or larger)"
        ));
    }
    Ok(())
}

fn subnet_ok(key: &str, s: &str) -> Result<(), String> {
    let ok = s
        .strip_prefix("subnet-")
        .is_some_and(|h| (8..=17).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok { Ok(()) } else { Err(format!("{key}: {s:?} is not a subnet id (subnet-0123abcd...)")) }
}

fn bucket_ok(key: &str, b: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !b.contains("..");
    if ok { Ok(()) } else { Err(format!("{key}: {b:?} is not an S3 bucket name")) }
}

fn prefix_ok(key: &str, p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 200
        && p.bytes().all(|c| c.is_ascii_alphanumeric() || b"/_.-".contains(&c))
        && !p.starts_with('/')
        && !p.ends_with('/')
        && !p.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}: {p:?} must be a relative key prefix of letters, digits and /_.- (no empty or .. parts)"
        ))
    }
}

fn iam_name_ok(key: &str, n: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&n.len())
        && n.bytes().all(|c| c.is_ascii_alphanumeric() || b"+=,.@_-".contains(&c));
    if ok { Ok(()) } else { Err(format!("{key}: {n:?} is not an IAM name")) }
}

fn lower_alnum(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn org_id_ok(s: &str) -> bool {
    s.strip_prefix("o-").is_some_and(|r| lower_alnum(r, 10, 32))
}

fn org_arn_ok(a: &str) -> bool {
    let Some(rest) = a.strip_prefix("arn:aws:organizations::") else { return false };
    let Some((account, rest)) = rest.split_once(':') else { return false };
    account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && rest.strip_prefix("organization/").is_some_and(org_id_ok)
}

fn ou_arn_ok(a: &str) -> bool {
    let Some(rest) = a.strip_prefix("arn:aws:organizations::") else { return false };
    let Some((account, rest)) = rest.split_once(':') else { return false };
    let Some((org, ou)) = rest.strip_prefix("ou/").and_then(|r| r.split_once('/')) else { return false };
    let ou_ok = ou
        .strip_prefix("ou-")
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(root, id)| lower_alnum(root, 4, 32) && lower_alnum(id, 8, 32));
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && org_id_ok(org) && ou_ok
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `deprecate_at` as seconds since the epoch: RFC 3339, in the future (AWS refuses a past time),
/// at most 10 years ahead (AWS's limit).
pub fn deprecation_time(at: &str, now: u64) -> Result<u64, String> {
    let t =
        aws_sdk_ec2::primitives::DateTime::from_str(at, aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
            .map_err(|e| {
                format!("deprecate_at: {at:?} is not an RFC 3339 time like 2027-06-30T00:00:00Z: {e}")
            })?;
    let secs = t.secs();
    if secs <= now as i64 {
        return Err(format!("deprecate_at: {at} is in the past"));
    }
    if secs - now as i64 > 10 * 366 * 86400 {
        return Err(format!("deprecate_at: {at} is more than 10 years ahead (AWS's limit)"));
    }
    Ok(secs as u64)
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
    fn the_example_specs_are_valid() {
        let s = AmiSpec::parse(include_str!("../amispec.example.toml")).unwrap();
        assert_eq!(s.copy_to.len(), 2);
        assert_eq!((s.via, s.on_failure), (Via::EbsDirect, OnFailure::Delete));
        assert_eq!(s.smoke_test.as_ref().unwrap().instance_profile, "kv-ami-smoke-test");
        assert!(s.smoke_test_on());
        assert_eq!(s.latest_parameter("stable"), "/kv/ami/stable/latest");
        assert_eq!(s.build_parameter("stable", &"ab".repeat(32)), "/kv/ami/stable/builds/abababababab");
        let b = AmiSpec::parse(include_str!("../bakespec.example.toml")).unwrap();
        assert_eq!(b.bake.unwrap().instance_profile, "kv-ami-builder");
        assert_eq!(b.channel.as_deref(), Some("stable"));
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

    const VARIANTS: &str = r#"
name = "kv-{variant}-{content_key}"
region = "us-east-1"
channel = "stable"
[tags]
service = "kv"
[smoke_test]
instance_profile = "p"
launcher = "l"
[[variants]]
id = "gp3"
[[variants]]
id = "io2"
name = "kv-provisioned-{content_key}"
channel = "fast"
smoke_test_instance_type = "c6i.2xlarge"
tags = { volume = "io2", service = "kv-io" }
[variants.volume]
type = "io2"
iops = 16000
"#;

    #[test]
    fn a_spec_without_variants_is_its_own_only_variant() {
        let s = AmiSpec::parse(GOOD).unwrap();
        assert_eq!(s.variant_specs(), vec![s.clone()]);
        assert_eq!(s.select_variant(None).unwrap(), s);
        assert!(s.select_variant(Some("gp3")).unwrap_err().contains("no [[variants]]"));
        assert!(!s.image_tags(&"0".repeat(64)).iter().any(|(k, _)| k == VARIANT_TAG));
    }

    #[test]
    fn variants_take_the_top_level_keys_with_their_own_on_top() {
        let s = AmiSpec::parse(VARIANTS).unwrap();
        let key = "ab".repeat(32);
        let v = s.variant_specs();
        assert_eq!(v.len(), 2);
        let (gp3, io2) = (&v[0], &v[1]);
        assert_eq!(gp3.variant.as_deref(), Some("gp3"));
        assert_eq!(gp3.ami_name(&key), "kv-gp3-abababababab");
        assert_eq!(gp3.channel.as_deref(), Some("stable-gp3"), "default: <channel>-<id>");
        assert_eq!(gp3.volume, Volume::default());
        assert_eq!(gp3.smoke_test.as_ref().unwrap().instance_type, "m6i.xlarge");
        assert_eq!(io2.ami_name(&key), "kv-provisioned-abababababab");
        assert_eq!(io2.channel.as_deref(), Some("fast"));
        assert_eq!((io2.volume.volume_type, io2.volume.iops), (VolumeType::Io2, 16000));
        assert_eq!(io2.smoke_test.as_ref().unwrap().instance_type, "c6i.2xlarge");
        assert_eq!(io2.tags.get("service").map(String::as_str), Some("kv-io"));
        assert!(io2.variants.is_empty());
        let tags = io2.image_tags(&key);
        assert!(tags.contains(&(VARIANT_TAG.to_string(), "io2".to_string())), "{tags:?}");
        assert!(tags.contains(&(CHANNEL_TAG.to_string(), "fast".to_string())), "{tags:?}");
        assert_eq!(s.select_variant(Some("io2")).unwrap(), *io2);
        assert!(s.select_variant(None).unwrap_err().contains("pass --variant"));
        assert!(s.select_variant(Some("st1")).unwrap_err().contains("not one of gp3, io2"));
    }

    #[test]
    fn variant_errors_name_the_variant_and_the_key() {
        let cases = [
            ("iops = 16000", "iops = 50", "variants[1] (io2).volume.iops: 50 is outside io2's 100-256000"),
            ("iops = 16000", "iops = 16000\nthroughput = 500", "variants[1] (io2).volume.throughput"),
            ("id = \"io2\"", "id = \"gp3\"", "variants[1] (gp3).id: gp3 is listed twice"),
            ("id = \"io2\"", "id = \"IO 2\"", "variants[1].id: \"IO 2\""),
            (
                "channel = \"fast\"",
                "channel = \"stable-gp3\"",
                "variants[1] (io2).channel: \"stable-gp3\" is also variants[0]'s",
            ),
            (
                "name = \"kv-provisioned-{content_key}\"",
                "name = \"kv-gp3-{content_key}\"",
                "variants[1] (io2).name",
            ),
            (
                "smoke_test_instance_type = \"c6i.2xlarge\"",
                "smoke_test_instance_type = \"t3.xlarge\"",
                "variants[1] (io2).smoke_test.instance_type",
            ),
            ("channel = \"fast\"", "channel = \"Fast\"", "variants[1] (io2).channel"),
            ("channel = \"fast\"", "bogus = 1", "unknown field `bogus`"),
            ("type = \"io2\"", "type = \"st1\"", "unknown variant `st1`"),
            (
                "channel = \"stable\"",
                "channel = \"stable\"\nssm_parameter = \"/kv/ami-id\"",
                "ssm_parameter: every variant",
            ),
        ];
        for (from, to, want) in cases {
            let text = VARIANTS.replacen(from, to, 1);
            assert_ne!(text, VARIANTS, "{from}");
            let e = AmiSpec::parse(&text).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = AmiSpec::parse(&GOOD.replace("kv-server-{content_key}", "kv-{variant}-{content_key}"))
            .unwrap_err();
        assert!(e.starts_with("name: {variant} needs [[variants]]"), "{e}");
    }

    const BAKE: &str = r#"
name = "kv-server-{content_key}"
region = "us-east-1"
share_with_organizations = ["arn:aws:organizations::123456789012:organization/o-abcdefghij"]
share_with_ous = ["arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefgh34"]
on_failure = "keep"
[bake]
base_ami_ssm_parameter = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
instance_profile = "kv-ami-builder"
bucket = "my-bake-bucket"
envoy_image = "envoyproxy/envoy:v1.24.1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
"#;

    #[test]
    fn bake_sharing_and_deprecation_keys() {
        let s = AmiSpec::parse(BAKE).unwrap();
        assert_eq!(s.on_failure, OnFailure::Keep);
        assert!(s.shares());
        let b = s.bake.as_ref().unwrap();
        assert_eq!(
            (b.instance_type.as_str(), b.prefix.as_str(), b.spot),
            ("m6i.xlarge", "kv-ami-bake", false)
        );
        let now = 1_800_000_000;
        assert_eq!(deprecation_time("2027-01-15T08:00:00Z", 1_700_000_000), Ok(1_800_000_000));
        assert!(deprecation_time("2020-01-01T00:00:00Z", now).unwrap_err().contains("past"));
        assert!(deprecation_time("2099-01-01T00:00:00Z", now).unwrap_err().contains("10 years"));
        assert!(deprecation_time("next tuesday", now).unwrap_err().starts_with("deprecate_at"));
        let sub = |from: &str, to: &str| {
            let text = BAKE.replace(from, to);
            assert_ne!(text, BAKE, "{from}");
            AmiSpec::parse(&text).unwrap_err()
        };
        let cases = [
            ("organization/o-abcdefghij\"]", "organization/o-x\"]", "share_with_organizations[0]"),
            ("ou-ab12-cdefgh34", "ou-ab12", "share_with_ous[0]"),
            ("on_failure = \"keep\"", "on_failure = \"maybe\"", "unknown variant"),
            ("on_failure = \"keep\"", "public = true\nencrypt_copies = true", "public"),
            ("on_failure = \"keep\"", "deprecate_at = \"2001-01-01T00:00:00Z\"", "deprecate_at"),
            ("on_failure = \"keep\"", "via = \"s3-import\"", "s3_import"),
            ("bucket = \"my-bake-bucket\"", "bucket = \"My_Bucket\"", "bake.bucket"),
            (
                "instance_profile = \"kv-ami-builder\"",
                "instance_profile = \"kv ami\"",
                "bake.instance_profile",
            ),
            ("@sha256:0123456789abcdef", "@sha256:0123", "bake.envoy_image"),
            (":v1.24.1@sha256:", ":v1.24.1'@sha256:", "bake.envoy_image"),
            ("instance_profile", "instance_type = \"t3.xlarge\"\ninstance_profile", "bake.instance_type"),
            ("instance_profile", "instance_type = \"m6i.large\"\ninstance_profile", "bake.instance_type"),
            ("instance_profile", "prefix = \"../x\"\ninstance_profile", "bake.prefix"),
            ("instance_profile", "subnet_id = \"sub-1\"\ninstance_profile", "bake.subnet_id"),
            (
                "instance_profile",
                "base_ami_owner = \"amazon\"\ninstance_profile",
                "bake.base_ami_ssm_parameter",
            ),
            (
                "base_ami_ssm_parameter = \"/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\"",
                "base_ami_name = \"al2023-*\"",
                "bake.base_ami_owner",
            ),
            ("instance_profile", "bogus = 1\ninstance_profile", "unknown field"),
            ("on_failure = \"keep\"", "channel = \"Stable\"", "channel"),
            ("on_failure = \"keep\"", "channel = \"latest\"", "channel"),
            ("on_failure = \"keep\"", "ssm_prefix = \"kv/ami\"", "ssm_prefix"),
            ("on_failure = \"keep\"", "ssm_prefix = \"/kv/ami/\"", "ssm_prefix"),
            ("[bake]", "[smoke_test]\ninstance_profile = \"p\"\n[bake]", "missing field `launcher`"),
            (
                "[bake]",
                "[smoke_test]\ninstance_profile = \"p\"\nlauncher = \"l\"\ninstance_type = \"t3.xlarge\"\n[bake]",
                "smoke_test.instance_type",
            ),
            (
                "[bake]",
                "[smoke_test]\ninstance_profile = \"p q\"\nlauncher = \"l\"\n[bake]",
                "smoke_test.instance_profile",
            ),
            (
                "[bake]",
                "[smoke_test]\ninstance_profile = \"p\"\nlauncher = \"l\"\nsubnet_id = \"s-1\"\n[bake]",
                "smoke_test.subnet_id",
            ),
            (
                "[bake]",
                "[smoke_test]\ninstance_profile = \"p\"\nlauncher = \"l\"\nreport_attempts = 0\n[bake]",
                "smoke_test.report_attempts",
            ),
        ];
        for (from, to, key) in cases {
            let e = sub(from, to);
            assert!(e.contains(key), "{key}: {e}");
        }
        // Graviton: 2 vCPUs are enough.
        let arm = BAKE.replace("[bake]", "architecture = \"arm64\"\n[bake]\ninstance_type = \"c7g.large\"");
        assert!(AmiSpec::parse(&arm).is_ok());
    }
}
