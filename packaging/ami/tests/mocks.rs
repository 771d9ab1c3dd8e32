//! What moto_server cannot do, against aws-smithy-mocks: ImportSnapshot and its polling,
//! EnableImageDeprecation, RegisterImage's InvalidAMIName.Duplicate, an image that ends in
//! `failed`, and one copy region failing while another succeeds. Each test runs the real `run`
//! with mocked clients per region and checks which calls were made (and which were not: the
//! cleanup must undo exactly what it should).

mod common;

use aws_sdk_ec2::Client as Ec2;
use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation as op;
use aws_sdk_ec2::types as t;
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use common::{Log, bundle_manifest, never, opts, sparse_image};
use kv_ami::aws::{Clients, Target};
use kv_ami::spec::AmiSpec;
use kv_ami::{Job, run};
use std::collections::BTreeMap;
use std::sync::Arc;

fn in_a_year() -> (String, i64) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
        + 365 * 86400;
    let t = aws_sdk_ec2::primitives::DateTime::from_secs(secs);
    (t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime).unwrap(), secs)
}

fn image(id: &str, state: t::ImageState, snapshot: &str, reason: Option<&str>) -> t::Image {
    let mut b = t::Image::builder()
        .image_id(id)
        .state(state)
        .creation_date("2026-11-01T00:00:00.000Z")
        .block_device_mappings(
            t::BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(t::EbsBlockDevice::builder().snapshot_id(snapshot).build())
                .build(),
        );
    if let Some(r) = reason {
        b = b.state_reason(t::StateReason::builder().code("Client.Failure").message(r).build());
    }
    b.build()
}

fn images(v: Vec<t::Image>) -> op::describe_images::DescribeImagesOutput {
    op::describe_images::DescribeImagesOutput::builder().set_images(Some(v)).build()
}

fn ec2_error(code: &str, message: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(code).message(message).build()
}

/// Clients of one region: EC2 with `rules`, the other services with none (a call to them fails).
fn clients(region: &str, rules: &[&Rule], s3_rules: &[&Rule]) -> Clients {
    let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, rules);
    let ebs = mock_client!(aws_sdk_ebs, RuleMode::MatchAny, &[] as &[&Rule]);
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[] as &[&Rule]);
    let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, s3_rules);
    Clients::from_parts(region, ec2, ebs, ssm, s3)
}

fn target(by_region: BTreeMap<&'static str, Clients>) -> Target {
    Target {
        factory: Some(Arc::new(move |r: &str| {
            by_region.get(r).cloned().unwrap_or_else(|| panic!("no mock for {r}"))
        })),
        ..Default::default()
    }
}

/// The rules of a mocked S3 + ImportSnapshot import in us-east-1, up to RegisterImage.
struct Import {
    find: Rule,
    put: Rule,
    delete_objects: Rule,
    import: Rule,
    poll: Rule,
    tags: Rule,
    snapshots: Rule,
    cancel: Rule,
    delete_snapshot: Rule,
    deregister: Rule,
}

