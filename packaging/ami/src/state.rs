//! The state file (`--state PATH`): what a run has done so far, written atomically (temporary
//! file + rename) after every step, so a re-run after a failure resumes where it stopped. The
//! content key in the file must match the run's: a state file never applies to another bundle.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const VERSION: u32 = 1;

/// The state file could not be written (the run goes on: a warning, not a failure).
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot write state file: {cause}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub cause: std::io::Error,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub content_key: String,
    /// `import` or `bake`.
    pub flow: String,
    /// An EBS direct upload that was started.
    #[serde(default)]
    pub upload: Option<UploadState>,
    /// The S3 + ImportSnapshot path's task.
    #[serde(default)]
    pub import_task_id: Option<String>,
    /// The snapshot that is complete (upload or import finished).
    #[serde(default)]
    pub snapshot_completed: Option<String>,
    /// The image in the source region (registered or created), and whether it became available.
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub image_available: bool,
    /// Finished copies: region -> AMI id.
    #[serde(default)]
    pub copies: BTreeMap<String, String>,
    #[serde(default)]
    pub published: bool,
    /// The image (source region) that passed the smoke test: a re-run does not boot it again.
    #[serde(default)]
    pub smoke_passed: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UploadState {
    pub region: String,
    pub snapshot_id: String,
    /// Seconds since the epoch when StartSnapshot answered.
    pub started_at: u64,
    pub timeout_minutes: u32,
    pub block_size: u64,
    pub volume_gib: u64,
    pub image_len: u64,
    /// Indexes of the blocks already in the snapshot, ascending.
    pub blocks_done: Vec<u64>,
}

/// Whether an interrupted upload can go on into the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeDecision {
    Continue,
    StartOver(String),
}

/// Margin before StartSnapshot's timeout: a resumed upload must still have time to finish.
pub const RESUME_MARGIN_SECS: u64 = 10 * 60;

pub fn resume_decision(u: &UploadState, region: &str, image_len: u64, now: u64) -> ResumeDecision {
    if u.region != region {
        return ResumeDecision::StartOver(format!(
            "the state file's snapshot is in {}, not {region}",
            u.region
        ));
    }
    if u.image_len != image_len {
        return ResumeDecision::StartOver(format!(
            "the image is {image_len} bytes, the state file's upload was of {} bytes",
            u.image_len
        ));
    }
    let age = now.saturating_sub(u.started_at);
    let limit = u64::from(u.timeout_minutes) * 60;
    if age + RESUME_MARGIN_SECS >= limit {
        return ResumeDecision::StartOver(format!(
            "snapshot {} was started {} min ago; StartSnapshot's {}-minute timeout leaves too little time to finish it",
            u.snapshot_id,
            age / 60,
            u.timeout_minutes
        ));
    }
    ResumeDecision::Continue
}

pub struct StateFile {
    path: Option<PathBuf>,
    state: Mutex<State>,
    /// Set when the run ends: a helper task that outlives it cannot write any more.
    closed: std::sync::atomic::AtomicBool,
}

impl StateFile {
    /// The run's state: read from `path` (resume) or kept in memory only when there is none.
    pub fn for_run(path: Option<&Path>, content_key: &str, flow: &str) -> Result<StateFile, String> {
        match path {
            Some(p) => StateFile::open(p, content_key, flow),
            None => Ok(StateFile::none(content_key, flow)),
        }
    }

    /// No file: the same calls, nothing written.
    pub fn none(content_key: &str, flow: &str) -> StateFile {
        StateFile { path: None, state: Mutex::new(fresh(content_key, flow)), closed: Default::default() }
    }

    /// Read `path` if it exists (it must be for this content key and flow), else start empty.
    pub fn open(path: &Path, content_key: &str, flow: &str) -> Result<StateFile, String> {
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a kv-ami state file: {e}", path.display()))?;
                if s.version != VERSION {
                    return Err(format!(
                        "{}: state file version {} (this kv-ami writes {VERSION})",
                        path.display(),
                        s.version
                    ));
                }
                if s.content_key != content_key || s.flow != flow {
                    return Err(format!(
                        "{}: state file is for {} content key {}, this run is {flow} {content_key}: remove it or pass another --state",
                        path.display(),
                        s.flow,
                        s.content_key
                    ));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fresh(content_key, flow),
            Err(e) => return Err(format!("{}: cannot read state file: {e}", path.display())),
        };
        Ok(StateFile { path: Some(path.to_path_buf()), state: Mutex::new(state), closed: Default::default() })
    }

    pub fn get(&self) -> State {
        self.lock().clone()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Change the state and write it (atomically) before returning.
    pub fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), WriteError> {
        let mut s = self.lock();
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        f(&mut s);
        let Some(path) = &self.path else { return Ok(()) };
        write_atomically(path, &s).map_err(|cause| WriteError { path: path.clone(), cause })
    }

    /// No more writes (under the lock: a write in progress finishes first).
    pub fn close(&self) {
        let _s = self.lock();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn fresh(content_key: &str, flow: &str) -> State {
    State {
        version: VERSION,
        content_key: content_key.to_string(),
        flow: flow.to_string(),
        ..Default::default()
    }
}

fn write_atomically(path: &Path, s: &State) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&text)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(started_at: u64) -> UploadState {
        UploadState {
            region: "us-east-1".into(),
            snapshot_id: "snap-1".into(),
            started_at,
            timeout_minutes: 60,
            block_size: 512,
            volume_gib: 1,
            image_len: 4096,
            blocks_done: vec![1, 2],
        }
    }

    #[test]
    fn resume_only_within_the_snapshot_timeout_and_for_the_same_image() {
        let now = 100_000;
        assert_eq!(resume_decision(&up(now - 60), "us-east-1", 4096, now), ResumeDecision::Continue);
        // 49 min + 10 min margin < 60: still fine; 51 min is not.
        assert_eq!(resume_decision(&up(now - 49 * 60), "us-east-1", 4096, now), ResumeDecision::Continue);
        match resume_decision(&up(now - 51 * 60), "us-east-1", 4096, now) {
            ResumeDecision::StartOver(m) => {
                assert!(m.contains("snap-1") && m.contains("51 min") && m.contains("60-minute"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(resume_decision(&up(now), "eu-west-1", 4096, now), ResumeDecision::StartOver(_)));
        assert!(matches!(resume_decision(&up(now), "us-east-1", 8192, now), ResumeDecision::StartOver(_)));
    }

    #[test]
    fn written_atomically_and_refused_for_another_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let f = StateFile::open(&p, "k1", "import").unwrap();
        assert!(!p.exists(), "nothing written before the first step");
        f.update(|s| s.upload = Some(up(5))).unwrap();
        f.update(|s| s.image_id = Some("ami-1".into())).unwrap();
        assert!(!dir.path().join("state.json.tmp").exists());
        let again = StateFile::open(&p, "k1", "import").unwrap().get();
        assert_eq!(again.upload.unwrap().blocks_done, vec![1, 2]);
        assert_eq!(again.image_id.as_deref(), Some("ami-1"));
        let e = StateFile::open(&p, "k2", "import").err().unwrap();
        assert!(e.contains("state.json") && e.contains("k1") && e.contains("k2"), "{e}");
        std::fs::write(&p, "{\"version\":1,\"content_key\":\"k1\",\"flow\":\"import\",\"bogus\":1}").unwrap();
        assert!(StateFile::open(&p, "k1", "import").err().unwrap().contains("bogus"));
    }
}
