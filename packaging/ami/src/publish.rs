//! After the image exists in the source region, for both paths (raw import and builder bake):
//! the smoke test ([`crate::smoke`]), then copies into the other regions in parallel, then per
//! region tags, launch permissions, deprecation and the SSM parameters (the build's at once, the
//! channel's `latest` only after a passed smoke test); [`promote`] moves `latest` explicitly; and
//! the Packer-shaped manifest. Also the matching lines of the dry-run plan, so plan and code
//! cannot drift apart.

use crate::aws::Clients;
use crate::cleanup::{Undo, When};
use crate::error::Error;
use crate::images::{self, Sharing};
use crate::output::{Build, Manifest, RegionResult};
use crate::run::Ctx;
use crate::smoke;
use crate::spec::{AmiSpec, CHANNEL_TAG, CONTENT_KEY_TAG, OnFailure, SMOKE_TAG};
use crate::ssm;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

/// The finished image in the source region.
pub struct Source {
    pub clients: Clients,
    pub ami: String,
    pub snapshots: Vec<String>,
    pub reused: bool,
}

/// The smoke test in the source region (when `smoke` is given), then [`publish`]: nothing is
/// copied, shared or written to SSM unless it passed. `latest` moves only after a passed test.
pub async fn test_and_publish(
    ctx: &Ctx<'_>,
    src: Source,
    smoke: Option<&smoke::Prepared>,
    timings: &mut BTreeMap<String, f64>,
) -> Result<BTreeMap<String, RegionResult>, Error> {
    let passed = match smoke {
        Some(p) => {
            let t = Instant::now();
            if let Err(e) = crate::smoke_test::run(ctx, &src.clients, &src.ami, p).await {
                if let Error::Smoke(_) = &e {
                    mark_failed(ctx, &src).await;
                }
                return Err(e);
            }
            timings.insert("smoke_test".to_string(), t.elapsed().as_secs_f64());
            true
        }
        None => {
            (ctx.log)(&format!(
                "warning: {}: smoke test skipped: {} is published without booting it{}",
                ctx.spec.region,
                src.ami,
                match &ctx.spec.channel {
                    Some(c) => format!(
                        "; {} is not moved (kv-ami promote --channel {c} --ami {} moves it)",
                        ctx.spec.latest_parameter(c),
                        src.ami
                    ),
                    None => String::new(),
                }
            ));
            false
        }
    };
    publish(ctx, src, passed, timings).await
}

/// An image that failed its smoke test stays unpublished in the build region (a re-run reuses
/// it and boots it again); `kv-ami:smoke = failed` and its channel on image and snapshots let
/// `kv-ami gc` remove it after the grace period, and make `promote` refuse it. A failed tagging
/// is a warning: the smoke test's error is the run's.
async fn mark_failed(ctx: &Ctx<'_>, src: &Source) {
    let mut tags = vec![(SMOKE_TAG.to_string(), "failed".to_string())];
    if let Some(c) = &ctx.spec.channel {
        tags.push((CHANNEL_TAG.to_string(), c.clone()));
    }
    let mut all = vec![src.ami.clone()];
    all.extend(src.snapshots.iter().cloned());
    let r = &src.clients.region;
    match images::tag(&src.clients, &all, &tags).await {
        Ok(()) => (ctx.log)(&format!("{r}: {} marked {SMOKE_TAG}=failed (kv-ami gc removes it)", src.ami)),
        Err(e) => {
            (ctx.log)(&format!("warning: {r}: {} failed its smoke test, but tagging it failed: {e}", src.ami))
        }
    }
}

