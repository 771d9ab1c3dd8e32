//! A lint over every IAM policy document (JSON) in the repository: found by content (a JSON
//! object with `Version` and `Statement`), not by a list, so a new policy file is linted too.
//!
//! Rules, per statement:
//! - a `Sid` (exceptions and review comments name statements by it);
//! - no `NotAction` / `NotResource` (they grant everything not listed);
//! - no action `*` or `service:*`;
//! - an `Allow` of a mutating action (anything but `Describe*`, `Get*`, `List*`) on a wildcard
//!   resource (`*`, or every resource of a type such as `arn:aws:ec2:*::snapshot/*` or
//!   `arn:aws:s3:::*`) needs a scoping condition: a tag (`aws:ResourceTag/...`,
//!   `aws:RequestTag/...`, `aws:TagKeys`), `ec2:CreateAction`, `kms:ViaService`,
//!   `iam:PassedToService` or `s3:prefix`;
//! - unless the statement is in [`EXCEPTIONS`], each with its reason; an exception that no longer
//!   matches a violation fails the lint too, so the list cannot go stale.
//!
//! The Terraform policies (`data "aws_iam_policy_document"` in terraform/) are checked by
//! terraform/tests/check_tf.py and the plan test with the same rule for `*`; their exceptions
//! are in the kv-service module README.

mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// (file, Sid, why the wildcard resource stays unconditioned).
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "packaging/ami/iam-policy-bake.json",
        "SecurityGroupInAVpc",
        "CreateSecurityGroup authorises the VPC it creates the group in; the VPC is only named, not \
         changed, and the group itself must carry kv-ami:role = builder (SecurityGroupOnlyTaggedAsBuilder)",
    ),
    (
        "packaging/ami/iam-policy-bake.json",
        "RunWithTheseResources",
        "RunInstances authorises every resource of the launch: the base AMI (any owner's, by SSM \
         parameter or name), the subnet and the network interface it creates are used, not changed; the \
         instance and volume must carry kv-ami:role = builder and the security group must be a builder's",
    ),
    (
        "packaging/ami/iam-policy-smoke-test.json",
        "SecurityGroupInAVpc",
        "as for the bake: the VPC of the smoke test's group, which must carry kv-ami:role = smoke-test",
    ),
    (
        "packaging/ami/iam-policy-smoke-test.json",
        "RunInASubnet",
        "the subnet and the network interface RunInstances creates are used, not changed; the instance and \
         volume must carry kv-ami:role = smoke-test, the group must be a smoke test's and the image must carry \
         the content key",
    ),
    (
        "packaging/packer/iam-policy.json",
        "SecurityGroupInAVpc",
        "as for the bake: the VPC of Packer's temporary security group, which must carry the run tags",
    ),
    (
        "packaging/packer/iam-policy.json",
        "RunFromTheSourceAmiInASubnet",
        "the source AMI (Amazon's) and the subnet of the launch are used, not changed; the instance, its \
         volumes and network interface must carry the run tags, the key pair and group must be Packer's",
    ),
    (
        "packaging/packer/iam-policy.json",
        "CopyImage",
        "CopyImage creates the copy; Packer sends no TagSpecifications with it (CopyImageTags copies the \
         source's tags, run tags included), so there is no request tag to require; a copy changes nothing \
         that exists",
    ),
];

/// Condition keys that scope a statement to resources or requests (prefix match).
const SCOPING_KEYS: &[&str] = &[
    "aws:resourcetag/",
    "aws:requesttag/",
    "ec2:resourcetag/",
    "aws:tagkeys",
    "ec2:createaction",
    "kms:viaservice",
    "iam:passedtoservice",
    "s3:prefix",
];

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn read_only(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, n)| n);
    ["Describe", "Get", "List"].iter().any(|p| name.starts_with(p)) && !name.contains('*')
}

/// `*`, or every resource of one type: the part after the ARN's fifth colon, less a leading
/// `type/` or `type:`, is `*`.
fn wildcard(resource: &str) -> bool {
    if resource == "*" {
        return true;
    }
    let Some(part) = resource.splitn(6, ':').nth(5) else { return false };
    let rest = match part.split_once(['/', ':']) {
        Some((kind, rest)) if kind != "*" => rest,
        _ => part,
    };
    rest == "*"
}

