//! The kv-packager binary: build, describe, bundle and verify as an operator runs them.

mod common;

use common::{bytes, inputs, read};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn packager() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kv-packager"));
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn err(o: Output) -> String {
    assert!(!o.status.success(), "unexpectedly succeeded: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn build_eif(i: &common::Inputs, out: &Path) -> serde_json::Value {
    let o = ok(packager()
        .args(["--json", "eif", "build", "--blobs"])
        .arg(i.path("blobs"))
        .args(["--cmdline", "console=ttyS0", "--rootfs"])
        .arg(i.path("rootfs"))
        .args(["--cmd", r#"["/bin/kv-server","--port","50051"]"#, "--env", "A=1", "--module"])
        .arg(i.path("modules/vsock.ko"))
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap());
    serde_json::from_slice(&ok(o).stdout).unwrap()
}

#[test]
fn build_then_describe_agree_and_json_is_machine_readable() {
    let i = inputs(0o644);
    let out = i.path("x.eif");
    let built = build_eif(&i, &out);
    assert_eq!(built["path"], "native");
    let pcr0 = built["Measurements"]["PCR0"].as_str().unwrap().to_string();
    assert_eq!(pcr0.len(), 96);
    let o = ok(packager().args(["eif", "describe"]).arg(&out).output().unwrap());
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["Measurements"]["PCR0"], pcr0.as_str());
    assert_eq!(d["Measurements"]["HashAlgorithm"], "Sha384 { ... }");
    assert_eq!(d["EifVersion"], 4);
    assert_eq!(d["CheckCRC"], true);
    assert_eq!(d["Metadata"]["BuildMetadata"]["BuildTime"], "2023-11-14T22:13:20+00:00");
    assert_eq!(d["Sections"].as_array().unwrap().len(), 5);
    // Same inputs through the CLI again: same bytes.
    let again = i.path("y.eif");
    build_eif(&i, &again);
    assert_eq!(read(&out), read(&again));
}

#[test]
fn missing_inputs_are_named() {
    let i = inputs(0o644);
    let e = err(packager().args(["eif", "build", "--out"]).arg(i.path("o.eif")).output().unwrap());
    assert!(e.contains("--kernel"), "{e}");
    let e = err(packager()
        .args(["eif", "build", "--kernel"])
        .arg(i.path("blobs/bzImage"))
        .args(["--cmdline", "x", "--init"])
        .arg(i.path("nope/init"))
        .arg("--out")
        .arg(i.path("o.eif"))
        .output()
        .unwrap());
    assert!(e.contains("--init") && e.contains("nope/init"), "{e}");
    let e = err(packager()
        .args(["eif", "build", "--blobs"])
        .arg(i.path("blobs"))
        .args(["--cmdline", "x", "--cmd", "/bin/a", "--env", "bad", "--rootfs"])
        .arg(i.path("rootfs"))
        .arg("--out")
        .arg(i.path("o.eif"))
        .output()
        .unwrap());
    assert!(e.contains("--env \"bad\""), "{e}");
    assert!(!i.path("o.eif").exists() && !i.path("o.eif.partial").exists());
    let e = err(packager().args(["eif", "describe"]).arg(i.path("blobs/init")).output().unwrap());
    assert!(e.contains("not an EIF") && e.contains("blobs/init"), "{e}");
}

#[test]
fn docker_uri_without_nitro_cli_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let e = err(packager()
        .args(["eif", "build", "--docker-uri", "kv-server:latest", "--out"])
        .arg(empty.path().join("o.eif"))
        .env("PATH", empty.path())
        .output()
        .unwrap());
    assert!(e.contains("nitro-cli, docker"), "{e}");
    assert!(e.contains("--docker-uri kv-server:latest"), "{e}");
}

/// A test double for nitro-cli (the real one needs an enclave-enabled EC2 instance): it
/// "builds" by copying a prepared EIF and prints the measurements it was told to print.
fn nitro_cli_double(dir: &Path, eif: &Path, measurements_json: &str) {
    let bin = dir.join("nitro-cli-double-bin");
    fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n# test double for nitro-cli build-enclave\nset -e\n[ \"$1\" = build-enclave ] || exit 64\nout=\"$5\"\n[ \"$4\" = --output-file ] || exit 65\necho 'Start building the Enclave Image...' >&2\ncp '{}' \"$out\"\ncat <<'JSON'\n{}\nJSON\n",
        eif.display(),
        measurements_json
    );
    for name in ["nitro-cli", "docker"] {
        let p = bin.join(name);
        fs::write(&p, &script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn docker_uri_parses_nitro_cli_measurements_and_cross_checks_them() {
    let i = inputs(0o644);
    let prepared = i.path("prepared.eif");
    let built = build_eif(&i, &prepared);
    let m = &built["Measurements"];
    nitro_cli_double(i.dir.path(), &prepared, &serde_json::json!({ "Measurements": m }).to_string());
    let o = ok(packager()
        .args(["--json", "eif", "build", "--docker-uri", "kv-server:latest", "--out"])
        .arg(i.path("from-docker.eif"))
        .env("PATH", format!("{}:/usr/bin:/bin", i.path("nitro-cli-double-bin").display()))
        .output()
        .unwrap());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["path"], "nitro-cli");
    assert_eq!(r["Measurements"]["PCR0"], m["PCR0"]);

    // If nitro-cli's printed PCRs do not match the image it wrote, the build fails.
    let mut wrong = m.clone();
    wrong["PCR2"] = serde_json::Value::String("00".repeat(48));
    nitro_cli_double(i.dir.path(), &prepared, &serde_json::json!({ "Measurements": wrong }).to_string());
    let e = err(packager()
        .args(["eif", "build", "--docker-uri", "kv-server:latest", "--out"])
        .arg(i.path("from-docker2.eif"))
        .env("PATH", format!("{}:/usr/bin:/bin", i.path("nitro-cli-double-bin").display()))
        .output()
        .unwrap());
    assert!(e.contains("differ"), "{e}");
}

struct BundleFixture {
    i: common::Inputs,
}

fn bundle_fixture() -> BundleFixture {
    let i = inputs(0o644);
    build_eif(&i, &i.path("server.eif"));
    let w = |p: &str, data: &[u8]| {
        let path = i.path(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    };
    w("bin/vsockproxy", &bytes(20, 40_000));
    w("systemd/vsockproxy.service", b"[Service]\nExecStart=/opt/privacysandbox/proxy\n");
    w("systemd/enclave.service", b"[Service]\nExecStart=/usr/bin/nitro-cli run-enclave\n");
    w("systemd/README.md", b"not a unit\n");
    w("systemd/aws-otel-collector.service.d/10-nitro-kv.conf", b"[Service]\nExecStart=\n");
    w("systemd/enclave.env", b"ENCLAVE_CID=16\n");
    w("systemd/nitro-enclave-run", b"#!/usr/bin/env bash\n");
    w("proxy/vsockproxy.toml", b"[ingress]\n");
    w("envoy/envoy.yaml", b"static_resources: {}\n");
    w("desc/query_api_descriptor_set.pb", &bytes(21, 5_000));
    w("collector/otel_collector_config.yaml", b"receivers: {}\n");
    w("collector/aws-otel-collector.rpm", &bytes(22, 9_000));
    w("terraform/instance-init.sh", b"#!/bin/sh\nexit 0\n");
    BundleFixture { i }
}

impl BundleFixture {
    fn cmd(&self, out: &Path) -> Command {
        let p = |s: &str| self.i.path(s);
        let mut c = packager();
        c.arg("bundle")
            .arg("--out")
            .arg(out)
            .arg("--eif")
            .arg(p("server.eif"))
            .arg("--proxy")
            .arg(p("bin/vsockproxy"))
            .arg("--proxy-config")
            .arg(p("proxy/vsockproxy.toml"))
            .arg("--systemd-dir")
            .arg(p("systemd"))
            .arg("--envoy-config")
            .arg(p("envoy/envoy.yaml"))
            .arg("--descriptor-set")
            .arg(p("desc/query_api_descriptor_set.pb"))
            .arg("--collector-config")
            .arg(p("collector/otel_collector_config.yaml"))
            .arg("--instance-init")
            .arg(p("terraform/instance-init.sh"))
            .args(["--git-commit", "0123abcd"])
            .env("SOURCE_DATE_EPOCH", "1700000000");
        c
    }
}

#[test]
fn bundle_lays_out_the_ami_files_and_verify_accepts_it() {
    let f = bundle_fixture();
    let out = f.i.path("dist/aws");
    ok(f.cmd(&out)
        .arg("--collector-package")
        .arg(f.i.path("collector/aws-otel-collector.rpm"))
        .output()
        .unwrap());
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aws-otel-collector.rpm",
            "aws-otel-collector.service.d",
            "enclave.env",
            "enclave.service",
            "envoy.yaml",
            "instance-init.sh",
            "manifest.json",
            "nitro-enclave-run",
            "otel_collector_config.yaml",
            "proxy",
            "query_api_descriptor_set.pb",
            "server_enclave_image.eif",
            "vsockproxy.service",
            "vsockproxy.toml"
        ]
    );
    assert!(out.join("aws-otel-collector.service.d/10-nitro-kv.conf").is_file());
    let mode = |n: &str| fs::metadata(out.join(n)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("proxy"), 0o755);
    assert_eq!(mode("instance-init.sh"), 0o755);
    assert_eq!(mode("nitro-enclave-run"), 0o755);
    assert_eq!(mode("envoy.yaml"), 0o644);
    assert_eq!(read(&out.join("proxy")), read(&f.i.path("bin/vsockproxy")));

    let m: serde_json::Value = serde_json::from_slice(&read(&out.join("manifest.json"))).unwrap();
    assert_eq!(m["git_commit"], "0123abcd");
    assert_eq!(m["build_time"], "2023-11-14T22:13:20+00:00");
    assert_eq!(m["versions"]["eif-format"], "4");
    let described = ok(packager().args(["eif", "describe"]).arg(f.i.path("server.eif")).output().unwrap());
    let d: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(m["pcrs"], d["Measurements"]);
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 13);
    let entry = |p: &str| files.iter().find(|e| e["path"] == p).unwrap().clone();
    let proxy = entry("proxy");
    use sha2::Digest;
    assert_eq!(proxy["sha256"], hex::encode(sha2::Sha256::digest(read(&f.i.path("bin/vsockproxy")))));
    assert_eq!(proxy["size"], 40_000);
    assert_eq!(proxy["mode"], "0755");
    assert_eq!(proxy["role"], "vsockproxy");
    assert_eq!(proxy["install_to"], "/opt/privacysandbox/proxy");
    assert_eq!(entry("envoy.yaml")["install_to"], "/etc/envoy/envoy.yaml");
    assert_eq!(entry("vsockproxy.service")["install_to"], "/etc/systemd/system/vsockproxy.service");
    assert_eq!(entry("server_enclave_image.eif")["role"], "enclave-image");
    assert_eq!(entry("enclave.env")["install_to"], "/etc/nitro-enclave/enclave.env");
    assert_eq!(entry("vsockproxy.toml")["install_to"], "/etc/vsockproxy/vsockproxy.toml");
    assert_eq!(
        entry("aws-otel-collector.service.d/10-nitro-kv.conf")["install_to"],
        "/etc/systemd/system/aws-otel-collector.service.d/10-nitro-kv.conf"
    );
    assert_eq!(
        entry("otel_collector_config.yaml")["install_to"],
        "/opt/aws/aws-otel-collector/etc/otel_collector_config.yaml"
    );

    let o = ok(packager().args(["--json", "verify"]).arg(&out).output().unwrap());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["files_checked"], 13);

    // Same inputs, same manifest (the bundle is reproducible too).
    let out2 = f.i.path("dist/aws2");
    ok(f.cmd(&out2)
        .arg("--collector-package")
        .arg(f.i.path("collector/aws-otel-collector.rpm"))
        .output()
        .unwrap());
    assert_eq!(read(&out.join("manifest.json")), read(&out2.join("manifest.json")));
    // An existing output is not overwritten without --force.
    let e = err(f
        .cmd(&out)
        .arg("--collector-package")
        .arg(f.i.path("collector/aws-otel-collector.rpm"))
        .output()
        .unwrap());
    assert!(e.contains("--force"), "{e}");
}

