//! The builder-instance bake's orchestration against a real moto_server on loopback. moto runs
//! no user data, so the test plays the builder: `FakeBuilderInstance` waits for the instance
//! kv-ami launches, records what it was given (user data, metadata options, instance profile),
//! fetches the bundle from S3 the way the user data does, and writes the signal tag. After every
//! run, Describe/List calls check what is left: the builder terminated, its security group and
//! the S3 objects gone, and an image only after a successful bake.

mod common;

use base64::Engine as _;
use common::{Log, Moto, never, opts};
use kv_ami::aws::Clients;
use kv_ami::bake::{BakeJob, bake};
use kv_ami::spec::AmiSpec;
use kv_ami::userdata::{DETAIL_TAG, STATUS_TAG};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BUCKET: &str = "bake-bucket";

/// IAM instance profile, bucket and a base AMI id in an SSM parameter (moto checks that the
/// profile of RunInstances exists; IAM is created through boto3, which moto's venv has).
async fn set_up(moto: &Moto) -> Clients {
    let py = common::repo_root().join(".tools/venv/bin/python");
    let script = "import boto3,sys\n\
        iam=boto3.client('iam',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='testing',aws_secret_access_key='testing')\n\
        iam.create_role(RoleName='kv-ami-builder',AssumeRolePolicyDocument='{}')\n\
        iam.create_instance_profile(InstanceProfileName='kv-ami-builder')\n\
        iam.add_role_to_instance_profile(InstanceProfileName='kv-ami-builder',RoleName='kv-ami-builder')\n";
    let out = Command::new(py).args(["-c", script, &moto.url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = Clients::new("us-east-1", &moto.target()).await;
    c.s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let base = c.ec2.describe_images().send().await.unwrap();
    let base = base.images().iter().find_map(|i| i.image_id()).expect("moto has default images").to_string();
    c.ssm
        .put_parameter()
        .name("/test/base-ami")
        .value(&base)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    c
}

/// A bundle directory whose manifest lists two files with their real SHA-256.
fn bundle(dir: &Path) -> std::path::PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("systemd")).unwrap();
    let files = [
        ("proxy", "proxy binary", "/opt/privacysandbox/proxy", "0755", "vsockproxy"),
        (
            "systemd/vsockproxy.service",
            "[Unit]\nDescription=x\n",
            "/etc/systemd/system/vsockproxy.service",
            "0644",
            "systemd-unit",
        ),
    ];
    let mut entries = Vec::new();
    for (path, body, dest, mode, role) in files {
        std::fs::write(b.join(path), body).unwrap();
        entries.push(format!(
            "{{\"path\":\"{path}\",\"role\":\"{role}\",\"size\":{},\"sha256\":\"{}\",\"mode\":\"{mode}\",\"install_to\":\"{dest}\"}}",
            body.len(),
            hex::encode(Sha256::digest(body))
        ));
    }
    std::fs::write(
        b.join("manifest.json"),
        format!("{{\"format\":1,\"pcrs\":{{\"PCR0\":\"ab\"}},\"files\":[{}]}}", entries.join(",")),
    )
    .unwrap();
    b
}

fn job(dir: &Path) -> BakeJob {
    let spec = AmiSpec::parse(&format!(
        r#"
name = "kv-baked-{{content_key}}"
region = "us-east-1"
copy_to = ["eu-west-1"]
share_with = ["111122223333"]
ssm_parameter = "/kv/ami-id"
[tags]
service = "kv"
[upload]
wait_interval_secs = 0
[bake]
base_ami_ssm_parameter = "/test/base-ami"
instance_profile = "kv-ami-builder"
bucket = "{BUCKET}"
envoy_image = "envoyproxy/envoy:v1.24.1@sha256:{}"
signal_attempts = 3000
signal_interval_secs = 0
"#,
        "e".repeat(64)
    ))
    .unwrap();
    BakeJob::prepare(spec, &bundle(dir)).unwrap()
}

#[derive(Clone, Copy)]
enum Verdict {
    Ok,
    Failed(&'static str),
    /// Never signals (the run is interrupted instead).
    Silent,
}

/// What the builder was launched with and what it found in S3.
#[derive(Debug, Default)]
struct Seen {
    instance_id: String,
    image_id: String,
    instance_type: String,
    user_data: String,
    http_tokens: String,
    hop_limit: i32,
    profile_arn: String,
    security_groups: Vec<String>,
    tags: BTreeMap<String, String>,
    fetched: BTreeMap<String, Vec<u8>>,
}

/// Test double of the builder instance's user data (see the module comment).
struct FakeBuilderInstance {
    c: Clients,
}

fn quoted<'a>(user_data: &'a str, var: &str) -> &'a str {
    let start = user_data.find(&format!("\n{var}='")).unwrap() + var.len() + 3;
    let len = user_data[start..].find('\'').unwrap();
    &user_data[start..start + len]
}