impl Import {
    fn new() -> Import {
        Import {
            find: mock!(Ec2::describe_images)
                .match_requests(|r| !r.owners().is_empty())
                .then_output(|| images(vec![])),
            put: mock!(aws_sdk_s3::Client::put_object)
                .match_requests(|r| {
                    r.bucket() == Some("imports")
                        && r.key().is_some_and(|k| k.starts_with("kv-ami-import/") && k.ends_with(".raw"))
                        && r.checksum_sha256().is_some()
                })
                .then_output(|| aws_sdk_s3::operation::put_object::PutObjectOutput::builder().build()),
            delete_objects: mock!(aws_sdk_s3::Client::delete_objects)
                .match_requests(|r| r.bucket() == Some("imports"))
                .then_output(|| {
                    aws_sdk_s3::operation::delete_objects::DeleteObjectsOutput::builder().build()
                }),
            import: mock!(Ec2::import_snapshot)
                .match_requests(|r| {
                    let d = r.disk_container();
                    d.and_then(|d| d.format()) == Some("RAW")
                        && d.and_then(|d| d.user_bucket()).and_then(|b| b.s3_bucket()) == Some("imports")
                })
                .then_output(|| {
                    op::import_snapshot::ImportSnapshotOutput::builder()
                        .import_task_id("import-snap-0123")
                        .build()
                }),
            poll: mock!(Ec2::describe_import_snapshot_tasks)
                .match_requests(|r| r.import_task_ids() == ["import-snap-0123"])
                .sequence()
                .output(|| task("active", None))
                .times(2)
                .output(|| task("completed", Some("snap-imported")))
                .repeatedly()
                .build(),
            tags: mock!(Ec2::create_tags)
                .then_output(|| op::create_tags::CreateTagsOutput::builder().build()),
            snapshots: mock!(Ec2::describe_snapshots).then_output(|| {
                op::describe_snapshots::DescribeSnapshotsOutput::builder()
                    .snapshots(
                        t::Snapshot::builder()
                            .snapshot_id("snap-imported")
                            .state(t::SnapshotState::Completed)
                            .build(),
                    )
                    .build()
            }),
            cancel: mock!(Ec2::cancel_import_task)
                .then_output(|| op::cancel_import_task::CancelImportTaskOutput::builder().build()),
            delete_snapshot: mock!(Ec2::delete_snapshot)
                .match_requests(|r| r.snapshot_id() == Some("snap-imported"))
                .then_output(|| op::delete_snapshot::DeleteSnapshotOutput::builder().build()),
            deregister: mock!(Ec2::deregister_image)
                .then_output(|| op::deregister_image::DeregisterImageOutput::builder().build()),
        }
    }

