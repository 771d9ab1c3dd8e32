//! The smoke test and the two-step promotion against a real moto_server on loopback, through
//! the raw import (the bake reaches the same `publish::test_and_publish`). `FakeBootedInstance`
//! (tests/common/booted.rs) plays the instance booted from the new image and writes the
//! launcher's report tags. After each run, Describe/Get calls check what was published and
//! what is left: the test instance terminated and its security group gone on every path.

mod common;

use common::booted::{FakeBootedInstance, GOOD, LAUNCHER, PCR0, PROFILE, Report, Seen, smoke_inputs};
use common::{Log, Moto, never, opts};
use kv_ami::aws::Clients;
use kv_ami::spec::AmiSpec;
use kv_ami::{Job, run};

struct Fixture {
    moto: Moto,
    east: Clients,
    west: Clients,
    job: Job,
    _dir: tempfile::TempDir,
    fake: FakeBootedInstance,
}

async fn fixture(extra: &str) -> Fixture {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let common::booted::SmokeInputs { image, manifest, launcher } = smoke_inputs(&moto.url, dir.path());
    let spec = AmiSpec::parse(&format!(
        r#"
name = "kv-{{content_key}}"
region = "us-east-1"
copy_to = ["eu-west-1"]
share_with = ["111122223333"]
channel = "stable"
{extra}
[upload]
workers = 2
wait_interval_secs = 0
[smoke_test]
instance_profile = "{PROFILE}"
launcher = "{}"
report_attempts = 3000
report_interval_secs = 0
"#,
        launcher.display()
    ))
    .unwrap();
    let job = Job::prepare(spec, &image, &manifest).unwrap();
    let east = Clients::new("us-east-1", &moto.target()).await;
    let west = Clients::new("eu-west-1", &moto.target()).await;
    let fake = FakeBootedInstance { c: east.clone() };
    Fixture { moto, east, west, job, _dir: dir, fake }
}

async fn parameter(c: &Clients, name: &str) -> Option<String> {
    match c.ssm.get_parameter().name(name).send().await {
        Ok(p) => p.parameter().and_then(|p| p.value()).map(str::to_string),
        Err(e) => {
            let code = aws_sdk_ssm::error::ProvideErrorMetadata::code(&e).map(str::to_string);
            assert_eq!(code.as_deref(), Some("ParameterNotFound"), "{e:?}");
            None
        }
    }
}

async fn images(c: &Clients) -> Vec<String> {
    let out = c.ec2.describe_images().owners("self").send().await.unwrap();
    out.images().iter().filter_map(|i| i.image_id()).map(str::to_string).collect()
}

async fn state(c: &Clients, id: &str) -> String {
    let out = c.ec2.describe_instances().instance_ids(id).send().await.unwrap();
    out.reservations()[0].instances()[0].state().and_then(|s| s.name()).unwrap().as_str().to_string()
}

/// The test instance terminated, no smoke-test security group left.
async fn torn_down(c: &Clients, seen: &Seen) {
    assert_eq!(state(c, &seen.instance_id).await, "terminated", "{}", seen.instance_id);
    let f = aws_sdk_ec2::types::Filter::builder().name("group-name").values("kv-ami-smoke-*").build();
    let groups = c.ec2.describe_security_groups().filters(f).send().await.unwrap();
    assert!(groups.security_groups().is_empty(), "{:?}", groups.security_groups());
}

