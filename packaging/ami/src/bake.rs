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

use crate::aws::{self, Clients, Error, aws_err};
use crate::cleanup::{Cleanup, Undo, When};
use crate::publish::{self, Ctx, Source};
use crate::spec::{AmiSpec, Bake, CONTENT_KEY_TAG, OnFailure};
use crate::state::StateFile;
use crate::userdata::{self, DETAIL_TAG, STATUS_TAG};
use crate::{Manifest, RunOptions};
use aws_sdk_ec2::types as ec2t;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tag on everything the bake launches; the IAM policies key on it.
pub const ROLE_TAG: &str = "kv-ami:role";
pub const ROLE_BUILDER: &str = "builder";
/// Tag with the run id on everything the bake launches (found again by the cleanup).
pub const RUN_TAG: &str = "kv-ami:run";

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
}

#[derive(Deserialize)]
struct BundleManifest {
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
struct ManifestFile {
    path: String,
    size: u64,
    sha256: String,
}

impl BakeJob {
    pub fn prepare(spec: AmiSpec, bundle_dir: &Path) -> Result<BakeJob, String> {
        spec.validate()?;
        let bake = spec.bake.clone().ok_or("bake: the [bake] table is missing (kv-ami bake needs it)")?;
        let manifest = bundle_dir.join("manifest.json");
        let content_key = crate::content_key(&manifest)?;
        let text = std::fs::read(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
        let m: BundleManifest = serde_json::from_slice(&text).map_err(|e| {
            format!("{}: not a bundle manifest (files[].path/size/sha256): {e}", manifest.display())
        })?;
        let meta = std::fs::metadata(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
        let mut files = vec![BundleFile { path: "manifest.json".into(), size: meta.len() }];
        for (i, f) in m.files.iter().enumerate() {
            let where_ = format!("{}: files[{i}] {:?}", manifest.display(), f.path);
            let parts_ok = !f.path.is_empty()
                && !f.path.starts_with('/')
                && f.path.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
                && f.path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
            if !parts_ok {
                return Err(format!("{where_}: path must be relative, inside the bundle, of A-Za-z0-9/_.-"));
            }
            let file = bundle_dir.join(&f.path);
            let len =
                std::fs::metadata(&file).map_err(|e| format!("{where_}: {}: {e}", file.display()))?.len();
            if len != f.size {
                return Err(format!("{where_}: {len} bytes, the manifest says {}", f.size));
            }
            let sha = hex::encode(aws::file_sha256(&file).map_err(|e| format!("{where_}: {e}"))?);
            if sha != f.sha256 {
                return Err(format!("{where_}: sha256 {sha}, the manifest says {}", f.sha256));
            }
            files.push(BundleFile { path: f.path.clone(), size: len });
        }
        let run_id = format!("{}-{}", &content_key[..12], crate::spec::now_unix());
        Ok(BakeJob { spec, bake, bundle_dir: bundle_dir.to_path_buf(), files, content_key, run_id })
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
                "{r} ec2:DescribeInstances (until stopped, at most {} checks)",
                s.upload.wait_attempts
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
            "{r} ec2:DescribeImages (until available, fail on failed, at most {} checks)",
            s.upload.wait_attempts
        ));
        v.extend(publish::planned_lines(s, key));
        v.push(format!("{r} ec2:TerminateInstances (always)"));
        v.push(format!(
            "{r} ec2:DescribeInstances (until terminated, at most {} checks)",
            s.upload.wait_attempts
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

/// What to do after one look at the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalStep {
    Done,
    Again,
    Failed(String),
}

pub fn signal_step(
    status: Option<&str>,
    detail: Option<&str>,
    state: Option<&str>,
    reason: Option<&str>,
) -> SignalStep {
    match status {
        Some("ok") => SignalStep::Done,
        Some("failed") => SignalStep::Failed(format!(
            "the builder reported failure: {}",
            detail.filter(|d| !d.trim().is_empty()).unwrap_or("no detail")
        )),
        Some(other) => {
            SignalStep::Failed(format!("the builder set {STATUS_TAG}={other:?} (expected ok or failed)"))
        }
        None => match state {
            Some(s @ ("stopping" | "stopped" | "shutting-down" | "terminated")) => SignalStep::Failed(
                format!("the builder is {s} before signalling: {}", reason.unwrap_or("no StateReason given")),
            ),
            _ => SignalStep::Again,
        },
    }
}

/// Bounded wait for one of `states`; returns the state reached.
pub async fn wait_instance_state(
    c: &Clients,
    id: &str,
    states: &[&str],
    attempts: u32,
    every: Duration,
) -> Result<String, Error> {
    for _ in 0..attempts {
        let i = describe_instance(c, id).await?;
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string());
        if let Some(s) = state.filter(|s| states.contains(&s.as_str())) {
            return Ok(s);
        }
        tokio::time::sleep(every).await;
    }
    Err(Error::Local(format!("{}: instance {id} not {} after {attempts} checks", c.region, states.join("/"))))
}

async fn describe_instance(c: &Clients, id: &str) -> Result<ec2t::Instance, Error> {
    let out = c
        .ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:DescribeInstances", id, &e))?;
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .cloned()
        .ok_or_else(|| Error::Local(format!("{}: ec2:DescribeInstances on {id}: no such instance", c.region)))
}

fn tag_of<'a>(i: &'a ec2t::Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Poll the builder's signal tag.
pub async fn wait_signal(c: &Clients, id: &str, attempts: u32, every: Duration) -> Result<(), Error> {
    for _ in 0..attempts {
        let i = describe_instance(c, id).await?;
        let step = signal_step(
            tag_of(&i, STATUS_TAG),
            tag_of(&i, DETAIL_TAG),
            i.state().and_then(|s| s.name()).map(|n| n.as_str()),
            i.state_reason().and_then(|r| r.message()),
        );
        match step {
            SignalStep::Done => return Ok(()),
            SignalStep::Again => tokio::time::sleep(every).await,
            SignalStep::Failed(m) => {
                return Err(Error::Local(format!(
                    "{}: builder {id}: {m} (its log: /var/log/cloud-init-output.log, or ec2 get-console-output)",
                    c.region
                )));
            }
        }
    }
    Err(Error::Local(format!(
        "{}: builder {id} gave no {STATUS_TAG} signal after {attempts} checks",
        c.region
    )))
}

/// The base AMI: the SSM parameter's value, or the newest available image matching name/owner.
pub async fn resolve_base_ami(c: &Clients, spec: &AmiSpec, b: &Bake) -> Result<String, Error> {
    if let Some(p) = &b.base_ami_ssm_parameter {
        let out = c
            .ssm
            .get_parameter()
            .name(p)
            .send()
            .await
            .map_err(|e| aws_err(&c.region, "ssm:GetParameter", p, &e))?;
        let v = out.parameter().and_then(|p| p.value()).unwrap_or_default();
        if !v.starts_with("ami-") {
            return Err(Error::Local(format!(
                "{}: ssm:GetParameter {p}: value {v:?} is not an AMI id",
                c.region
            )));
        }
        return Ok(v.to_string());
    }
    let (name, owner) = match (&b.base_ami_name, &b.base_ami_owner) {
        (Some(n), Some(o)) => (n, o),
        _ => return Err(Error::Local("bake: no base AMI source".into())),
    };
    let f = |k: &str, v: &str| ec2t::Filter::builder().name(k).values(v).build();
    let out = c
        .ec2
        .describe_images()
        .owners(owner)
        .filters(f("name", name))
        .filters(f("state", "available"))
        .filters(f("architecture", &spec.architecture))
        .send()
        .await
        .map_err(|e| aws_err(&c.region, "ec2:DescribeImages", name, &e))?;
    let mut images: Vec<&ec2t::Image> = out.images().iter().collect();
    images.sort_by_key(|i| i.creation_date().map(str::to_string));
    images.last().and_then(|i| i.image_id()).map(str::to_string).ok_or_else(|| {
        Error::Local(format!(
            "{}: no available {} image named {name} owned by {owner}",
            c.region, spec.architecture
        ))
    })
}

/// CreateImage's TagSpecifications: the content key on the image and, with `snapshots`, on the
/// snapshots it makes, from the start: IAM (iam-policy-bake.json) lets kv-ami tag, share and
/// delete only images and snapshots that carry it, and tag others only while creating them.
pub(crate) fn create_image_tags(content_key: &str, snapshots: bool) -> Vec<ec2t::TagSpecification> {
    let mut v = vec![aws::key_tags(ec2t::ResourceType::Image, content_key)];
    if snapshots {
        v.push(aws::key_tags(ec2t::ResourceType::Snapshot, content_key));
    }
    v
}

fn role_tags(job: &BakeJob, rt: ec2t::ResourceType) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder()
        .resource_type(rt)
        .tags(ec2t::Tag::builder().key(ROLE_TAG).value(ROLE_BUILDER).build())
        .tags(ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(&job.content_key).build())
        .tags(ec2t::Tag::builder().key(RUN_TAG).value(&job.run_id).build())
        .tags(ec2t::Tag::builder().key("Name").value(format!("kv-ami builder {}", job.run_id)).build())
        .build()
}

/// The whole bake; `interrupt` ends it early, and the cleanup stack runs in every case.
pub async fn bake(
    job: &BakeJob,
    opts: &RunOptions<'_>,
    interrupt: impl Future<Output = ()>,
) -> Result<Manifest, Error> {
    let s = &job.spec;
    let state = StateFile::for_run(opts.state_path, &job.content_key, "bake").map_err(Error::Local)?;
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
    let r = crate::with_cleanup(&cleanup, opts.log, bake_body(job, &ctx), interrupt).await;
    state.close();
    r
}

async fn bake_body(job: &BakeJob, ctx: &Ctx<'_>) -> Result<Manifest, Error> {
    let t0 = Instant::now();
    let s = ctx.spec;
    let b = &job.bake;
    let log = ctx.log;
    let every = ctx.every();
    let mut timings = BTreeMap::new();
    let mut custom = BTreeMap::new();
    custom.insert("content_key".to_string(), job.content_key.clone());
    let c = Clients::new(&s.region, ctx.target).await;
    let r = c.region.clone();

    let (ami, snaps, reused) = match aws::find_by_content_key(&c, &job.content_key).await? {
        Some((ami, snaps)) => {
            log(&format!("{r}: reusing {ami} (content key {})", job.content_key));
            aws::wait_image(&c, &ami, s.upload.wait_attempts, every).await?;
            (ami, snaps, true)
        }
        None => {
            let base = resolve_base_ami(&c, s, b).await?;
            log(&format!("{r}: base AMI {base}"));
            custom.insert("base_ami".to_string(), base.clone());
            let user_data = job.user_data().map_err(Error::Local)?;

            // Every object is on the stack before the first PutObject: a partial upload goes too.
            let t = Instant::now();
            let keys = job.keys();
            ctx.cleanup.push(
                &c,
                Undo::DeleteObjects { bucket: b.bucket.clone(), keys: keys.clone() },
                When::Always,
            );
            for (f, k) in job.files.iter().zip(&keys) {
                aws::put_file(&c, &b.bucket, k, &job.bundle_dir.join(&f.path)).await?;
            }
            log(&format!("{r}: bundle in s3://{}/{}/ ({} files)", b.bucket, job.prefix(), keys.len()));
            timings.insert("bundle_upload".to_string(), t.elapsed().as_secs_f64());

            let vpc = match &b.subnet_id {
                Some(sn) => {
                    let out = c
                        .ec2
                        .describe_subnets()
                        .subnet_ids(sn)
                        .send()
                        .await
                        .map_err(|e| aws_err(&r, "ec2:DescribeSubnets", sn, &e))?;
                    out.subnets().first().and_then(|x| x.vpc_id()).map(str::to_string)
                }
                None => None,
            };
            let sg = c
                .ec2
                .create_security_group()
                .group_name(job.security_group_name())
                .description("kv-ami builder: no ingress (the builder is never logged into)")
                .set_vpc_id(vpc)
                .tag_specifications(role_tags(job, ec2t::ResourceType::SecurityGroup))
                .send()
                .await
                .map_err(|e| aws_err(&r, "ec2:CreateSecurityGroup", &job.security_group_name(), &e))?;
            let sg = sg.group_id().unwrap_or_default().to_string();
            ctx.cleanup.push(&c, Undo::DeleteSecurityGroup(sg.clone()), When::Always);

            let t = Instant::now();
            // Before RunInstances: should its answer be lost, the builder is found by its tag.
            ctx.cleanup.push(&c, Undo::TerminateTagged(job.run_id.clone()), When::Always);
            let instance = run_builder(&c, job, &base, &sg, &user_data).await?;
            ctx.cleanup.push(&c, Undo::TerminateInstance(instance.clone()), When::Always);
            custom.insert("builder_instance".to_string(), instance.clone());
            log(&format!("{r}: builder {instance} launched; waiting for its {STATUS_TAG} tag"));
            wait_signal(&c, &instance, b.signal_attempts, Duration::from_secs(b.signal_interval_secs))
                .await?;
            log(&format!("{r}: builder {instance} signalled ok"));
            timings.insert("install".to_string(), t.elapsed().as_secs_f64());

            let t = Instant::now();
            if !b.spot {
                c.ec2
                    .stop_instances()
                    .instance_ids(&instance)
                    .send()
                    .await
                    .map_err(|e| aws_err(&r, "ec2:StopInstances", &instance, &e))?;
                wait_instance_state(&c, &instance, &["stopped"], s.upload.wait_attempts, every).await?;
            }
            let out = c
                .ec2
                .create_image()
                .instance_id(&instance)
                .name(job.name())
                .description(s.description.clone().unwrap_or_else(|| format!("kv-ami {}", job.content_key)))
                // A stopped instance needs no reboot; a spot one (cannot be stopped) is rebooted
                // by CreateImage for a consistent file system.
                .no_reboot(!b.spot)
                .set_tag_specifications(Some(create_image_tags(&job.content_key, !ctx.target.is_emulator())))
                .send()
                .await
                .map_err(|e| aws_err(&r, "ec2:CreateImage", &instance, &e))?;
            let ami = out.image_id().unwrap_or_default().to_string();
            let armed = ctx.cleanup.push(&c, Undo::DeregisterImage(ami.clone()), When::OnFailure);
            // Tag at once as well (as RegisterImage does): the content key is what a re-run finds.
            aws::tag(
                &c,
                std::slice::from_ref(&ami),
                &[(CONTENT_KEY_TAG.to_string(), job.content_key.clone())],
            )
            .await?;
            // Its snapshots too, as soon as DescribeImages lists them: the cleanup may delete only
            // snapshots carrying the content key (IAM). On AWS they carry it from CreateImage
            // already (and IAM lets kv-ami tag only what carries it); an emulator gets no snapshot
            // TagSpecifications (moto rejects them), so this is where they get it there. Publish
            // tags them again.
            let early = aws::image_snapshots(&c, &ami).await?;
            if !early.is_empty() {
                aws::tag(&c, &early, &[(CONTENT_KEY_TAG.to_string(), job.content_key.clone())]).await?;
                log(&format!("{r}: {ami}: snapshots {} tagged with the content key", early.join(",")));
            }
            ctx.record(|st| st.image_id = Some(ami.clone()));
            aws::wait_image(&c, &ami, s.upload.wait_attempts, every).await?;
            ctx.cleanup.disarm(armed);
            ctx.record(|st| st.image_available = true);
            timings.insert("create_image".to_string(), t.elapsed().as_secs_f64());
            log(&format!("{r}: created {ami} from {instance}"));
            let snaps = aws::image_snapshots(&c, &ami).await?;
            (ami, snaps, false)
        }
    };
    let regions =
        publish::publish(ctx, Source { clients: c, ami, snapshots: snaps, reused }, &mut timings).await?;
    Ok(publish::manifest(ctx, "kv-ami.builder", regions, custom, timings, t0))
}

async fn run_builder(
    c: &Clients,
    job: &BakeJob,
    base: &str,
    sg: &str,
    user_data: &str,
) -> Result<String, Error> {
    let b = &job.bake;
    let s = &job.spec;
    let metadata = ec2t::InstanceMetadataOptionsRequest::builder()
        .http_tokens(ec2t::HttpTokensState::Required)
        .http_endpoint(ec2t::InstanceMetadataEndpointState::Enabled)
        .http_put_response_hop_limit(1)
        .build();
    let mut req = c
        .ec2
        .run_instances()
        .image_id(base)
        .instance_type(ec2t::InstanceType::from(b.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
        .metadata_options(metadata)
        .enclave_options(ec2t::EnclaveOptionsRequest::builder().enabled(true).build())
        .iam_instance_profile(
            ec2t::IamInstanceProfileSpecification::builder().name(&b.instance_profile).build(),
        )
        .security_group_ids(sg)
        .set_subnet_id(b.subnet_id.clone())
        .instance_initiated_shutdown_behavior(if b.spot {
            ec2t::ShutdownBehavior::Terminate
        } else {
            ec2t::ShutdownBehavior::Stop
        })
        .tag_specifications(role_tags(job, ec2t::ResourceType::Instance))
        .tag_specifications(role_tags(job, ec2t::ResourceType::Volume));
    if b.spot {
        req = req.instance_market_options(
            ec2t::InstanceMarketOptionsRequest::builder()
                .market_type(ec2t::MarketType::Spot)
                .spot_options(
                    ec2t::SpotMarketOptions::builder()
                        .spot_instance_type(ec2t::SpotInstanceType::OneTime)
                        .instance_interruption_behavior(ec2t::InstanceInterruptionBehavior::Terminate)
                        .build(),
                )
                .build(),
        );
    }
    if s.volume.size_gib > 0 {
        req = req.block_device_mappings(
            ec2t::BlockDeviceMapping::builder()
                .device_name(&s.root_device_name)
                .ebs(
                    ec2t::EbsBlockDevice::builder()
                        .volume_size(s.volume.size_gib as i32)
                        .volume_type(ec2t::VolumeType::Gp3)
                        .iops(s.volume.iops)
                        .throughput(s.volume.throughput)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    let out = req.send().await.map_err(|e| aws_err(&c.region, "ec2:RunInstances", base, &e))?;
    out.instances().first().and_then(|i| i.instance_id()).map(str::to_string).ok_or_else(|| {
        Error::Local(format!("{}: ec2:RunInstances on {base}: no instance in the answer", c.region))
    })
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
            kinds(create_image_tags("ck", true)),
            vec![("image".to_string(), key.clone()), ("snapshot".to_string(), key.clone())]
        );
        assert_eq!(kinds(create_image_tags("ck", false)), vec![("image".to_string(), key)]);
    }

    #[test]
    fn signal_decisions() {
        assert_eq!(signal_step(Some("ok"), None, Some("running"), None), SignalStep::Done);
        assert_eq!(signal_step(None, None, Some("pending"), None), SignalStep::Again);
        assert_eq!(signal_step(None, None, Some("running"), None), SignalStep::Again);
        match signal_step(
            Some("failed"),
            Some("step install exit 1: envoy.yaml: sha256 ..."),
            Some("running"),
            None,
        ) {
            SignalStep::Failed(m) => assert!(m.contains("envoy.yaml: sha256"), "{m}"),
            other => panic!("{other:?}"),
        }
        match signal_step(None, None, Some("terminated"), Some("Server.SpotInstanceTermination")) {
            SignalStep::Failed(m) => {
                assert!(m.contains("terminated") && m.contains("SpotInstanceTermination"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(signal_step(Some("maybe"), None, None, None), SignalStep::Failed(_)));
    }
}
