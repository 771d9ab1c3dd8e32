//! The raw-import flow against a real moto_server on loopback (the emulator's EBS block size is
//! 512 bytes, so images stay a few KiB).

mod common;

use common::{Log, Moto, bundle_manifest, never, opts, sparse_image};
use kv_ami::aws::Clients;
use kv_ami::plan::RetryPolicy;
use kv_ami::spec::AmiSpec;
use kv_ami::{Job, run};
use kv_ami::{ebs, images, s3};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upload_then_every_block_reads_back() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // 40 KiB + 100 bytes: 81 blocks of 512, the last partial; data in 6 of them.
    let len = 40 * 1024 + 100;
    let image = sparse_image(dir.path(), len, &[0, 600, 1030, 8192, 30000, len - 3]);
    let c = Clients::new("us-east-1", &moto.target()).await;
    let up = ebs::upload(&c, &image, len as u64, "k1", 4, RetryPolicy::default()).await.unwrap();
    assert_eq!(up.block_size, 512);
    assert_eq!(up.blocks_scanned, 81);
    // 600..607 is in block 1, 1030..1037 in block 2: 6 distinct blocks.
    assert_eq!(up.blocks_written, 6);
    assert_eq!(up.retries, 0);
    let compared = ebs::verify_snapshot(&c, &up.snapshot_id, &image).await.unwrap();
    assert_eq!(compared, 6);
    // A different image must not verify against this snapshot.
    let other = sparse_image(dir.path(), len, &[0, 601, 1030, 8192, 30000, len - 3]);
    let e = ebs::verify_snapshot(&c, &up.snapshot_id, &other).await.unwrap_err();
    assert!(e.to_string().contains("block 1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_registers_copies_shares_tags_writes_ssm_and_reruns_idempotently() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 16 * 1024, &[0, 5000, 9000]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let spec = AmiSpec::parse(
        r#"
name = "kv-server-{content_key}"
region = "us-east-1"
copy_to = ["eu-west-1"]
share_with = ["111122223333"]
ssm_parameter = "/kv/ami-id"
[tags]
service = "kv"
[upload]
workers = 3
wait_interval_secs = 0
"#,
    )
    .unwrap();
    let job = Job::prepare(spec, &image, &manifest).unwrap();
    let log = Log::default();
    let target = moto.target();
    let push = |l: &str| log.push(l);
    let m = run(&job, &opts(&target, &push), never()).await.unwrap();
    let log = log.lines();
    let b = &m.builds[0];
    let east = &b.regions["us-east-1"];
    let west = &b.regions["eu-west-1"];
    assert!(!east.reused && !west.reused, "{log:?}");
    assert!(east.ami_id.starts_with("ami-") && west.ami_id.starts_with("ami-"));
    assert_ne!(east.ami_id, west.ami_id);
    assert_eq!(b.artifact_id, format!("us-east-1:{},eu-west-1:{}", east.ami_id, west.ami_id));
    assert_eq!(east.snapshot_ids.len(), 1);
    assert_eq!(b.custom_data["content_key"], job.content_key);

    for (region, res) in [("us-east-1", east), ("eu-west-1", west)] {
        let c = Clients::new(region, &moto.target()).await;
        let img = c.ec2.describe_images().image_ids(&res.ami_id).send().await.unwrap();
        let img = &img.images()[0];
        assert_eq!(img.name(), Some(job.name().as_str()), "{region}");
        let tags: Vec<(&str, &str)> =
            img.tags().iter().map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))).collect();
        assert!(tags.contains(&("service", "kv")), "{region} {tags:?}");
        assert!(tags.contains(&("kv-ami:content-key", job.content_key.as_str())), "{region} {tags:?}");
        let perm = c
            .ec2
            .describe_image_attribute()
            .image_id(&res.ami_id)
            .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
            .send()
            .await
            .unwrap();
        let users: Vec<&str> = perm.launch_permissions().iter().filter_map(|p| p.user_id()).collect();
        assert_eq!(users, vec!["111122223333"], "{region}");
        let p = c.ssm.get_parameter().name("/kv/ami-id").send().await.unwrap();
        let p = p.parameter().unwrap();
        assert_eq!(p.value(), Some(res.ami_id.as_str()), "{region}");
        assert_eq!(p.data_type(), Some("aws:ec2:image"), "{region}");
    }
    let c = Clients::new("us-east-1", &moto.target()).await;
    let snap = &east.snapshot_ids[0];
    let attr = c
        .ec2
        .describe_snapshot_attribute()
        .snapshot_id(snap)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .unwrap();
    let users: Vec<&str> = attr.create_volume_permissions().iter().filter_map(|p| p.user_id()).collect();
    assert_eq!(users, vec!["111122223333"]);
    let compared = ebs::verify_snapshot(&c, snap, &image).await.unwrap();
    assert_eq!(compared, 3);

    // Same bundle manifest: nothing is rebuilt or copied again.
    let quiet = |_: &str| {};
    let again = run(&job, &opts(&target, &quiet), never()).await.unwrap();
    let b2 = &again.builds[0];
    assert!(b2.regions.values().all(|r| r.reused), "{b2:?}");
    assert_eq!(b2.artifact_id, b.artifact_id);
    for region in ["us-east-1", "eu-west-1"] {
        let c = Clients::new(region, &moto.target()).await;
        let mine = c.ec2.describe_images().owners("self").send().await.unwrap();
        assert_eq!(mine.images().len(), 1, "{region}: one image, not two");
    }

    // Another bundle (other PCR0) is another content key: a new image.
    let other = bundle_manifest(dir.path(), "bb");
    let job2 = Job::prepare(job.spec.clone(), &image, &other).unwrap();
    let third = run(&job2, &opts(&target, &quiet), never()).await.unwrap();
    assert!(third.builds[0].regions.values().all(|r| !r.reused));
    assert_ne!(third.builds[0].regions["us-east-1"].ami_id, east.ami_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_region_resource_and_code() {
    let moto = Moto::start();
    let c = Clients::new("us-east-1", &moto.target()).await;
    let e = images::wait_image(
        &c,
        "ami-00000000deadbeef",
        kv_ami::wait::Bound::new(1, std::time::Duration::ZERO),
    )
    .await
    .unwrap_err();
    let s = e.to_string();
    assert!(s.contains("us-east-1") && s.contains("ami-00000000deadbeef"), "{s}");
    let accounts = ["111122223333".to_string()];
    let to = images::Sharing { accounts: &accounts, ..Default::default() };
    let e = images::share(&c, "ami-00000000deadbeef", &[], &to).await.unwrap_err();
    let s = e.to_string();
    assert!(s.contains("us-east-1") && s.contains("ec2:ModifyImageAttribute"), "{s}");
    assert!(s.contains("InvalidAMIID"), "{s}");
}

/// An image whose every 512-byte block holds data (so each is one PutSnapshotBlock).
fn dense_image(dir: &std::path::Path, blocks: usize) -> std::path::PathBuf {
    let img: Vec<u8> = (0..blocks * 512).map(|i| (i % 251) as u8 | 1).collect();
    let p = dir.join("dense.raw");
    std::fs::write(&p, img).unwrap();
    p
}

fn import_spec(extra: &str) -> AmiSpec {
    AmiSpec::parse(&format!(
        "name = \"kv-{{content_key}}\"\nregion = \"us-east-1\"\n{extra}\n[upload]\nworkers = 2\nwait_interval_secs = 0\n"
    ))
    .unwrap()
}

async fn snapshots_with_key(c: &Clients, key: &str) -> Vec<String> {
    let f = aws_sdk_ec2::types::Filter::builder().name("tag:kv-ami:content-key").values(key).build();
    let out = c.ec2.describe_snapshots().owner_ids("self").filters(f).send().await.unwrap();
    out.snapshots().iter().filter_map(|s| s.snapshot_id()).map(str::to_string).collect()
}

/// Ends once the state file lists at least `n` blocks put.
async fn after_blocks(state: std::path::PathBuf, n: usize) {
    loop {
        if let Ok(bytes) = std::fs::read(&state)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && v["upload"]["blocks_done"].as_array().is_some_and(|a| a.len() >= n)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_is_cleaned_up_and_nothing_is_left() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dense_image(dir.path(), 1000);
    let job = Job::prepare(import_spec(""), &image, &bundle_manifest(dir.path(), "int")).unwrap();
    let target = moto.target();
    let c = Clients::new("us-east-1", &target).await;
    let state = dir.path().join("state.json");
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let o = kv_ami::RunOptions { state_path: Some(&state), ..opts(&target, &push) };
    let e = run(&job, &o, after_blocks(state.clone(), 20)).await.unwrap_err().to_string();
    assert!(e.contains("interrupted"), "{e}");
    let lines = log.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cleanup: us-east-1: ec2:DeleteSnapshot snap-") && l.ends_with("done")),
        "{lines:#?}"
    );
    assert!(snapshots_with_key(&c, &job.content_key).await.is_empty(), "the partial snapshot is deleted");
    assert!(c.ec2.describe_images().owners("self").send().await.unwrap().images().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_into_the_same_snapshot_from_the_state_file() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dense_image(dir.path(), 1500);
    let job = Job::prepare(import_spec("on_failure = \"keep\""), &image, &bundle_manifest(dir.path(), "res"))
        .unwrap();
    let target = moto.target();
    let c = Clients::new("us-east-1", &target).await;
    let state = dir.path().join("state.json");
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let o = kv_ami::RunOptions { state_path: Some(&state), ..opts(&target, &push) };
    let e = run(&job, &o, after_blocks(state.clone(), 40)).await.unwrap_err().to_string();
    assert!(e.contains("interrupted"), "{e}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let snap = saved["upload"]["snapshot_id"].as_str().unwrap().to_string();
    let done = saved["upload"]["blocks_done"].as_array().unwrap().len();
    assert!((40..1500).contains(&done), "{done}");
    assert_eq!(
        snapshots_with_key(&c, &job.content_key).await,
        vec![snap.clone()],
        "kept (on_failure = keep)"
    );

    let log2 = Log::default();
    let push2 = |l: &str| log2.push(l);
    let o2 = kv_ami::RunOptions { state_path: Some(&state), ..opts(&target, &push2) };
    let m = run(&job, &o2, never()).await.unwrap();
    let lines = log2.lines();
    let resumed = format!("resuming snapshot {snap}: {done} blocks already put are skipped");
    assert!(lines.iter().any(|l| l.contains(&resumed)), "{resumed}: {lines:#?}");
    let put_line = lines.iter().find(|l| l.contains("put by this run")).unwrap();
    assert!(put_line.contains(&format!("; {} put by this run", 1500 - done)), "{put_line}");
    assert_eq!(m.builds[0].regions["us-east-1"].snapshot_ids, vec![snap.clone()]);
    // Every block is in the snapshot, the resumed ones and the earlier ones.
    assert_eq!(ebs::verify_snapshot(&c, &snap, &image).await.unwrap(), 1500);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["snapshot_completed"], snap.as_str());
    assert_eq!(saved["image_available"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_past_the_snapshot_timeout_starts_over_with_a_clear_line() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dense_image(dir.path(), 8);
    let job = Job::prepare(import_spec(""), &image, &bundle_manifest(dir.path(), "old")).unwrap();
    let state = dir.path().join("state.json");
    let two_hours_ago = kv_ami::spec::now_unix() - 7200;
    std::fs::write(
        &state,
        serde_json::json!({
            "version": 1, "content_key": job.content_key, "flow": "import",
            "upload": {"region": "us-east-1", "snapshot_id": "snap-00000000000000001", "started_at": two_hours_ago,
                       "timeout_minutes": 60, "block_size": 512, "volume_gib": 1, "image_len": 4096, "blocks_done": [0, 1]}
        })
        .to_string(),
    )
    .unwrap();
    let target = moto.target();
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let o = kv_ami::RunOptions { state_path: Some(&state), ..opts(&target, &push) };
    let m = run(&job, &o, never()).await.unwrap();
    let lines = log.lines();
    assert!(
        lines.iter().any(|l| l.contains("snap-00000000000000001 was started 120 min ago")
            && l.contains("60-minute timeout")
            && l.contains("starting over with a new snapshot")),
        "{lines:#?}"
    );
    let snap = &m.builds[0].regions["us-east-1"].snapshot_ids[0];
    assert_ne!(snap, "snap-00000000000000001");
    let c = Clients::new("us-east-1", &target).await;
    assert_eq!(ebs::verify_snapshot(&c, snap, &image).await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_ous_and_public_get_launch_permission() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dense_image(dir.path(), 4);
    let org = "arn:aws:organizations::111122223333:organization/o-abcdefghij";
    let ou = "arn:aws:organizations::111122223333:ou/o-abcdefghij/ou-ab12-cdefgh34";
    let spec = import_spec(&format!(
        "share_with_organizations = [\"{org}\"]\nshare_with_ous = [\"{ou}\"]\npublic = true"
    ));
    let job = Job::prepare(spec, &image, &bundle_manifest(dir.path(), "org")).unwrap();
    let target = moto.target();
    let quiet = |_: &str| {};
    let m = run(&job, &opts(&target, &quiet), never()).await.unwrap();
    let ami = &m.builds[0].regions["us-east-1"].ami_id;
    let c = Clients::new("us-east-1", &target).await;
    let perm = c
        .ec2
        .describe_image_attribute()
        .image_id(ami)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    let p = perm.launch_permissions();
    assert!(p.iter().any(|x| x.organization_arn() == Some(org)), "{p:?}");
    assert!(p.iter().any(|x| x.organizational_unit_arn() == Some(ou)), "{p:?}");
    assert!(p.iter().any(|x| x.group() == Some(&aws_sdk_ec2::types::PermissionGroup::All)), "{p:?}");
    // No account listed: the snapshot stays private.
    let snap = &m.builds[0].regions["us-east-1"].snapshot_ids[0];
    let attr = c
        .ec2
        .describe_snapshot_attribute()
        .snapshot_id(snap)
        .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .unwrap();
    assert!(attr.create_volume_permissions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_import_object_goes_up_in_checksummed_parts() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // 11 MiB + 3 bytes in 5 MiB parts: 3 parts, the last short.
    let len = (11 << 20) + 3;
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let file = dir.path().join("big.raw");
    std::fs::write(&file, &data).unwrap();
    let c = Clients::new("us-east-1", &moto.target()).await;
    c.s3.create_bucket().bucket("imports").send().await.unwrap();
    let id = s3::create_multipart(&c, "imports", "kv-ami-import/k.raw").await.unwrap();
    let parts = s3::put_multipart(&c, "imports", "kv-ami-import/k.raw", &id, &file, len as u64, 5 << 20)
        .await
        .unwrap();
    assert_eq!(parts, 3);
    let got = c.s3.get_object().bucket("imports").key("kv-ami-import/k.raw").send().await.unwrap();
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.len(), len);
    assert!(body.as_ref() == data.as_slice(), "the object differs from the file");
    // An upload that is aborted (the cleanup's undo) leaves no object.
    let id = s3::create_multipart(&c, "imports", "kv-ami-import/gone.raw").await.unwrap();
    let cleanup = kv_ami::cleanup::Cleanup::new(false, 1, std::time::Duration::ZERO);
    cleanup.push(
        &c,
        kv_ami::cleanup::Undo::AbortMultipartUpload {
            bucket: "imports".into(),
            key: "kv-ami-import/gone.raw".into(),
            upload_id: id,
        },
        kv_ami::cleanup::When::Always,
    );
    let quiet = |_: &str| {};
    cleanup.finish(Ok::<(), kv_ami::Error>(()), &quiet).await.unwrap();
    let uploads = c.s3.list_multipart_uploads().bucket("imports").send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

/// The SDK's waiters against moto: a running instance is not `terminated`, so the
/// `instance_terminated` waiter polls DescribeInstances again until its bound (2 s here) and the
/// error names region and instance; once terminated it succeeds; `instance_stopped` on a
/// terminated instance ends at its first look (a failure state), not at its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_waiters_poll_until_their_bound_and_stop_at_a_failure_state() {
    use kv_ami::instances;
    use kv_ami::wait::Bound;
    use std::time::{Duration, Instant};
    let moto = Moto::start();
    let c = Clients::new("us-east-1", &moto.target()).await;
    let base = c.ec2.describe_images().send().await.unwrap();
    let base = base.images().iter().find_map(|i| i.image_id()).unwrap().to_string();
    let out = c.ec2.run_instances().image_id(&base).min_count(1).max_count(1).send().await.unwrap();
    let id = out.instances()[0].instance_id().unwrap().to_string();

    let t = Instant::now();
    let e = instances::wait_terminated(&c, &id, Bound::new(2, Duration::from_secs(1))).await.unwrap_err();
    let waited = t.elapsed();
    let s = e.to_string();
    assert!(s.starts_with(&format!("us-east-1: instance {id} not terminated after ")), "{s}");
    assert!(matches!(e, instances::Error::StateTimeout { checks, .. } if checks >= 2), "{e:?}");
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(10), "{waited:?}");

    instances::terminate(&c, &id, Bound::new(2, Duration::from_secs(1))).await.unwrap();
    let t = Instant::now();
    let e = instances::wait_stopped(&c, &id, Bound::new(60, Duration::from_secs(1))).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        e.to_string().contains(&format!("instance {id} is terminated, so it will not be stopped")),
        "{e}"
    );
}
