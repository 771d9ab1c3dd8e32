//! `kv-ami import`: raw image -> EBS snapshot (EBS direct APIs, or S3 + ImportSnapshot) ->
//! RegisterImage -> [`crate::publish`]. [`Job::prepare`] checks every input before the first
//! AWS call; [`Job::planned_calls`] is the `--dry-run`; [`run`] makes the calls with a cleanup
//! stack and an optional state file (an interrupted upload resumes into the same snapshot, an
//! import task is polled again).

use crate::aws::Clients;
use crate::cleanup::{self, Cleanup, Undo, When};
use crate::error::Error;
use crate::output::Manifest;
use crate::publish::{self, Source};
use crate::run::{Ctx, RunOptions, with_cleanup};
use crate::spec::{self, AmiSpec, CONTENT_KEY_TAG, OnFailure, Via};
use crate::state::{self, ResumeDecision, StateFile};
use crate::wait::Bound;
use crate::{detect, ebs, images, import_task, plan, s3};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The block size of real EBS snapshots; used for the dry-run's block counts (the upload uses the
/// size StartSnapshot returns).
pub const AWS_BLOCK_SIZE: usize = 512 * 1024;

/// The content key: SHA-256 (hex) of the bundle manifest file, which must be a bundle manifest
/// (`packaging::manifest`; anything else is refused, naming the file).
pub fn content_key(bundle_manifest: &Path) -> Result<String, String> {
    packaging::manifest::Manifest::read_with_key(bundle_manifest)
        .map(|(_, key)| key)
        .map_err(|e| e.to_string())
}

/// Inputs of one import, all checked by [`Job::prepare`] before any AWS call.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: AmiSpec,
    pub image: PathBuf,
    pub image_len: u64,
    pub content_key: String,
    pub root_gib: u64,
    /// The smoke test's user data and the manifest's PCRs; None when it is skipped.
    pub smoke: Option<crate::smoke::Prepared>,
}

impl Job {
    pub fn prepare(spec: AmiSpec, image: &Path, bundle_manifest: &Path) -> Result<Job, String> {
        spec.validate()?;
        let (bundle, content_key) =
            packaging::manifest::Manifest::read_with_key(bundle_manifest).map_err(|e| e.to_string())?;
        let smoke = crate::smoke::prepare(&spec, &bundle.pcrs)?;
        let image_len = detect::ensure_raw(image)?;
        let min_gib = plan::volume_size_gib(image_len);
        let root_gib = if spec.volume.size_gib == 0 { min_gib } else { spec.volume.size_gib };
        if root_gib < min_gib {
            return Err(format!(
                "volume.size_gib: {root_gib} is smaller than the image {} ({image_len} bytes = {min_gib} GiB)",
                image.display()
            ));
        }
        if let (Via::S3Import, Some(i)) = (spec.via, &spec.s3_import) {
            let parts = image_len.div_ceil(i.part_size_mib << 20);
            if parts > s3::MAX_PARTS {
                return Err(format!(
                    "s3_import.part_size_mib: {} MiB parts would make {parts} parts of {} ({image_len} bytes); S3 takes {}",
                    i.part_size_mib,
                    image.display(),
                    s3::MAX_PARTS
                ));
            }
        }
        Ok(Job { spec, image: image.to_path_buf(), image_len, content_key, root_gib, smoke })
    }

    pub fn name(&self) -> String {
        self.spec.ami_name(&self.content_key)
    }