/// Copies, then tags / sharing / deprecation / SSM in every region. A copy that fails does not
/// stop the others: every region runs to its end, finished copies are kept (a re-run reuses them
/// through the content key), the unfinished one is deregistered by the cleanup stack, and the
/// error names each failed region.
/// `smoke_passed`: the channel's `latest` is moved too (after every region's other steps).
pub async fn publish(
    ctx: &Ctx<'_>,
    src: Source,
    smoke_passed: bool,
    timings: &mut BTreeMap<String, f64>,
) -> Result<BTreeMap<String, RegionResult>, Error> {
    let s = ctx.spec;
    let key = ctx.content_key;
    let bound = ctx.bound();
    let mut regions = BTreeMap::new();
    let src_ami = src.ami.clone();
    regions.insert(
        s.region.clone(),
        (src.clients, RegionResult { ami_id: src.ami, snapshot_ids: src.snapshots, reused: src.reused }),
    );

    let t = Instant::now();
    let copies = s.copy_to.iter().map(|r| {
        let (src_ami, name) = (src_ami.clone(), ctx.name());
        async move {
            let c = Clients::new(r, ctx.target).await;
            let variant = s.variant.as_deref();
            let (ami, reused) = match images::find_by_content_key(&c, key, variant).await? {
                Some((ami, _)) => (ami, true),
                None => {
                    // The spec's region, encryption, KMS key for this region and variant tag.
                    let ami = images::copy(&c, s, &src_ami, &name, key).await?;
                    (ami, false)
                }
            };
            // Armed until available: a copy that fails or never finishes is deregistered.
            let armed =
                (!reused).then(|| ctx.cleanup.push(&c, Undo::DeregisterImage(ami.clone()), When::OnFailure));
            images::wait_image(&c, &ami, bound).await?;
            if let Some(a) = armed {
                ctx.cleanup.disarm(a);
            }
            ctx.record(|st| {
                st.copies.insert(r.clone(), ami.clone());
            });
            let snaps = images::image_snapshots(&c, &ami).await?;
            Ok::<_, Error>((r.clone(), c, RegionResult { ami_id: ami, snapshot_ids: snaps, reused }))
        }
    });
    let mut failures = Vec::new();
    for (r, outcome) in s.copy_to.iter().zip(futures::future::join_all(copies).await) {
        match outcome {
            Ok((r, c, res)) => {
                (ctx.log)(&format!(
                    "{r}: {} {}",
                    if res.reused { "reusing" } else { "copied to" },
                    res.ami_id
                ));
                regions.insert(r, (c, res));
            }
            Err(e) => {
                let msg = e.to_string();
                failures.push(if msg.contains(r.as_str()) { msg } else { format!("{r}: {msg}") });
            }
        }
    }
    if !failures.is_empty() {
        let kept: Vec<String> = regions.iter().map(|(r, (_, res))| format!("{r} {}", res.ami_id)).collect();
        return Err(Error::Copies { failed: failures, total: s.copy_to.len(), kept });
    }
    if !s.copy_to.is_empty() {
        timings.insert("copy".to_string(), t.elapsed().as_secs_f64());
    }

    let t = Instant::now();
    let mut tags = s.image_tags(key);
    // Overwrites a `failed` left by an earlier run's test of the same image.
    tags.push((SMOKE_TAG.to_string(), if smoke_passed { "passed" } else { "skipped" }.to_string()));
    let deprecate_at = match &s.deprecate_at {
        Some(at) => Some(crate::spec::deprecation_time(at, crate::spec::now_unix()).map_err(Error::Input)?),
        None => None,
    };
    let finish = regions.values().map(|(c, res)| {
        let tags = &tags;
        async move {
            let mut all = vec![res.ami_id.clone()];
            all.extend(res.snapshot_ids.iter().cloned());
            images::tag(c, &all, tags).await?;
            images::share(c, &res.ami_id, &res.snapshot_ids, &Sharing::of(s)).await?;
            if let Some(at) = deprecate_at {
                images::deprecate(c, &res.ami_id, at).await?;
            }
            if let Some(p) = &s.ssm_parameter {
                ssm::put_image_id(c, p, &res.ami_id).await?;
            }
            if let Some(ch) = &s.channel {
                ssm::put_image_id(c, &s.build_parameter(ch, key), &res.ami_id).await?;
            }
            Ok::<_, Error>(())
        }
    });
    futures::future::try_join_all(finish).await?;
    // Second step, only once every region is published: `latest` never points at an image that
    // some region lacks or that did not pass the smoke test.
    if let (Some(ch), true) = (&s.channel, smoke_passed) {
        let latest = s.latest_parameter(ch);
        let moves = regions.values().map(|(c, res)| ssm::put_image_id(c, &latest, &res.ami_id));
        futures::future::try_join_all(moves).await?;
        (ctx.log)(&format!("{latest} -> this build in {} regions", regions.len()));
    }
    ctx.record(|st| st.published = true);
    timings.insert("publish".to_string(), t.elapsed().as_secs_f64());
    Ok(regions.into_iter().map(|(r, (_, res))| (r, res)).collect())
}

