//! `kv-ami bake`: the builder-instance bake without Packer and without SSH.
//!
//! base AMI (SSM parameter, or name + owner, newest) -> bundle to S3 -> security group with no
//! ingress -> RunInstances (IMDSv2 required, EnclaveOptions, instance profile, user data from
//! [`crate::userdata`]) -> the builder installs the bundle and tags itself `kv-ami:bake-status`
//! -> StopInstances -> CreateImage -> [`crate::publish`] (copies, sharing, SSM, manifest). The
//! builder, the security group and the S3 objects are on the cleanup stack from the moment they
//! exist, so they are removed on every exit path; the image only while unfinished.
//!
//! The signal is an instance tag rather than an SSM parameter: it needs no further resource (it
//! goes away with the instance, so there is nothing more to clean up), kv-ami already reads the
//! instance with DescribeInstances for its state, and the builder's role can be limited to
//! tagging instances that carry `kv-ami:role = builder` with that one tag key.

use crate::aws::Clients;
use crate::cleanup::{Cleanup, Undo, When};
use crate::error::Error;
use crate::images::{self, key_tags};
pub use crate::instances::{ROLE_BUILDER, ROLE_TAG, RUN_TAG};
use crate::output::Manifest;
use crate::publish::{self, Source};
use crate::run::{Ctx, RunOptions, with_cleanup};
use crate::spec::{AmiSpec, Bake, CONTENT_KEY_TAG, OnFailure};
use crate::state::StateFile;
use crate::userdata::{self, STATUS_TAG};
use crate::wait::Bound;
use crate::{instances, s3, ssm};
use aws_sdk_ec2::types as ec2t;
use packaging::manifest::{MANIFEST, Manifest as BundleManifest};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Relative to the bundle directory, `/`-separated (also the S3 key under the run prefix).
    pub path: String,
    pub size: u64,
}

/// Inputs of one bake, all checked by [`BakeJob::prepare`] before any AWS call.
#[derive(Debug, Clone)]
pub struct BakeJob {
    pub spec: AmiSpec,
    pub bake: Bake,
    pub bundle_dir: PathBuf,
    /// manifest.json first, then every file it lists.
    pub files: Vec<BundleFile>,
    pub content_key: String,
    /// Names this run's S3 prefix and security group.
    pub run_id: String,
    /// The smoke test's user data and the manifest's PCRs; None when it is skipped.
    pub smoke: Option<crate::smoke::Prepared>,
}