fn scoping(condition: &Value) -> bool {
    condition.as_object().is_some_and(|ops| {
        ops.values().filter_map(Value::as_object).flat_map(|keys| keys.keys()).any(|k| {
            let k = k.to_ascii_lowercase();
            SCOPING_KEYS.iter().any(|s| k.starts_with(s))
        })
    })
}

/// The violations of one policy document, each "file: Sid: what".
fn lint(
    file: &str,
    policy: &Value,
    exceptions: &[(&str, &str, &str)],
    used: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let statements = match &policy["Statement"] {
        Value::Array(a) => a.clone(),
        single @ Value::Object(_) => vec![single.clone()],
        _ => return vec![format!("{file}: Statement is neither a list nor an object")],
    };
    for (i, st) in statements.iter().enumerate() {
        let sid = st["Sid"].as_str().unwrap_or("");
        let at = if sid.is_empty() { format!("{file}: statement {i}") } else { format!("{file}: {sid}") };
        if sid.is_empty() {
            out.push(format!("{at}: no Sid"));
        }
        for key in ["NotAction", "NotResource"] {
            if !st[key].is_null() {
                out.push(format!("{at}: {key} grants everything it does not list"));
            }
        }
        let actions = strings(&st["Action"]);
        for a in &actions {
            if a == "*" || a.ends_with(":*") {
                out.push(format!("{at}: action {a:?} allows a whole service"));
            }
        }
        if st["Effect"] != "Allow" || scoping(&st["Condition"]) {
            continue;
        }
        let wild: Vec<String> = strings(&st["Resource"]).into_iter().filter(|r| wildcard(r)).collect();
        let mutating: Vec<&String> = actions.iter().filter(|a| !read_only(a)).collect();
        if wild.is_empty() || mutating.is_empty() {
            continue;
        }
        if exceptions.iter().any(|(f, s, _)| *f == file && *s == sid) {
            used.insert(format!("{file}: {sid}"));
            continue;
        }
        out.push(format!(
            "{at}: {mutating:?} on {wild:?} without a condition on a tag, ec2:CreateAction, kms:ViaService, \
             iam:PassedToService or s3:prefix (or an entry in EXCEPTIONS with the reason)"
        ));
    }
    out
}

