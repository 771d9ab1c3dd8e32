//! The kv-ami binary: dry-run makes no call, bad input is refused before any call, and a real
//! import against moto_server writes a Packer-shaped manifest.

mod common;

use common::{Moto, bundle_manifest, sparse_image};
use std::net::TcpListener;
use std::process::Command;

const SPEC: &str = r#"
name = "kv-{content_key}"
region = "us-east-1"
copy_to = ["eu-west-1"]
share_with = ["111122223333"]
ssm_parameter = "/kv/ami"
encrypt_copies = true
[kms_key_ids]
"eu-west-1" = "alias/kv-ami"
[upload]
wait_interval_secs = 0
"#;

fn kv_ami() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kv-ami"));
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("KV_AMI_ENDPOINT_URL");
    c
}

/// A listener that counts connections: any AWS call would have to connect to it.
fn trap() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[test]
fn dry_run_prints_the_calls_and_makes_none() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 2 << 20, &[0, 1 << 20]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let spec = dir.path().join("amispec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let (listener, url) = trap();
    let out = kv_ami()
        .args(["import", "--skip-smoke-test", "--dry-run", "--endpoint-url", &url, "--spec"])
        .arg(&spec)
        .arg("--image")
        .arg(&image)
        .arg("--bundle-manifest")
        .arg(&manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("us-east-1 ebs:PutSnapshotBlock x2 "), "{stdout}");
    assert!(stdout.contains("eu-west-1 ec2:CopyImage source=us-east-1"), "{stdout}");
    assert!(stdout.contains("encrypted=true kms=alias/kv-ami"), "{stdout}");
    assert!(stdout.contains("eu-west-1 ssm:PutParameter /kv/ami"), "{stdout}");
    assert!(listener.accept().is_err(), "dry run connected to the endpoint");
}

