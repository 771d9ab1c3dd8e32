//! The cleanup stack: every resource a run creates is pushed here the moment AWS returns its id,
//! and [`Cleanup::finish`] undoes them in reverse order on every exit path: success, error, or
//! an interrupt (the run's future is dropped, the stack is not). Temporary resources (builder
//! instance, security group, S3 objects, an import task) always go; products (a snapshot, an
//! image) only on failure and only while not finished, unless the spec says `on_failure = "keep"`.
//! A cleanup failure never hides the run's own error: both are reported.

use crate::aws::{self, Clients, Error};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    DeleteSnapshot(String),
    /// DeregisterImage and DeleteSnapshot of its snapshots.
    DeregisterImage(String),
    /// TerminateInstances, then a bounded wait for `terminated` (a security group in use cannot
    /// be deleted).
    TerminateInstance(String),
    /// Terminate every instance tagged `kv-ami:run = RUN` that is not terminated yet: a builder
    /// whose RunInstances answer was lost (interrupt mid-call) is found by its tag.
    TerminateTagged(String),
    DeleteSecurityGroup(String),
    DeleteObjects {
        bucket: String,
        keys: Vec<String>,
    },
    CancelImportTask(String),
    AbortMultipartUpload {
        bucket: String,
        key: String,
        upload_id: String,
    },
}