#[test]
fn verify_names_changed_missing_and_extra_files() {
    let f = bundle_fixture();
    let out = f.i.path("dist/aws");
    let sha = "ab".repeat(32);
    ok(f.cmd(&out)
        .args([
            "--collector-url",
            "https://example.invalid/aws-otel-collector.rpm",
            "--collector-sha256",
            &sha,
        ])
        .output()
        .unwrap());
    let m: serde_json::Value = serde_json::from_slice(&read(&out.join("manifest.json"))).unwrap();
    assert_eq!(m["fetch"][0]["sha256"], sha.as_str());
    assert_eq!(m["fetch"][0]["install_to"], "/opt/privacysandbox/aws-otel-collector.rpm");

    // One changed byte in envoy.yaml.
    let mut y = read(&out.join("envoy.yaml"));
    y[0] ^= 1;
    fs::write(out.join("envoy.yaml"), y).unwrap();
    let e = err(packager().arg("verify").arg(&out).output().unwrap());
    assert!(e.contains("envoy.yaml: sha256 is"), "{e}");
    assert!(e.contains("1 problem"), "{e}");

    // A changed byte inside the EIF's application ramdisk: hash and PCRs both differ.
    let eif = out.join("server_enclave_image.eif");
    let mut img = read(&eif);
    let n = img.len();
    img[n - 600] ^= 1;
    fs::write(&eif, img).unwrap();
    let e = err(packager().arg("verify").arg(&out).output().unwrap());
    assert!(e.contains("server_enclave_image.eif: sha256 is"), "{e}");
    assert!(e.contains("server_enclave_image.eif: unreadable EIF") && e.contains("CRC"), "{e}");

    fs::remove_file(out.join("proxy")).unwrap();
    fs::write(out.join("stray.txt"), b"x").unwrap();
    fs::write(out.join("aws-otel-collector.service.d/99-stray.conf"), b"x").unwrap();
    fs::set_permissions(out.join("vsockproxy.service"), fs::Permissions::from_mode(0o666)).unwrap();
    let o = packager().args(["--json", "verify"]).arg(&out).output().unwrap();
    assert!(!o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems: Vec<String> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}: {}", p["path"].as_str().unwrap(), p["problem"].as_str().unwrap()))
        .collect();
    assert!(problems.contains(&"proxy: missing".to_string()), "{problems:?}");
    assert!(problems.contains(&"stray.txt: not listed in the manifest".to_string()), "{problems:?}");
    assert!(
        problems
            .contains(&"aws-otel-collector.service.d/99-stray.conf: not listed in the manifest".to_string()),
        "{problems:?}"
    );
    assert!(
        problems.contains(&"vsockproxy.service: mode is 0666, manifest says 0644".to_string()),
        "{problems:?}"
    );
}