#[test]
fn the_smoke_test_is_on_by_default_and_comes_before_any_copy_in_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 4096, &[0]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let spec = dir.path().join("amispec.toml");
    let (listener, url) = trap();
    let import = |text: &str, extra: &[&str]| {
        std::fs::write(&spec, text).unwrap();
        kv_ami()
            .args(["import", "--endpoint-url", &url, "--spec"])
            .arg(&spec)
            .arg("--image")
            .arg(&image)
            .arg("--bundle-manifest")
            .arg(&manifest)
            .args(extra)
            .output()
            .unwrap()
    };
    // No [smoke_test] and no --skip-smoke-test: refused, naming the table and the flag.
    let out = import(SPEC, &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("smoke_test: the [smoke_test] table is missing") && e.contains("--skip-smoke-test"),
        "{e}"
    );
    // --skip-smoke-test: a warning, and the plan says the test and `latest` are skipped.
    let out = import(&format!("channel = \"stable\"\n{SPEC}"), &["--skip-smoke-test", "--dry-run"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: --skip-smoke-test"), "{stderr}");
    assert!(stdout.contains("# smoke test skipped"), "{stdout}");
    assert!(stdout.contains("ssm:PutParameter /kv/ami/stable/builds/"), "{stdout}");
    assert!(!stdout.contains("/kv/ami/stable/latest"), "{stdout}");
    // With the table: the launch from the new image before the first copy, latest last.
    let launcher = dir.path().join("instance-init.sh");
    std::fs::write(&launcher, "#!/bin/bash\n# KV_AMI_SMOKE_TEST\n").unwrap();
    let with = format!(
        "channel = \"stable\"\n{SPEC}[smoke_test]\ninstance_profile = \"kv-ami-smoke-test\"\nlauncher = \"{}\"\n",
        launcher.display()
    );
    let out = import(&with, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let at = |needle: &str| stdout.find(needle).unwrap_or_else(|| panic!("{needle}: {stdout}"));
    assert!(
        at("us-east-1 ec2:RunInstances image=<ami> type=m6i.xlarge enclave=true imds=v2-required")
            < at("ec2:CopyImage")
    );
    assert!(at("ec2:GetConsoleOutput (only on failure)") < at("ec2:CopyImage"));
    assert!(at("/kv/ami/stable/builds/") < at("ssm:PutParameter /kv/ami/stable/latest"));
    // A launcher that cannot report is refused before any call.
    std::fs::write(&launcher, "#!/bin/bash\necho old launcher\n").unwrap();
    let out = import(&with, &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("smoke_test.launcher") && e.contains("no KV_AMI_SMOKE_TEST"), "{e}");
    // promote --dry-run: every region's lookup before any write.
    std::fs::write(&spec, &with).unwrap();
    let out = kv_ami()
        .args(["promote", "--dry-run", "--endpoint-url", &url, "--ami", "ami-0123", "--spec"])
        .arg(&spec)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lookups = stdout.rfind("ec2:DescribeImages owners=self").unwrap();
    assert!(lookups < stdout.find("eu-west-1 ssm:PutParameter /kv/ami/stable/latest").unwrap(), "{stdout}");
    // gc without a channel (spec or flag), or with a bad one: refused before any call.
    std::fs::write(&spec, SPEC).unwrap();
    for extra in [&[][..], &["--channel", "Stable"][..]] {
        let out = kv_ami()
            .args(["gc", "--keep", "2", "--endpoint-url", &url, "--spec"])
            .arg(&spec)
            .args(extra)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains("channel"), "{e}");
    }
    assert!(listener.accept().is_err(), "connected to the endpoint");
}

#[test]
fn variants_plan_each_variant_and_a_bad_variant_is_named_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 4096, &[0]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let spec = dir.path().join("amispec.toml");
    let (listener, url) = trap();
    let text = "name = \"kv-{variant}-{content_key}\"\nregion = \"us-east-1\"\ncopy_to = [\"eu-west-1\"]\n\
                channel = \"stable\"\n[[variants]]\nid = \"gp3\"\n[[variants]]\nid = \"io2\"\n\
                [variants.volume]\ntype = \"io2\"\niops = 16000\n";
    let import = |text: &str| {
        std::fs::write(&spec, text).unwrap();
        kv_ami()
            .args(["import", "--skip-smoke-test", "--dry-run", "--endpoint-url", &url, "--spec"])
            .arg(&spec)
            .arg("--image")
            .arg(&image)
            .arg("--bundle-manifest")
            .arg(&manifest)
            .output()
            .unwrap()
    };
    let out = import(text);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let at = |needle: &str| stdout.find(needle).unwrap_or_else(|| panic!("{needle}: {stdout}"));
    assert!(at("# variant gp3") < at("# variant io2"), "{stdout}");
    assert!(at("ec2:RegisterImage name=kv-gp3-") < at("# variant io2"));
    assert!(at("# variant io2") < at("ec2:RegisterImage name=kv-io2-"));
    assert!(at("/kv/ami/stable-gp3/builds/") < at("# variant io2"));
    assert!(at("# variant io2") < at("/kv/ami/stable-io2/builds/"));
    // A bad value in a variant: refused, naming the file, the variant and the key.
    let out = import(&text.replace("iops = 16000", "iops = 50"));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("amispec.toml")
            && e.contains("variants[1] (io2).volume.iops: 50 is outside io2's 100-256000"),
        "{e}"
    );
    // promote on a spec with variants needs --variant.
    std::fs::write(&spec, text).unwrap();
    let promote = |extra: &[&str]| {
        kv_ami()
            .args(["promote", "--dry-run", "--endpoint-url", &url, "--ami", "ami-0123", "--spec"])
            .arg(&spec)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = promote(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --variant"));
    let out = promote(&["--variant", "io2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ssm:PutParameter /kv/ami/stable-io2/latest"),
        "{stdout}"
    );
    assert!(listener.accept().is_err(), "connected to the endpoint");
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 4096, &[0]);
    let manifest = bundle_manifest(dir.path(), "aa");
    let (listener, url) = trap();
    let spec = dir.path().join("amispec.toml");
    let run = |spec_text: &str, image: &std::path::Path, extra: &[&str]| {
        std::fs::write(&spec, spec_text).unwrap();
        let out = kv_ami()
            .args(["import", "--skip-smoke-test", "--endpoint-url", &url, "--spec"])
            .arg(&spec)
            .arg("--image")
            .arg(image)
            .arg("--bundle-manifest")
            .arg(&manifest)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&format!("{SPEC}\nregionn = \"x\""), &image, &[]);
    assert!(e.contains("amispec.toml") && e.contains("regionn"), "{e}");
    let e = run(SPEC, &image, &["--workers", "0"]);
    assert!(e.contains("upload.workers"), "{e}");
    let e = run(SPEC, &image, &["--region", "nowhere"]);
    assert!(e.contains("region"), "{e}");
    let vmdk = dir.path().join("disk.vmdk");
    let mut data = b"KDMV".to_vec();
    data.resize(4096, 0);
    std::fs::write(&vmdk, data).unwrap();
    let e = run(SPEC, &vmdk, &[]);
    assert!(e.contains("disk.vmdk") && e.contains("VMDK"), "{e}");
    assert!(listener.accept().is_err(), "a refused run connected to the endpoint");
}

