//! The IAM policies evaluated, conditions included, against the calls each path makes and the
//! calls an abuser of the same credentials would make.
//!
//! A small evaluator of the subset of the policy language the files use (Allow/Deny, action and
//! resource globs, StringEquals/StringLike/Null/ForAllValues:StringEquals on tags,
//! `ec2:CreateAction` and a few service keys); an operator it does not know fails the test, so a
//! policy cannot drift outside what is checked. Each API call is modelled as one request per
//! resource it authorises (e.g. RunInstances: the new instance, its volume, the image, the
//! subnet, the security group), with the tags the resource carries, the tags the request sets
//! and, for tags set while creating, `ec2:CreateAction`: what the kv-ami code sends (see
//! src/images.rs, src/instances.rs, src/bake.rs) and what Packer's amazon plugin sends
//! (TagSpecifications with `run_tags` on the key pair, security group, instance, network
//! interface and CreateImage's image and snapshots, `run_volume_tags` on volumes, CopyImage with
//! CopyImageTags, then CreateTags of `tags` on every AMI and its snapshots).
//!
//! What this does not show: that AWS evaluates these requests the same way. The condition keys
//! per action come from the Service Authorization Reference; `ec2:CreateAction = StartSnapshot`
//! for the tags of EBS direct's StartSnapshot is the one assumption not documented there.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;

const KEY: &str = "kv-ami:content-key";
const ROLE: &str = "kv-ami:role";
const CK: &str = "0f3c5a1b2d4e6f708192a3b4c5d6e7f80112233445566778899aabbccddeeff0";

#[derive(Clone, Debug, Default)]
struct Call {
    action: String,
    resource: String,
    /// Tags the resource already carries.
    resource_tags: BTreeMap<String, String>,
    /// Tags the request sets (TagSpecifications or CreateTags).
    request_tags: BTreeMap<String, String>,
    /// Other request context: ec2:CreateAction, kms:ViaService, iam:PassedToService, s3:prefix.
    context: BTreeMap<String, String>,
}

fn call(action: &str, resource: &str) -> Call {
    Call { action: action.into(), resource: resource.into(), ..Default::default() }
}

impl Call {
    fn has(mut self, k: &str, v: &str) -> Call {
        self.resource_tags.insert(k.into(), v.into());
        self
    }
    fn tags(mut self, k: &str, v: &str) -> Call {
        self.request_tags.insert(k.into(), v.into());
        self
    }
    fn creating(self, api: &str) -> Call {
        self.ctx("ec2:CreateAction", api)
    }
    fn ctx(mut self, k: &str, v: &str) -> Call {
        self.context.insert(k.to_ascii_lowercase(), v.into());
        self
    }
}

/// IAM's `*` / `?` glob, case-sensitive (resources) or not (actions).
fn glob(pattern: &str, s: &str, ignore_case: bool) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = if ignore_case {
        (pattern.to_lowercase().chars().collect(), s.to_lowercase().chars().collect())
    } else {
        (pattern.chars().collect(), s.chars().collect())
    };
    fn m(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
            (Some('?'), Some(_)) => m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(&p, &s)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().expect("a string").to_string()).collect(),
        Value::Bool(b) => vec![b.to_string()],
        other => panic!("unexpected value {other}"),
    }
}

/// The values of a condition key in the request (empty: the key is absent).
fn values(c: &Call, key: &str) -> Vec<String> {
    let k = key.to_ascii_lowercase();
    let tag = |prefix: &str| k.strip_prefix(prefix).map(|_| key[prefix.len()..].to_string());
    if let Some(t) = tag("aws:resourcetag/").or_else(|| tag("ec2:resourcetag/")) {
        return c.resource_tags.get(&t).cloned().into_iter().collect();
    }
    if let Some(t) = tag("aws:requesttag/") {
        return c.request_tags.get(&t).cloned().into_iter().collect();
    }
    if k == "aws:tagkeys" {
        return c.request_tags.keys().cloned().collect();
    }
    c.context.get(&k).cloned().into_iter().collect()
}

fn condition_holds(c: &Call, condition: &Value) -> bool {
    let Some(ops) = condition.as_object() else { return true };
    ops.iter().all(|(op, keys)| {
        keys.as_object().expect("condition keys").iter().all(|(key, want)| {
            let want = strings(want);
            let got = values(c, key);
            match op.as_str() {
                "StringEquals" => got.first().is_some_and(|g| want.contains(g)),
                "StringEqualsIgnoreCase" => {
                    got.first().is_some_and(|g| want.iter().any(|w| w.eq_ignore_ascii_case(g)))
                }
                "StringLike" => got.first().is_some_and(|g| want.iter().any(|w| glob(w, g, false))),
                "Null" => want.iter().all(|w| (w == "true") == got.is_empty()),
                "ForAllValues:StringEquals" => got.iter().all(|g| want.contains(g)),
                "ForAnyValue:StringEquals" => got.iter().any(|g| want.contains(g)),
                other => panic!("condition operator {other} is not modelled here: add it or use another"),
            }
        })
    })
}

