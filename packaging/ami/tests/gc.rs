//! `kv-ami gc` against a real moto_server on loopback: four builds of channel `stable` in two
//! regions (imports with a copy), `latest` promoted to the oldest, one build of the same
//! account without a channel and one image without any kv-ami tag. The dry run decides and
//! deletes nothing; the real run deregisters exactly the builds that go, in both regions, with
//! their snapshots, and nothing else.

mod common;

use common::{Log, Moto, bundle_manifest, never, opts, sparse_image};
use kv_ami::aws::Clients;
use kv_ami::spec::AmiSpec;
use kv_ami::{Job, Manifest, run};
use std::collections::BTreeSet;

fn spec(channel: &str) -> AmiSpec {
    let mut s = AmiSpec::parse(&format!(
        "name = \"kv-{{content_key}}\"\nregion = \"us-east-1\"\ncopy_to = [\"eu-west-1\"]\n{channel}\n\
         [upload]\nworkers = 2\nwait_interval_secs = 0\n"
    ))
    .unwrap();
    s.skip_smoke_test = true;
    s
}

async fn build(moto: &Moto, dir: &std::path::Path, name: &str, channel: &str) -> Manifest {
    let d = dir.join(name);
    std::fs::create_dir(&d).unwrap();
    let image = sparse_image(&d, 4096, &[0]);
    let job = Job::prepare(spec(channel), &image, &bundle_manifest(&d, name)).unwrap();
    let target = moto.target();
    let quiet = |_: &str| {};
    let m = run(&job, &opts(&target, &quiet), never()).await.unwrap();
    // moto's CreationDate has whole seconds: one build per second keeps them ordered.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    m
}

async fn images(c: &Clients) -> BTreeSet<String> {
    let out = c.ec2.describe_images().owners("self").send().await.unwrap();
    out.images().iter().filter_map(|i| i.image_id()).map(str::to_string).collect()
}

/// The channel's build parameters in this region: name -> value.
async fn build_parameters(c: &Clients) -> std::collections::BTreeMap<String, String> {
    let out = c.ssm.get_parameters_by_path().path("/kv/ami/stable/builds").send().await.unwrap();
    out.parameters().iter().map(|p| (p.name().unwrap().to_string(), p.value().unwrap().to_string())).collect()
}

async fn snapshots(c: &Clients) -> BTreeSet<String> {
    let out = c.ec2.describe_snapshots().owner_ids("self").send().await.unwrap();
    out.snapshots().iter().filter_map(|s| s.snapshot_id()).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_latest_and_the_newest_deletes_the_rest_everywhere_and_touches_nothing_untagged() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let target = moto.target();
    let east = Clients::new("us-east-1", &target).await;
    let west = Clients::new("eu-west-1", &target).await;

    // Not a candidate: a build without a channel, and an image without any kv-ami tag.
    let no_channel = build(&moto, dir.path(), "b0", "").await;
    let vol = east.ec2.create_volume().availability_zone("us-east-1a").size(1).send().await.unwrap();
    let snap = east.ec2.create_snapshot().volume_id(vol.volume_id().unwrap()).send().await.unwrap();
    let untagged = east
        .ec2
        .register_image()
        .name("somebody-elses")
        .root_device_name("/dev/xvda")
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(snap.snapshot_id().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();

    let stable = "channel = \"stable\"";
    let b: Vec<Manifest> = {
        let mut v = Vec::new();
        for n in ["b1", "b2", "b3", "b4"] {
            v.push(build(&moto, dir.path(), n, stable).await);
        }
        v
    };
    let ami = |i: usize, r: &str| b[i].builds[0].regions[r].ami_id.clone();
    let snaps = |i: usize, r: &str| b[i].builds[0].regions[r].snapshot_ids.clone();
    let s = spec(stable);
    let log = Log::default();
    let push = |l: &str| log.push(l);
    kv_ami::publish::promote(&s, &target, "stable", &ami(0, "us-east-1"), &push).await.unwrap();
    let before = (images(&east).await, images(&west).await, snapshots(&east).await, snapshots(&west).await);
    let params_before = (build_parameters(&east).await, build_parameters(&west).await);
    assert_eq!(params_before.0.len(), 4, "one build parameter per build: {params_before:?}");

    // Dry run: the same decision, nothing deregistered or deleted.
    let r = kv_ami::gc::gc(&s, &target, "stable", 1, 0, true, &push).await.unwrap();
    let deleted: Vec<&str> = r.deleted.iter().map(|d| d.content_key.as_str()).collect();
    assert_eq!(
        deleted,
        vec![
            b[2].builds[0].custom_data["content_key"].as_str(),
            b[1].builds[0].custom_data["content_key"].as_str()
        ]
    );
    assert!(r.dry_run);
    let after = (images(&east).await, images(&west).await, snapshots(&east).await, snapshots(&west).await);
    assert_eq!(before, after, "a dry run changes nothing");
    assert_eq!(params_before, (build_parameters(&east).await, build_parameters(&west).await));
    assert!(
        log.lines().iter().any(|l| l.starts_with("dry run: would deregister us-east-1: ")),
        "{:#?}",
        log.lines()
    );

    // A grace period longer than the builds' age: nothing goes.
    let r = kv_ami::gc::gc(&s, &target, "stable", 0, 86_400, false, &push).await.unwrap();
    assert!(r.deleted.is_empty(), "{r:?}");

    // keep 1: b4 (newest) and b1 (latest) stay; b2 and b3 go in both regions, with snapshots.
    let r = kv_ami::gc::gc(&s, &target, "stable", 1, 0, false, &push).await.unwrap();
    assert_eq!(r.deleted.len(), 2);
    for (c, region) in [(&east, "us-east-1"), (&west, "eu-west-1")] {
        let imgs = images(c).await;
        let sn = snapshots(c).await;
        for i in [1, 2] {
            assert!(!imgs.contains(&ami(i, region)), "{region}: b{} deregistered", i + 1);
            for x in snaps(i, region) {
                assert!(!sn.contains(&x), "{region}: snapshot {x} of b{} deleted", i + 1);
            }
        }
        for i in [0, 3] {
            assert!(imgs.contains(&ami(i, region)), "{region}: b{} kept", i + 1);
            for x in snaps(i, region) {
                assert!(sn.contains(&x), "{region}: snapshot {x} kept");
            }
        }
        // The build parameters of the builds that went are gone; the kept builds' stay.
        let params = build_parameters(c).await;
        let param = |i: usize| s.build_parameter("stable", &b[i].builds[0].custom_data["content_key"]);
        for i in [1, 2] {
            assert!(!params.contains_key(&param(i)), "{region}: {} deleted: {params:?}", param(i));
        }
        for i in [0, 3] {
            assert_eq!(params.get(&param(i)), Some(&ami(i, region)), "{region}: {} kept", param(i));
        }
        assert!(
            imgs.contains(&no_channel.builds[0].regions[region].ami_id),
            "{region}: no channel: untouched"
        );
    }
    assert!(images(&east).await.contains(&untagged), "untagged: untouched");
    assert!(snapshots(&east).await.contains(snap.snapshot_id().unwrap()));
    let kept: Vec<(String, Vec<kv_ami::gc::Kept>)> =
        r.kept.iter().map(|k| (k.content_key.clone(), k.why.clone())).collect();
    assert_eq!(kept[0].1, vec![kv_ami::gc::Kept::Newest]);
    assert_eq!(kept[1].1, vec![kv_ami::gc::Kept::Latest]);
}