/// Every JSON file of the working tree (tracked or not, less what .gitignore leaves out) that
/// is an IAM identity policy document, relative to the repository root. Resource policies (their
/// statements name a `Principal`, e.g. the KMS key policies under tests/fixtures and
/// terraform/tests/fixtures, where `Resource: "*"` means the key itself) are left to
/// `kv-packager key-policy lint`.
fn policy_files(root: &Path) -> Vec<(String, Value)> {
    let out = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.json"])
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    let mut found = Vec::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).to_string();
        let Ok(text) = std::fs::read(root.join(&name)) else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(&text) else { continue };
        let names_principal = |s: &Value| s.get("Principal").is_some() || s.get("NotPrincipal").is_some();
        let resource_policy =
            v.get("Statement").and_then(Value::as_array).is_some_and(|s| s.iter().any(names_principal));
        if v.get("Version").is_some() && v.get("Statement").is_some() && !resource_policy {
            found.push((name, v));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn every_iam_policy_in_the_repository_passes_the_lint() {
    let root = common::repo_root();
    let files = policy_files(&root);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for known in [
        "packaging/ami/iam-builder-instance-policy.json",
        "packaging/ami/iam-policy-bake.json",
        "packaging/ami/iam-policy-s3-import.json",
        "packaging/ami/iam-policy.json",
        "packaging/packer/iam-policy.json",
    ] {
        assert!(names.contains(&known), "{known} not found among the policies: {names:?}");
    }
    let mut used = BTreeSet::new();
    let mut violations: Vec<String> =
        files.iter().flat_map(|(name, p)| lint(name, p, EXCEPTIONS, &mut used)).collect();
    for (f, s, _) in EXCEPTIONS {
        if !used.contains(&format!("{f}: {s}")) {
            violations.push(format!("{f}: {s}: listed in EXCEPTIONS but not a violation (remove it)"));
        }
    }
    assert!(violations.is_empty(), "{} IAM lint violations:\n{}", violations.len(), violations.join("\n"));
}

#[test]
fn the_lint_catches_what_it_is_meant_to() {
    let policy: Value = serde_json::from_str(
        r#"{"Version":"2012-10-17","Statement":[
  {"Sid":"AllOfEc2","Effect":"Allow","Action":"ec2:*","Resource":"arn:aws:ec2:*::image/ami-1"},
  {"Sid":"Everything","Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:RequestTag/a":"b"}}},
  {"Effect":"Allow","Action":"ec2:DescribeImages","Resource":"*"},
  {"Sid":"TagAnything","Effect":"Allow","Action":"ec2:CreateTags","Resource":["arn:aws:ec2:*::snapshot/*","arn:aws:ec2:*::image/ami-1"]},
  {"Sid":"PublicAnything","Effect":"Allow","Action":["ec2:DescribeImages","ec2:ModifyImageAttribute"],"Resource":"*"},
  {"Sid":"AnyBucket","Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::*"},
  {"Sid":"WeakCondition","Effect":"Allow","Action":"ec2:DeleteSnapshot","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}},
  {"Sid":"Inverted","Effect":"Allow","NotAction":"iam:*","Resource":"arn:aws:s3:::b/k"},
  {"Sid":"Excused","Effect":"Allow","Action":"ec2:RunInstances","Resource":"arn:aws:ec2:*:*:subnet/*"},
  {"Sid":"ReadAnything","Effect":"Allow","Action":["ec2:DescribeImages","s3:GetObject","ssm:GetParameter"],"Resource":"*"},
  {"Sid":"TagOnCreate","Effect":"Allow","Action":"ec2:CreateTags","Resource":"arn:aws:ec2:*::image/*","Condition":{"StringEquals":{"ec2:CreateAction":"RegisterImage"}}},
  {"Sid":"DeleteOwn","Effect":"Allow","Action":"ec2:DeregisterImage","Resource":"arn:aws:ec2:*::image/*","Condition":{"Null":{"aws:ResourceTag/k":"false"}}},
  {"Sid":"PathScoped","Effect":"Allow","Action":"s3:PutObject","Resource":["arn:aws:s3:::*/prefix/*","arn:aws:ssm:*:*:parameter/kv/*","arn:aws:iam::*:role/vmimport"]},
  {"Sid":"Denied","Effect":"Deny","Action":"ec2:DeleteSnapshot","Resource":"*"}
]}"#,
    )
    .unwrap();
    let mut used = BTreeSet::new();
    let v = lint("p.json", &policy, &[("p.json", "Excused", "test")], &mut used);
    let flagged: BTreeSet<&str> =
        v.iter().map(|l| l.trim_start_matches("p.json: ").split(':').next().unwrap()).collect();
    assert_eq!(
        flagged,
        BTreeSet::from([
            "AllOfEc2",
            "Everything",
            "statement 2",
            "TagAnything",
            "PublicAnything",
            "AnyBucket",
            "WeakCondition",
            "Inverted"
        ]),
        "{v:#?}"
    );
    assert!(v.iter().any(|l| l.contains("Everything: action \"*\"")), "{v:#?}");
    assert!(v.iter().any(|l| l.contains("statement 2: no Sid")), "{v:#?}");
    assert!(v.iter().any(|l| l.contains("TagAnything") && l.contains("snapshot/*")), "{v:#?}");
    assert_eq!(used, BTreeSet::from(["p.json: Excused".to_string()]));
    for (r, wild) in [
        ("*", true),
        ("arn:aws:ec2:*::snapshot/*", true),
        ("arn:aws:s3:::*", true),
        ("arn:aws:kms:*:*:key/*", true),
        ("arn:aws:logs:*:*:log-group:*", true),
        ("arn:aws:s3:::*/kv-ami-bake/*", false),
        ("arn:aws:ec2:*::image/ami-1", false),
        ("arn:aws:ssm:*::parameter/aws/service/*", false),
    ] {
        assert_eq!(wildcard(r), wild, "{r}");
    }
}