/// `kv-ami promote`: the channel's `latest` in every region of the spec moves to the image of
/// `ami` (an image in the build region carrying the content-key tag) and its copies, found by
/// the content key. Every region is looked up before the first write: a region without the
/// image fails the command and nothing is written. Returns region -> AMI id.
pub async fn promote(
    spec: &AmiSpec,
    target: &crate::aws::Target,
    channel: &str,
    ami: &str,
    log: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<String, String>, Error> {
    let src = Clients::new(&spec.region, target).await;
    let kv = images::kv_tags_of(&src, ami).await?;
    let refuse = |why: String| Error::Input(format!("promote {ami}: {}: {why}", spec.region));
    if kv.smoke.as_deref() == Some("failed") {
        return Err(refuse(format!("it failed its smoke test ({SMOKE_TAG}=failed): never promoted")));
    }
    if kv.variant != spec.variant {
        return Err(refuse(format!(
            "its variant is {}, the spec's {} (--variant)",
            kv.variant.as_deref().unwrap_or("none"),
            spec.variant.as_deref().unwrap_or("none")
        )));
    }
    let key = kv.content_key;
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for r in spec.all_regions() {
        let c = if r == spec.region { src.clone() } else { Clients::new(&r, target).await };
        match images::find_by_content_key(&c, &key, spec.variant.as_deref()).await? {
            Some((id, _)) if r != spec.region || id == ami => {
                found.insert(r.clone(), (c, id));
            }
            Some((id, _)) => missing.push(format!("{r}: the content key names {id}, not {ami}")),
            None => missing.push(format!("{r}: no image with content key {key}")),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "promote {ami} to {}: nothing written: {}",
            spec.latest_parameter(channel),
            missing.join("; ")
        )));
    }
    let latest = spec.latest_parameter(channel);
    for (r, (c, id)) in &found {
        ssm::put_image_id(c, &latest, id).await?;
        log(&format!("{r}: {latest} -> {id}"));
    }
    Ok(found.into_iter().map(|(r, (_, id))| (r, id)).collect())
}

/// Dry-run lines of [`promote`].
pub fn planned_promote(s: &AmiSpec, channel: &str, ami: &str) -> Vec<String> {
    let mut v = vec![format!("{} ec2:DescribeImages {ami} (its {CONTENT_KEY_TAG} tag)", s.region)];
    for r in s.all_regions() {
        v.push(format!("{r} ec2:DescribeImages owners=self filter tag:{CONTENT_KEY_TAG}=<key of {ami}>"));
    }
    for r in s.all_regions() {
        v.push(format!(
            "{r} ssm:PutParameter {} type=String data_type=aws:ec2:image",
            s.latest_parameter(channel)
        ));
    }
    v
}

/// Dry-run lines of the smoke test (before any copy), when the run has one.
pub fn planned_smoke_lines(s: &AmiSpec, key: &str) -> Vec<String> {
    match &s.smoke_test {
        Some(t) if s.smoke_test_on() => {
            let mut v = smoke::planned_lines(s, t, key);
            let channel = s.channel.as_ref().map(|c| format!(",{CHANNEL_TAG}={c}")).unwrap_or_default();
            v.push(format!(
                "{} ec2:CreateTags image+snapshots {SMOKE_TAG}=failed{channel} (only if the smoke test fails; the run stops there)",
                s.region
            ));
            v
        }
        _ => vec![format!(
            "# smoke test skipped (--skip-smoke-test): the image is not booted; latest is not moved"
        )],
    }
}

/// Dry-run lines of the smoke-test instance's teardown (always), when the run has one.
pub fn planned_smoke_teardown(s: &AmiSpec, key: &str) -> Vec<String> {
    if s.smoke_test_on() { smoke::planned_teardown(s, key) } else { Vec::new() }
}