    fn ec2_rules<'a>(&'a self, more: &[&'a Rule]) -> Vec<&'a Rule> {
        let mut v = vec![
            &self.find,
            &self.import,
            &self.poll,
            &self.tags,
            &self.snapshots,
            &self.cancel,
            &self.delete_snapshot,
            &self.deregister,
        ];
        v.extend_from_slice(more);
        v
    }
}

fn task(
    status: &str,
    snapshot: Option<&str>,
) -> op::describe_import_snapshot_tasks::DescribeImportSnapshotTasksOutput {
    let mut d = t::SnapshotTaskDetail::builder().status(status).status_message("converting");
    if let Some(s) = snapshot {
        d = d.snapshot_id(s);
    }
    op::describe_import_snapshot_tasks::DescribeImportSnapshotTasksOutput::builder()
        .import_snapshot_tasks(
            t::ImportSnapshotTask::builder()
                .import_task_id("import-snap-0123")
                .snapshot_task_detail(d.build())
                .build(),
        )
        .build()
}

fn job(dir: &std::path::Path, extra_top: &str) -> Job {
    let image = sparse_image(dir, 4096, &[0, 3000]);
    let manifest = bundle_manifest(dir, "mm");
    let spec = AmiSpec::parse(&format!(
        "name = \"kv-{{content_key}}\"\nregion = \"us-east-1\"\nvia = \"s3-import\"\n{extra_top}\n\
         [s3_import]\nbucket = \"imports\"\nwait_interval_secs = 0\n[upload]\nwait_interval_secs = 0\n"
    ))
    .unwrap();
    Job::prepare(spec, &image, &manifest).unwrap()
}

#[tokio::test]
async fn s3_import_then_register_deprecate_and_share_with_accounts_orgs_and_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let (at, at_secs) = in_a_year();
    let org = "arn:aws:organizations::111122223333:organization/o-abcdefghij";
    let ou = "arn:aws:organizations::111122223333:ou/o-abcdefghij/ou-ab12-cdefgh34";
    let job = job(
        dir.path(),
        &format!(
            "share_with = [\"111122223333\"]\nshare_with_organizations = [\"{org}\"]\nshare_with_ous = [\"{ou}\"]\npublic = true\ndeprecate_at = \"{at}\""
        ),
    );
    let m = Import::new();
    let register = mock!(Ec2::register_image)
        .match_requests(|r| {
            r.block_device_mappings().first().and_then(|b| b.ebs()).and_then(|e| e.snapshot_id())
                == Some("snap-imported")
        })
        .then_output(|| op::register_image::RegisterImageOutput::builder().image_id("ami-new").build());
    let wait = mock!(Ec2::describe_images)
        .match_requests(|r| r.image_ids() == ["ami-new"])
        .then_output(|| images(vec![image("ami-new", t::ImageState::Available, "snap-imported", None)]));
    // Create-volume permission: accounts only (EC2 has none for organizations or `all`).
    let snap_perm = mock!(Ec2::modify_snapshot_attribute)
        .match_requests(|r| {
            r.snapshot_id() == Some("snap-imported")
                && r.user_ids() == ["111122223333"]
                && r.group_names().is_empty()
        })
        .then_output(|| op::modify_snapshot_attribute::ModifySnapshotAttributeOutput::builder().build());
    let launch_perm = mock!(Ec2::modify_image_attribute)
        .match_requests(move |r| {
            let add = r.launch_permission().map(|l| l.add()).unwrap_or_default();
            add.iter().any(|p| p.user_id() == Some("111122223333"))
                && add.iter().any(|p| p.organization_arn() == Some(org))
                && add.iter().any(|p| p.organizational_unit_arn() == Some(ou))
                && add.iter().any(|p| p.group() == Some(&t::PermissionGroup::All))
                && add.len() == 4
        })
        .then_output(|| op::modify_image_attribute::ModifyImageAttributeOutput::builder().build());
    let deprecate = mock!(Ec2::enable_image_deprecation)
        .match_requests(move |r| {
            r.image_id() == Some("ami-new") && r.deprecate_at().map(|d| d.secs()) == Some(at_secs)
        })
        .then_output(|| {
            op::enable_image_deprecation::EnableImageDeprecationOutput::builder().r#return(true).build()
        });
    let rules = m.ec2_rules(&[&register, &wait, &snap_perm, &launch_perm, &deprecate]);
    let east = clients("us-east-1", &rules, &[&m.put, &m.delete_objects]);
    let target = target(BTreeMap::from([("us-east-1", east)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let out =
        run(&job, &opts(&target, &push), never()).await.unwrap_or_else(|e| panic!("{e}\n{:?}", log.lines()));
    let b = &out.builds[0];
    assert_eq!(b.artifact_id, "us-east-1:ami-new");
    assert_eq!(b.regions["us-east-1"].snapshot_ids, vec!["snap-imported"]);
    assert_eq!(b.builder_type, "kv-ami.s3-import");
    assert_eq!((m.put.num_calls(), m.import.num_calls()), (1, 1));
    assert_eq!(m.poll.num_calls(), 3, "active, active, completed");
    assert_eq!((snap_perm.num_calls(), launch_perm.num_calls(), deprecate.num_calls()), (1, 1, 1));
    // The object goes once the import has ended; nothing else is undone.
    assert_eq!(m.delete_objects.num_calls(), 1);
    assert_eq!((m.cancel.num_calls(), m.delete_snapshot.num_calls(), m.deregister.num_calls()), (0, 0, 0));
}

/// moto keeps no volume type on a registered image: the io2 variant's RegisterImage is checked here.
#[tokio::test]
async fn an_io2_variant_registers_an_io2_root_volume_and_carries_its_variant_tag_from_creation() {
    let dir = tempfile::tempdir().unwrap();
    let image_file = sparse_image(dir.path(), 4096, &[0, 3000]);
    let manifest = bundle_manifest(dir.path(), "mm");
    let spec = AmiSpec::parse(
        "name = \"kv-{variant}-{content_key}\"\nregion = \"us-east-1\"\nvia = \"s3-import\"\n\
         [s3_import]\nbucket = \"imports\"\nwait_interval_secs = 0\n[upload]\nwait_interval_secs = 0\n\
         [[variants]]\nid = \"gp3\"\n[[variants]]\nid = \"io2\"\n[variants.volume]\ntype = \"io2\"\niops = 16000\n",
    )
    .unwrap();
    let io2 = spec.variant_specs().remove(1);
    let job = Job::prepare(io2, &image_file, &manifest).unwrap();
    let m = Import::new();
    let variant_tag =
        |tags: &[t::Tag]| tags.iter().any(|t| t.key() == Some("kv-ami:variant") && t.value() == Some("io2"));
    let register = mock!(Ec2::register_image)
        .match_requests(move |r| {
            let e = r.block_device_mappings().first().and_then(|b| b.ebs());
            e.and_then(|e| e.volume_type()) == Some(&t::VolumeType::Io2)
                && e.and_then(|e| e.iops()) == Some(16000)
                && e.and_then(|e| e.throughput()).is_none()
                && r.name().is_some_and(|n| n.starts_with("kv-io2-"))
                && r.tag_specifications().iter().any(|ts| variant_tag(ts.tags()))
        })
        .then_output(|| op::register_image::RegisterImageOutput::builder().image_id("ami-new").build());
    let wait = mock!(Ec2::describe_images)
        .match_requests(|r| r.image_ids() == ["ami-new"])
        .then_output(|| images(vec![image("ami-new", t::ImageState::Available, "snap-imported", None)]));
    let variant_tagged = mock!(Ec2::create_tags)
        .match_requests(move |r| r.resources() == ["ami-new"] && variant_tag(r.tags()))
        .then_output(|| op::create_tags::CreateTagsOutput::builder().build());
    let mut rules = vec![&variant_tagged];
    rules.extend(m.ec2_rules(&[&register, &wait]));
    let east = clients("us-east-1", &rules, &[&m.put, &m.delete_objects]);
    let target = target(BTreeMap::from([("us-east-1", east)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let mut quiet = job.clone();
    quiet.spec.skip_smoke_test = true;
    let out = run(&quiet, &opts(&target, &push), never())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{:?}", log.lines()));
    let b = &out.builds[0];
    assert_eq!(b.name, format!("kv-io2-{}", &job.content_key[..12]));
    assert_eq!(b.custom_data.get("variant").map(String::as_str), Some("io2"));
    assert_eq!(register.num_calls(), 1, "RegisterImage with an io2 root volume and the variant tag");
    assert!(variant_tagged.num_calls() >= 1, "the variant tag set right after RegisterImage too");
}

#[tokio::test]
async fn duplicate_ami_name_deletes_the_imported_snapshot_and_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "");
    let m = Import::new();
    let register = mock!(Ec2::register_image).then_error(|| {
        op::register_image::RegisterImageError::generic(ec2_error(
            "InvalidAMIName.Duplicate",
            "AMI name kv-x is already in use by AMI ami-0ld",
        ))
    });
    let rules = m.ec2_rules(&[&register]);
    let east = clients("us-east-1", &rules, &[&m.put, &m.delete_objects]);
    let target = target(BTreeMap::from([("us-east-1", east)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let e = run(&job, &opts(&target, &push), never()).await.unwrap_err();
    let s = e.to_string();
    assert!(s.contains("us-east-1") && s.contains("ec2:RegisterImage") && s.contains("snap-imported"), "{s}");
    assert!(s.contains("InvalidAMIName.Duplicate"), "{s}");
    assert_eq!(e.code(), Some("InvalidAMIName.Duplicate"));
    assert_eq!(m.delete_snapshot.num_calls(), 1, "{:?}", log.lines());
    assert_eq!(m.delete_objects.num_calls(), 1);
    assert_eq!(
        (m.cancel.num_calls(), m.deregister.num_calls()),
        (0, 0),
        "the import had ended; no image existed"
    );
}

#[tokio::test]
async fn an_image_in_failed_state_ends_the_wait_at_once_with_its_reason_and_is_deregistered() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "");
    let m = Import::new();
    let register = mock!(Ec2::register_image)
        .then_output(|| op::register_image::RegisterImageOutput::builder().image_id("ami-bad").build());
    let wait =
        mock!(Ec2::describe_images).match_requests(|r| r.image_ids() == ["ami-bad"]).then_output(|| {
            images(vec![image(
                "ami-bad",
                t::ImageState::Failed,
                "snap-imported",
                Some("snapshot snap-imported is corrupt"),
            )])
        });
    let rules = m.ec2_rules(&[&register, &wait]);
    let east = clients("us-east-1", &rules, &[&m.put, &m.delete_objects]);
    let target = target(BTreeMap::from([("us-east-1", east)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let s = run(&job, &opts(&target, &push), never()).await.unwrap_err().to_string();
    assert!(s.contains("us-east-1") && s.contains("ami-bad") && s.contains("image state failed"), "{s}");
    assert!(s.contains("snapshot snap-imported is corrupt"), "{s}");
    // One look at the image (fail fast, not 120 checks), one more by the cleanup for its snapshots.
    assert_eq!(wait.num_calls(), 2);
    assert_eq!(m.deregister.num_calls(), 1);
    assert!(m.delete_snapshot.num_calls() >= 1);
    let lines = log.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cleanup: us-east-1: ec2:DeregisterImage ami-bad") && l.ends_with("done")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn one_copy_region_failing_is_named_the_other_copies_are_kept_and_only_its_copy_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let image_path = sparse_image(dir.path(), 4096, &[0]);
    let manifest = bundle_manifest(dir.path(), "cp");
    let spec = AmiSpec::parse(
        "name = \"kv-{content_key}\"\nregion = \"us-east-1\"\ncopy_to = [\"eu-west-1\", \"us-west-2\"]\n\
         share_with = [\"111122223333\"]\n[upload]\nwait_interval_secs = 0\n",
    )
    .unwrap();
    let job = Job::prepare(spec, &image_path, &manifest).unwrap();
    let ok_tags =
        || mock!(Ec2::create_tags).then_output(|| op::create_tags::CreateTagsOutput::builder().build());
    let deregister = || {
        mock!(Ec2::deregister_image)
            .then_output(|| op::deregister_image::DeregisterImageOutput::builder().build())
    };
    let delete_snapshot = || {
        mock!(Ec2::delete_snapshot)
            .then_output(|| op::delete_snapshot::DeleteSnapshotOutput::builder().build())
    };
    let none_yet = || {
        mock!(Ec2::describe_images).match_requests(|r| !r.owners().is_empty()).then_output(|| images(vec![]))
    };
    let share = || {
        mock!(Ec2::modify_image_attribute)
            .then_output(|| op::modify_image_attribute::ModifyImageAttributeOutput::builder().build())
    };

    // Source: an earlier run's image, reused.
    let src_find = mock!(Ec2::describe_images)
        .then_output(|| images(vec![image("ami-src", t::ImageState::Available, "snap-src", None)]));
    let (src_tags, src_dereg, src_share) = (ok_tags(), deregister(), share());
    let east = clients("us-east-1", &[&src_find, &src_tags, &src_dereg, &src_share], &[]);

    // eu-west-1: the copy starts, then fails.
    let (eu_find, eu_tags, eu_dereg, eu_del, eu_share) =
        (none_yet(), ok_tags(), deregister(), delete_snapshot(), share());
    let eu_copy = mock!(Ec2::copy_image)
        .match_requests(|r| {
            let snapshot_key = r.tag_specifications().iter().any(|t| {
                t.resource_type() == Some(&t::ResourceType::Snapshot)
                    && t.tags().iter().any(|x| x.key() == Some("kv-ami:content-key"))
            });
            r.source_region() == Some("us-east-1") && r.source_image_id() == Some("ami-src") && snapshot_key
        })
        .then_output(|| op::copy_image::CopyImageOutput::builder().image_id("ami-eu").build());
    let eu_wait =
        mock!(Ec2::describe_images).match_requests(|r| r.image_ids() == ["ami-eu"]).then_output(|| {
            images(vec![image(
                "ami-eu",
                t::ImageState::Failed,
                "snap-eu",
                Some("Copy failed: InternalError"),
            )])
        });
    let eu =
        clients("eu-west-1", &[&eu_find, &eu_copy, &eu_tags, &eu_wait, &eu_dereg, &eu_del, &eu_share], &[]);

    // us-west-2: the copy finishes.
    let (us_find, us_tags, us_dereg, us_share) = (none_yet(), ok_tags(), deregister(), share());
    let us_copy = mock!(Ec2::copy_image)
        .then_output(|| op::copy_image::CopyImageOutput::builder().image_id("ami-usw").build());
    let us_wait = mock!(Ec2::describe_images)
        .match_requests(|r| r.image_ids() == ["ami-usw"])
        .then_output(|| images(vec![image("ami-usw", t::ImageState::Available, "snap-usw", None)]));
    let us = clients("us-west-2", &[&us_find, &us_copy, &us_tags, &us_wait, &us_dereg, &us_share], &[]);

    let target = target(BTreeMap::from([("us-east-1", east), ("eu-west-1", eu), ("us-west-2", us)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let e = run(&job, &opts(&target, &push), never()).await.unwrap_err().to_string();
    assert!(e.contains("copy failed in 1 of 2 target regions"), "{e}");
    assert!(
        e.contains("eu-west-1") && e.contains("ami-eu") && e.contains("Copy failed: InternalError"),
        "{e}"
    );
    assert!(e.contains("kept") && e.contains("us-east-1 ami-src") && e.contains("us-west-2 ami-usw"), "{e}");
    assert!(!e.contains("us-west-2: "), "us-west-2 did not fail: {e}");
    // Only the unfinished copy is undone (with its snapshot); the finished ones stay for a re-run.
    assert_eq!(eu_dereg.num_calls(), 1);
    assert_eq!(eu_del.num_calls(), 1);
    assert_eq!((us_dereg.num_calls(), src_dereg.num_calls()), (0, 0));
    // Nothing was published after the failure.
    assert_eq!((src_share.num_calls(), us_share.num_calls(), eu_share.num_calls()), (0, 0, 0));
    // us-west-2 ran to its end: waited (available) and listed its snapshots.
    assert_eq!(us_wait.num_calls(), 2);
}

#[tokio::test]
async fn a_failing_cleanup_step_is_reported_after_the_original_error_and_the_rest_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "");
    let mut m = Import::new();
    m.delete_snapshot = mock!(Ec2::delete_snapshot).then_error(|| {
        op::delete_snapshot::DeleteSnapshotError::generic(ec2_error(
            "UnauthorizedOperation",
            "not allowed to delete snap-imported",
        ))
    });
    let register = mock!(Ec2::register_image).then_error(|| {
        op::register_image::RegisterImageError::generic(ec2_error("InvalidAMIName.Duplicate", "name in use"))
    });
    let rules = m.ec2_rules(&[&register]);
    let east = clients("us-east-1", &rules, &[&m.put, &m.delete_objects]);
    let target = target(BTreeMap::from([("us-east-1", east)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let e = run(&job, &opts(&target, &push), never()).await.unwrap_err();
    let s = e.to_string();
    // The run's own error first, with its code still available...
    assert!(
        s.starts_with("us-east-1: ec2:RegisterImage on snap-imported failed: InvalidAMIName.Duplicate"),
        "{s}"
    );
    assert_eq!(e.code(), Some("InvalidAMIName.Duplicate"));
    // ...then what was left behind and why.
    assert!(s.contains("cleanup failed, left behind: us-east-1: ec2:DeleteSnapshot snap-imported"), "{s}");
    assert!(s.contains("UnauthorizedOperation"), "{s}");
    // The object was still deleted after the snapshot step failed (newest first: snapshot, object).
    assert_eq!(m.delete_objects.num_calls(), 1);
    let lines = log.lines();
    assert!(lines.iter().any(|l| l.contains("ec2:DeleteSnapshot snap-imported: FAILED")), "{lines:?}");
}

#[tokio::test]
async fn an_import_task_in_the_state_file_is_polled_again_instead_of_importing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), "on_failure = \"keep\"");
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        serde_json::json!({"version": 1, "content_key": job.content_key, "flow": "import", "import_task_id": "import-snap-0123"})
            .to_string(),
    )
    .unwrap();
    let m = Import::new();
    let register = mock!(Ec2::register_image)
        .then_output(|| op::register_image::RegisterImageOutput::builder().image_id("ami-new").build());
    let wait = mock!(Ec2::describe_images)
        .match_requests(|r| r.image_ids() == ["ami-new"])
        .then_output(|| images(vec![image("ami-new", t::ImageState::Available, "snap-imported", None)]));
    let rules = m.ec2_rules(&[&register, &wait]);
    let east = clients("us-east-1", &rules, &[&m.put, &m.delete_objects]);
    let target = target(BTreeMap::from([("us-east-1", east)]));
    let log = Log::default();
    let push = |l: &str| log.push(l);
    let o = kv_ami::RunOptions { state_path: Some(&state), ..opts(&target, &push) };
    let out = run(&job, &o, never()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.builds[0].artifact_id, "us-east-1:ami-new");
    assert_eq!((m.put.num_calls(), m.import.num_calls()), (0, 0), "neither uploaded nor imported again");
    assert_eq!(m.poll.num_calls(), 3);
    assert!(log.lines().iter().any(|l| l.contains("polling import task import-snap-0123 again")));
    // Once it has ended, the object goes even with on_failure = keep.
    assert_eq!(m.delete_objects.num_calls(), 1);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["snapshot_completed"], "snap-imported");
    assert_eq!(saved["image_id"], "ami-new");
    assert_eq!(saved["image_available"], true);
}

/// `kv-ami republish`: moto has no EnableImageDeprecation, so the renewal runs against mocks:
/// three builds of channel `stable` in two regions, `latest` on the oldest in us-east-1 only.
#[tokio::test]
async fn republish_renews_the_deprecation_of_latest_and_the_newest_in_every_region_and_nothing_else() {
    let tagged = |id: &str, key: &str, created: &str| {
        t::Image::builder()
            .image_id(id)
            .state(t::ImageState::Available)
            .creation_date(created)
            .tags(t::Tag::builder().key("kv-ami:content-key").value(key).build())
            .tags(t::Tag::builder().key("kv-ami:channel").value("stable").build())
            .build()
    };
    let listing = |r: &'static str| {
        mock!(Ec2::describe_images)
            .match_requests(|q| {
                q.owners() == ["self"] && q.filters().iter().any(|f| f.name() == Some("tag:kv-ami:channel"))
            })
            .then_output(move || {
                images(vec![
                    tagged(&format!("ami-k1-{r}"), "k1", "2026-01-01T00:00:00.000Z"),
                    tagged(&format!("ami-k2-{r}"), "k2", "2026-02-01T00:00:00.000Z"),
                    tagged(&format!("ami-k3-{r}"), "k3", "2026-03-01T00:00:00.000Z"),
                ])
            })
    };
    let days30 = 30 * 86400;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let renew = |r: &'static str| {
        mock!(Ec2::enable_image_deprecation)
            .match_requests(move |q| {
                let at = q.deprecate_at().map(|d| d.secs()).unwrap_or(0);
                let id = q.image_id().unwrap_or("");
                (id == format!("ami-k1-{r}") || id == format!("ami-k3-{r}"))
                    && (at - now() - days30).abs() < 120
            })
            .then_output(|| {
                op::enable_image_deprecation::EnableImageDeprecationOutput::builder().r#return(true).build()
            })
    };
    let latest_east = mock!(aws_sdk_ssm::Client::get_parameter)
        .match_requests(|q| q.name() == Some("/kv/ami/stable/latest"))
        .then_output(|| {
            aws_sdk_ssm::operation::get_parameter::GetParameterOutput::builder()
                .parameter(aws_sdk_ssm::types::Parameter::builder().value("ami-k1-us-east-1").build())
                .build()
        });
    let latest_west = mock!(aws_sdk_ssm::Client::get_parameter).then_error(|| {
        aws_sdk_ssm::operation::get_parameter::GetParameterError::ParameterNotFound(
            aws_sdk_ssm::types::error::ParameterNotFound::builder().build(),
        )
    });
    let spec = AmiSpec::parse("name = \"kv-{content_key}\"\nregion = \"us-east-1\"\ncopy_to = [\"eu-west-1\"]\nchannel = \"stable\"\n").unwrap();
    let (l_east, l_west, r_east, r_west) =
        (listing("us-east-1"), listing("eu-west-1"), renew("us-east-1"), renew("eu-west-1"));
    let region = |r: &str, list: &Rule, renew: &Rule, latest: &Rule| {
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[list, renew]);
        let ebs = mock_client!(aws_sdk_ebs, RuleMode::MatchAny, &[] as &[&Rule]);
        let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[latest]);
        let s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, &[] as &[&Rule]);
        Clients::from_parts(r, ec2, ebs, ssm, s3)
    };
    let target = target(BTreeMap::from([
        ("us-east-1", region("us-east-1", &l_east, &r_east, &latest_east)),
        ("eu-west-1", region("eu-west-1", &l_west, &r_west, &latest_west)),
    ]));
    let log = Log::default();
    let push = |l: &str| log.push(l);

    // Dry run: the same choice, no EnableImageDeprecation.
    let planned =
        kv_ami::gc::republish(&spec, &target, "stable", 1, 0, days30 as u64, true, &push).await.unwrap();
    assert_eq!((r_east.num_calls(), r_west.num_calls()), (0, 0));
    let ids: Vec<&str> = planned["eu-west-1"].iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(
        ids,
        vec!["ami-k3-eu-west-1", "ami-k1-eu-west-1"],
        "newest, then latest's build (latest is set in us-east-1 only)"
    );

    let done = kv_ami::gc::republish(&spec, &target, "stable", 1, 0, days30 as u64, false, &push)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{:#?}", log.lines()));
    assert_eq!((r_east.num_calls(), r_west.num_calls()), (2, 2), "k1 and k3, not k2, in each region");
    assert_eq!(done.values().map(Vec::len).sum::<usize>(), 4);
}
