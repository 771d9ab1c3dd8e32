//! The raw-import flow against a real moto_server on loopback (the emulator's EBS block size is
//! 512 bytes, so images stay a few KiB).

mod common;

use common::{Log, Moto, bundle_manifest, never, opts, sparse_image};
use kv_ami::aws::{self, Clients};
use kv_ami::plan::RetryPolicy;
use kv_ami::spec::AmiSpec;
use kv_ami::{Job, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upload_then_every_block_reads_back() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // 40 KiB + 100 bytes: 81 blocks of 512, the last partial; data in 6 of them.
    let len = 40 * 1024 + 100;
    let image = sparse_image(dir.path(), len, &[0, 600, 1030, 8192, 30000, len - 3]);
    let c = Clients::new("us-east-1", &moto.target()).await;
    let up = aws::upload(&c, &image, len as u64, "k1", 4, RetryPolicy::default()).await.unwrap();
    assert_eq!(up.block_size, 512);
    assert_eq!(up.blocks_scanned, 81);
    // 600..607 is in block 1, 1030..1037 in block 2: 6 distinct blocks.
    assert_eq!(up.blocks_written, 6);
    assert_eq!(up.retries, 0);
    let compared = aws::verify_snapshot(&c, &up.snapshot_id, &image).await.unwrap();
    assert_eq!(compared, 6);
    // A different image must not verify against this snapshot.
    let other = sparse_image(dir.path(), len, &[0, 601, 1030, 8192, 30000, len - 3]);
    let e = aws::verify_snapshot(&c, &up.snapshot_id, &other).await.unwrap_err();
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
    let compared = aws::verify_snapshot(&c, snap, &image).await.unwrap();
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
    let e = aws::wait_image(&c, "ami-00000000deadbeef", 1, std::time::Duration::ZERO).await.unwrap_err();
    let s = e.to_string();
    assert!(s.contains("us-east-1") && s.contains("ami-00000000deadbeef"), "{s}");
    let accounts = ["111122223333".to_string()];
    let to = aws::Sharing { accounts: &accounts, ..Default::default() };
    let e = aws::share(&c, "ami-00000000deadbeef", &[], &to).await.unwrap_err();
    let s = e.to_string();
    assert!(s.contains("us-east-1") && s.contains("ec2:ModifyImageAttribute"), "{s}");
    assert!(s.contains("InvalidAMIID"), "{s}");
}