/// Nothing published: no copy, no launch permission, no SSM parameter.
async fn nothing_published(f: &Fixture, ami: &str) {
    assert!(images(&f.west).await.is_empty(), "no copy");
    let perm = f
        .east
        .ec2
        .describe_image_attribute()
        .image_id(ami)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    assert!(perm.launch_permissions().is_empty(), "not shared: {:?}", perm.launch_permissions());
    let s = &f.job.spec;
    for c in [&f.east, &f.west] {
        assert_eq!(parameter(c, &s.build_parameter("stable", &f.job.content_key)).await, None);
        assert_eq!(parameter(c, &s.latest_parameter("stable")).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_smoke_test_comes_before_any_copy_then_build_and_latest_parameters() {
    let f = fixture("").await;
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let target = f.moto.target();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let o = opts(&target, &push);
    let (m, seen) = tokio::join!(run(&f.job, &o, never()), f.fake.play(Report::Pass(GOOD), tx));
    let m = m.unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    let east = &m.builds[0].regions["us-east-1"];
    let west = &m.builds[0].regions["eu-west-1"];

    // What the test instance was given.
    assert_eq!(seen.image_id, east.ami_id, "booted from the new image in the build region");
    assert_eq!(seen.instance_type, "m6i.xlarge");
    assert_eq!((seen.http_tokens.as_str(), seen.hop_limit), ("required", 1), "IMDSv2 only");
    if let Some(enabled) = seen.enclave {
        assert!(enabled, "enclaves enabled");
    }
    assert!(seen.profile_arn.ends_with(&format!("/{PROFILE}")), "{}", seen.profile_arn);
    assert_eq!(seen.security_groups.len(), 1);
    assert_eq!(seen.ingress_rules, 0, "no inbound access");
    assert_eq!(seen.tags.get("kv-ami:role").map(String::as_str), Some("smoke-test"));
    let run_tag = kv_ami::smoke::run_id(&f.job.content_key, &east.ami_id);
    assert_eq!(seen.tags.get("kv-ami:run"), Some(&run_tag));
    assert_eq!(kv_ami::smoke::launcher_part(&seen.user_data), Some(LAUNCHER), "the launcher, verbatim");
    assert!(seen.user_data.contains("KV_AMI_SMOKE_TEST=1 exec bash"), "{}", seen.user_data);

    // Order: the test passed before the first copy; latest only after every build parameter.
    let lines = log.lines();
    let at = |needle: &str| {
        lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {lines:#?}"))
    };
    assert!(at("smoke test of ami-") < at("eu-west-1: copied to"), "{lines:#?}");
    assert!(at("/kv/ami/stable/latest -> this build") > at("copied to"));
    let s = &f.job.spec;
    for (c, res) in [(&f.east, east), (&f.west, west)] {
        assert_eq!(
            parameter(c, &s.build_parameter("stable", &f.job.content_key)).await.as_ref(),
            Some(&res.ami_id)
        );
        assert_eq!(parameter(c, "/kv/ami/stable/latest").await.as_ref(), Some(&res.ami_id), "{}", c.region);
    }
    torn_down(&f.east, &seen).await;
}

/// The image's tags (key -> value).
async fn image_tags(c: &Clients, ami: &str) -> std::collections::BTreeMap<String, String> {
    let out = c.ec2.describe_images().image_ids(ami).send().await.unwrap();
    out.images()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

async fn failing(report: Report, extra: &str, want: &[&str]) -> (Fixture, Seen) {
    let f = fixture(extra).await;
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let target = f.moto.target();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let o = opts(&target, &push);
    let (r, seen) = tokio::join!(run(&f.job, &o, never()), f.fake.play(report, tx));
    let e = r.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("us-east-1: smoke test of {} on {}", seen.image_id, seen.instance_id)),
        "{e}"
    );
    for w in want {
        assert!(e.contains(w), "{w}: {e}");
    }
    assert!(e.contains("console output"), "the console output is fetched: {e}");
    torn_down(&f.east, &seen).await;
    nothing_published(&f, &seen.image_id).await;
    // The image itself stays, private (a re-run reuses it and boots it again), marked as failed
    // in its channel so that gc can remove it, image and snapshots.
    assert_eq!(images(&f.east).await, vec![seen.image_id.clone()]);
    let tags = image_tags(&f.east, &seen.image_id).await;
    assert_eq!(tags.get("kv-ami:channel").map(String::as_str), Some("stable"), "{tags:?}");
    assert_eq!(tags.get("kv-ami:smoke").map(String::as_str), Some("failed"), "{tags:?}");
    (f, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcrs_other_than_the_manifests_stop_publication_and_tear_down() {
    let bad = "0b".repeat(48).leak();
    let (f, seen) = failing(
        Report::Pass([bad, "01", "02"]),
        "",
        &[&format!("step PCRs: PCR0 is {bad}, the bundle manifest says {PCR0}")],
    )
    .await;
    let target = f.moto.target();
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let s = &f.job.spec;
    // Never promoted: promote refuses an image that failed its smoke test.
    let e = kv_ami::publish::promote(s, &target, "stable", &seen.image_id, &push).await.unwrap_err();
    assert!(e.to_string().contains("failed its smoke test"), "{e}");
    assert_eq!(parameter(&f.east, "/kv/ami/stable/latest").await, None);
    // gc: within the grace period it stays; after it, it goes with its snapshots even though
    // --keep would keep it (a failed build is never one of the newest kept).
    let snaps = {
        let out = f.east.ec2.describe_images().image_ids(&seen.image_id).send().await.unwrap();
        let i = &out.images()[0];
        i.block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs()?.snapshot_id())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(!snaps.is_empty());
    let r = kv_ami::gc::gc(s, &target, "stable", 5, 86_400, false, &push).await.unwrap();
    assert!(r.deleted.is_empty(), "{r:?}");
    assert_eq!(images(&f.east).await, vec![seen.image_id.clone()]);
    let r = kv_ami::gc::gc(s, &target, "stable", 5, 0, false, &push).await.unwrap();
    assert_eq!(r.deleted.len(), 1, "{r:?}");
    assert!(images(&f.east).await.is_empty(), "the failed image is deregistered");
    let left = f.east.ec2.describe_snapshots().owner_ids("self").send().await.unwrap();
    let left: Vec<&str> = left.snapshots().iter().filter_map(|s| s.snapshot_id()).collect();
    for x in &snaps {
        assert!(!left.contains(&x.as_str()), "snapshot {x} deleted: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ready_launcher_stops_publication_and_tears_down() {
    let _ = failing(
        Report::NeverReady(GOOD),
        "",
        &[
            "step vsockproxy /readyz: never answered",
            "step envoy /healthcheck: \"NOT_SERVING\"",
            "step launcher: exit status 1 at step 7",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_reports_stops_publication_and_tears_down() {
    // The fixture's report_attempts (3000 checks, 0 s apart) bound the wait; Silent never reports.
    let _ =
        failing(Report::Silent, "", &["step wait-for-report: no kv-ami:smoke-status tag after 3000 checks"])
            .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_tears_down_and_a_rerun_after_a_killed_run_reuses_its_test_instance() {
    let f = fixture("").await;
    let target = f.moto.target();
    let quiet = |_: &str| {};

    // 1. SIGINT while waiting for the report: the cleanup stack terminates the instance.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let interrupt = async move {
        let _ = rx.await;
    };
    let o = opts(&target, &quiet);
    let (r, seen) = tokio::join!(run(&f.job, &o, interrupt), f.fake.play(Report::Silent, tx));
    assert!(r.unwrap_err().to_string().contains("interrupted"));
    torn_down(&f.east, &seen).await;
    nothing_published(&f, &seen.image_id).await;

    // 2. Killed (the run's future dropped: no cleanup at all) while waiting for the report.
    let o = opts(&target, &quiet);
    let killed = async {
        tokio::select! {
            _ = run(&f.job, &o, never()) => panic!("the run ended before it was killed"),
            i = f.fake.launched() => i.instance_id().unwrap().to_string(),
        }
    };
    let left = killed.await;
    assert_eq!(state(&f.east, &left).await, "running", "left behind by the killed run");

    // 3. The re-run finds it by its run tag, waits for its report, and tears it down.
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let o = opts(&target, &push);
    let (m, seen) = tokio::join!(run(&f.job, &o, never()), f.fake.play(Report::Pass(GOOD), tx));
    m.unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    assert_eq!(seen.instance_id, left, "the same instance, not a second launch");
    assert!(
        log.lines().iter().any(|l| l.contains(&format!("reusing {left} of an interrupted run"))),
        "{:#?}",
        log.lines()
    );
    torn_down(&f.east, &seen).await;
    let all = f.east.ec2.describe_instances().send().await.unwrap();
    let launched = all.reservations().iter().flat_map(|r| r.instances()).count();
    assert_eq!(
        launched, 2,
        "one instance for the interrupted run, one shared by the killed run and the re-run"
    );
    assert!(parameter(&f.west, "/kv/ami/stable/latest").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_the_smoke_test_writes_the_build_parameter_only_and_promote_moves_latest() {
    let mut f = fixture("").await;
    f.job.spec.skip_smoke_test = true;
    f.job.smoke = None;
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let target = f.moto.target();
    let m = run(&f.job, &opts(&target, &push), never()).await.unwrap();
    assert!(
        log.lines().iter().any(|l| l.starts_with("warning: us-east-1: smoke test skipped")),
        "{:#?}",
        log.lines()
    );
    let all = f.east.ec2.describe_instances().send().await.unwrap();
    assert_eq!(all.reservations().len(), 0, "nothing booted");
    let b = &m.builds[0];
    let s = &f.job.spec;
    for (c, r) in [(&f.east, "us-east-1"), (&f.west, "eu-west-1")] {
        let ami = &b.regions[r].ami_id;
        assert_eq!(parameter(c, &s.build_parameter("stable", &f.job.content_key)).await.as_ref(), Some(ami));
        assert_eq!(
            parameter(c, "/kv/ami/stable/latest").await,
            None,
            "latest not moved without a smoke test"
        );
    }

    // promote: latest in both regions, each to that region's copy.
    let east_ami = b.regions["us-east-1"].ami_id.clone();
    let done = kv_ami::publish::promote(s, &target, "stable", &east_ami, &push).await.unwrap();
    assert_eq!(done.len(), 2);
    for (c, r) in [(&f.east, "us-east-1"), (&f.west, "eu-west-1")] {
        assert_eq!(parameter(c, "/kv/ami/stable/latest").await.as_ref(), Some(&b.regions[r].ami_id));
    }
    // An image that is not kv-ami's is refused, and latest stays.
    let other = f.east.ec2.describe_images().send().await.unwrap();
    let other =
        other.images().iter().filter_map(|i| i.image_id()).find(|i| *i != east_ami).unwrap().to_string();
    let e = kv_ami::publish::promote(s, &target, "canary", &other, &push).await.unwrap_err().to_string();
    assert!(e.starts_with(&format!("us-east-1: {other}: ")), "{e}");
    assert_eq!(parameter(&f.east, "/kv/ami/canary/latest").await, None);
    // A copy missing in one region: nothing written anywhere.
    let west_ami = &b.regions["eu-west-1"].ami_id;
    f.west.ec2.deregister_image().image_id(west_ami).send().await.unwrap();
    let e = kv_ami::publish::promote(s, &target, "canary", &east_ami, &push).await.unwrap_err().to_string();
    assert!(e.contains("nothing written") && e.contains("eu-west-1: no image with content key"), "{e}");
    assert_eq!(parameter(&f.east, "/kv/ami/canary/latest").await, None);
}
