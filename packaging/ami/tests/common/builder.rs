//! The builder bake's test double and set-up, shared by tests/bake.rs and tests/cli.rs.
//! moto runs no user data, so `FakeBuilderInstance` plays the builder: it waits for the instance
//! kv-ami launches, records what it was given (user data, metadata options, instance profile),
//! fetches the bundle from S3 the way the user data does, and writes the signal tag.

use super::{Moto, repo_root};
use base64::Engine as _;
use kv_ami::aws::Clients;
use kv_ami::bake::BakeJob;
use kv_ami::spec::AmiSpec;
use kv_ami::userdata::{DETAIL_TAG, STATUS_TAG};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const BUCKET: &str = "bake-bucket";

/// IAM instance profile, bucket and a base AMI id in an SSM parameter (moto checks that the
/// profile of RunInstances exists; IAM is created through boto3, which moto's venv has).
pub async fn set_up(moto: &Moto) -> Clients {
    let py = repo_root().join(".tools/venv/bin/python");
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
pub fn bundle(dir: &Path) -> std::path::PathBuf {
    let b = dir.join("bundle");
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
    let entries = super::write_bundle_files(&b, &files);
    std::fs::write(b.join("manifest.json"), super::manifest_json("ab", &entries)).unwrap();
    b
}

/// The bake spec of these tests (moto: no waits between checks).
pub fn spec_text() -> String {
    format!(
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
    )
}

/// Everything a bake test starts from: moto with the base AMI parameter, a bundle, the job, the
/// run's log and the builder test double. Keep the whole value alive for the test: dropping it
/// stops moto and removes the bundle.
pub struct BakeFixture {
    pub moto: Moto,
    pub c: Clients,
    pub dir: tempfile::TempDir,
    pub job: BakeJob,
    pub target: kv_ami::aws::Target,
    pub log: super::Log,
    pub fake: FakeBuilderInstance,
}

pub async fn bake_fixture() -> BakeFixture {
    let moto = Moto::start();
    let c = set_up(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path());
    let target = moto.target();
    let fake = FakeBuilderInstance { c: c.clone() };
    BakeFixture { moto, c, dir, job, target, log: super::Log::default(), fake }
}

pub fn job(dir: &Path) -> BakeJob {
    BakeJob::prepare(AmiSpec::parse(&spec_text()).unwrap(), &bundle(dir)).unwrap()
}

#[derive(Clone, Copy)]
pub enum Verdict {
    Ok,
    Failed(&'static str),
    /// Never signals (the run is interrupted instead).
    Silent,
}

/// What the builder was launched with and what it found in S3.
#[derive(Debug, Default)]
pub struct Seen {
    pub instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub user_data: String,
    pub http_tokens: String,
    pub hop_limit: i32,
    pub profile_arn: String,
    pub security_groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub fetched: BTreeMap<String, Vec<u8>>,
}

/// Test double of the builder instance's user data (see the module comment).
pub struct FakeBuilderInstance {
    pub c: Clients,
}

pub fn quoted<'a>(user_data: &'a str, var: &str) -> &'a str {
    let start = user_data.find(&format!("\n{var}='")).unwrap() + var.len() + 3;
    let len = user_data[start..].find('\'').unwrap();
    &user_data[start..start + len]
}

impl FakeBuilderInstance {
    pub async fn play(&self, verdict: Verdict, launched: tokio::sync::oneshot::Sender<()>) -> Seen {
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
pub async fn assert_nothing_left(c: &Clients, seen: &Seen) {
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

pub async fn images_with_key(c: &Clients, key: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let f = aws_sdk_ec2::types::Filter::builder().name("tag:kv-ami:content-key").values(key).build();
    c.ec2.describe_images().owners("self").filters(f).send().await.unwrap().images().to_vec()
}
