//! The smoke test's test double, shared by tests/smoke.rs. moto boots nothing and runs no user
//! data, so `FakeBootedInstance` plays the instance booted from the new image: it waits for the
//! instance kv-ami launches with `kv-ami:role = smoke-test`, records what it was given (image,
//! type, metadata options, enclave option, security group and its rules, tags, the user data
//! unpacked), and then writes the report tags exactly as the launcher's `smoke_report`
//! (terraform/modules/kv-service/templates/instance_init.tftpl) does: `kv-ami:smoke-result`,
//! `kv-ami:smoke-pcr0..2` and `kv-ami:smoke-status = done`, in one CreateTags. What it stands in
//! for: the boot, the launcher's run (terraform/tests/run.sh runs the real one against
//! stand-ins, report included), nitro-cli, vsockproxy and envoy.

use super::repo_root;
use base64::Engine as _;
use kv_ami::aws::Clients;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::Command;
use std::time::{Duration, Instant};

pub const PROFILE: &str = "kv-ami-smoke-test";

/// The PCR0 in the bundle manifest of a smoke-tested run ([`SmokeInputs`]).
pub const PCR0: &str =
    "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
/// What a booted instance whose image matches the manifest reports (PCR0, PCR1, PCR2).
pub const GOOD: [&str; 3] = [PCR0, "01", "02"];
/// The launcher's text in a smoke-tested run (carried verbatim in the test instance's user data).
pub const LAUNCHER: &str =
    "#!/bin/bash\n# instance-init (stand-in text): KV_AMI_SMOKE_TEST aware\necho 'launch'\n";

/// The files of a smoke-tested run, written into one directory.
pub struct SmokeInputs {
    /// A sparse raw image (8 KiB, data at 0 and 5000).
    pub image: std::path::PathBuf,
    /// A bundle manifest naming [`PCR0`].
    pub manifest: std::path::PathBuf,
    /// [`LAUNCHER`].
    pub launcher: std::path::PathBuf,
}

/// Creates the smoke test's instance profile in moto at `moto_url` and writes [`SmokeInputs`]
/// into `dir`.
pub fn smoke_inputs(moto_url: &str, dir: &std::path::Path) -> SmokeInputs {
    create_profile(moto_url);
    let image = super::sparse_image(dir, 8 * 1024, &[0, 5000]);
    let manifest = dir.join("manifest.json");
    std::fs::write(&manifest, super::manifest_json(PCR0, "")).unwrap();
    let launcher = dir.join("instance-init.sh");
    std::fs::write(&launcher, LAUNCHER).unwrap();
    SmokeInputs { image, manifest, launcher }
}

