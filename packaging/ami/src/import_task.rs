//! VM Import of a raw image in S3: ImportSnapshot, the bounded wait on
//! DescribeImportSnapshotTasks (the generic [`wait::poll`]: the SDK's `snapshot_imported` waiter
//! does not know the `deleted` state a failed import ends in), and CancelImportTask.

use crate::aws::{AwsError, Clients};
use crate::plan;
use crate::spec::CONTENT_KEY_TAG;
use crate::wait::{self, Bound, Ended, Step};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types as ec2t;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EC2 call failed.
    #[error(transparent)]
    Call(#[from] AwsError),
    /// ImportSnapshot answered without a task id.
    #[error("{region}: ec2:ImportSnapshot on {object}: no ImportTaskId in the answer")]
    NoTaskId { region: String, object: String },
    /// The task ended without a snapshot (`deleted`, `cancelled`, or completed without one).
    #[error("{region}: {task}: {reason}")]
    Failed { region: String, task: String, reason: String },
    /// The task had not completed within the bound.
    #[error("{region}: import task {task} not completed after {checks} checks ({}s)", waited.as_secs())]
    Timeout { region: String, task: String, checks: u32, waited: Duration },
}

crate::aws::call_code!(Error);

/// ImportSnapshot of a RAW disk image in S3; returns the import task id.
pub async fn import_snapshot(
    c: &Clients,
    bucket: &str,
    key: &str,
    role_name: Option<&str>,
    content_key: &str,
) -> Result<String, Error> {
    let what = format!("s3://{bucket}/{key}");
    let out = c
        .ec2
        .import_snapshot()
        .description(format!("kv-ami import {content_key}"))
        .disk_container(
            ec2t::SnapshotDiskContainer::builder()
                .format("RAW")
                .description(format!("kv-ami {content_key}"))
                .user_bucket(ec2t::UserBucket::builder().s3_bucket(bucket).s3_key(key).build())
                .build(),
        )
        .set_role_name(role_name.map(str::to_string))
        .tag_specifications(
            ec2t::TagSpecification::builder()
                .resource_type(ec2t::ResourceType::ImportSnapshotTask)
                .tags(ec2t::Tag::builder().key(CONTENT_KEY_TAG).value(content_key).build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::from_sdk(&c.region, "ec2:ImportSnapshot", &what, &e))?;
    match out.import_task_id() {
        Some(t) if !t.is_empty() => Ok(t.to_string()),
        _ => Err(Error::NoTaskId { region: c.region.clone(), object: what }),
    }
}

/// Bounded wait for an import task; `deleted` (a failed import) ends it at once with the
/// StatusMessage. Returns the snapshot id.
pub async fn wait_import(c: &Clients, task: &str, bound: Bound) -> Result<String, Error> {
    let region = c.region.as_str();
    let waited = wait::poll(bound, || async {
        let out = c
            .ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(task)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(region, "ec2:DescribeImportSnapshotTasks", task, &e))?;
        let detail = out.import_snapshot_tasks().first().and_then(|t| t.snapshot_task_detail());
        let step = plan::import_wait_step(
            detail.and_then(|d| d.status()),
            detail.and_then(|d| d.status_message()),
            detail.and_then(|d| d.snapshot_id()),
        );
        Ok::<_, AwsError>(match step {
            Ok(Some(snapshot)) => Step::Done(snapshot),
            Ok(None) => Step::Again,
            Err(m) => Step::Failed(m),
        })
    })
    .await;
    waited.map_err(|e| match e {
        Ended::Call(e) => Error::Call(e),
        Ended::Failed(reason) => Error::Failed { region: region.into(), task: task.into(), reason },
        Ended::TimedOut { checks, waited } => {
            Error::Timeout { region: region.into(), task: task.into(), checks, waited }
        }
    })
}

/// CancelImportTask; a task that already ended cannot be cancelled, and that is not an error
/// (nothing is left running).
pub async fn cancel(c: &Clients, task: &str) -> Result<(), Error> {
    match c.ec2.cancel_import_task().import_task_id(task).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|c| c.contains("InvalidParameter") || c.contains("NotFound")) => {
            Ok(())
        }
        Err(e) => Err(AwsError::from_sdk(&c.region, "ec2:CancelImportTask", task, &e).into()),
    }
}