    /// Every AWS call a run would make, in order, one line each (`--dry-run`). `nonzero_blocks`
    /// is the count at AWS's block size (from a local scan).
    pub fn planned_calls(&self, nonzero_blocks: u64) -> Vec<String> {
        let s = &self.spec;
        let src = &s.region;
        let key = &self.content_key;
        let name = self.name();
        let mut v = vec![format!(
            "{src} ec2:DescribeImages owners=self filter tag:{CONTENT_KEY_TAG}={key} (reuse if found)"
        )];
        match (&s.via, &s.s3_import) {
            (Via::S3Import, Some(i)) => {
                let obj = format!("s3://{}/{}", i.bucket, import_key(i, key));
                let part = i.part_size_mib << 20;
                if self.image_len <= part {
                    v.push(format!("{src} s3:PutObject {obj} ({} bytes, SHA-256 checksum)", self.image_len));
                } else {
                    v.push(format!("{src} s3:CreateMultipartUpload {obj} checksum=SHA256"));
                    v.push(format!(
                        "{src} s3:UploadPart x{} ({} MiB parts, SHA-256 each, 4 at a time)",
                        self.image_len.div_ceil(part),
                        i.part_size_mib
                    ));
                    v.push(format!("{src} s3:CompleteMultipartUpload {obj}"));
                }
                v.push(format!(
                    "{src} ec2:ImportSnapshot format=RAW {obj} role={}",
                    i.role_name.as_deref().unwrap_or("vmimport")
                ));
                v.push(format!(
                    "{src} ec2:DescribeImportSnapshotTasks (until completed, fail on deleted, at most {} checks every {} s)",
                    i.wait_attempts, i.wait_interval_secs
                ));
                v.push(format!("{src} ec2:CreateTags snapshot {CONTENT_KEY_TAG}={key}"));
            }
            _ => {
                v.push(format!(
                    "{src} ebs:StartSnapshot volume_size={} GiB timeout={} min tag {CONTENT_KEY_TAG}",
                    plan::volume_size_gib(self.image_len),
                    ebs::SNAPSHOT_TIMEOUT_MINUTES
                ));
                v.push(format!(
                    "{src} ebs:PutSnapshotBlock x{nonzero_blocks} (non-zero blocks of {AWS_BLOCK_SIZE} bytes out of {}, \
                     SHA-256 each, {} workers, up to {} attempts)",
                    plan::block_count(self.image_len, AWS_BLOCK_SIZE as u64),
                    s.upload.workers,
                    s.upload.max_attempts
                ));
                v.push(format!(
                    "{src} ebs:CompleteSnapshot changed_blocks_count={nonzero_blocks} checksum=SHA256 aggregation=LINEAR"
                ));
            }
        }
        v.push(format!(
            "{src} ec2:DescribeSnapshots (SDK waiter snapshot_completed: fail on error, at most {} s)",
            s.upload.max_wait_secs()
        ));
        v.push(format!(
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
        ));
        v.push(format!("{src} ec2:CreateTags image {CONTENT_KEY_TAG}={key}"));
        v.push(format!(
            "{src} ec2:DescribeImages (SDK waiter image_available: fail on failed, at most {} s)",
            s.upload.max_wait_secs()
        ));
        v.extend(publish::planned_smoke_lines(s, key));
        v.extend(publish::planned_lines(s, key));
        v.extend(publish::planned_smoke_teardown(s, key));
        v.extend(publish::planned_failure_lines(s, true));
        if let (Via::S3Import, Some(i)) = (&s.via, &s.s3_import) {
            if self.image_len > i.part_size_mib << 20 {
                v.push(format!("{src} s3:AbortMultipartUpload (on failure: an upload not completed)"));
            }
            v.push(format!("{src} ec2:CancelImportTask (on failure: an import still running)"));
            v.push(format!(
                "{src} s3:DeleteObjects s3://{}/{} (always, once the import has ended)",
                i.bucket,
                import_key(i, key)
            ));
        }
        v
    }
}

fn import_key(i: &spec::S3Import, content_key: &str) -> String {
    format!("{}/{content_key}.raw", i.prefix)
}

/// Non-zero blocks of `block_size` in the image (local only; for `--dry-run` and the benchmark).
pub fn count_nonzero(image: &Path, block_size: usize) -> std::io::Result<(u64, u64)> {
    plan::scan_blocks(image, block_size, |_| true)
}