impl BakeJob {
    /// Checks the spec and the bundle: its manifest (`packaging::manifest`) and every file it
    /// lists, by size and SHA-256, before any AWS call.
    pub fn prepare(spec: AmiSpec, bundle_dir: &Path) -> Result<BakeJob, String> {
        spec.validate()?;
        let bake = spec.bake.clone().ok_or("bake: the [bake] table is missing (kv-ami bake needs it)")?;
        if spec.volume.volume_type != crate::spec::VolumeType::Gp3 {
            let at = spec.variant.as_ref().map(|v| format!("variant {v}: ")).unwrap_or_default();
            return Err(format!(
                "{at}volume.type: the bake's builder volume is gp3 only ({} images: kv-ami import)",
                spec.volume.volume_type.as_str()
            ));
        }
        let manifest = bundle_dir.join(MANIFEST);
        let (m, content_key) = BundleManifest::read_with_key(&manifest).map_err(|e| e.to_string())?;
        m.check_files(bundle_dir).map_err(|e| e.to_string())?;
        let meta = std::fs::metadata(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
        let mut files = vec![BundleFile { path: MANIFEST.into(), size: meta.len() }];
        files.extend(m.files.iter().map(|f| BundleFile { path: f.path.clone(), size: f.size }));
        let variant = spec.variant.as_ref().map(|v| format!("{v}-")).unwrap_or_default();
        let run_id = format!("{}-{variant}{}", &content_key[..12], crate::spec::now_unix());
        let smoke = crate::smoke::prepare(&spec, &m.pcrs)?;
        Ok(BakeJob { spec, bake, bundle_dir: bundle_dir.to_path_buf(), files, content_key, run_id, smoke })
    }

    pub fn name(&self) -> String {
        self.spec.ami_name(&self.content_key)
    }

    /// This run's S3 prefix.
    pub fn prefix(&self) -> String {
        format!("{}/{}", self.bake.prefix, self.run_id)
    }

    pub fn keys(&self) -> Vec<String> {
        self.files.iter().map(|f| format!("{}/{}", self.prefix(), f.path)).collect()
    }

    pub fn user_data(&self) -> Result<String, String> {
        let prefix = self.prefix();
        userdata::render(&userdata::Vars {
            bucket: &self.bake.bucket,
            prefix: &prefix,
            region: &self.spec.region,
            content_key: &self.content_key,
            envoy_image: &self.bake.envoy_image,
        })
    }

    fn security_group_name(&self) -> String {
        format!("kv-ami-builder-{}", self.run_id)
    }

    /// Every AWS call a bake would make, in order (`--dry-run`).
    pub fn planned_calls(&self) -> Vec<String> {
        let s = &self.spec;
        let b = &self.bake;
        let r = &s.region;
        let key = &self.content_key;
        let mut v = vec![format!(
            "{r} ec2:DescribeImages owners=self filter tag:{CONTENT_KEY_TAG}={key} (reuse if found)"
        )];
        match (&b.base_ami_ssm_parameter, &b.base_ami_name, &b.base_ami_owner) {
            (Some(p), _, _) => v.push(format!("{r} ssm:GetParameter {p} (base AMI)")),
            (_, Some(n), Some(o)) => v.push(format!(
                "{r} ec2:DescribeImages owners={o} filter name={n} state=available architecture={} (base AMI: newest)",
                s.architecture
            )),
            _ => {}
        }
        for (f, k) in self.files.iter().zip(self.keys()) {
            v.push(format!("{r} s3:PutObject s3://{}/{k} ({} bytes, SHA-256 checksum)", b.bucket, f.size));
        }
        if let Some(sn) = &b.subnet_id {
            v.push(format!("{r} ec2:DescribeSubnets {sn} (its VPC)"));
        }
        v.push(format!(
            "{r} ec2:CreateSecurityGroup {} (no ingress) tag {ROLE_TAG}={ROLE_BUILDER}",
            self.security_group_name()
        ));
        let ud = self.user_data().map(|u| u.len()).unwrap_or(0);
        v.push(format!(
            "{r} ec2:RunInstances type={} {} enclave=true imds=v2-required hop_limit=1 profile={} user_data={ud} bytes \
             tags {ROLE_TAG}={ROLE_BUILDER},{CONTENT_KEY_TAG},{RUN_TAG}",
            b.instance_type,
            if b.spot { "market=spot(one-time)" } else { "market=on-demand" },
            b.instance_profile,
        ));
        v.push(format!(
            "{r} ec2:DescribeInstances (until tag {STATUS_TAG}=ok|failed, at most {} checks every {} s)",
            b.signal_attempts, b.signal_interval_secs
        ));
        if !b.spot {
            v.push(format!("{r} ec2:StopInstances"));
            v.push(format!(
                "{r} ec2:DescribeInstances (SDK waiter instance_stopped, at most {} s)",
                s.upload.max_wait_secs()
            ));
        }
        v.push(format!(
            "{r} ec2:CreateImage name={} no_reboot={} tag {CONTENT_KEY_TAG}={key} on the image and its snapshots",
            self.name(),
            !b.spot
        ));
        v.push(format!(
            "{r} ec2:DescribeImages + ec2:CreateTags {CONTENT_KEY_TAG}={key} on the image's snapshots (if listed yet)"
        ));
        v.push(format!(
            "{r} ec2:DescribeImages (SDK waiter image_available: fail on failed, at most {} s)",
            s.upload.max_wait_secs()
        ));
        v.extend(publish::planned_smoke_lines(s, key));
        v.extend(publish::planned_lines(s, key));
        v.extend(publish::planned_smoke_teardown(s, key));
        v.push(format!("{r} ec2:TerminateInstances (always)"));
        v.push(format!(
            "{r} ec2:DescribeInstances (SDK waiter instance_terminated, at most {} s)",
            s.upload.max_wait_secs()
        ));
        v.push(format!("{r} ec2:DeleteSecurityGroup {} (always)", self.security_group_name()));
        v.push(format!(
            "{r} s3:DeleteObjects s3://{}/{}/ x{} (always)",
            b.bucket,
            self.prefix(),
            self.files.len()
        ));
        if s.on_failure == OnFailure::Delete {
            v.extend(publish::planned_failure_lines(s, false));
        }
        v
    }
}

/// CreateImage's TagSpecifications: the content key on the image and, with `snapshots`, on the
/// snapshots it makes, from the start: IAM (iam-policy-bake.json) lets kv-ami tag, share and
/// delete only images and snapshots that carry it, and tag others only while creating them.
pub(crate) fn create_image_tags(
    content_key: &str,
    variant: Option<&str>,
    snapshots: bool,
) -> Vec<ec2t::TagSpecification> {
    let mut v = vec![key_tags(ec2t::ResourceType::Image, content_key, variant)];
    if snapshots {
        v.push(key_tags(ec2t::ResourceType::Snapshot, content_key, variant));
    }
    v
}

/// The whole bake; `interrupt` ends it early, and the cleanup stack runs in every case.
pub async fn bake(
    job: &BakeJob,
    opts: &RunOptions<'_>,
    interrupt: impl Future<Output = ()>,
) -> Result<Manifest, Error> {
    let s = &job.spec;
    let state = StateFile::for_run(opts.state_path, &job.content_key, "bake").map_err(Error::Input)?;
    let state = Arc::new(state);
    let every = Duration::from_secs(s.upload.wait_interval_secs);
    let cleanup = Arc::new(Cleanup::new(s.on_failure == OnFailure::Keep, s.upload.wait_attempts, every));
    let ctx = Ctx {
        spec: s,
        content_key: &job.content_key,
        target: opts.target,
        cleanup: cleanup.clone(),
        state: state.clone(),
        log: opts.log,
    };
    let r = with_cleanup(&cleanup, opts.log, bake_body(job, &ctx), interrupt).await;
    state.close();
    r
}

async fn bake_body(job: &BakeJob, ctx: &Ctx<'_>) -> Result<Manifest, Error> {
    let t0 = Instant::now();
    let s = ctx.spec;
    let b = &job.bake;
    let log = ctx.log;
    let bound = ctx.bound();
    let mut timings = BTreeMap::new();
    let mut custom = BTreeMap::new();
    custom.insert("content_key".to_string(), job.content_key.clone());
    let c = Clients::new(&s.region, ctx.target).await;
    let r = c.region.clone();

    let found = images::find_by_content_key(&c, &job.content_key, s.variant.as_deref()).await?;
    let (ami, snaps, reused) = match found {
        Some((ami, snaps)) => {
            log(&format!("{r}: reusing {ami} (content key {})", job.content_key));
            images::wait_image(&c, &ami, bound).await?;
            (ami, snaps, true)
        }
        None => {
            let base = resolve_base_ami(&c, s, b).await?;
            log(&format!("{r}: base AMI {base}"));
            custom.insert("base_ami".to_string(), base.clone());
            let user_data = job.user_data().map_err(Error::Input)?;

            // Every object is on the stack before the first PutObject: a partial upload goes too.
            let t = Instant::now();
            let keys = job.keys();
            ctx.cleanup.push(
                &c,
                Undo::DeleteObjects { bucket: b.bucket.clone(), keys: keys.clone() },
                When::Always,
            );
            for (f, k) in job.files.iter().zip(&keys) {
                s3::put_file(&c, &b.bucket, k, &job.bundle_dir.join(&f.path)).await?;
            }
            log(&format!("{r}: bundle in s3://{}/{}/ ({} files)", b.bucket, job.prefix(), keys.len()));
            timings.insert("bundle_upload".to_string(), t.elapsed().as_secs_f64());

            let vpc = match &b.subnet_id {
                Some(sn) => instances::subnet_vpc(&c, sn).await?,
                None => None,
            };
            let sg_name = job.security_group_name();
            let sg = instances::create_security_group(
                &c,
                &sg_name,
                vpc,
                ROLE_BUILDER,
                &job.run_id,
                &job.content_key,
            )
            .await?;
            ctx.cleanup.push(&c, Undo::DeleteSecurityGroup(sg.clone()), When::Always);

            let t = Instant::now();
            // Before RunInstances: should its answer be lost, the builder is found by its tag.
            ctx.cleanup.push(&c, Undo::TerminateTagged(job.run_id.clone()), When::Always);
            let launch = instances::Launch {
                image_id: &base,
                instance_type: &b.instance_type,
                instance_profile: &b.instance_profile,
                security_group_id: &sg,
                subnet_id: b.subnet_id.as_deref(),
                spot: b.spot,
                user_data: user_data.as_bytes(),
                root_volume: (s.volume.size_gib > 0).then_some((
                    s.root_device_name.as_str(),
                    s.volume.size_gib as i32,
                    s.volume.iops,
                    s.volume.throughput,
                )),
                role: ROLE_BUILDER,
                run_id: &job.run_id,
                content_key: &job.content_key,
            };
            let instance = instances::run(&c, &launch).await?;
            ctx.cleanup.push(&c, Undo::TerminateInstance(instance.clone()), When::Always);
            custom.insert("builder_instance".to_string(), instance.clone());
            log(&format!("{r}: builder {instance} launched; waiting for its {STATUS_TAG} tag"));
            let signal = Bound::new(b.signal_attempts, Duration::from_secs(b.signal_interval_secs));
            instances::wait_signal(&c, &instance, signal).await?;
            log(&format!("{r}: builder {instance} signalled ok"));
            timings.insert("install".to_string(), t.elapsed().as_secs_f64());

            let t = Instant::now();
            if !b.spot {
                instances::stop(&c, &instance, bound).await?;
            }
            let ami = images::create_from_instance(
                &c,
                &instance,
                &job.name(),
                &s.description.clone().unwrap_or_else(|| format!("kv-ami {}", job.content_key)),
                // A stopped instance needs no reboot; a spot one (cannot be stopped) is rebooted
                // by CreateImage for a consistent file system.
                !b.spot,
                create_image_tags(&job.content_key, s.variant.as_deref(), !ctx.target.is_emulator()),
            )
            .await?;
            let armed = ctx.cleanup.push(&c, Undo::DeregisterImage(ami.clone()), When::OnFailure);
            // Tag at once as well (as RegisterImage does): the content key is what a re-run finds.
            let find_tags = images::find_tags(&job.content_key, s.variant.as_deref());
            images::tag(&c, std::slice::from_ref(&ami), &find_tags).await?;
            // Its snapshots too, as soon as DescribeImages lists them: the cleanup may delete only
            // snapshots carrying the content key (IAM). On AWS they carry it from CreateImage
            // already (and IAM lets kv-ami tag only what carries it); an emulator gets no snapshot
            // TagSpecifications (moto rejects them), so this is where they get it there. Publish
            // tags them again.
            let early = images::image_snapshots(&c, &ami).await?;
            if !early.is_empty() {
                images::tag_content_key(&c, &early, &job.content_key).await?;
                log(&format!("{r}: {ami}: snapshots {} tagged with the content key", early.join(",")));
            }
            ctx.record(|st| st.image_id = Some(ami.clone()));
            images::wait_image(&c, &ami, bound).await?;
            ctx.cleanup.disarm(armed);
            ctx.record(|st| st.image_available = true);
            timings.insert("create_image".to_string(), t.elapsed().as_secs_f64());
            log(&format!("{r}: created {ami} from {instance}"));
            let snaps = images::image_snapshots(&c, &ami).await?;
            (ami, snaps, false)
        }
    };
    let source = Source { clients: c, ami, snapshots: snaps, reused };
    let regions = publish::test_and_publish(ctx, source, job.smoke.as_ref(), &mut timings).await?;
    Ok(publish::manifest(ctx, "kv-ami.builder", regions, custom, timings, t0))
}

/// The base AMI: the SSM parameter's value, or the newest available image matching name/owner.
pub async fn resolve_base_ami(c: &Clients, spec: &AmiSpec, b: &Bake) -> Result<String, Error> {
    match (&b.base_ami_ssm_parameter, &b.base_ami_name, &b.base_ami_owner) {
        (Some(p), _, _) => Ok(ssm::get_image_id(c, p).await?),
        (None, Some(n), Some(o)) => Ok(images::newest_named(c, n, o, &spec.architecture).await?),
        // spec.validate() requires one of the two.
        _ => Err(Error::Input("bake: no base AMI source".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_image_tags_the_snapshots_too_except_on_an_emulator() {
        let kinds = |v: Vec<ec2t::TagSpecification>| -> Vec<(String, String)> {
            v.iter()
                .map(|t| {
                    let tag = &t.tags()[0];
                    (
                        t.resource_type().unwrap().as_str().to_string(),
                        format!("{}={}", tag.key().unwrap(), tag.value().unwrap()),
                    )
                })
                .collect()
        };
        let key = "kv-ami:content-key=ck".to_string();
        assert_eq!(
            kinds(create_image_tags("ck", None, true)),
            vec![("image".to_string(), key.clone()), ("snapshot".to_string(), key.clone())]
        );
        assert_eq!(kinds(create_image_tags("ck", None, false)), vec![("image".to_string(), key)]);
    }
}