#[test]
fn import_against_moto_writes_a_packer_shaped_manifest() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 8192, &[100, 4000]);
    let manifest = bundle_manifest(dir.path(), "cc");
    let spec = dir.path().join("amispec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out_path = dir.path().join("ami-manifest.json");
    let out = kv_ami()
        .args(["import", "--skip-smoke-test", "--endpoint-url", &moto.url, "--workers", "2", "--spec"])
        .arg(&spec)
        .arg("--image")
        .arg(&image)
        .arg("--bundle-manifest")
        .arg(&manifest)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let artifact = m["builds"][0]["artifact_id"].as_str().unwrap();
    let parts: Vec<&str> = artifact.split(',').collect();
    assert_eq!(parts.len(), 2, "{artifact}");
    assert!(parts[0].starts_with("us-east-1:ami-") && parts[1].starts_with("eu-west-1:ami-"), "{artifact}");
    assert_eq!(m["last_run_uuid"], m["builds"][0]["packer_run_uuid"]);
    assert!(m["builds"][0]["timings_seconds"]["total"].as_f64().unwrap() > 0.0);
}

const BAKE_SPEC: &str = r#"
name = "kv-{content_key}"
region = "us-east-1"
copy_to = ["eu-west-1"]
share_with_organizations = ["arn:aws:organizations::111122223333:organization/o-abcdefghij"]
ssm_parameter = "/kv/ami"
[bake]
base_ami_name = "al2023-ami-2023.*-x86_64"
base_ami_owner = "amazon"
instance_profile = "kv-ami-builder"
bucket = "bake-bucket"
spot = true
envoy_image = "envoyproxy/envoy:v1.24.1@sha256:1111111111111111111111111111111111111111111111111111111111111111"
"#;

fn bundle_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("proxy"), b"binary").unwrap();
    std::fs::write(
        b.join("manifest.json"),
        common::manifest_json(
            "00",
            r#"{"path":"proxy","size":6,"sha256":"9a3a45d01531a20e89ac6ae10b0b0beb0492acd7216a368aa062d1a5fecaf9cd","mode":"0755","install_to":"/opt/privacysandbox/proxy","role":"vsockproxy"}"#,
        ),
    )
    .unwrap();
    b
}