#[test]
fn bundle_names_missing_inputs() {
    let f = bundle_fixture();
    fs::remove_file(f.i.path("desc/query_api_descriptor_set.pb")).unwrap();
    let e = err(f
        .cmd(&f.i.path("out"))
        .arg("--collector-package")
        .arg(f.i.path("collector/aws-otel-collector.rpm"))
        .output()
        .unwrap());
    assert!(e.contains("--descriptor-set") && e.contains("query_api_descriptor_set.pb"), "{e}");
    assert!(!f.i.path("out").exists());
    let e = err(f.cmd(&f.i.path("out")).output().unwrap());
    assert!(e.contains("--collector-package"), "{e}");
    fs::write(f.i.path("desc/query_api_descriptor_set.pb"), b"x").unwrap();
    fs::remove_file(f.i.path("systemd/vsockproxy.service")).unwrap();
    let e = err(f
        .cmd(&f.i.path("out"))
        .arg("--collector-package")
        .arg(f.i.path("collector/aws-otel-collector.rpm"))
        .output()
        .unwrap());
    assert!(e.contains("no vsockproxy.service"), "{e}");
    fs::write(f.i.path("systemd/vsockproxy.service"), b"[Service]\n").unwrap();
    let e = err(f
        .cmd(&f.i.path("out"))
        .args(["--collector-url", "http://plain/x.rpm", "--collector-sha256", &"ab".repeat(32)])
        .output()
        .unwrap());
    assert!(e.contains("https"), "{e}");
}