/// The whole import: raw image -> snapshot -> image -> copies, sharing, SSM -> manifest.
pub async fn run(
    job: &Job,
    opts: &RunOptions<'_>,
    interrupt: impl Future<Output = ()>,
) -> Result<Manifest, Error> {
    let s = &job.spec;
    let state = StateFile::for_run(opts.state_path, &job.content_key, "import").map_err(Error::Input)?;
    if opts.state_path.is_some() && s.on_failure == OnFailure::Delete {
        (opts.log)(
            "state file: an interrupted upload is deleted on failure (on_failure = delete); set on_failure = \"keep\" to resume it",
        );
    }
    let cleanup = Arc::new(Cleanup::new(
        s.on_failure == OnFailure::Keep,
        s.upload.wait_attempts,
        std::time::Duration::from_secs(s.upload.wait_interval_secs),
    ));
    let state = Arc::new(state);
    let ctx = Ctx {
        spec: s,
        content_key: &job.content_key,
        target: opts.target,
        cleanup: cleanup.clone(),
        state: state.clone(),
        log: opts.log,
    };
    let r = with_cleanup(&cleanup, opts.log, import_body(job, &ctx, opts.progress_bar), interrupt).await;
    state.close();
    r
}

async fn import_body(job: &Job, ctx: &Ctx<'_>, progress_bar: bool) -> Result<Manifest, Error> {
    let t0 = Instant::now();
    let s = ctx.spec;
    let key = ctx.content_key;
    let log = ctx.log;
    let mut timings = BTreeMap::new();
    let bound = ctx.bound();
    let src = Clients::new(&s.region, ctx.target).await;
    let mut custom = BTreeMap::new();
    custom.insert("content_key".to_string(), key.to_string());
    custom.insert("via".to_string(), s.via.as_str().to_string());

    let (ami, snaps, reused) = match images::find_by_content_key(&src, key, s.variant.as_deref()).await? {
        Some((ami, snaps)) => {
            log(&format!("{}: reusing {ami} (content key {key})", s.region));
            images::wait_image(&src, &ami, bound).await?;
            (ami, snaps, true)
        }
        None => {
            let t = Instant::now();
            let (snapshot_id, snap_armed) = match s.via {
                Via::EbsDirect => ebs_direct_snapshot(job, ctx, &src, progress_bar, &mut custom).await?,
                Via::S3Import => s3_import_snapshot(job, ctx, &src).await?,
            };
            timings.insert("upload".to_string(), t.elapsed().as_secs_f64());
            images::wait_snapshot(&src, &snapshot_id, bound).await?;
            let t = Instant::now();
            let ami = images::register(&src, s, &job.name(), &snapshot_id, job.root_gib, key).await?;
            let img_armed = ctx.cleanup.push(&src, Undo::DeregisterImage(ami.clone()), When::OnFailure);
            ctx.record(|st| st.image_id = Some(ami.clone()));
            images::wait_image(&src, &ami, bound).await?;
            ctx.cleanup.disarm(img_armed);
            ctx.cleanup.disarm(snap_armed);
            ctx.record(|st| st.image_available = true);
            timings.insert("register".to_string(), t.elapsed().as_secs_f64());
            log(&format!("{}: registered {ami}", s.region));
            (ami, vec![snapshot_id], false)
        }
    };
    let source = Source { clients: src, ami, snapshots: snaps, reused };
    let regions = publish::test_and_publish(ctx, source, job.smoke.as_ref(), &mut timings).await?;
    let builder = match s.via {
        Via::EbsDirect => "kv-ami.raw-import",
        Via::S3Import => "kv-ami.s3-import",
    };
    Ok(publish::manifest(ctx, builder, regions, custom, timings, t0))
}

/// Follows the upload for the state file and the cleanup stack.
struct Tracker {
    clients: Clients,
    cleanup: Arc<Cleanup>,
    state: Arc<StateFile>,
    image_len: u64,
    armed: Mutex<Option<cleanup::Armed>>,
    warn: Mutex<Vec<String>>,
}

impl ebs::UploadObserver for Tracker {
    fn started(&self, snapshot_id: &str, block_size: u64, volume_gib: u64) {
        let a =
            self.cleanup.push(&self.clients, Undo::DeleteSnapshot(snapshot_id.to_string()), When::OnFailure);
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
        let up = state::UploadState {
            region: self.clients.region.clone(),
            snapshot_id: snapshot_id.to_string(),
            started_at: spec::now_unix(),
            timeout_minutes: ebs::SNAPSHOT_TIMEOUT_MINUTES,
            block_size,
            volume_gib,
            image_len: self.image_len,
            blocks_done: Vec::new(),
        };
        self.note(self.state.update(|st| st.upload = Some(up)));
    }

