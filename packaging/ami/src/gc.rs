//! `kv-ami gc`: deregister a channel's old builds in every region they were copied to, with
//! their snapshots; and `kv-ami republish` ([`republish`]): renew the deprecation time of the
//! builds gc keeps (still in use), so that they do not go deprecated while a fleet runs them. A build is one content key; its images (the source and every copy) carry
//! `kv-ami:content-key` and `kv-ami:channel`, and nothing without both is ever a candidate.
//! Kept: the build any region's `latest` parameter points at, the `keep` newest builds, and every
//! build younger than the grace period. [`plan`] decides (pure, unit-tested); [`gc`] lists,
//! decides and, unless it is a dry run, deletes.

use crate::aws::{Clients, Target};
use crate::error::Error;
use crate::images::{self, ChannelImage};
use crate::spec::AmiSpec;
use crate::ssm;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One build (content key) and where its images are: region -> image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub content_key: String,
    /// The oldest CreationDate of its images (the source image's, normally).
    pub created: i64,
    pub images: BTreeMap<String, ChannelImage>,
    /// Some image of it is tagged `kv-ami:smoke = failed`: only the grace period keeps it.
    pub failed_smoke: bool,
}

/// Why a build stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kept {
    Latest,
    Newest,
    Grace,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Newest first.
    pub kept: Vec<(Build, Vec<Kept>)>,
    /// Newest first.
    pub delete: Vec<Build>,
}

/// Groups the images of every region by content key.
pub fn builds(per_region: &BTreeMap<String, Vec<ChannelImage>>) -> Vec<Build> {
    let mut by_key: BTreeMap<String, Build> = BTreeMap::new();
    for (region, images) in per_region {
        for i in images {
            let b = by_key.entry(i.content_key.clone()).or_insert_with(|| Build {
                content_key: i.content_key.clone(),
                created: i.created,
                images: BTreeMap::new(),
                failed_smoke: false,
            });
            b.created = b.created.min(i.created);
            b.failed_smoke |= i.failed_smoke;
            b.images.insert(region.clone(), i.clone());
        }
    }
    by_key.into_values().collect()
}

/// Which builds stay and which go. `latest`: the content keys any region's `latest` names. A
/// build that failed its smoke test is never one of the `keep` newest (nor does it take a good
/// build's place among them); only the grace period keeps it.
pub fn plan(mut all: Vec<Build>, latest: &BTreeSet<String>, keep: usize, grace_secs: i64, now: i64) -> Plan {
    // Newest first; the content key breaks ties so the plan does not depend on listing order.
    all.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.content_key.cmp(&a.content_key)));
    let mut p = Plan::default();
    let mut good = 0;
    for b in all {
        let mut why = Vec::new();
        if latest.contains(&b.content_key) && !b.failed_smoke {
            why.push(Kept::Latest);
        }
        if !b.failed_smoke {
            if good < keep {
                why.push(Kept::Newest);
            }
            good += 1;
        }
        if now - b.created < grace_secs {
            why.push(Kept::Grace);
        }
        if why.is_empty() {
            p.delete.push(b);
        } else {
            p.kept.push((b, why));
        }
    }
    p
}

/// What `kv-ami gc` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub channel: String,
    pub dry_run: bool,
    pub kept: Vec<ReportBuild>,
    /// Deleted (or, in a dry run, to be deleted).
    pub deleted: Vec<ReportBuild>,
}

#[derive(Debug, Serialize)]
pub struct ReportBuild {
    pub content_key: String,
    pub created: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<Kept>,
    /// Failed its smoke test (never published).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed_smoke: bool,
    /// region -> (image, its snapshots)
    pub images: BTreeMap<String, (String, Vec<String>)>,
}

fn report_build(b: &Build, why: Vec<Kept>) -> ReportBuild {
    ReportBuild {
        content_key: b.content_key.clone(),
        created: b.created,
        why,
        failed_smoke: b.failed_smoke,
        images: b
            .images
            .iter()
            .map(|(r, i)| (r.clone(), (i.image_id.clone(), i.snapshots.clone())))
            .collect(),
    }
}

