//! The IAM policies against the dry-run plans of every flow: each planned call is allowed, and
//! each allowed action is planned (least privilege). Test only.

use crate::bake;
use crate::import::tests::{EXTRAS, MANIFEST, SPEC, in_a_year, job};
use crate::spec::AmiSpec;
use crate::userdata;

/// API operation -> IAM action (they differ for S3's batch delete).
fn iam_action(op: &str) -> &str {
    match op {
        "s3:DeleteObjects" => "s3:DeleteObject",
        "s3:CreateMultipartUpload" | "s3:UploadPart" | "s3:CompleteMultipartUpload" => "s3:PutObject",
        other => other,
    }
}

fn allowed_actions(policy: &str) -> Vec<String> {
    let policy: serde_json::Value = serde_json::from_str(policy).unwrap();
    let mut allowed = Vec::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        match &st["Action"] {
            serde_json::Value::String(a) => allowed.push(a.clone()),
            serde_json::Value::Array(v) => allowed.extend(v.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("{other}"),
        }
    }
    allowed
}

fn planned_ops(plans: &[Vec<String>]) -> Vec<String> {
    plans
        .iter()
        .flatten()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

/// Every planned call is allowed by one of `policies`.
fn check_allows(file: &str, policies: &[&str], plans: &[Vec<String>]) {
    let allowed: Vec<String> = policies.iter().flat_map(|p| allowed_actions(p)).collect();
    for op in &planned_ops(plans) {
        assert!(allowed.iter().any(|a| a == iam_action(op)), "{op} is not in {file}");
    }
}

/// Least privilege: every allowed action is planned; KMS is used by EC2 for encrypted copies
/// and iam:PassRole by RunInstances / ImportSnapshot.
fn check_all_planned(file: &str, policy: &str, plans: &[Vec<String>]) {
    let ops = planned_ops(plans);
    for a in allowed_actions(policy).iter().filter(|a| !a.starts_with("kms:") && a.as_str() != "iam:PassRole")
    {
        assert!(ops.iter().any(|op| iam_action(op) == a), "{file}: {a} is never called");
    }
}

fn check_policy(file: &str, policy: &str, plans: &[Vec<String>]) {
    check_allows(file, &[policy], plans);
    check_all_planned(file, policy, plans);
}

#[test]
fn iam_policies_allow_every_planned_call_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let plain = job(dir.path(), SPEC, &[1u8; 4096]).unwrap().planned_calls(1);
    let extras = job(dir.path(), &format!("{SPEC}{EXTRAS}"), &[1u8; 4096]).unwrap().planned_calls(1);
    let multipart = job(dir.path(), &format!("{SPEC}{EXTRAS}part_size_mib = 5\n"), &vec![1u8; 6 << 20])
        .unwrap()
        .planned_calls(1);
    let text = multipart.join("\n");
    assert!(text.contains("s3:UploadPart x2 (5 MiB parts"), "{text}");
    assert!(!text.contains("s3:PutObject"), "{text}");
    // The EBS direct path needs iam-policy.json alone; the S3 import path adds
    // iam-policy-s3-import.json (kept apart: it may tag a snapshot it did not create).
    let ebs_extras = EXTRAS.replace("via = \"s3-import\"\n", "");
    let ebs_extras = ebs_extras.split("[s3_import]").next().unwrap();
    let ebs_extras = job(dir.path(), &format!("{SPEC}{ebs_extras}"), &[1u8; 4096]).unwrap().planned_calls(1);
    check_policy("iam-policy.json", include_str!("../iam-policy.json"), &[plain, ebs_extras]);
    let s3_import = include_str!("../iam-policy-s3-import.json");
    let s3_plans = [extras, multipart];
    let both = [include_str!("../iam-policy.json"), s3_import];
    check_allows("iam-policy.json + iam-policy-s3-import.json", &both, &s3_plans);
    check_all_planned("iam-policy-s3-import.json", s3_import, &s3_plans);

    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("proxy"), b"binary").unwrap();
    std::fs::write(
        bundle.join("manifest.json"),
        String::from_utf8_lossy(MANIFEST).replace(
            r#""files":[]"#,
            r#""files":[{"path":"proxy","role":"vsockproxy","size":6,"sha256":"9a3a45d01531a20e89ac6ae10b0b0beb0492acd7216a368aa062d1a5fecaf9cd","mode":"0755","install_to":"/opt/privacysandbox/proxy"}]"#,
        ),
    )
    .unwrap();
    let bake_spec = |extra: &str| {
        let text = format!(
            "{extra}{SPEC}deprecate_at = \"{}\"\n[bake]\nbase_ami_ssm_parameter = \"/aws/service/x\"\ninstance_profile = \"kv-ami-builder\"\n\
             bucket = \"bake-bucket\"\nsubnet_id = \"subnet-0123abcd\"\nenvoy_image = \"envoyproxy/envoy@sha256:{}\"\n",
            in_a_year(),
            "a".repeat(64)
        );
        bake::BakeJob::prepare(AmiSpec::parse(&text).unwrap(), &bundle).unwrap().planned_calls()
    };
    let by_name = bake_spec("").into_iter().chain(
        bake::BakeJob::prepare(
            AmiSpec::parse(&format!(
                "{SPEC}[bake]\nbase_ami_name = \"al2023-ami-*\"\nbase_ami_owner = \"amazon\"\ninstance_profile = \"p\"\n\
                 bucket = \"bake-bucket\"\nenvoy_image = \"e@sha256:{}\"\n",
                "b".repeat(64)
            ))
            .unwrap(),
            &bundle,
        )
        .unwrap()
        .planned_calls(),
    );
    check_policy("iam-policy-bake.json", include_str!("../iam-policy-bake.json"), &[by_name.collect()]);

    // The smoke test: iam-policy-smoke-test.json, attached beside either path's policy.
    let smoke = include_str!("../iam-policy-smoke-test.json");
    let launcher = dir.path().join("instance-init.sh");
    std::fs::write(&launcher, "#!/bin/bash\n# KV_AMI_SMOKE_TEST\n").unwrap();
    let smoke_table = format!(
        "channel = \"stable\"\n[smoke_test]\ninstance_profile = \"kv-ami-smoke-test\"\nlauncher = \"{}\"\nsubnet_id = \"subnet-0123abcd\"\n",
        launcher.display()
    );
    let import_smoke =
        job(dir.path(), &format!("{SPEC}{smoke_table}"), &[1u8; 4096]).unwrap().planned_calls(1);
    assert!(import_smoke.iter().any(|l| l.contains("ec2:RunInstances image=<ami>")), "{import_smoke:#?}");
    let bake_smoke = {
        let text = format!(
            "{SPEC}[bake]\nbase_ami_ssm_parameter = \"/aws/service/x\"\ninstance_profile = \"kv-ami-builder\"\n\
             bucket = \"bake-bucket\"\nenvoy_image = \"envoyproxy/envoy@sha256:{}\"\n{}",
            "a".repeat(64),
            smoke_table.replace("channel = \"stable\"\n", "")
        );
        bake::BakeJob::prepare(AmiSpec::parse(&text).unwrap(), &bundle).unwrap().planned_calls()
    };
    let with_import = [include_str!("../iam-policy.json"), smoke];
    check_allows(
        "iam-policy.json + iam-policy-smoke-test.json",
        &with_import,
        std::slice::from_ref(&import_smoke),
    );
    let with_bake = [include_str!("../iam-policy-bake.json"), smoke];
    check_allows(
        "iam-policy-bake.json + iam-policy-smoke-test.json",
        &with_bake,
        std::slice::from_ref(&bake_smoke),
    );
    check_all_planned("iam-policy-smoke-test.json", smoke, &[import_smoke]);
    let mut inst = allowed_actions(include_str!("../iam-smoke-test-instance-policy.json"));
    inst.sort();
    assert_eq!(inst, vec!["ec2:CreateTags"]);
    let text = include_str!("../iam-smoke-test-instance-policy.json");
    for key in crate::smoke::PCR_TAGS.iter().chain([&crate::smoke::STATUS_TAG, &crate::smoke::RESULT_TAG]) {
        assert!(text.contains(key), "{key}");
    }

    // kv-ami gc: its own file (deleting builds is a separate duty from making them).
    let gc_spec = AmiSpec::parse(&format!("channel = \"stable\"\n{SPEC}")).unwrap();
    let mut gc_plan = crate::gc::planned_lines(&gc_spec, "stable");
    gc_plan.extend(crate::gc::planned_republish(&gc_spec));
    check_policy("iam-policy-gc.json", include_str!("../iam-policy-gc.json"), &[gc_plan]);

    // The builder's own role: read the bundle, tag itself with the two status keys, nothing more.
    let mut inst = allowed_actions(include_str!("../iam-builder-instance-policy.json"));
    inst.sort();
    assert_eq!(inst, vec!["ec2:CreateTags", "s3:GetObject", "s3:ListBucket"]);
    let text = include_str!("../iam-builder-instance-policy.json");
    assert!(text.contains(userdata::STATUS_TAG) && text.contains(userdata::DETAIL_TAG));
}