    fn blocks_done(&self, indexes: &[u64]) {
        self.note(self.state.update(|st| {
            if let Some(u) = &mut st.upload {
                u.blocks_done.extend_from_slice(indexes);
                u.blocks_done.sort_unstable();
                u.blocks_done.dedup();
            }
        }));
    }
}

impl Tracker {
    fn note(&self, r: Result<(), state::WriteError>) {
        if let Err(e) = r {
            self.warn.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }
    }
}

/// EBS direct upload, resumed from the state file when it allows. Returns the completed
/// snapshot and its cleanup entry.
async fn ebs_direct_snapshot(
    job: &Job,
    ctx: &Ctx<'_>,
    src: &Clients,
    progress_bar: bool,
    custom: &mut BTreeMap<String, String>,
) -> Result<(String, cleanup::Armed), Error> {
    let s = ctx.spec;
    let log = ctx.log;
    let st = ctx.state.get();
    let mut resume = None;
    if let Some(u) = st.upload.clone() {
        let decision = match state::resume_decision(&u, &src.region, job.image_len, spec::now_unix()) {
            ResumeDecision::Continue => match images::snapshot_state(src, &u.snapshot_id).await? {
                Some(state) if state != "error" => ResumeDecision::Continue,
                Some(state) => {
                    ResumeDecision::StartOver(format!("snapshot {} is in state {state}", u.snapshot_id))
                }
                None => ResumeDecision::StartOver(format!("snapshot {} no longer exists", u.snapshot_id)),
            },
            other => other,
        };
        match decision {
            ResumeDecision::Continue if st.snapshot_completed.as_deref() == Some(u.snapshot_id.as_str()) => {
                log(&format!(
                    "{}: state file: snapshot {} is complete; registering it",
                    src.region, u.snapshot_id
                ));
                let a = ctx.cleanup.push(src, Undo::DeleteSnapshot(u.snapshot_id.clone()), When::OnFailure);
                return Ok((u.snapshot_id, a));
            }
            ResumeDecision::Continue => {
                log(&format!(
                    "{}: state file: resuming snapshot {}: {} blocks already put are skipped",
                    src.region,
                    u.snapshot_id,
                    u.blocks_done.len()
                ));
                resume = Some(ebs::ResumeUpload {
                    snapshot_id: u.snapshot_id.clone(),
                    block_size: u.block_size,
                    done: u.blocks_done.iter().copied().collect(),
                });
            }
            ResumeDecision::StartOver(why) => {
                log(&format!("{}: state file: {why}: starting over with a new snapshot", src.region));
                // Best effort: an expired snapshot goes to `error` by itself.
                if let Err(e) = images::delete_snapshot(src, &u.snapshot_id).await {
                    log(&format!("{}: could not delete the old snapshot {}: {e}", src.region, u.snapshot_id));
                }
                ctx.record(|st| {
                    st.upload = None;
                    st.snapshot_completed = None;
                });
            }
        }
    }
    let tracker = Arc::new(Tracker {
        clients: src.clone(),
        cleanup: ctx.cleanup.clone(),
        state: ctx.state.clone(),
        image_len: job.image_len,
        armed: Mutex::new(None),
        warn: Mutex::new(Vec::new()),
    });
    if let Some(r) = &resume {
        let a = ctx.cleanup.push(src, Undo::DeleteSnapshot(r.snapshot_id.clone()), When::OnFailure);
        *tracker.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
    }
    let opts = ebs::UploadOptions {
        workers: s.upload.workers,
        retry: plan::RetryPolicy { max_attempts: s.upload.max_attempts, ..Default::default() },
        resume,
        observer: Some(tracker.clone()),
        progress_bar,
    };
    let result = ebs::upload_with(src, &job.image, job.image_len, &job.content_key, opts).await;
    for w in tracker.warn.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        log(&format!("warning: {w}"));
    }
    let up = result?;
    let armed = tracker
        .armed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| Error::NoSnapshot { region: src.region.clone() })?;
    log(&format!(
        "{}: uploaded {} of {} blocks ({} bytes each; {} put by this run) to {} in {:.2}s, {} retries",
        s.region,
        up.blocks_written,
        up.blocks_scanned,
        up.block_size,
        up.blocks_put,
        up.snapshot_id,
        up.seconds,
        up.retries
    ));
    custom.insert("snapshot_checksum_linear".to_string(), up.checksum.clone());
    ctx.record(|st| st.snapshot_completed = Some(up.snapshot_id.clone()));
    Ok((up.snapshot_id, armed))
}

