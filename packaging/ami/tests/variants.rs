//! `[[variants]]` against a real moto_server on loopback, through the raw import: two variants
//! (gp3 tested on m6i.xlarge, io2 tested on c6i.2xlarge) of one bundle in one run, each with its
//! own name, tags, channel and smoke test (`FakeBootedInstance` plays each booted instance;
//! the io2 RegisterImage itself is checked in tests/mocks.rs, moto keeps no volume type). The
//! first variant fails its smoke test: it publishes nothing, is named, is marked failed; the
//! second still publishes; the run's outcome is an error naming both. A re-run with the same
//! state file resumes per variant: the failed one is booted again on its existing image and
//! published, the published one is reused without a second smoke test.

mod common;

use common::booted::{FakeBootedInstance, GOOD, PROFILE, Report, Seen, smoke_inputs};
use common::{Log, Moto, opts};
use kv_ami::aws::Clients;
use kv_ami::spec::AmiSpec;
use kv_ami::variants::{Jobs, run_all};
use kv_ami::{Job, Manifest};
use std::collections::BTreeMap;

async fn parameter(c: &Clients, name: &str) -> Option<String> {
    let r = c.ssm.get_parameter().name(name).send().await;
    r.ok().and_then(|p| p.parameter().and_then(|p| p.value()).map(str::to_string))
}

/// Images of this account in the region: id -> tags.
async fn images(c: &Clients) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = c.ec2.describe_images().owners("self").send().await.unwrap();
    out.images()
        .iter()
        .map(|i| {
            let tags =
                i.tags().iter().map(|t| (t.key().unwrap().into(), t.value().unwrap().into())).collect();
            (i.image_id().unwrap().to_string(), tags)
        })
        .collect()
}