/// The Packer-shaped manifest of a finished run.
pub fn manifest(
    ctx: &Ctx<'_>,
    builder_type: &str,
    regions: BTreeMap<String, RegionResult>,
    custom: BTreeMap<String, String>,
    mut timings: BTreeMap<String, f64>,
    t0: Instant,
) -> Manifest {
    let s = ctx.spec;
    let key = ctx.content_key;
    let mut custom = custom;
    if let Some(v) = &s.variant {
        custom.insert("variant".to_string(), v.clone());
    }
    timings.insert("total".to_string(), t0.elapsed().as_secs_f64());
    let artifact_id = s
        .all_regions()
        .iter()
        .filter_map(|r| regions.get(r).map(|res| format!("{r}:{}", res.ami_id)))
        .collect::<Vec<_>>()
        .join(",");
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // No UUID crate: the run id is derived from the content key and the time, unique enough to
    // tell runs apart in the manifest.
    let run_id = hex::encode(&Sha256::digest(format!("{key}{now}{t0:?}"))[..16]);
    Manifest {
        builds: vec![Build {
            name: ctx.name(),
            builder_type: builder_type.into(),
            build_time: now,
            artifact_id,
            packer_run_uuid: run_id.clone(),
            custom_data: custom,
            regions,
            timings_seconds: timings,
        }],
        last_run_uuid: run_id,
    }
}

/// Dry-run lines of [`publish`] (after the source image is available).
pub fn planned_lines(s: &AmiSpec, key: &str) -> Vec<String> {
    let src = &s.region;
    let name = s.ami_name(key);
    let mut v = Vec::new();
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
        v.push(format!(
            "{r} ec2:DescribeImages (until available, fail on failed, at most {} checks)",
            s.upload.wait_attempts
        ));
    }
    let mut keys: Vec<String> = s.image_tags(key).into_iter().map(|(k, _)| k).collect();
    keys.push(SMOKE_TAG.to_string());
    for r in s.all_regions() {
        v.push(format!("{r} ec2:CreateTags image+snapshots {}", keys.join(",")));
        if !s.share_with.is_empty() {
            let a = s.share_with.join(",");
            v.push(format!("{r} ec2:ModifySnapshotAttribute createVolumePermission add {a}"));
        }
        if s.shares() {
            let mut to: Vec<String> = s.share_with.clone();
            to.extend(s.share_with_organizations.iter().cloned());
            to.extend(s.share_with_ous.iter().cloned());
            if s.public {
                to.push("group=all".into());
            }
            v.push(format!("{r} ec2:ModifyImageAttribute launchPermission add {}", to.join(",")));
        }
        if let Some(at) = &s.deprecate_at {
            v.push(format!("{r} ec2:EnableImageDeprecation deprecate_at={at}"));
        }
        if let Some(p) = &s.ssm_parameter {
            v.push(format!("{r} ssm:PutParameter {p} type=String data_type=aws:ec2:image"));
        }
        if let Some(ch) = &s.channel {
            v.push(format!(
                "{r} ssm:PutParameter {} type=String data_type=aws:ec2:image",
                s.build_parameter(ch, key)
            ));
        }
    }
    if let (Some(ch), true) = (&s.channel, s.smoke_test_on()) {
        for r in s.all_regions() {
            v.push(format!(
                "{r} ssm:PutParameter {} type=String data_type=aws:ec2:image (after every region, smoke test passed)",
                s.latest_parameter(ch)
            ));
        }
    }
    v
}

/// Dry-run lines of the cleanup of unfinished products (nothing with `on_failure = "keep"`).
pub fn planned_failure_lines(s: &AmiSpec, snapshot_in_source: bool) -> Vec<String> {
    if s.on_failure == OnFailure::Keep {
        return vec![format!("# on failure: unfinished snapshots and images are kept (on_failure = keep)")];
    }
    let mut v = Vec::new();
    for r in s.copy_to.iter().rev() {
        v.push(format!("{r} ec2:DeregisterImage (on failure: a copy not yet available)"));
        v.push(format!("{r} ec2:DeleteSnapshot (on failure: that copy's snapshots)"));
    }
    v.push(format!("{} ec2:DeregisterImage (on failure: the image not yet available)", s.region));
    let what = if snapshot_in_source {
        "the snapshot not yet in an available image"
    } else {
        "the image's snapshots"
    };
    v.push(format!("{} ec2:DeleteSnapshot (on failure: {what})", s.region));
    v
}