/// S3 + ImportSnapshot: PutObject, ImportSnapshot, bounded polling. A task recorded in the state
/// file is polled again instead of importing twice.
async fn s3_import_snapshot(
    job: &Job,
    ctx: &Ctx<'_>,
    src: &Clients,
) -> Result<(String, cleanup::Armed), Error> {
    let s = ctx.spec;
    let imp = s
        .s3_import
        .as_ref()
        .ok_or_else(|| Error::Input("s3_import: via = \"s3-import\" needs an [s3_import] table".into()))?;
    let key = import_key(imp, &job.content_key);
    // Kept for a resume with on_failure = keep; deleted once the import has ended.
    let object = ctx.cleanup.push(
        src,
        Undo::DeleteObjects { bucket: imp.bucket.clone(), keys: vec![key.clone()] },
        When::OnFailure,
    );
    let task = match ctx.state.get().import_task_id {
        Some(t) => {
            (ctx.log)(&format!("{}: state file: polling import task {t} again", src.region));
            t
        }
        None => {
            let part = imp.part_size_mib << 20;
            if job.image_len <= part {
                s3::put_file(src, &imp.bucket, &key, &job.image).await?;
            } else {
                let id = s3::create_multipart(src, &imp.bucket, &key).await?;
                let abort = ctx.cleanup.push(
                    src,
                    Undo::AbortMultipartUpload {
                        bucket: imp.bucket.clone(),
                        key: key.clone(),
                        upload_id: id.clone(),
                    },
                    When::Always,
                );
                let n =
                    s3::put_multipart(src, &imp.bucket, &key, &id, &job.image, job.image_len, part).await?;
                ctx.cleanup.disarm(abort);
                (ctx.log)(&format!("{}: {n} parts of {} MiB", src.region, imp.part_size_mib));
            }
            (ctx.log)(&format!("{}: put s3://{}/{key}", src.region, imp.bucket));
            let t = import_task::import_snapshot(
                src,
                &imp.bucket,
                &key,
                imp.role_name.as_deref(),
                &job.content_key,
            )
            .await?;
            ctx.record(|st| st.import_task_id = Some(t.clone()));
            t
        }
    };
    let cancel = ctx.cleanup.push(src, Undo::CancelImportTask(task.clone()), When::OnFailure);
    let bound = Bound::new(imp.wait_attempts, std::time::Duration::from_secs(imp.wait_interval_secs));
    let snapshot = import_task::wait_import(src, &task, bound).await?;
    ctx.cleanup.disarm(cancel);
    ctx.cleanup.promote(object);
    let armed = ctx.cleanup.push(src, Undo::DeleteSnapshot(snapshot.clone()), When::OnFailure);
    images::tag_content_key(src, std::slice::from_ref(&snapshot), &job.content_key).await?;
    (ctx.log)(&format!("{}: import task {task} -> {snapshot}", src.region));
    ctx.record(|st| st.snapshot_completed = Some(snapshot.clone()));
    Ok((snapshot, armed))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A bundle manifest with no files (the import reads only its bytes and its shape).
    pub(crate) const MANIFEST: &[u8] = br#"{"format":1,"build_time":"2026-01-01T00:00:00Z","git_commit":"unknown","versions":{},
"enclave_image":"server_enclave_image.eif","pcrs":{"HashAlgorithm":"Sha384 { ... }","PCR0":"00","PCR1":"01","PCR2":"02"},"files":[]}"#;

    pub(crate) const SPEC: &str = "name = \"kv-{content_key}\"\nregion = \"us-east-1\"\ncopy_to = [\"eu-west-1\"]\n\
                        share_with = [\"111122223333\"]\nssm_parameter = \"/kv/ami\"\n";

    pub(crate) const EXTRAS: &str = "via = \"s3-import\"\nshare_with_organizations = [\"arn:aws:organizations::111122223333:organization/o-abcdefghij\"]\n\
                          public = true\ndeprecate_at = \"DEPRECATE\"\n[s3_import]\nbucket = \"imports-bucket\"\n";

    pub(crate) fn in_a_year() -> String {
        let t = aws_sdk_ec2::primitives::DateTime::from_secs(spec::now_unix() as i64 + 365 * 86400);
        t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime).unwrap()
    }

    pub(crate) fn job(dir: &Path, spec: &str, image: &[u8]) -> Result<Job, String> {
        let spec = spec.replace("DEPRECATE", &in_a_year());
        let img = dir.join("disk.raw");
        std::fs::write(&img, image).unwrap();
        let m = dir.join("manifest.json");
        std::fs::write(&m, MANIFEST).unwrap();
        Job::prepare(AmiSpec::parse(&spec).map_err(|e| e.to_string())?, &img, &m)
    }

    #[test]
    fn plan_lists_every_call_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), SPEC, &[1u8; 4096]).unwrap();
        let calls = j.planned_calls(1);
        assert!(
            calls.contains(
                &"# smoke test skipped (--skip-smoke-test): the image is not booted; latest is not moved"
                    .to_string()
            )
        );
        let calls: Vec<String> = calls.into_iter().filter(|l| !l.starts_with('#')).collect();
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
                "ec2:DeregisterImage",
                "ec2:DeleteSnapshot",
                "ec2:DeregisterImage",
                "ec2:DeleteSnapshot",
            ]
        );
        assert!(calls[9].starts_with("eu-west-1 ec2:CopyImage source=us-east-1"));
        assert!(calls[2].contains("x1 "), "{}", calls[2]);
        assert!(calls[20].starts_with("eu-west-1 ec2:DeregisterImage (on failure"), "{}", calls[20]);
    }

    #[test]
    fn plan_of_the_s3_import_path_and_of_org_sharing_and_deprecation() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), &format!("{SPEC}{EXTRAS}"), &[1u8; 4096]).unwrap();
        let calls = j.planned_calls(1).join("\n");
        for want in [
            "us-east-1 s3:PutObject s3://imports-bucket/kv-ami-import/",
            "us-east-1 ec2:ImportSnapshot format=RAW",
            "us-east-1 ec2:DescribeImportSnapshotTasks (until completed",
            "eu-west-1 ec2:ModifyImageAttribute launchPermission add 111122223333,arn:aws:organizations::111122223333:organization/o-abcdefghij,group=all",
            "eu-west-1 ec2:EnableImageDeprecation deprecate_at=",
            "us-east-1 ec2:CancelImportTask (on failure",
            "us-east-1 s3:DeleteObjects s3://imports-bucket/",
        ] {
            assert!(calls.contains(want), "{want} missing from\n{calls}");
        }
        assert!(!calls.contains("ebs:"), "{calls}");
    }

    #[test]
    fn content_key_is_sha256_of_the_manifest_file() {
        let dir = tempfile::tempdir().unwrap();
        let j = job(dir.path(), SPEC, &[1u8; 512]).unwrap();
        assert_eq!(j.content_key, hex::encode(Sha256::digest(MANIFEST)));
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
        std::fs::write(&m, MANIFEST).unwrap();
        let spec = AmiSpec::parse(&format!("{SPEC}[volume]\nsize_gib = 1\n")).unwrap();
        let e = Job::prepare(spec, &img, &m).unwrap_err();
        assert!(e.starts_with("volume.size_gib") && e.contains("big.raw"), "{e}");
    }
}
