//! kv-ami: bake the packaging bundle's disk image into AMIs without a builder instance.
//!
//! raw image -> EBS snapshot (EBS direct APIs) -> RegisterImage -> copies in other regions ->
//! launch permissions, tags, SSM parameters -> a Packer-shaped manifest. The content key (SHA-256
//! of the bundle's `manifest.json`, which lists the PCRs and every artifact's digest) tags every
//! image, so a re-run with the same bundle reuses the images instead of baking new ones.
#![forbid(unsafe_code)]

pub mod aws;
pub mod detect;
pub mod plan;
pub mod spec;

use serde::Serialize;
use sha2::{Digest, Sha256};
use spec::{AmiSpec, CONTENT_KEY_TAG};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The block size of real EBS snapshots; used for the dry-run's block counts (the upload uses the
/// size StartSnapshot returns).
pub const AWS_BLOCK_SIZE: usize = 512 * 1024;

/// SHA-256 (hex) of the bundle manifest file.
pub fn content_key(bundle_manifest: &Path) -> Result<String, String> {
    let bytes = std::fs::read(bundle_manifest)
        .map_err(|e| format!("{}: cannot read: {e}", bundle_manifest.display()))?;
    // Must be the bundle's JSON manifest, not any file: refuse what does not parse.
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| format!("{}: not a JSON bundle manifest: {e}", bundle_manifest.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Inputs of one bake, all checked by [`Job::prepare`] before any AWS call.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: AmiSpec,
    pub image: PathBuf,
    pub image_len: u64,
    pub content_key: String,
    pub root_gib: u64,
}

impl Job {
    pub fn prepare(spec: AmiSpec, image: &Path, bundle_manifest: &Path) -> Result<Job, String> {
        spec.validate()?;
        let content_key = content_key(bundle_manifest)?;
        let image_len = detect::ensure_raw(image)?;
        let min_gib = plan::volume_size_gib(image_len);
        let root_gib = if spec.volume.size_gib == 0 { min_gib } else { spec.volume.size_gib };
        if root_gib < min_gib {
            return Err(format!(
                "volume.size_gib: {root_gib} is smaller than the image {} ({image_len} bytes = {min_gib} GiB)",
                image.display()
            ));
        }
        Ok(Job { spec, image: image.to_path_buf(), image_len, content_key, root_gib })
    }

    pub fn name(&self) -> String {
        self.spec.ami_name(&self.content_key)
    }

    fn tags(&self) -> Vec<(String, String)> {
        let mut t: Vec<(String, String)> =
            self.spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        t.push((CONTENT_KEY_TAG.into(), self.content_key.clone()));
        if !self.spec.tags.contains_key("Name") {
            t.push(("Name".into(), self.name()));
        }
        t
    }

    /// Every AWS call a run would make, in order, one line each (`--dry-run`). `nonzero_blocks`
    /// is the count at AWS's block size (from a local scan).
    pub fn planned_calls(&self, nonzero_blocks: u64) -> Vec<String> {
        let s = &self.spec;
        let src = &s.region;
        let key = &self.content_key;
        let name = self.name();
        let mut v = vec![
            format!(
                "{src} ec2:DescribeImages owners=self filter tag:{CONTENT_KEY_TAG}={key} (reuse if found)"
            ),
            format!(
                "{src} ebs:StartSnapshot volume_size={} GiB timeout=60 min tag {CONTENT_KEY_TAG}",
                plan::volume_size_gib(self.image_len)
            ),
            format!(
                "{src} ebs:PutSnapshotBlock x{nonzero_blocks} (non-zero blocks of {AWS_BLOCK_SIZE} bytes out of {}, \
                 SHA-256 each, {} workers, up to {} attempts)",
                plan::block_count(self.image_len, AWS_BLOCK_SIZE as u64),
                s.upload.workers,
                s.upload.max_attempts
            ),
            format!(
                "{src} ebs:CompleteSnapshot changed_blocks_count={nonzero_blocks} checksum=SHA256 aggregation=LINEAR"
            ),
            format!(
                "{src} ec2:DescribeSnapshots (until completed, at most {} checks)",
                s.upload.wait_attempts
            ),
            format!(
                "{src} ec2:RegisterImage name={name} arch={} boot_mode={} ena={} root={} gp3 {} GiB {} IOPS {} MiB/s \
                 imds_support={} tpm_support={}",
                s.architecture,
                s.boot_mode,
                s.ena,
                s.root_device_name,
                self.root_gib,
                s.volume.iops,
                s.volume.throughput,
                if s.imds_v2 { "v2.0" } else { "-" },
                if s.tpm { "v2.0" } else { "-" },
            ),
            format!("{src} ec2:CreateTags image {CONTENT_KEY_TAG}={key}"),
            format!(
                "{src} ec2:DescribeImages (until available, fail on failed, at most {} checks)",
                s.upload.wait_attempts
            ),
        ];
        for r in &s.copy_to {
            v.push(format!(
                "{r} ec2:DescribeImages owners=self filter tag:{CONTENT_KEY_TAG}={key} (reuse if found)"
            ));
            let enc = match (s.encrypt_copies, s.kms_key_ids.get(r)) {
                (false, _) => String::new(),
                (true, None) => " encrypted=true kms=aws/ebs".to_string(),
                (true, Some(k)) => format!(" encrypted=true kms={k}"),
            };
            v.push(format!("{r} ec2:CopyImage source={src} name={name}{enc}"));
            v.push(format!("{r} ec2:CreateTags image {CONTENT_KEY_TAG}={key}"));
            v.push(format!("{r} ec2:DescribeImages (until available)"));
        }
        for r in s.all_regions() {
            let keys: Vec<String> = self.tags().into_iter().map(|(k, _)| k).collect();
            v.push(format!("{r} ec2:CreateTags image+snapshots {}", keys.join(",")));
            if !s.share_with.is_empty() {
                let a = s.share_with.join(",");
                v.push(format!("{r} ec2:ModifySnapshotAttribute createVolumePermission add {a}"));
                v.push(format!("{r} ec2:ModifyImageAttribute launchPermission add {a}"));
            }
            if let Some(p) = &s.ssm_parameter {
                v.push(format!("{r} ssm:PutParameter {p} type=String data_type=aws:ec2:image"));
            }
        }
        v
    }
}

/// Non-zero blocks of `block_size` in the image (local only; for `--dry-run` and the benchmark).
pub fn count_nonzero(image: &Path, block_size: usize) -> std::io::Result<(u64, u64)> {
    plan::scan_blocks(image, block_size, |_| true)
}

/// Output, shaped like Packer's manifest post-processor file so the same tooling reads both.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Manifest {
    pub builds: Vec<Build>,
    pub last_run_uuid: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RegionResult {
    pub ami_id: String,
    pub snapshot_ids: Vec<String>,
    /// True when an image with the same content key already existed.
    pub reused: bool,
}

/// Run the whole bake. `log` receives one line per step.
pub async fn run(job: &Job, target: &aws::Target, mut log: impl FnMut(&str)) -> Result<Manifest, aws::Error> {
    let t0 = Instant::now();
    let s = &job.spec;
    let mut timings = BTreeMap::new();
    let key = &job.content_key;
    let every = Duration::from_secs(s.upload.wait_interval_secs);
    let src = aws::Clients::new(&s.region, target).await;
    let mut custom = BTreeMap::new();
    custom.insert("content_key".to_string(), key.clone());

    let (src_ami, src_snaps, reused) = match aws::find_by_content_key(&src, key).await? {
        Some((ami, snaps)) => {
            log(&format!("{}: reusing {ami} (content key {key})", s.region));
            (ami, snaps, true)
        }
        None => {
            let retry = plan::RetryPolicy { max_attempts: s.upload.max_attempts, ..Default::default() };
            let up = aws::upload(&src, &job.image, job.image_len, key, s.upload.workers, retry).await?;
            log(&format!(
                "{}: uploaded {} of {} blocks ({} bytes each) to {} in {:.2}s, {} retries",
                s.region,
                up.blocks_written,
                up.blocks_scanned,
                up.block_size,
                up.snapshot_id,
                up.seconds,
                up.retries
            ));
            timings.insert("upload".to_string(), up.seconds);
            custom.insert("snapshot_checksum_linear".to_string(), up.checksum.clone());
            aws::wait_snapshot(&src, &up.snapshot_id, s.upload.wait_attempts, every).await?;
            let t = Instant::now();
            let ami = aws::register(&src, s, &job.name(), &up.snapshot_id, job.root_gib, key).await?;
            aws::wait_image(&src, &ami, s.upload.wait_attempts, every).await?;
            timings.insert("register".to_string(), t.elapsed().as_secs_f64());
            log(&format!("{}: registered {ami}", s.region));
            (ami, vec![up.snapshot_id], false)
        }
    };
    let mut regions = BTreeMap::new();
    regions.insert(
        s.region.clone(),
        (src.clone(), RegionResult { ami_id: src_ami.clone(), snapshot_ids: src_snaps, reused }),
    );

    // Copies in parallel, one task per region.
    let t = Instant::now();
    let copies = s.copy_to.iter().map(|r| {
        let (src_ami, name) = (src_ami.clone(), job.name());
        async move {
            let c = aws::Clients::new(r, target).await;
            let (ami, reused) = match aws::find_by_content_key(&c, key).await? {
                Some((ami, _)) => (ami, true),
                None => {
                    let kms = s.kms_key_ids.get(r).map(String::as_str);
                    (aws::copy(&c, &s.region, &src_ami, &name, key, s.encrypt_copies, kms).await?, false)
                }
            };
            aws::wait_image(&c, &ami, s.upload.wait_attempts, every).await?;
            let snaps = aws::image_snapshots(&c, &ami).await?;
            Ok::<_, aws::Error>((r.clone(), c, RegionResult { ami_id: ami, snapshot_ids: snaps, reused }))
        }
    });
    for (r, c, res) in futures::future::try_join_all(copies).await? {
        log(&format!("{r}: {} {}", if res.reused { "reusing" } else { "copied to" }, res.ami_id));
        regions.insert(r, (c, res));
    }
    if !s.copy_to.is_empty() {
        timings.insert("copy".to_string(), t.elapsed().as_secs_f64());
    }

    // Tags, sharing, SSM: per region, in parallel.
    let t = Instant::now();
    let tags = job.tags();
    let finish = regions.values().map(|(c, res)| {
        let tags = &tags;
        async move {
            let mut all = vec![res.ami_id.clone()];
            all.extend(res.snapshot_ids.iter().cloned());
            aws::tag(c, &all, tags).await?;
            aws::share(c, &res.ami_id, &res.snapshot_ids, &s.share_with).await?;
            if let Some(p) = &s.ssm_parameter {
                aws::put_ssm(c, p, &res.ami_id).await?;
            }
            Ok::<_, aws::Error>(())
        }
    });
    futures::future::try_join_all(finish).await?;
    timings.insert("publish".to_string(), t.elapsed().as_secs_f64());
    timings.insert("total".to_string(), t0.elapsed().as_secs_f64());

    let regions: BTreeMap<String, RegionResult> = regions.into_iter().map(|(r, (_, res))| (r, res)).collect();
    let artifact_id =
        s.all_regions().iter().map(|r| format!("{r}:{}", regions[r].ami_id)).collect::<Vec<_>>().join(",");
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // No UUID crate: the run id is derived from the content key and the time, unique enough to
    // tell runs apart in the manifest.
    let run_id = hex::encode(&Sha256::digest(format!("{key}{now}{:?}", t0))[..16]);
    Ok(Manifest {
        builds: vec![Build {
            name: job.name(),
            builder_type: "kv-ami.raw-import".into(),
            build_time: now,
            artifact_id,
            packer_run_uuid: run_id.clone(),
            custom_data: custom,
            regions,
            timings_seconds: timings,
        }],
        last_run_uuid: run_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path, spec: &str, image: &[u8]) -> Result<Job, String> {
        let img = dir.join("disk.raw");
        std::fs::write(&img, image).unwrap();
        let m = dir.join("manifest.json");
        std::fs::write(&m, br#"{"pcrs":{"PCR0":"00"},"files":[]}"#).unwrap();
        Job::prepare(AmiSpec::parse(spec).map_err(|e| e.to_string())?, &img, &m)
    }

    const SPEC: &str = "name = \"kv-{content_key}\"\nregion = \"us-east-1\"\ncopy_to = [\"eu-west-1\"]\n\
                        share_with = [\"111122223333\"]\nssm_parameter = \"/kv/ami\"\n";

    #[test]
    fn plan_lists_every_call_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), SPEC, &[1u8; 4096]).unwrap();
        let calls = j.planned_calls(1);
        let ops: Vec<&str> = calls.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(
            ops,
            vec![
                "ec2:DescribeImages",
                "ebs:StartSnapshot",
                "ebs:PutSnapshotBlock",
                "ebs:CompleteSnapshot",
                "ec2:DescribeSnapshots",
                "ec2:RegisterImage",
                "ec2:CreateTags",
                "ec2:DescribeImages",
                "ec2:DescribeImages",
                "ec2:CopyImage",
                "ec2:CreateTags",
                "ec2:DescribeImages",
                "ec2:CreateTags",
                "ec2:ModifySnapshotAttribute",
                "ec2:ModifyImageAttribute",
                "ssm:PutParameter",
                "ec2:CreateTags",
                "ec2:ModifySnapshotAttribute",
                "ec2:ModifyImageAttribute",
                "ssm:PutParameter",
            ]
        );
        assert!(calls[9].starts_with("eu-west-1 ec2:CopyImage source=us-east-1"));
        assert!(calls[2].contains("x1 "), "{}", calls[2]);
    }

    #[test]
    fn iam_policy_allows_every_planned_call() {
        let policy: serde_json::Value = serde_json::from_str(include_str!("../iam-policy.json")).unwrap();
        let mut allowed = Vec::new();
        for st in policy["Statement"].as_array().unwrap() {
            match &st["Action"] {
                serde_json::Value::String(a) => allowed.push(a.clone()),
                serde_json::Value::Array(v) => {
                    allowed.extend(v.iter().map(|a| a.as_str().unwrap().to_string()))
                }
                other => panic!("{other}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), SPEC, &[1u8; 4096]).unwrap();
        for line in j.planned_calls(1) {
            let op = line.split(' ').nth(1).unwrap();
            assert!(allowed.iter().any(|a| a == op), "{op} is not in iam-policy.json");
        }
        // Least privilege: nothing the tool never calls (KMS is used by EC2 for encrypted copies).
        for a in allowed.iter().filter(|a| !a.starts_with("kms:")) {
            assert!(j.planned_calls(1).iter().any(|l| l.contains(a.as_str())), "{a} is never called");
        }
    }

    #[test]
    fn content_key_is_sha256_of_the_manifest_file() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), SPEC, &[1u8; 512]).unwrap();
        assert_eq!(j.content_key, hex::encode(Sha256::digest(br#"{"pcrs":{"PCR0":"00"},"files":[]}"#)));
        assert_eq!(j.name(), format!("kv-{}", &j.content_key[..12]));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json").unwrap();
        assert!(content_key(&bad).unwrap_err().contains("bad.json"));
    }

    #[test]
    fn prepare_refuses_small_root_volume_and_non_raw_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut qcow = b"QFI\xfb".to_vec();
        qcow.resize(1024, 0);
        assert!(job(dir.path(), SPEC, &qcow).unwrap_err().contains("qcow2"));
        // 1 GiB + 1 byte would need 2 GiB; a sparse file keeps the test cheap.
        let img = dir.path().join("big.raw");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(plan::GIB + 1).unwrap();
        let m = dir.path().join("m.json");
        std::fs::write(&m, "{}").unwrap();
        let spec = AmiSpec::parse(&format!("{SPEC}[volume]\nsize_gib = 1\n")).unwrap();
        let e = Job::prepare(spec, &img, &m).unwrap_err();
        assert!(e.starts_with("volume.size_gib") && e.contains("big.raw"), "{e}");
    }
}
