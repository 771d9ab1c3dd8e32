//! The cleanup stack: every resource a run creates is pushed here the moment AWS returns its id,
//! and [`Cleanup::finish`] undoes them in reverse order on every exit path: success, error, or
//! an interrupt (the run's future is dropped, the stack is not). Temporary resources (builder
//! instance, security group, S3 objects, an import task) always go; products (a snapshot, an
//! image) only on failure and only while not finished, unless the spec says `on_failure = "keep"`.
//! A cleanup failure never hides the run's own error: both are reported.

use crate::aws::Clients;
use crate::error::Error;
use crate::wait::Bound;
use crate::{images, import_task, instances, s3};
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
        let bound = Bound::new(self.wait_attempts, self.wait_every);
        match undo {
            Undo::DeleteSnapshot(id) => match images::delete_snapshot(c, id).await {
                // Already gone (e.g. deleted with its image): nothing left behind.
                Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(()),
                other => Ok(other?),
            },
            Undo::DeregisterImage(id) => Ok(images::deregister_with_snapshots(c, id).await.map(|_| ())?),
            Undo::TerminateInstance(id) => Ok(instances::terminate(c, id, bound).await?),
            Undo::TerminateTagged(run) => {
                for id in instances::of_run(c, run).await? {
                    instances::terminate(c, &id, bound).await?;
                }
                Ok(())
            }
            Undo::DeleteSecurityGroup(id) => Ok(instances::delete_security_group(c, id).await?),
            Undo::DeleteObjects { bucket, keys } => Ok(s3::delete_objects(c, bucket, keys).await?),
            Undo::AbortMultipartUpload { bucket, key, upload_id } => {
                Ok(s3::abort_multipart(c, bucket, key, upload_id).await?)
            }
            Undo::CancelImportTask(id) => Ok(import_task::cancel(c, id).await?),
        }
    }
}