#[test]
fn signed_build_has_pcr8_of_the_certificate_and_unchanged_pcr0() {
    use sha2::Digest;
    let i = inputs(0o644);
    // A real self-signed P-384 certificate made with openssl (as an operator would).
    let (key, cert) = (i.path("key.pem"), i.path("cert.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes"])
        .args(["-subj", "/CN=kv-test", "-days", "30", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is on the machine");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let unsigned = build_eif(&i, &i.path("u.eif"));
    let o = ok(packager()
        .args(["--json", "eif", "build", "--blobs"])
        .arg(i.path("blobs"))
        .args(["--cmdline", "console=ttyS0", "--rootfs"])
        .arg(i.path("rootfs"))
        .args(["--cmd", r#"["/bin/kv-server","--port","50051"]"#, "--env", "A=1", "--module"])
        .arg(i.path("modules/vsock.ko"))
        .arg("--signing-certificate")
        .arg(&cert)
        .arg("--private-key")
        .arg(&key)
        .arg("--out")
        .arg(i.path("s.eif"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap());
    let signed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for pcr in ["PCR0", "PCR1", "PCR2"] {
        assert_eq!(signed["Measurements"][pcr], unsigned["Measurements"][pcr], "{pcr}");
    }
    let der = packaging::eif::signature::pem_to_der(&read(&cert)).unwrap();
    let mut outer = sha2::Sha384::new();
    outer.update([0u8; 48]);
    outer.update(sha2::Sha384::digest(&der));
    assert_eq!(signed["Measurements"]["PCR8"], hex::encode(outer.finalize()));
    let d = ok(packager().args(["eif", "describe"]).arg(i.path("s.eif")).output().unwrap());
    let d: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(d["IsSigned"], true);
    assert_eq!(d["Measurements"], signed["Measurements"]);
    let e = err(packager()
        .args(["eif", "build", "--signing-certificate"])
        .arg(&cert)
        .arg("--out")
        .arg(i.path("x.eif"))
        .output()
        .unwrap());
    assert!(e.contains("--private-key"), "{e}");
}

#[test]
fn key_policy_lint_exit_codes_and_one_line_per_finding() {
    let dir = tempfile::tempdir().unwrap();
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fleet-key-policy.json");
    let o = ok(packager().args(["key-policy", "lint"]).arg(&good).output().unwrap());
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));

    let root = dir.path().join("root.json");
    fs::write(
        &root,
        r#"{"Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"kms:*","Resource":"*"}]}"#,
    )
    .unwrap();
    let o = packager().args(["key-policy", "lint"]).arg(&good).arg(&root).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with(&format!(
            "{}: statement 0 (Sid \"Enable IAM User Permissions\"): unattested-allow:",
            root.display()
        )),
        "{out}"
    );

    let broken = dir.path().join("broken.json");
    fs::write(&broken, "{\n  \"Statement\": [\n").unwrap();
    let o = packager().args(["key-policy", "lint"]).arg(&root).arg(&broken).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "unreadable wins over findings");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("{}:3:", broken.display())), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}