fn matches(st: &Value, c: &Call) -> bool {
    assert!(st["NotAction"].is_null() && st["NotResource"].is_null(), "NotAction/NotResource in {st}");
    strings(&st["Action"]).iter().any(|a| glob(a, &c.action, true))
        && strings(&st["Resource"]).iter().any(|r| glob(r, &c.resource, false))
        && condition_holds(c, &st["Condition"])
}

fn allowed(policies: &[&Value], c: &Call) -> bool {
    let statements: Vec<&Value> =
        policies.iter().flat_map(|p| p["Statement"].as_array().expect("Statement list")).collect();
    let hit = |effect: &str| statements.iter().any(|st| st["Effect"] == effect && matches(st, c));
    !hit("Deny") && hit("Allow")
}

fn policy(path: &str) -> Value {
    let file = common::repo_root().join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every call in `allow` is allowed and every call in `deny` is not; all failures reported.
fn check(name: &str, policies: &[&Value], allow: &[Call], deny: &[Call]) {
    let mut wrong = Vec::new();
    for c in allow {
        if !allowed(policies, c) {
            wrong.push(format!("denied, but the tool needs it: {c:?}"));
        }
    }
    for c in deny {
        if allowed(policies, c) {
            wrong.push(format!("allowed, but must not be: {c:?}"));
        }
    }
    assert!(wrong.is_empty(), "{name}:\n{}", wrong.join("\n"));
}

const SNAP_NEW: &str = "arn:aws:ec2:us-east-1::snapshot/snap-0new";
const SNAP: &str = "arn:aws:ec2:us-east-1::snapshot/snap-0aaa";
const IMG_NEW: &str = "arn:aws:ec2:us-east-1::image/ami-0new";
const IMG: &str = "arn:aws:ec2:us-east-1::image/ami-0aaa";
const COPY_NEW: &str = "arn:aws:ec2:eu-west-1::image/ami-0copy";
const COPY_SNAP_NEW: &str = "arn:aws:ec2:eu-west-1::snapshot/snap-0copy";
const VIA_EC2: (&str, &str) = ("kms:ViaService", "ec2.us-east-1.amazonaws.com");

/// What an abuser of kv-ami's credentials would try on images and snapshots that are not
/// kv-ami's: mark them as kv-ami's, share them (public included), delete them.
fn abuse_of_images_and_snapshots() -> Vec<Call> {
    vec![
        call("ec2:CreateTags", SNAP).tags(KEY, CK),
        call("ec2:CreateTags", IMG).tags(KEY, CK),
        call("ec2:CreateTags", SNAP).tags("Name", "x"),
        call("ec2:CreateTags", SNAP).tags(KEY, CK).creating("RunInstances"),
        call("ec2:ModifySnapshotAttribute", SNAP),
        call("ec2:ModifyImageAttribute", IMG),
        call("ec2:EnableImageDeprecation", IMG),
        call("ec2:DeleteSnapshot", SNAP),
        call("ec2:DeregisterImage", IMG),
        call("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/k"),
    ]
}

/// Publish (both paths): copy, tag, share, deprecate, SSM, and the cleanup of its products.
fn publish_calls() -> Vec<Call> {
    vec![
        call("ec2:DescribeImages", "*"),
        call("ec2:CopyImage", COPY_NEW).tags(KEY, CK),
        call("ec2:CopyImage", IMG).has(KEY, CK).tags(KEY, CK),
        call("ec2:CreateTags", COPY_NEW).tags(KEY, CK).creating("CopyImage"),
        call("ec2:CreateTags", COPY_SNAP_NEW).tags(KEY, CK).creating("CopyImage"),
        call("ec2:CreateTags", COPY_NEW).has(KEY, CK).tags(KEY, CK),
        call("ec2:CreateTags", IMG).has(KEY, CK).tags(KEY, CK).tags("Name", "kv").tags("service", "kv"),
        call("ec2:CreateTags", SNAP).has(KEY, CK).tags(KEY, CK).tags("Name", "kv").tags("service", "kv"),
        call("ec2:ModifySnapshotAttribute", SNAP).has(KEY, CK),
        call("ec2:ModifyImageAttribute", IMG).has(KEY, CK),
        call("ec2:EnableImageDeprecation", IMG).has(KEY, CK),
        call("ssm:PutParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami-id"),
        call("ec2:DeregisterImage", COPY_NEW).has(KEY, CK),
        call("ec2:DeleteSnapshot", COPY_SNAP_NEW).has(KEY, CK),
        call("kms:CreateGrant", "arn:aws:kms:eu-west-1:123456789012:key/k").ctx(VIA_EC2.0, VIA_EC2.1),
        call("kms:ReEncryptFrom", "arn:aws:kms:eu-west-1:123456789012:key/k").ctx(VIA_EC2.0, VIA_EC2.1),
    ]
}

fn ebs_direct_calls() -> Vec<Call> {
    let mut v = vec![
        call("ebs:StartSnapshot", SNAP_NEW).tags(KEY, CK),
        call("ec2:CreateTags", SNAP_NEW).tags(KEY, CK).creating("StartSnapshot"),
        call("ebs:PutSnapshotBlock", SNAP_NEW).has(KEY, CK),
        call("ebs:CompleteSnapshot", SNAP_NEW).has(KEY, CK),
        call("ec2:DescribeSnapshots", "*"),
        call("ec2:RegisterImage", IMG_NEW).tags(KEY, CK),
        call("ec2:RegisterImage", SNAP_NEW).has(KEY, CK).tags(KEY, CK),
        call("ec2:CreateTags", IMG_NEW).tags(KEY, CK).creating("RegisterImage"),
        call("ec2:CreateTags", IMG_NEW).has(KEY, CK).tags(KEY, CK),
        call("ec2:DeregisterImage", IMG_NEW).has(KEY, CK),
        call("ec2:DeleteSnapshot", SNAP_NEW).has(KEY, CK),
    ];
    v.extend(publish_calls());
    v
}

#[test]
fn import_policy_allows_the_ebs_direct_path_and_nothing_on_what_is_not_kv_amis() {
    let p = policy("packaging/ami/iam-policy.json");
    let mut deny = abuse_of_images_and_snapshots();
    deny.extend([
        // Writing into, or registering, somebody else's snapshot.
        call("ebs:PutSnapshotBlock", SNAP),
        call("ebs:CompleteSnapshot", SNAP),
        call("ec2:RegisterImage", SNAP).tags(KEY, CK),
        // A snapshot or copy without the content key: nothing to find or clean up later.
        call("ebs:StartSnapshot", SNAP_NEW),
        call("ec2:CopyImage", COPY_NEW),
        // The S3 import path needs the add-on policy.
        call("ec2:ImportSnapshot", "*").tags(KEY, CK),
    ]);
    check("iam-policy.json", &[&p], &ebs_direct_calls(), &deny);
}

#[test]
fn s3_import_add_on_allows_the_import_path_and_only_the_content_key_on_its_snapshot() {
    let base = policy("packaging/ami/iam-policy.json");
    let add_on = policy("packaging/ami/iam-policy-s3-import.json");
    let task_new = "arn:aws:ec2:us-east-1:123456789012:import-snapshot-task/import-snap-0new";
    let object = "arn:aws:s3:::imports-bucket/kv-ami-import/x.raw";
    let mut allow = vec![
        call("s3:PutObject", object),
        call("ec2:ImportSnapshot", task_new).tags(KEY, CK),
        call("ec2:ImportSnapshot", SNAP_NEW).tags(KEY, CK),
        call("ec2:CreateTags", task_new).tags(KEY, CK).creating("ImportSnapshot"),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/vmimport"),
        call("ec2:DescribeImportSnapshotTasks", "*"),
        // ImportSnapshot cannot tag the snapshot it makes: kv-ami adds the key afterwards.
        call("ec2:CreateTags", SNAP_NEW).tags(KEY, CK),
        call("ec2:CancelImportTask", task_new).has(KEY, CK),
        call("s3:DeleteObject", object),
        call("s3:AbortMultipartUpload", object),
        call("ec2:RegisterImage", SNAP_NEW).has(KEY, CK).tags(KEY, CK),
    ];
    allow.extend(ebs_direct_calls());
    let deny = vec![
        call("ec2:ImportSnapshot", task_new),
        call(
            "ec2:CancelImportTask",
            "arn:aws:ec2:us-east-1:123456789012:import-snapshot-task/import-snap-0aaa",
        ),
        // Only the content key, and only on a snapshot that has none yet.
        call("ec2:CreateTags", SNAP).tags(KEY, CK).tags("Name", "x"),
        call("ec2:CreateTags", SNAP).tags("Name", "x"),
        call("ec2:CreateTags", IMG).tags(KEY, CK),
        call("ec2:ModifySnapshotAttribute", SNAP),
        call("ec2:ModifyImageAttribute", IMG),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/admin"),
        call("s3:PutObject", "arn:aws:s3:::imports-bucket/other/x.raw"),
    ];
    check("iam-policy.json + iam-policy-s3-import.json", &[&base, &add_on], &allow, &deny);
    // The documented cost of the add-on: any snapshot without the key can be given it (and so
    // be deleted by the cleanup statements). Hence a separate file, attached only for s3-import.
    assert!(allowed(&[&base, &add_on], &call("ec2:CreateTags", SNAP).tags(KEY, CK)));
    assert!(!allowed(&[&base], &call("ec2:CreateTags", SNAP).tags(KEY, CK)));
}

#[test]
fn bake_policy_allows_the_bake_and_nothing_on_what_is_not_kv_amis() {
    let p = policy("packaging/ami/iam-policy-bake.json");
    let role = |c: Call| {
        c.tags(ROLE, "builder").tags(KEY, CK).tags("kv-ami:run", "r1").tags("Name", "kv-ami builder r1")
    };
    let sg_new = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0new";
    let sg = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0aaa";
    let i_new = "arn:aws:ec2:us-east-1:123456789012:instance/i-0new";
    let i = "arn:aws:ec2:us-east-1:123456789012:instance/i-0aaa";
    let vol_new = "arn:aws:ec2:us-east-1:123456789012:volume/vol-0new";
    let mut allow = vec![
        call("ec2:DescribeImages", "*"),
        call("ec2:DescribeInstances", "*"),
        call("ec2:DescribeSubnets", "*"),
        call("ssm:GetParameter", "arn:aws:ssm:us-east-1::parameter/aws/service/ami-amazon-linux-latest/x"),
        call("s3:PutObject", "arn:aws:s3:::bake-bucket/kv-ami-bake/r1/manifest.json"),
        call("s3:DeleteObject", "arn:aws:s3:::bake-bucket/kv-ami-bake/r1/manifest.json"),
        role(call("ec2:CreateSecurityGroup", sg_new)),
        role(call("ec2:CreateSecurityGroup", "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1")),
        role(call("ec2:CreateTags", sg_new)).creating("CreateSecurityGroup"),
        role(call("ec2:RunInstances", i_new)),
        role(call("ec2:RunInstances", vol_new)),
        role(call("ec2:RunInstances", "arn:aws:ec2:us-east-1::image/ami-0base")),
        role(call("ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-1")),
        role(call("ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:network-interface/eni-0new")),
        role(call("ec2:RunInstances", sg_new)).has(ROLE, "builder"),
        role(call("ec2:CreateTags", i_new)).creating("RunInstances"),
        role(call("ec2:CreateTags", vol_new)).creating("RunInstances"),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/kv-ami-builder")
            .ctx("iam:PassedToService", "ec2.amazonaws.com"),
        call("ec2:StopInstances", i_new).has(ROLE, "builder"),
        call("ec2:CreateImage", i_new).has(ROLE, "builder").tags(KEY, CK),
        call("ec2:CreateImage", IMG_NEW).tags(KEY, CK),
        call("ec2:CreateImage", SNAP_NEW).tags(KEY, CK),
        call("ec2:CreateTags", IMG_NEW).tags(KEY, CK).creating("CreateImage"),
        call("ec2:CreateTags", SNAP_NEW).tags(KEY, CK).creating("CreateImage"),
        call("ec2:CreateTags", IMG_NEW).has(KEY, CK).tags(KEY, CK),
        call("ec2:CreateTags", SNAP_NEW).has(KEY, CK).tags(KEY, CK),
        call("ec2:DeregisterImage", IMG_NEW).has(KEY, CK),
        call("ec2:DeleteSnapshot", SNAP_NEW).has(KEY, CK),
        call("ec2:TerminateInstances", i_new).has(ROLE, "builder"),
        call("ec2:DeleteSecurityGroup", sg_new).has(ROLE, "builder"),
    ];
    allow.extend(publish_calls());
    let mut deny = abuse_of_images_and_snapshots();
    deny.extend([
        call("ec2:CreateTags", i).tags(ROLE, "builder"),
        call("ec2:CreateTags", sg).tags(ROLE, "builder"),
        call("ec2:StopInstances", i),
        call("ec2:TerminateInstances", i),
        call("ec2:CreateImage", i).tags(KEY, CK),
        call("ec2:DeleteSecurityGroup", sg),
        call("ec2:RunInstances", i_new).tags("Name", "x"),
        // A launch into somebody else's security group.
        role(call("ec2:RunInstances", sg)),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/admin")
            .ctx("iam:PassedToService", "ec2.amazonaws.com"),
        call("ec2:CreateImage", IMG_NEW),
    ]);
    check("iam-policy-bake.json", &[&p], &allow, &deny);
}

#[test]
fn smoke_test_policy_boots_only_kv_ami_images_and_touches_only_its_own_instances() {
    let p = policy("packaging/ami/iam-policy-smoke-test.json");
    let role =
        |c: Call| c.tags(ROLE, "smoke-test").tags(KEY, CK).tags("kv-ami:run", "smoke-0f3c5a1b2d4e-ami-0new");
    let sg_new = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0new";
    let sg = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0aaa";
    let i_new = "arn:aws:ec2:us-east-1:123456789012:instance/i-0new";
    let i = "arn:aws:ec2:us-east-1:123456789012:instance/i-0aaa";
    let vol_new = "arn:aws:ec2:us-east-1:123456789012:volume/vol-0new";
    let allow = vec![
        call("ec2:DescribeInstances", "*"),
        call("ec2:DescribeSecurityGroups", "*"),
        call("ec2:DescribeSubnets", "*"),
        role(call("ec2:CreateSecurityGroup", sg_new)),
        role(call("ec2:CreateSecurityGroup", "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1")),
        role(call("ec2:CreateTags", sg_new)).creating("CreateSecurityGroup"),
        role(call("ec2:RunInstances", i_new)),
        role(call("ec2:RunInstances", vol_new)),
        role(call("ec2:RunInstances", IMG_NEW)).has(KEY, CK),
        role(call("ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-1")),
        role(call("ec2:RunInstances", "arn:aws:ec2:us-east-1:123456789012:network-interface/eni-0new")),
        role(call("ec2:RunInstances", sg_new)).has(ROLE, "smoke-test"),
        role(call("ec2:CreateTags", i_new)).creating("RunInstances"),
        role(call("ec2:CreateTags", vol_new)).creating("RunInstances"),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/kv-ami-smoke-test")
            .ctx("iam:PassedToService", "ec2.amazonaws.com"),
        call("ec2:GetConsoleOutput", i_new).has(ROLE, "smoke-test"),
        call("ec2:TerminateInstances", i_new).has(ROLE, "smoke-test"),
        call("ec2:DeleteSecurityGroup", sg_new).has(ROLE, "smoke-test"),
    ];
    let deny = vec![
        // Booting an image that is not kv-ami's (the content key cannot be added to one: see the
        // other policies), or launching without the role tag.
        role(call("ec2:RunInstances", IMG)),
        call("ec2:RunInstances", i_new).tags(KEY, CK),
        role(call("ec2:RunInstances", sg)),
        call("ec2:RunInstances", i_new).tags(ROLE, "builder"),
        // Another instance or group: not terminated, read, retagged or deleted.
        call("ec2:TerminateInstances", i),
        call("ec2:TerminateInstances", i).has(ROLE, "builder"),
        call("ec2:GetConsoleOutput", i),
        call("ec2:CreateTags", i).tags(ROLE, "smoke-test"),
        call("ec2:CreateTags", sg).tags(ROLE, "smoke-test"),
        call("ec2:DeleteSecurityGroup", sg),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/admin")
            .ctx("iam:PassedToService", "ec2.amazonaws.com"),
        call("iam:PassRole", "arn:aws:iam::123456789012:role/kv-ami-smoke-test")
            .ctx("iam:PassedToService", "lambda.amazonaws.com"),
        // Nothing on images, snapshots or SSM.
        call("ec2:DeregisterImage", IMG_NEW).has(KEY, CK),
        call("ssm:PutParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/latest"),
    ];
    check("iam-policy-smoke-test.json", &[&p], &allow, &deny);
}

#[test]
fn smoke_test_instance_policy_only_reports_on_smoke_test_instances() {
    let p = policy("packaging/ami/iam-smoke-test-instance-policy.json");
    let i = "arn:aws:ec2:us-east-1:123456789012:instance/i-0new";
    let report = |c: Call| {
        c.tags("kv-ami:smoke-result", "exit=0 step=8 enclave=RUNNING readyz=true health=SERVING")
            .tags("kv-ami:smoke-pcr0", "0a")
            .tags("kv-ami:smoke-pcr1", "01")
            .tags("kv-ami:smoke-pcr2", "02")
            .tags("kv-ami:smoke-status", "done")
    };
    let allow = vec![report(call("ec2:CreateTags", i).has(ROLE, "smoke-test"))];
    let deny = vec![
        // Another instance (a builder, a fleet instance), or other keys on its own.
        report(call("ec2:CreateTags", i).has(ROLE, "builder")),
        report(call("ec2:CreateTags", "arn:aws:ec2:us-east-1:123456789012:instance/i-0aaa")),
        report(call("ec2:CreateTags", i).has(ROLE, "smoke-test")).tags(ROLE, "builder"),
        call("ec2:CreateTags", i).has(ROLE, "smoke-test").tags(KEY, CK),
        call("ec2:CreateTags", IMG_NEW).has(KEY, CK).tags("kv-ami:smoke-status", "done"),
    ];
    check("iam-smoke-test-instance-policy.json", &[&p], &allow, &deny);
}

#[test]
fn gc_policy_deletes_only_images_and_snapshots_of_a_channel_with_the_content_key() {
    let p = policy("packaging/ami/iam-policy-gc.json");
    let ours = |c: Call| c.has(KEY, CK).has("kv-ami:channel", "stable");
    let allow = vec![
        call("ec2:DescribeImages", "*"),
        call("ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/latest"),
        ours(call("ec2:DeregisterImage", IMG)),
        ours(call("ec2:DeleteSnapshot", SNAP)),
        ours(call("ec2:DeregisterImage", COPY_NEW)),
        ours(call("ec2:DeleteSnapshot", COPY_SNAP_NEW)),
        ours(call("ec2:EnableImageDeprecation", IMG)),
        // The build parameter of a deregistered build, exactly `<prefix>/<channel>/builds/<key 12>`.
        call(
            "ssm:GetParameter",
            "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/builds/0123456789ab",
        ),
        call(
            "ssm:DeleteParameter",
            "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/builds/0123456789ab",
        ),
        call(
            "ssm:DeleteParameter",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/kv/ami/stable-io2/builds/abcdef012345",
        ),
    ];
    let deny = vec![
        // No other parameter: not `latest`, not the legacy AMI-id parameter, not a longer name.
        call("ssm:DeleteParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/latest"),
        call("ssm:DeleteParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami-id"),
        call(
            "ssm:DeleteParameter",
            "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/builds/0123456789ab/x",
        ),
        call("ssm:DeleteParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/other/builds/0123456789ab"),
        // Untagged, or with one of the two tags only.
        call("ec2:DeregisterImage", IMG),
        call("ec2:DeleteSnapshot", SNAP),
        call("ec2:DeregisterImage", IMG).has(KEY, CK),
        call("ec2:DeleteSnapshot", SNAP).has("kv-ami:channel", "stable"),
        call("ec2:EnableImageDeprecation", IMG).has(KEY, CK),
        call("ec2:DisableImageDeprecation", IMG).has(KEY, CK).has("kv-ami:channel", "stable"),
        // Nothing else: no tagging (which could make something a candidate), sharing, writing SSM.
        call("ec2:CreateTags", IMG).tags("kv-ami:channel", "stable"),
        ours(call("ec2:ModifyImageAttribute", IMG)),
        call("ssm:PutParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/kv/ami/stable/latest"),
        call("ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/other/secret"),
    ];
    check("iam-policy-gc.json", &[&p], &allow, &deny);
}

#[test]
fn builder_instance_policy_only_signals_on_builders() {
    let p = policy("packaging/ami/iam-builder-instance-policy.json");
    let i = "arn:aws:ec2:us-east-1:123456789012:instance/i-0new";
    let allow = vec![
        call("ec2:CreateTags", i)
            .has(ROLE, "builder")
            .tags("kv-ami:bake-status", "ok")
            .tags("kv-ami:bake-detail", "d"),
        call("s3:GetObject", "arn:aws:s3:::bake-bucket/kv-ami-bake/r1/manifest.json"),
        call("s3:ListBucket", "arn:aws:s3:::bake-bucket").ctx("s3:prefix", "kv-ami-bake/r1/"),
    ];
    let deny = vec![
        call("ec2:CreateTags", i).has(ROLE, "builder").tags(ROLE, "x"),
        call("ec2:CreateTags", "arn:aws:ec2:us-east-1:123456789012:instance/i-0aaa")
            .tags("kv-ami:bake-status", "ok"),
        call("s3:GetObject", "arn:aws:s3:::bake-bucket/other/x"),
    ];
    check("iam-builder-instance-policy.json", &[&p], &allow, &deny);
}

#[test]
fn packer_policy_allows_amazon_ebs_on_its_own_resources_only() {
    let p = policy("packaging/packer/iam-policy.json");
    const MARK: &str = "packer-builder";
    let run = |c: Call| c.tags(ROLE, MARK).tags(KEY, CK);
    let acct = "arn:aws:ec2:us-east-1:123456789012";
    let kp_new = format!("{acct}:key-pair/key-0new");
    let sg_new = format!("{acct}:security-group/sg-0new");
    let i_new = format!("{acct}:instance/i-0new");
    let vol_new = format!("{acct}:volume/vol-0new");
    let eni_new = format!("{acct}:network-interface/eni-0new");
    let mut allow: Vec<Call> = [
        "ec2:DescribeImages",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceStatus",
        "ec2:DescribeRegions",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSnapshots",
        "ec2:DescribeSubnets",
        "ec2:DescribeVolumes",
    ]
    .iter()
    .map(|a| call(a, "*"))
    .collect();
    allow.extend([
        run(call("ec2:CreateKeyPair", &kp_new)),
        run(call("ec2:CreateTags", &kp_new)).creating("CreateKeyPair"),
        run(call("ec2:CreateSecurityGroup", &sg_new)),
        run(call("ec2:CreateSecurityGroup", &format!("{acct}:vpc/vpc-1"))),
        run(call("ec2:CreateTags", &sg_new)).creating("CreateSecurityGroup"),
        call("ec2:AuthorizeSecurityGroupIngress", &sg_new).has(ROLE, MARK),
        run(call("ec2:RunInstances", &i_new)),
        run(call("ec2:RunInstances", &vol_new)),
        run(call("ec2:RunInstances", &eni_new)),
        run(call("ec2:RunInstances", "arn:aws:ec2:us-east-1::image/ami-0base")),
        run(call("ec2:RunInstances", &format!("{acct}:subnet/subnet-1"))),
        run(call("ec2:RunInstances", &sg_new)).has(ROLE, MARK),
        run(call("ec2:RunInstances", &kp_new)).has(ROLE, MARK),
        run(call("ec2:CreateTags", &i_new)).creating("RunInstances"),
        run(call("ec2:CreateTags", &vol_new)).creating("RunInstances"),
        run(call("ec2:CreateTags", &eni_new)).creating("RunInstances"),
        call("ec2:ModifyInstanceAttribute", &i_new).has(ROLE, MARK),
        call("ec2:StopInstances", &i_new).has(ROLE, MARK),
        run(call("ec2:CreateImage", &i_new)).has(ROLE, MARK),
        run(call("ec2:CreateImage", IMG_NEW)),
        run(call("ec2:CreateImage", SNAP_NEW)),
        run(call("ec2:CreateTags", IMG_NEW)).creating("CreateImage"),
        run(call("ec2:CreateTags", SNAP_NEW)).creating("CreateImage"),
        // encrypt_boot and ami_regions: CopyImage with CopyImageTags, then the intermediary
        // (unencrypted) image and its snapshot go.
        call("ec2:CopyImage", COPY_NEW),
        call("ec2:CopyImage", IMG_NEW).has(ROLE, MARK),
        run(call("ec2:CreateTags", COPY_NEW)).creating("CopyImage"),
        call("ec2:DeregisterImage", IMG_NEW).has(ROLE, MARK),
        call("ec2:DeleteSnapshot", SNAP_NEW).has(ROLE, MARK),
        call("ec2:ModifyImageAttribute", COPY_NEW).has(ROLE, MARK),
        // `tags` on every AMI and its snapshots (a copy's snapshots carry no tags).
        call("ec2:CreateTags", COPY_NEW).has(ROLE, MARK).tags("service", "kv").tags("built_by", "packer"),
        call("ec2:CreateTags", COPY_SNAP_NEW).tags("service", "kv").tags("built_by", "packer"),
        call("ec2:TerminateInstances", &i_new).has(ROLE, MARK),
        call("ec2:DeleteSecurityGroup", &sg_new).has(ROLE, MARK),
        call("ec2:DeleteKeyPair", &kp_new).has(ROLE, MARK),
        call("ec2:DeleteVolume", &vol_new).has(ROLE, MARK),
        call("kms:CreateGrant", "arn:aws:kms:us-east-1:123456789012:key/k").ctx(VIA_EC2.0, VIA_EC2.1),
        call("kms:GenerateDataKeyWithoutPlaintext", "arn:aws:kms:us-east-1:123456789012:key/k")
            .ctx(VIA_EC2.0, VIA_EC2.1),
    ]);
    let i = format!("{acct}:instance/i-0aaa");
    let sg = format!("{acct}:security-group/sg-0aaa");
    let deny = vec![
        call("ec2:CreateTags", SNAP).tags(ROLE, MARK),
        call("ec2:CreateTags", IMG).tags(ROLE, MARK),
        call("ec2:CreateTags", &i).tags(ROLE, MARK),
        call("ec2:CreateTags", SNAP).tags(KEY, CK),
        call("ec2:CreateTags", IMG).tags("service", "kv"),
        call("ec2:CreateTags", SNAP).tags("service", "kv").creating("RunInstances").tags(ROLE, MARK),
        call("ec2:DeleteSnapshot", SNAP),
        call("ec2:DeregisterImage", IMG),
        call("ec2:ModifyImageAttribute", IMG),
        call("ec2:ModifySnapshotAttribute", SNAP_NEW).has(ROLE, MARK),
        call("ec2:StopInstances", &i),
        call("ec2:TerminateInstances", &i),
        call("ec2:ModifyInstanceAttribute", &i),
        call("ec2:AuthorizeSecurityGroupIngress", &sg),
        call("ec2:DeleteSecurityGroup", &sg),
        call("ec2:DeleteVolume", &format!("{acct}:volume/vol-0aaa")),
        call("ec2:RunInstances", &i_new).tags(KEY, CK),
        run(call("ec2:RunInstances", &sg)),
        call("ec2:CreateImage", &i).tags(ROLE, MARK),
        // Not needed by amazon-ebs (other builders, Windows).
        call("ec2:AttachVolume", &vol_new).has(ROLE, MARK),
        call("ec2:CreateVolume", &vol_new).tags(ROLE, MARK),
        call("ec2:CreateSnapshot", SNAP_NEW).tags(ROLE, MARK),
        call("ec2:RegisterImage", IMG_NEW).tags(ROLE, MARK),
        call("ec2:GetPasswordData", &i_new).has(ROLE, MARK),
        call("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/k"),
    ];
    check("packer/iam-policy.json", &[&p], &allow, &deny);
}

#[test]
fn the_evaluator_reads_conditions_as_iam_does() {
    let p: Value = serde_json::from_str(
        r#"{"Statement":[
  {"Effect":"Allow","Action":"ec2:CreateTags","Resource":"arn:aws:ec2:*::snapshot/*","Condition":{"StringEquals":{"ec2:CreateAction":"StartSnapshot"}}},
  {"Effect":"Allow","Action":"ec2:Delete*","Resource":"arn:aws:ec2:*::snapshot/*","Condition":{"Null":{"aws:ResourceTag/k":"false"}}},
  {"Effect":"Allow","Action":"ec2:CreateTags","Resource":"arn:aws:ec2:*::image/*","Condition":{"ForAllValues:StringEquals":{"aws:TagKeys":["a","b"]},"StringLike":{"aws:ResourceTag/k":"v*"}}},
  {"Effect":"Deny","Action":"ec2:DeleteSnapshot","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/keep":"yes"}}}
]}"#,
    )
    .unwrap();
    let t = |c: Call| allowed(&[&p], &c);
    assert!(t(call("ec2:CreateTags", SNAP_NEW).tags("k", "v").creating("StartSnapshot")));
    assert!(!t(call("ec2:CreateTags", SNAP_NEW).tags("k", "v")));
    assert!(!t(call("ec2:CreateTags", SNAP_NEW).tags("k", "v").creating("CreateImage")));
    assert!(t(call("ec2:deletesnapshot", SNAP).has("k", "")));
    assert!(!t(call("ec2:DeleteSnapshot", SNAP)));
    assert!(!t(call("ec2:DeleteSnapshot", SNAP).has("k", "").has("keep", "yes")));
    assert!(t(call("ec2:CreateTags", IMG).has("k", "v1").tags("a", "1").tags("b", "2")));
    assert!(!t(call("ec2:CreateTags", IMG).has("k", "v1").tags("a", "1").tags("c", "2")));
    assert!(!t(call("ec2:CreateTags", IMG).has("k", "x").tags("a", "1")));
    assert!(!t(call("ec2:CreateTags", "arn:aws:ec2:us-east-1:1:instance/i-1").creating("StartSnapshot")));
    assert!(glob("arn:aws:s3:::*/kv-ami-bake/*", "arn:aws:s3:::b/kv-ami-bake/r/x", false));
    assert!(!glob("arn:aws:s3:::*/kv-ami-bake/*", "arn:aws:s3:::b/other/x", false));
}