fn build<'m>(m: &'m Manifest, variant: &str) -> &'m kv_ami::Build {
    m.builds.iter().find(|b| b.custom_data.get("variant").map(String::as_str) == Some(variant)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_variant_publishes_nothing_the_other_does_and_a_rerun_resumes_each() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let common::booted::SmokeInputs { image, manifest, launcher } = smoke_inputs(&moto.url, dir.path());
    let spec = AmiSpec::parse(&format!(
        r#"
name = "kv-{{variant}}-{{content_key}}"
region = "us-east-1"
copy_to = ["eu-west-1"]
channel = "stable"
[tags]
service = "kv"
[upload]
workers = 2
wait_interval_secs = 0
[smoke_test]
instance_profile = "{PROFILE}"
launcher = "{}"
report_attempts = 3000
report_interval_secs = 0
[[variants]]
id = "gp3"
tags = {{ volume = "gp3" }}
[[variants]]
id = "io2"
smoke_test_instance_type = "c6i.2xlarge"
tags = {{ volume = "io2" }}
[variants.volume]
type = "io2"
iops = 16000
"#,
        launcher.display()
    ))
    .unwrap();
    let jobs: Vec<Job> =
        spec.variant_specs().into_iter().map(|s| Job::prepare(s, &image, &manifest).unwrap()).collect();
    let key = jobs[0].content_key.clone();
    let target = moto.target();
    let east = Clients::new("us-east-1", &target).await;
    let west = Clients::new("eu-west-1", &target).await;
    let fake = FakeBootedInstance { c: east.clone() };
    let state = dir.path().join("ami-state.json");
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let mut o = opts(&target, &push);
    o.state_path = Some(&state);

    // 1. gp3's launcher never gets ready; io2 passes.
    let play_both = async {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let gp3 = fake.play(Report::NeverReady(GOOD), tx).await;
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let io2 = fake.play_except(Report::Pass(GOOD), tx, std::slice::from_ref(&gp3.instance_id)).await;
        (gp3, io2)
    };
    let (outcome, (gp3, io2)): (_, (Seen, Seen)) =
        tokio::join!(run_all(Jobs::Import(&jobs), &o, std::future::pending()), play_both);
    let e = outcome.error().expect("the run fails");
    assert!(e.starts_with("1 of 2 variants failed: variant gp3: us-east-1: smoke test of"), "{e}");
    assert!(e.contains("step launcher: exit status 1 at step 7"), "{e}");
    assert!(e.ends_with("; published (in the manifest): io2"), "{e}");
    assert_eq!(outcome.published, vec!["io2"]);
    let m = outcome.manifest.as_ref().expect("the published variant's manifest");
    assert_eq!(m.builds.len(), 1);
    let b_io2 = build(m, "io2");
    assert_eq!(b_io2.name, format!("kv-io2-{}", &key[..12]));

    // Each variant was booted from its own image on its own instance type.
    assert_eq!(gp3.instance_type, "m6i.xlarge");
    assert_eq!(io2.instance_type, "c6i.2xlarge");
    assert_eq!(io2.image_id, b_io2.regions["us-east-1"].ami_id);
    assert_ne!(gp3.image_id, io2.image_id);

    // gp3: nothing published (no copy, no parameter), its image marked failed in its channel.
    let east_images = images(&east).await;
    let west_images = images(&west).await;
    let g = &east_images[&gp3.image_id];
    assert_eq!(g.get("kv-ami:variant").map(String::as_str), Some("gp3"));
    assert_eq!(g.get("kv-ami:smoke").map(String::as_str), Some("failed"));
    assert_eq!(g.get("kv-ami:channel").map(String::as_str), Some("stable-gp3"));
    assert!(
        !west_images.values().any(|t| t.get("kv-ami:variant").map(String::as_str) == Some("gp3")),
        "no gp3 copy: {west_images:?}"
    );
    for c in [&east, &west] {
        assert_eq!(parameter(c, "/kv/ami/stable-gp3/latest").await, None);
        assert_eq!(parameter(c, &format!("/kv/ami/stable-gp3/builds/{}", &key[..12])).await, None);
    }
    // io2: published in both regions with its own tags and channel.
    for (c, r, all) in [(&east, "us-east-1", &east_images), (&west, "eu-west-1", &west_images)] {
        let ami = &b_io2.regions[r].ami_id;
        let t = &all[ami];
        assert_eq!(t.get("kv-ami:variant").map(String::as_str), Some("io2"), "{r}");
        assert_eq!(t.get("kv-ami:channel").map(String::as_str), Some("stable-io2"), "{r}");
        assert_eq!(t.get("volume").map(String::as_str), Some("io2"), "{r}");
        assert_eq!(t.get("service").map(String::as_str), Some("kv"), "{r}");
        assert_eq!(t.get("kv-ami:smoke").map(String::as_str), Some("passed"), "{r}");
        assert_eq!(parameter(c, "/kv/ami/stable-io2/latest").await.as_ref(), Some(ami), "{r}");
    }
    // (moto keeps no volume type on a registered image: the io2 RegisterImage is checked in
    // tests/mocks.rs.)
    assert!(state.with_file_name("ami-state.gp3.json").exists());
    assert!(state.with_file_name("ami-state.io2.json").exists());

    // 2. The re-run with the same state file: gp3 reuses its image and boots it again (now it
    //    passes); io2 is reused, not booted again.
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let played = [gp3.instance_id.clone(), io2.instance_id.clone()];
    let (outcome, again) = tokio::join!(
        run_all(Jobs::Import(&jobs), &o, std::future::pending()),
        fake.play_except(Report::Pass(GOOD), tx, &played)
    );
    assert_eq!(outcome.error(), None, "{:#?}", log.lines());
    let m = outcome.manifest.unwrap();
    assert_eq!(m.builds.len(), 2);
    let b_gp3 = build(&m, "gp3");
    assert_eq!(b_gp3.regions["us-east-1"].ami_id, gp3.image_id, "the failed variant's image reused");
    assert_eq!(again.image_id, gp3.image_id);
    assert!(build(&m, "io2").regions.values().all(|r| r.reused), "io2 reused");
    let all = east.ec2.describe_instances().send().await.unwrap();
    let launched = all.reservations().iter().flat_map(|r| r.instances()).count();
    assert_eq!(launched, 3, "io2 not booted again (its state file says it passed)");
    let east_images = images(&east).await;
    assert_eq!(east_images[&gp3.image_id].get("kv-ami:smoke").map(String::as_str), Some("passed"));
    for (c, r) in [(&east, "us-east-1"), (&west, "eu-west-1")] {
        let ami = &b_gp3.regions[r].ami_id;
        assert_eq!(parameter(c, "/kv/ami/stable-gp3/latest").await.as_ref(), Some(ami), "{r}");
    }
}