impl FakeBuilderInstance {
    async fn play(&self, verdict: Verdict, launched: tokio::sync::oneshot::Sender<()>) -> Seen {
        let c = &self.c;
        let deadline = Instant::now() + Duration::from_secs(60);
        let f = |k: &str, v: &str| aws_sdk_ec2::types::Filter::builder().name(k).values(v).build();
        let instance = loop {
            assert!(Instant::now() < deadline, "kv-ami launched no builder");
            let out = c
                .ec2
                .describe_instances()
                .filters(f("tag:kv-ami:role", "builder"))
                .filters(f("instance-state-name", "running"))
                .send()
                .await
                .unwrap();
            if let Some(i) = out.reservations().iter().flat_map(|r| r.instances()).next() {
                break i.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let id = instance.instance_id().unwrap().to_string();
        let attr = c
            .ec2
            .describe_instance_attribute()
            .instance_id(&id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let user_data =
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
        let meta = instance.metadata_options();
        let mut seen = Seen {
            instance_id: id.clone(),
            image_id: instance.image_id().unwrap_or_default().into(),
            instance_type: instance.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
            http_tokens: meta
                .and_then(|m| m.http_tokens())
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            hop_limit: meta.and_then(|m| m.http_put_response_hop_limit()).unwrap_or(0),
            profile_arn: instance.iam_instance_profile().and_then(|p| p.arn()).unwrap_or_default().into(),
            security_groups: instance
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id())
                .map(str::to_string)
                .collect(),
            tags: instance
                .tags()
                .iter()
                .map(|t| (t.key().unwrap_or("").into(), t.value().unwrap_or("").into()))
                .collect(),
            ..Default::default()
        };
        // `aws s3 cp --recursive s3://$bucket/$prefix/ $bundle/`
        let (bucket, prefix) =
            (quoted(&user_data, "bucket").to_string(), quoted(&user_data, "prefix").to_string());
        let listed =
            c.s3.list_objects_v2().bucket(&bucket).prefix(format!("{prefix}/")).send().await.unwrap();
        for o in listed.contents() {
            let key = o.key().unwrap();
            let body =
                c.s3.get_object()
                    .bucket(&bucket)
                    .key(key)
                    .send()
                    .await
                    .unwrap()
                    .body
                    .collect()
                    .await
                    .unwrap();
            seen.fetched.insert(key[prefix.len() + 1..].to_string(), body.to_vec());
        }
        seen.user_data = user_data;
        let _ = launched.send(());
        let signal = |status: &str, detail: &str| {
            c.ec2
                .create_tags()
                .resources(&id)
                .tags(aws_sdk_ec2::types::Tag::builder().key(STATUS_TAG).value(status).build())
                .tags(aws_sdk_ec2::types::Tag::builder().key(DETAIL_TAG).value(detail).build())
                .send()
        };
        match verdict {
            Verdict::Ok => {
                signal("ok", "installed").await.unwrap();
            }
            Verdict::Failed(d) => {
                signal("failed", d).await.unwrap();
            }
            Verdict::Silent => {}
        }
        seen
    }
}

/// Nothing of the run is left but (after a success) the image: builder terminated, its
/// security group deleted, no object under the bake prefix.
async fn assert_nothing_left(c: &Clients, seen: &Seen) {
    let out = c.ec2.describe_instances().instance_ids(&seen.instance_id).send().await.unwrap();
    let state =
        out.reservations()[0].instances()[0].state().and_then(|s| s.name()).unwrap().as_str().to_string();
    assert_eq!(state, "terminated", "builder {}", seen.instance_id);
    let f = aws_sdk_ec2::types::Filter::builder().name("group-name").values("kv-ami-builder-*").build();
    let groups = c.ec2.describe_security_groups().filters(f).send().await.unwrap();
    assert!(groups.security_groups().is_empty(), "{:?}", groups.security_groups());
    let objects = c.s3.list_objects_v2().bucket(BUCKET).prefix("kv-ami-bake/").send().await.unwrap();
    assert_eq!(objects.key_count(), Some(0), "{:?}", objects.contents());
}

async fn images_with_key(c: &Clients, key: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let f = aws_sdk_ec2::types::Filter::builder().name("tag:kv-ami:content-key").values(key).build();
    c.ec2.describe_images().owners("self").filters(f).send().await.unwrap().images().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_launches_an_imdsv2_builder_waits_for_its_signal_creates_the_image_and_removes_the_builder() {
    let moto = Moto::start();
    let c = set_up(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let target = moto.target();
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let fake = FakeBuilderInstance { c: c.clone() };
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let (m, seen) = {
        let o = opts(&target, &push);
        tokio::join!(bake(&job, &o, never()), fake.play(Verdict::Ok, tx))
    };
    let m = m.unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));

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
    let moto = Moto::start();
    let c = set_up(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let target = moto.target();
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let fake = FakeBuilderInstance { c: c.clone() };
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
    let moto = Moto::start();
    let c = set_up(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let target = moto.target();
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let fake = FakeBuilderInstance { c: c.clone() };
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
    cleanup.finish(Ok::<(), kv_ami::aws::Error>(()), &push).await.unwrap();
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