fn bake_cmd(
    spec: &std::path::Path,
    bundle: &std::path::Path,
    url: &str,
    extra: &[&str],
) -> std::process::Output {
    kv_ami()
        .args(["bake", "--skip-smoke-test", "--endpoint-url", url, "--spec"])
        .arg(spec)
        .arg("--bundle-dir")
        .arg(bundle)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn bake_dry_run_prints_the_builder_flow_and_makes_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_dir(dir.path());
    let spec = dir.path().join("bakespec.toml");
    std::fs::write(&spec, BAKE_SPEC).unwrap();
    let (listener, url) = trap();
    let out = bake_cmd(&spec, &bundle, &url, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let ops: Vec<&str> =
        stdout.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(' ').nth(1)).collect();
    let pos =
        |op: &str| ops.iter().position(|o| *o == op).unwrap_or_else(|| panic!("{op} missing:\n{stdout}"));
    // The order of the flow.
    assert!(pos("s3:PutObject") < pos("ec2:CreateSecurityGroup"));
    assert!(pos("ec2:CreateSecurityGroup") < pos("ec2:RunInstances"));
    assert!(pos("ec2:RunInstances") < pos("ec2:CreateImage"));
    assert!(pos("ec2:CreateImage") < pos("ec2:CopyImage"));
    assert!(pos("ec2:CopyImage") < pos("ec2:TerminateInstances"));
    assert!(pos("ec2:TerminateInstances") < pos("ec2:DeleteSecurityGroup"));
    assert!(pos("ec2:DeleteSecurityGroup") < pos("s3:DeleteObjects"));
    assert!(!ops.contains(&"ec2:StopInstances"), "a spot builder is not stopped:\n{stdout}");
    assert!(
        stdout.contains(
            "owners=amazon filter name=al2023-ami-2023.*-x86_64 state=available architecture=x86_64"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "market=spot(one-time) enclave=true imds=v2-required hop_limit=1 profile=kv-ami-builder"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("launchPermission add arn:aws:organizations::111122223333:organization/o-abcdefghij"),
        "{stdout}"
    );
    assert!(stdout.contains("no_reboot=false"), "{stdout}");
    assert!(listener.accept().is_err(), "dry run connected to the endpoint");

    // --print-user-data: the rendered script, no call either.
    let out = bake_cmd(&spec, &bundle, &url, &["--print-user-data"]);
    let ud = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(ud.starts_with("#!/bin/bash\n") && ud.contains("bucket='bake-bucket'"), "{ud}");
    assert!(listener.accept().is_err());
}

#[test]
fn bake_refuses_bad_input_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_dir(dir.path());
    let spec = dir.path().join("bakespec.toml");
    let (listener, url) = trap();
    let run = |text: &str| {
        std::fs::write(&spec, text).unwrap();
        let out = bake_cmd(&spec, &bundle, &url, &[]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(SPEC);
    assert!(e.contains("[bake] table is missing"), "{e}");
    let e = run(&BAKE_SPEC
        .replace("@sha256:1111111111111111111111111111111111111111111111111111111111111111", ":latest"));
    assert!(e.contains("bakespec.toml") && e.contains("bake.envoy_image") && e.contains("pinned"), "{e}");
    let e = run(&BAKE_SPEC.replace("spot = true", "spot = true\ninstance_type = \"t3.2xlarge\""));
    assert!(e.contains("bake.instance_type") && e.contains("Nitro Enclaves"), "{e}");
    // A bundle file that does not match its manifest.
    std::fs::write(bundle.join("proxy"), b"BINARY").unwrap();
    let e = run(BAKE_SPEC);
    assert!(e.contains("files[0]") && e.contains("proxy") && e.contains("sha256"), "{e}");
    std::fs::remove_file(bundle.join("proxy")).unwrap();
    let e = run(BAKE_SPEC);
    assert!(e.contains("files[0]") && e.contains("proxy"), "{e}");
    assert!(listener.accept().is_err(), "a refused bake connected to the endpoint");
}

/// `kv-ami bake` as a process against moto, with the test double playing the builder.
async fn bake_process(
    moto: &Moto,
    dir: &std::path::Path,
    verdict: common::builder::Verdict,
    sigint: bool,
) -> (std::process::Output, common::builder::Seen) {
    use common::builder::{FakeBuilderInstance, bundle, set_up, spec_text};
    let c = set_up(moto).await;
    let b = bundle(dir);
    let spec = dir.join("bakespec.toml");
    std::fs::write(&spec, spec_text()).unwrap();
    let child = kv_ami()
        .args(["bake", "--skip-smoke-test", "--endpoint-url", &moto.url, "--spec"])
        .arg(&spec)
        .arg("--bundle-dir")
        .arg(&b)
        .arg("--out")
        .arg(dir.join("ami-manifest.json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let fake = FakeBuilderInstance { c };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let interrupter = async move {
        if sigint && rx.await.is_ok() {
            let st = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
            assert!(st.success());
        }
    };
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    let (seen, (), out) = tokio::join!(fake.play(verdict, tx), interrupter, waiter);
    (out.unwrap(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_binary_against_moto_writes_the_manifest_and_leaves_only_the_image() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (out, seen) = bake_process(&moto, dir.path(), common::builder::Verdict::Ok, false).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ami-manifest.json")).unwrap()).unwrap();
    let artifact = m["builds"][0]["artifact_id"].as_str().unwrap();
    assert!(artifact.starts_with("us-east-1:ami-") && artifact.contains(",eu-west-1:ami-"), "{artifact}");
    assert_eq!(m["builds"][0]["builder_type"], "kv-ami.builder");
    assert_eq!(m["builds"][0]["custom_data"]["builder_instance"], seen.instance_id.as_str());
    let c = kv_ami::aws::Clients::new("us-east-1", &moto.target()).await;
    common::builder::assert_nothing_left(&c, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_to_a_bake_cleans_up_before_the_process_exits() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (out, seen) = bake_process(&moto, dir.path(), common::builder::Verdict::Silent, true).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        err.contains("cleanup: us-east-1: ec2:TerminateInstances") && err.contains("ec2:DeleteSecurityGroup"),
        "{err}"
    );
    assert!(!dir.path().join("ami-manifest.json").exists());
    let c = kv_ami::aws::Clients::new("us-east-1", &moto.target()).await;
    common::builder::assert_nothing_left(&c, &seen).await;
    assert!(common::builder::images_with_key(&c, &c_key(dir.path())).await.is_empty());
}

fn c_key(dir: &std::path::Path) -> String {
    kv_ami::content_key(&dir.join("bundle/manifest.json")).unwrap()
}