impl Undo {
    pub fn describe(&self) -> String {
        match self {
            Undo::DeleteSnapshot(id) => format!("ec2:DeleteSnapshot {id}"),
            Undo::DeregisterImage(id) => format!("ec2:DeregisterImage {id} (and its snapshots)"),
            Undo::TerminateInstance(id) => format!("ec2:TerminateInstances {id}"),
            Undo::TerminateTagged(run) => format!("ec2:TerminateInstances tag:kv-ami:run={run}"),
            Undo::DeleteSecurityGroup(id) => format!("ec2:DeleteSecurityGroup {id}"),
            Undo::DeleteObjects { bucket, keys } => {
                format!("s3:DeleteObjects s3://{bucket}/ ({} objects)", keys.len())
            }
            Undo::CancelImportTask(id) => format!("ec2:CancelImportTask {id}"),
            Undo::AbortMultipartUpload { bucket, key, .. } => {
                format!("s3:AbortMultipartUpload s3://{bucket}/{key}")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A temporary resource: undone on success too.
    Always,
    /// A product: undone only when the run fails before it is finished.
    OnFailure,
}

struct Entry {
    id: u64,
    clients: Clients,
    undo: Undo,
    when: When,
}

pub struct Cleanup {
    entries: Mutex<Vec<Entry>>,
    next: Mutex<u64>,
    keep_products: bool,
    wait_attempts: u32,
    wait_every: Duration,
}

/// Handle of one pushed entry, for [`Cleanup::disarm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed(u64);

impl Cleanup {
    /// `keep_products`: spec `on_failure = "keep"`. The wait bounds the instance termination.
    pub fn new(keep_products: bool, wait_attempts: u32, wait_every: Duration) -> Cleanup {
        Cleanup {
            entries: Mutex::new(Vec::new()),
            next: Mutex::new(0),
            keep_products,
            wait_attempts,
            wait_every,
        }
    }

    pub fn push(&self, c: &Clients, undo: Undo, when: When) -> Armed {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        self.lock().push(Entry { id, clients: c.clone(), undo, when });
        Armed(id)
    }

    /// The resource is finished (or handed on): it is no longer undone.
    pub fn disarm(&self, a: Armed) {
        self.lock().retain(|e| e.id != a.0);
    }

    /// A product that became temporary (an imported image's S3 object once the import ended):
    /// undone on success too.
    pub fn promote(&self, a: Armed) {
        for e in self.lock().iter_mut().filter(|e| e.id == a.0) {
            e.when = When::Always;
        }
    }

    /// What would be undone now, in order (`region: operation id`).
    pub fn pending(&self, failed: bool) -> Vec<String> {
        self.lock()
            .iter()
            .rev()
            .filter(|e| self.applies(e.when, failed))
            .map(|e| format!("{}: {}", e.clients.region, e.undo.describe()))
            .collect()
    }

    fn applies(&self, when: When, failed: bool) -> bool {
        match when {
            When::Always => true,
            When::OnFailure => failed && !self.keep_products,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Undo what applies, newest first, and combine the outcome with the run's result.
    pub async fn finish<T>(&self, result: Result<T, Error>, log: &(dyn Fn(&str) + Sync)) -> Result<T, Error> {
        let failed = result.is_err();
        let entries: Vec<Entry> = std::mem::take(&mut *self.lock());
        let mut left_behind = Vec::new();
        for e in entries.into_iter().rev() {
            let what = format!("{}: {}", e.clients.region, e.undo.describe());
            if !self.applies(e.when, failed) {
                if failed {
                    log(&format!("cleanup: kept {what} (on_failure = keep)"));
                }
                continue;
            }
            match self.undo(&e.clients, &e.undo).await {
                Ok(()) => log(&format!("cleanup: {what}: done")),
                Err(err) => {
                    log(&format!("cleanup: {what}: FAILED: {err}"));
                    left_behind.push(format!("{what}: {err}"));
                }
            }
        }
        match (result, left_behind.is_empty()) {
            (r, true) => r,
            (Ok(_), false) => Err(Error::Cleanup { original: None, left_behind }),
            (Err(e), false) => Err(Error::Cleanup { original: Some(Box::new(e)), left_behind }),
        }
    }

    async fn undo(&self, c: &Clients, undo: &Undo) -> Result<(), Error> {
        let region = &c.region;
        match undo {
            Undo::DeleteSnapshot(id) => match aws::delete_snapshot(c, id).await {
                // Already gone (e.g. deleted with its image): nothing left behind.
                Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(()),
                other => other,
            },
            Undo::DeregisterImage(id) => aws::deregister_with_snapshots(c, id).await.map(|_| ()),
            Undo::TerminateInstance(id) => {
                c.ec2
                    .terminate_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws::aws_err(region, "ec2:TerminateInstances", id, &e))?;
                crate::bake::wait_instance_state(c, id, &["terminated"], self.wait_attempts, self.wait_every)
                    .await
                    .map(|_| ())
            }
            Undo::TerminateTagged(run) => {
                let f = |k: &str, v: &[&str]| {
                    aws_sdk_ec2::types::Filter::builder()
                        .name(k)
                        .set_values(Some(v.iter().map(|s| s.to_string()).collect()))
                        .build()
                };
                let out = c
                    .ec2
                    .describe_instances()
                    .filters(f(&format!("tag:{}", crate::bake::RUN_TAG), &[run]))
                    .filters(f("instance-state-name", &["pending", "running", "stopping", "stopped"]))
                    .send()
                    .await
                    .map_err(|e| aws::aws_err(region, "ec2:DescribeInstances", run, &e))?;
                let ids: Vec<String> = out
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(|i| i.instance_id())
                    .map(str::to_string)
                    .collect();
                for id in ids {
                    Box::pin(self.undo(c, &Undo::TerminateInstance(id))).await?;
                }
                Ok(())
            }
            Undo::DeleteSecurityGroup(id) => {
                c.ec2
                    .delete_security_group()
                    .group_id(id)
                    .send()
                    .await
                    .map_err(|e| aws::aws_err(region, "ec2:DeleteSecurityGroup", id, &e))?;
                Ok(())
            }
            Undo::DeleteObjects { bucket, keys } => aws::delete_objects(c, bucket, keys).await,
            Undo::AbortMultipartUpload { bucket, key, upload_id } => {
                c.s3.abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await
                    .map_err(|e| {
                        aws::aws_err(region, "s3:AbortMultipartUpload", &format!("s3://{bucket}/{key}"), &e)
                    })?;
                Ok(())
            }
            Undo::CancelImportTask(id) => {
                match c.ec2.cancel_import_task().import_task_id(id).send().await {
                    Ok(_) => Ok(()),
                    // A task that already ended cannot be cancelled: nothing is left running.
                    Err(e)
                        if e.code()
                            .is_some_and(|c| c.contains("InvalidParameter") || c.contains("NotFound")) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(aws::aws_err(region, "ec2:CancelImportTask", id, &e).into()),
                }
            }
        }
    }
}