/// Lists the channel in every region of the spec and decides (Describe/Get calls only).
async fn survey(
    spec: &AmiSpec,
    target: &Target,
    channel: &str,
    keep: usize,
    grace_secs: i64,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(BTreeMap<String, Clients>, Plan), Error> {
    let mut clients = BTreeMap::new();
    let mut per_region = BTreeMap::new();
    let mut latest_ids = BTreeMap::new();
    let latest_name = spec.latest_parameter(channel);
    for r in spec.all_regions() {
        let c = Clients::new(&r, target).await;
        per_region.insert(r.clone(), images::of_channel(&c, channel).await?);
        if let Some(id) = ssm::get_optional(&c, &latest_name).await? {
            latest_ids.insert(r.clone(), id);
        }
        clients.insert(r, c);
    }
    // `latest` protects its whole build, in every region, through the content key.
    let mut latest = BTreeSet::new();
    for (r, id) in &latest_ids {
        match per_region[r].iter().find(|i| &i.image_id == id) {
            Some(i) => {
                latest.insert(i.content_key.clone());
            }
            None => log(&format!(
                "{r}: {latest_name} = {id} is not an image of channel {channel}: protects nothing"
            )),
        }
    }
    let p = plan(builds(&per_region), &latest, keep, grace_secs, crate::spec::now_unix() as i64);
    Ok((clients, p))
}

/// List the channel in every region of the spec, decide, and (unless `dry_run`: then only
/// Describe/Get calls are made) deregister what goes, with its snapshots, region by region. A
/// failing deletion does not stop the others; the error names each.
pub async fn gc(
    spec: &AmiSpec,
    target: &Target,
    channel: &str,
    keep: usize,
    grace_secs: i64,
    dry_run: bool,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Report, Error> {
    let (clients, p) = survey(spec, target, channel, keep, grace_secs, log).await?;
    let mut failed = Vec::new();
    for b in &p.delete {
        let short = &b.content_key[..12.min(b.content_key.len())];
        for (r, i) in &b.images {
            // What the image lists, and whatever else carries the build's two tags there.
            let mut snaps: BTreeSet<String> = i.snapshots.iter().cloned().collect();
            snaps.extend(images::snapshots_of_build(&clients[r], &b.content_key, channel).await?);
            let snaps: Vec<String> = snaps.into_iter().collect();
            let what = format!("{r}: {} (build {short}, snapshots {})", i.image_id, snaps.join(","));
            if dry_run {
                log(&format!("dry run: would deregister {what}"));
                continue;
            }
            match images::deregister_listed(&clients[r], &i.image_id, &snaps).await {
                Ok(()) => log(&format!("deregistered {what}")),
                Err(e) => {
                    log(&format!("FAILED {what}: {e}"));
                    failed.push(e.to_string());
                    // The parameter stays while its image does.
                    continue;
                }
            }
            if let Err(e) =
                delete_build_parameter(spec, &clients[r], channel, &b.content_key, &i.image_id, log).await
            {
                log(&format!("FAILED {r}: build parameter of {short}: {e}"));
                failed.push(e.to_string());
            }
        }
        if dry_run {
            for (r, i) in &b.images {
                let name = spec.build_parameter(channel, &b.content_key);
                if ssm::get_optional(&clients[r], &name).await?.as_deref() == Some(i.image_id.as_str()) {
                    log(&format!("dry run: would delete {r}: {name}"));
                }
            }
        }
    }
    if !failed.is_empty() {
        return Err(Error::Input(format!("gc: {} deletions failed: {}", failed.len(), failed.join("; "))));
    }
    Ok(Report {
        channel: channel.to_string(),
        dry_run,
        kept: p.kept.iter().map(|(b, why)| report_build(b, why.clone())).collect(),
        deleted: p.delete.iter().map(|b| report_build(b, Vec::new())).collect(),
    })
}

/// The build parameter `SSM_PREFIX/CHANNEL/builds/<key 12>` of a deregistered image, when it names
/// that image (one that names another image, or none, is left alone and logged).
async fn delete_build_parameter(
    spec: &AmiSpec,
    c: &Clients,
    channel: &str,
    content_key: &str,
    image_id: &str,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), ssm::Error> {
    let name = spec.build_parameter(channel, content_key);
    match ssm::get_optional(c, &name).await? {
        Some(v) if v == image_id => {
            ssm::delete(c, &name).await?;
            log(&format!("deleted {}: {name}", c.region));
        }
        Some(v) => log(&format!("{}: {name} names {v}, not {image_id}: left alone", c.region)),
        None => {}
    }
    Ok(())
}

/// `kv-ami republish`: every image (every region) of the builds [`gc`] would keep with the same
/// `keep` and grace period gets `ec2:EnableImageDeprecation` at now + `deprecate_in_secs`. With
/// `dry_run` only the Describe/Get calls are made. Returns region -> [(image, deprecate_at)].
#[allow(clippy::too_many_arguments)]
pub async fn republish(
    spec: &AmiSpec,
    target: &Target,
    channel: &str,
    keep: usize,
    grace_secs: i64,
    deprecate_in_secs: u64,
    dry_run: bool,
    log: &(dyn Fn(&str) + Sync),
) -> Result<BTreeMap<String, Vec<(String, u64)>>, Error> {
    let (clients, p) = survey(spec, target, channel, keep, grace_secs, log).await?;
    let at = crate::spec::now_unix() + deprecate_in_secs;
    let mut done: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    // A failed build kept by the grace period only is not in use: it is not renewed.
    for (b, why) in p.kept.iter().filter(|(b, _)| !b.failed_smoke) {
        for (r, i) in &b.images {
            let what = format!(
                "{r}: {} (build {}, kept: {why:?}) deprecate_at={at}",
                i.image_id,
                &b.content_key[..12.min(b.content_key.len())]
            );
            if dry_run {
                log(&format!("dry run: would renew {what}"));
            } else {
                images::deprecate(&clients[r], &i.image_id, at).await?;
                log(&format!("renewed {what}"));
            }
            done.entry(r.clone()).or_default().push((i.image_id.clone(), at));
        }
    }
    Ok(done)
}

/// Dry-run lines: the calls `gc` makes (Describe/Get always; the mutating ones only without
/// `--dry-run`).
pub fn planned_lines(spec: &AmiSpec, channel: &str) -> Vec<String> {
    let mut v = Vec::new();
    for r in spec.all_regions() {
        v.push(format!(
            "{r} ec2:DescribeImages owners=self filter tag:{}={channel} (with a content key)",
            crate::spec::CHANNEL_TAG
        ));
        v.push(format!("{r} ssm:GetParameter {}", spec.latest_parameter(channel)));
    }
    for r in spec.all_regions() {
        v.push(format!(
            "{r} ec2:DescribeSnapshots owner=self filter tag:{}=<key>,tag:{}={channel} (each build that goes)",
            crate::spec::CONTENT_KEY_TAG,
            crate::spec::CHANNEL_TAG
        ));
        v.push(format!("{r} ec2:DeregisterImage (each image of a build that goes)"));
        v.push(format!("{r} ec2:DeleteSnapshot (the snapshots it listed)"));
        v.push(format!(
            "{r} ssm:GetParameter {} (each build that goes)",
            spec.build_parameter(channel, "<key>")
        ));
        v.push(format!(
            "{r} ssm:DeleteParameter {} (when it names the deregistered image)",
            spec.build_parameter(channel, "<key>")
        ));
    }
    v
}

/// Dry-run lines of [`republish`] (after the same Describe/Get calls as gc).
pub fn planned_republish(spec: &AmiSpec) -> Vec<String> {
    spec.all_regions()
        .iter()
        .map(|r| format!("{r} ec2:EnableImageDeprecation (each image of a build still in use)"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(key: &str, created: i64, regions: &[&str]) -> Build {
        let images = regions
            .iter()
            .map(|r| {
                let i = ChannelImage {
                    image_id: format!("ami-{key}-{r}"),
                    content_key: key.into(),
                    created,
                    snapshots: vec![format!("snap-{key}-{r}")],
                    failed_smoke: false,
                };
                (r.to_string(), i)
            })
            .collect();
        Build { content_key: key.into(), created, images, failed_smoke: false }
    }

    fn keys(v: &[Build]) -> Vec<&str> {
        v.iter().map(|b| b.content_key.as_str()).collect()
    }

    #[test]
    fn keeps_latest_the_n_newest_and_the_young_and_deletes_the_rest() {
        let day = 86_400;
        let now = 100 * day;
        let all = vec![
            b("k1", 10 * day, &["e", "w"]),
            b("k2", 20 * day, &["e"]),
            b("k3", 30 * day, &["e", "w"]),
            b("k4", 99 * day, &["e", "w"]),
        ];
        let latest = BTreeSet::from(["k1".to_string()]);
        let p = plan(all.clone(), &latest, 1, 7 * day, now);
        assert_eq!(keys(&p.delete), vec!["k3", "k2"], "newest first");
        let kept: Vec<(&str, Vec<Kept>)> =
            p.kept.iter().map(|(b, w)| (b.content_key.as_str(), w.clone())).collect();
        assert_eq!(kept, vec![("k4", vec![Kept::Newest, Kept::Grace]), ("k1", vec![Kept::Latest])]);
        // keep 0: only latest and the grace period protect.
        let p = plan(all.clone(), &latest, 0, 7 * day, now);
        assert_eq!(keys(&p.delete), vec!["k3", "k2"]);
        // A long grace period keeps everything; no latest and keep 0 with no grace deletes all.
        assert!(plan(all.clone(), &latest, 0, 1000 * day, now).delete.is_empty());
        assert_eq!(plan(all, &BTreeSet::new(), 0, 0, now).delete.len(), 4);
    }

    #[test]
    fn a_build_that_failed_its_smoke_test_is_kept_by_the_grace_period_only() {
        let day = 86_400;
        let now = 100 * day;
        let mut failed = b("bad", 99 * day, &["e"]);
        failed.failed_smoke = true;
        let all = vec![b("k1", 10 * day, &["e"]), b("k2", 20 * day, &["e"]), failed];
        // keep 2: the failed build is the newest, but the two good ones are what keep keeps.
        let latest = BTreeSet::from(["bad".to_string()]);
        let p = plan(all.clone(), &latest, 2, 0, now);
        assert_eq!(keys(&p.delete), vec!["bad"]);
        let kept: Vec<&str> = p.kept.iter().map(|(b, _)| b.content_key.as_str()).collect();
        assert_eq!(kept, vec!["k2", "k1"]);
        // Within the grace period it stays, for that reason only.
        let p = plan(all, &latest, 2, 7 * day, now);
        assert_eq!(p.kept[0].0.content_key, "bad");
        assert_eq!(p.kept[0].1, vec![Kept::Grace]);
    }

    #[test]
    fn builds_group_regions_by_content_key_and_take_the_oldest_creation() {
        let img = |key: &str, created: i64| ChannelImage {
            image_id: format!("ami-{key}{created}"),
            content_key: key.into(),
            created,
            snapshots: vec![],
            failed_smoke: false,
        };
        let per_region = BTreeMap::from([
            ("eu-west-1".to_string(), vec![img("a", 5), img("b", 9)]),
            ("us-east-1".to_string(), vec![img("a", 3)]),
        ]);
        let all = builds(&per_region);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].content_key.as_str(), all[0].created, all[0].images.len()), ("a", 3, 2));
        assert_eq!((all[1].content_key.as_str(), all[1].created, all[1].images.len()), ("b", 9, 1));
    }
}