/// moto checks that RunInstances' instance profile exists (created through boto3, in moto's venv).
pub fn create_profile(url: &str) {
    let py = repo_root().join(".tools/venv/bin/python");
    let script = format!(
        "import boto3,sys\n\
        iam=boto3.client('iam',endpoint_url=sys.argv[1],region_name='us-east-1',aws_access_key_id='testing',aws_secret_access_key='testing')\n\
        iam.create_role(RoleName='{PROFILE}',AssumeRolePolicyDocument='{{}}')\n\
        iam.create_instance_profile(InstanceProfileName='{PROFILE}')\n\
        iam.add_role_to_instance_profile(InstanceProfileName='{PROFILE}',RoleName='{PROFILE}')\n"
    );
    let out = Command::new(py).args(["-c", &script, url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[derive(Clone, Copy, Debug)]
pub enum Report {
    /// exit 0, RUNNING with these PCRs, /readyz answered, SERVING.
    Pass([&'static str; 3]),
    /// As the launcher writes it when readiness never came: exit 1 at step 7.
    NeverReady([&'static str; 3]),
    /// Never reports.
    Silent,
}

#[derive(Debug, Default)]
pub struct Seen {
    pub instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub http_tokens: String,
    pub hop_limit: i32,
    pub enclave: Option<bool>,
    pub profile_arn: String,
    pub security_groups: Vec<String>,
    pub ingress_rules: usize,
    pub tags: BTreeMap<String, String>,
    /// Unpacked (gzip) user data.
    pub user_data: String,
}

pub struct FakeBootedInstance {
    pub c: Clients,
}

impl FakeBootedInstance {
    /// The first running smoke-test instance, once kv-ami launched it.
    pub async fn launched(&self) -> aws_sdk_ec2::types::Instance {
        self.launched_except(&[]).await
    }

    /// The first running smoke-test instance not in `played` (one already played may still run
    /// while kv-ami reads its report).
    pub async fn launched_except(&self, played: &[String]) -> aws_sdk_ec2::types::Instance {
        let deadline = Instant::now() + Duration::from_secs(60);
        let f = |k: &str, v: &str| aws_sdk_ec2::types::Filter::builder().name(k).values(v).build();
        loop {
            assert!(Instant::now() < deadline, "kv-ami launched no smoke-test instance");
            let out = self
                .c
                .ec2
                .describe_instances()
                .filters(f("tag:kv-ami:role", "smoke-test"))
                .filters(f("instance-state-name", "running"))
                .send()
                .await
                .unwrap();
            let mut running = out.reservations().iter().flat_map(|r| r.instances());
            if let Some(i) = running.find(|i| !played.iter().any(|p| Some(p.as_str()) == i.instance_id())) {
                return i.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn play(&self, report: Report, launched: tokio::sync::oneshot::Sender<()>) -> Seen {
        self.play_except(report, launched, &[]).await
    }

    /// [`Self::play`] on an instance not in `played` (several smoke tests in one run: variants).
    pub async fn play_except(
        &self,
        report: Report,
        launched: tokio::sync::oneshot::Sender<()>,
        played: &[String],
    ) -> Seen {
        let c = &self.c;
        let i = self.launched_except(played).await;
        let id = i.instance_id().unwrap().to_string();
        let attr = c
            .ec2
            .describe_instance_attribute()
            .instance_id(&id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let b64 = attr.user_data().and_then(|u| u.value()).unwrap_or_default();
        let gz = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut user_data = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut user_data).expect("gzip user data");
        let groups: Vec<String> =
            i.security_groups().iter().filter_map(|g| g.group_id()).map(str::to_string).collect();
        let sg = c.ec2.describe_security_groups().set_group_ids(Some(groups.clone())).send().await.unwrap();
        let meta = i.metadata_options();
        let seen = Seen {
            instance_id: id.clone(),
            image_id: i.image_id().unwrap_or_default().into(),
            instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
            http_tokens: meta
                .and_then(|m| m.http_tokens())
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            hop_limit: meta.and_then(|m| m.http_put_response_hop_limit()).unwrap_or(0),
            enclave: i.enclave_options().and_then(|e| e.enabled()),
            profile_arn: i.iam_instance_profile().and_then(|p| p.arn()).unwrap_or_default().into(),
            ingress_rules: sg.security_groups().iter().map(|g| g.ip_permissions().len()).sum(),
            security_groups: groups,
            tags: i
                .tags()
                .iter()
                .map(|t| (t.key().unwrap_or("").into(), t.value().unwrap_or("").into()))
                .collect(),
            user_data,
        };
        let _ = launched.send(());
        let write = |result: String, pcrs: [&str; 3]| {
            let tag = |k: &str, v: &str| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build();
            c.ec2
                .create_tags()
                .resources(&id)
                .tags(tag("kv-ami:smoke-result", &result))
                .tags(tag("kv-ami:smoke-pcr0", pcrs[0]))
                .tags(tag("kv-ami:smoke-pcr1", pcrs[1]))
                .tags(tag("kv-ami:smoke-pcr2", pcrs[2]))
                .tags(tag("kv-ami:smoke-status", "done"))
                .send()
        };
        match report {
            Report::Pass(p) => {
                write("exit=0 step=8 enclave=RUNNING readyz=true health=SERVING".into(), p).await.unwrap();
            }
            Report::NeverReady(p) => {
                write("exit=1 step=7 enclave=RUNNING readyz=false health=NOT_SERVING".into(), p)
                    .await
                    .unwrap();
            }
            Report::Silent => {}
        }
        seen
    }
}
