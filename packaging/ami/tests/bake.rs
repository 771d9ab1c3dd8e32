//! The builder-instance bake's orchestration against a real moto_server on loopback. moto runs
//! no user data, so the test plays the builder: `FakeBuilderInstance` waits for the instance
//! kv-ami launches, records what it was given (user data, metadata options, instance profile),
//! fetches the bundle from S3 the way the user data does, and writes the signal tag. After every
//! run, Describe/List calls check what is left: the builder terminated, its security group and
//! the S3 objects gone, and an image only after a successful bake.

mod common;

use common::builder::{
    BUCKET, BakeFixture, Verdict, assert_nothing_left, bake_fixture, images_with_key, quoted,
};
use common::{Log, Moto, never, opts};
use kv_ami::aws::Clients;
use kv_ami::bake::bake;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_launches_an_imdsv2_builder_waits_for_its_signal_creates_the_image_and_removes_the_builder() {
    let BakeFixture { moto: _moto, c, dir: _dir, job, target, log, fake } = bake_fixture().await;
    let push = |l: &str| log.push(l);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let (m, seen) = {
        let o = opts(&target, &push);
        tokio::join!(bake(&job, &o, never()), fake.play(Verdict::Ok, tx))
    };
    let m = m.unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    // The image's snapshots carry the content key before the wait (the IAM-limited cleanup needs it).
    assert!(
        log.lines()
            .iter()
            .any(|l| l.contains(": snapshots snap-") && l.ends_with("tagged with the content key")),
        "{:#?}",
        log.lines()
    );

    // What the builder was given.
    let base = c.ssm.get_parameter().name("/test/base-ami").send().await.unwrap();
    assert_eq!(Some(seen.image_id.as_str()), base.parameter().unwrap().value());
    assert_eq!(seen.instance_type, "m6i.xlarge");
    assert_eq!((seen.http_tokens.as_str(), seen.hop_limit), ("required", 1), "IMDSv2 only");
    assert!(seen.profile_arn.ends_with("/kv-ami-builder"), "{}", seen.profile_arn);
    assert_eq!(seen.tags.get("kv-ami:role").map(String::as_str), Some("builder"));
    assert_eq!(seen.tags.get("kv-ami:content-key"), Some(&job.content_key));
    assert_eq!(seen.security_groups.len(), 1);
    let ud = &seen.user_data;
    assert_eq!(quoted(ud, "bucket"), BUCKET);
    assert_eq!(quoted(ud, "prefix"), job.prefix());
    assert_eq!(quoted(ud, "content_key"), job.content_key);
    assert!(quoted(ud, "envoy_image").ends_with(&"e".repeat(64)));
    assert_eq!(kv_ami::userdata::install_part(ud), Some(kv_ami::userdata::INSTALL_BUNDLE_SH));
    // What it found in S3: the bundle, byte for byte.
    let names: Vec<&str> = seen.fetched.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["manifest.json", "proxy", "systemd/vsockproxy.service"]);
    for (name, body) in &seen.fetched {
        assert_eq!(body, &std::fs::read(job.bundle_dir.join(name)).unwrap(), "{name}");
    }
    assert_eq!(hex::encode(Sha256::digest(&seen.fetched["manifest.json"])), job.content_key);

    // The image and its copy, published.
    let b = &m.builds[0];
    assert_eq!(b.builder_type, "kv-ami.builder");
    assert_eq!(b.custom_data["builder_instance"], seen.instance_id);
    let east = &b.regions["us-east-1"];
    let west = &b.regions["eu-west-1"];
    assert!(!east.reused && !west.reused);
    let mine = images_with_key(&c, &job.content_key).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].image_id(), Some(east.ami_id.as_str()));
    assert_eq!(mine[0].name(), Some(job.name().as_str()));
    let tags: BTreeMap<&str, &str> =
        mine[0].tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
    assert_eq!(tags.get("service"), Some(&"kv"));
    let p = c.ssm.get_parameter().name("/kv/ami-id").send().await.unwrap();
    assert_eq!(p.parameter().unwrap().value(), Some(east.ami_id.as_str()));
    let w = Clients::new("eu-west-1", &target).await;
    assert_eq!(images_with_key(&w, &job.content_key).await.len(), 1);
    // Order: signal, stop, image, then the builder goes.
    let lines = log.lines();
    let at = |needle: &str| {
        lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {lines:#?}"))
    };
    assert!(at("signalled ok") < at("created ami-"));
    assert!(at("created ami-") < at("ec2:TerminateInstances"));
    assert!(at("ec2:TerminateInstances") < at("ec2:DeleteSecurityGroup"));
    assert_nothing_left(&c, &seen).await;

    // Same bundle again: reused, no second builder.
    let again = bake(&job, &opts(&target, &push), never()).await.unwrap();
    assert!(again.builds[0].regions.values().all(|r| r.reused));
    let all = c.ec2.describe_instances().send().await.unwrap();
    assert_eq!(all.reservations().iter().flat_map(|r| r.instances()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_signal_fails_the_run_and_leaves_nothing_behind() {
    let BakeFixture { moto: _moto, c, dir: _dir, job, target, log, fake } = bake_fixture().await;
    let push = |l: &str| log.push(l);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let detail = "step install exit 1: [install-bundle] proxy: sha256 0000, manifest says 1111";
    let (r, seen) = {
        let o = opts(&target, &push);
        tokio::join!(bake(&job, &o, never()), fake.play(Verdict::Failed(detail), tx))
    };
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("us-east-1") && e.contains(&seen.instance_id) && e.contains("reported failure"),
        "{e}"
    );
    assert!(e.contains("proxy: sha256 0000"), "{e}");
    assert_nothing_left(&c, &seen).await;
    assert!(images_with_key(&c, &job.content_key).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_while_waiting_for_the_builder_leaves_nothing_behind() {
    let BakeFixture { moto: _moto, c, dir: _dir, job, target, log, fake } = bake_fixture().await;
    let push = |l: &str| log.push(l);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let interrupt = async move {
        let _ = rx.await;
    };
    let (r, seen) = {
        let o = opts(&target, &push);
        tokio::join!(bake(&job, &o, interrupt), fake.play(Verdict::Silent, tx))
    };
    let e = r.unwrap_err().to_string();
    assert!(e.contains("interrupted"), "{e}");
    assert_nothing_left(&c, &seen).await;
    assert!(images_with_key(&c, &job.content_key).await.is_empty());
    let lines = log.lines();
    assert!(lines.iter().any(|l| l.contains("s3:DeleteObjects") && l.ends_with("done")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_finds_a_builder_by_its_run_tag_when_the_launch_answer_was_lost() {
    use kv_ami::cleanup::{Cleanup, Undo, When};
    let moto = Moto::start();
    let c = Clients::new("us-east-1", &moto.target()).await;
    let base = c.ec2.describe_images().send().await.unwrap();
    let base = base.images().iter().find_map(|i| i.image_id()).unwrap().to_string();
    let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
    let launch = |run: &'static str| {
        c.ec2
            .run_instances()
            .image_id(&base)
            .min_count(1)
            .max_count(1)
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                    .tags(tag(kv_ami::bake::RUN_TAG, run))
                    .build(),
            )
            .send()
    };
    let lost = launch("run-1").await.unwrap().instances()[0].instance_id().unwrap().to_string();
    let other = launch("run-2").await.unwrap().instances()[0].instance_id().unwrap().to_string();
    let cleanup = Cleanup::new(false, 50, Duration::ZERO);
    cleanup.push(&c, Undo::TerminateTagged("run-1".into()), When::Always);
    let log = Log::default();
    let push = |l: &str| log.push(l);
    cleanup.finish(Ok::<(), kv_ami::Error>(()), &push).await.unwrap();
    let state = |id: String| {
        let c = c.clone();
        async move {
            let out = c.ec2.describe_instances().instance_ids(id).send().await.unwrap();
            out.reservations()[0].instances()[0].state().and_then(|s| s.name()).unwrap().as_str().to_string()
        }
    };
    assert_eq!(state(lost).await, "terminated");
    assert_eq!(state(other).await, "running", "another run's builder is not touched");
}
