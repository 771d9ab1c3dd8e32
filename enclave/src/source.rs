//! Where data files come from. A [`Source`] lists the names of the files it holds and fetches one
//! file's bytes; the loader decides what to load and in which order, so it works the same whatever
//! the source (a local directory here; S3 through the parent's SOCKS5 egress elsewhere).

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::data::{DataFileName, FileKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of the data source (not of the data): the loader retries at the next poll.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Listing the files failed.
    #[error("list data files in {location}: {source}")]
    List { location: String, source: BoxError },
    /// Reading one file failed.
    #[error("fetch data file {file} from {location}: {source}")]
    Fetch { location: String, file: String, source: BoxError },
}

/// A place holding data files.
pub trait Source: Send + Sync + 'static {
    /// Where the files are, for logs (`/data`, `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Names of every file, relative to the source: `SNAPSHOT_0000000000000001`,
    /// `prefix/DELTA_0000000000000002`. Names that are not data files may be included; the
    /// loader ignores them.
    fn list(&self) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send;

    /// The names of the data files of kind `kind` directly in `prefix` (`""` is the top level)
    /// whose base name sorts after `after` (a base name of that kind), in order: what a poll
    /// asks for (S3 `ListObjectsV2` with `StartAfter`), so that its cost does not grow with the
    /// files already handled.
    fn list_newer(
        &self,
        prefix: &str,
        kind: FileKind,
        after: Option<&str>,
    ) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send;

    /// The bytes of one file named by [`Source::list`].
    fn fetch(&self, name: &str) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;
}

/// A local directory; subdirectories are prefixes. Writers should create a file under a name
/// that is not a data file name (e.g. `.DELTA_...tmp`) and rename it when complete, so that a
/// half-written file is never listed.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

/// How deep prefixes may nest, so a symlink loop cannot make listing run forever.
const MAX_DEPTH: usize = 8;

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> LocalDir {
        LocalDir { root: root.into() }
    }

    fn list_blocking(root: &Path) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut pending = vec![(root.to_path_buf(), String::new(), 0usize)];
        while let Some((dir, prefix, depth)) = pending.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue; // not UTF-8: cannot be a data file name
                };
                if name.starts_with('.') {
                    continue;
                }
                let relative = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                let file_type = std::fs::metadata(entry.path())?.file_type();
                if file_type.is_dir() {
                    if depth + 1 < MAX_DEPTH {
                        pending.push((entry.path(), relative, depth + 1));
                    }
                } else if file_type.is_file() {
                    out.push(relative);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Source for LocalDir {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn list(&self) -> Result<Vec<String>, SourceError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || LocalDir::list_blocking(&root))
            .await
            .map_err(|e| SourceError::List { location: self.location(), source: e.into() })?
            .map_err(|e| SourceError::List { location: self.location(), source: e.into() })
    }

    async fn list_newer(
        &self,
        prefix: &str,
        kind: FileKind,
        after: Option<&str>,
    ) -> Result<Vec<String>, SourceError> {
        let list_err = |source: BoxError| SourceError::List { location: self.location(), source };
        if prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(list_err(format!("prefix {prefix:?} is not a relative path").into()));
        }
        let dir = if prefix.is_empty() { self.root.clone() } else { self.root.join(prefix) };
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let Some(base) = entry.file_name().to_str().map(str::to_owned) else { continue };
                if !base.starts_with(kind.name_prefix()) || after.as_ref().is_some_and(|a| base <= *a) {
                    continue;
                }
                if DataFileName::parse(&base).is_some() && std::fs::metadata(entry.path())?.is_file() {
                    names.push(if prefix.is_empty() { base } else { format!("{prefix}/{base}") });
                }
            }
            names.sort();
            Ok(names)
        })
        .await
        .map_err(|e| list_err(e.into()))?
        .map_err(|e| list_err(e.into()))?;
        Ok(names)
    }

    async fn fetch(&self, name: &str) -> Result<Vec<u8>, SourceError> {
        let fetch_err = |source: BoxError| SourceError::Fetch {
            location: self.location(),
            file: name.to_string(),
            source,
        };
        // Names come from `list`, but refuse anything that could leave the directory anyway.
        if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(fetch_err("not a relative path inside the data directory".into()));
        }
        tokio::fs::read(self.root.join(name)).await.map_err(|e| fetch_err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_files_with_prefixes_and_skips_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shard1")).unwrap();
        std::fs::write(dir.path().join("SNAPSHOT_0000000000000001"), b"a").unwrap();
        std::fs::write(dir.path().join("shard1/DELTA_0000000000000002"), b"b").unwrap();
        std::fs::write(dir.path().join(".DELTA_0000000000000003.tmp"), b"c").unwrap();
        let source = LocalDir::new(dir.path());
        let names = source.list().await.unwrap();
        assert_eq!(names, vec!["SNAPSHOT_0000000000000001", "shard1/DELTA_0000000000000002"]);
        assert_eq!(source.fetch("shard1/DELTA_0000000000000002").await.unwrap(), b"b");
        let err = source.fetch("../etc/passwd").await.unwrap_err().to_string();
        assert!(err.contains("../etc/passwd"), "{err}");
        let err = source.fetch("DELTA_0000000000000009").await.unwrap_err().to_string();
        assert!(err.contains("DELTA_0000000000000009"), "{err}");

        std::fs::write(dir.path().join("shard1/DELTA_0000000000000005"), b"d").unwrap();
        std::fs::write(dir.path().join("shard1/SNAPSHOT_0000000000000004"), b"e").unwrap();
        let newer =
            source.list_newer("shard1", FileKind::Delta, Some("DELTA_0000000000000002")).await.unwrap();
        assert_eq!(newer, ["shard1/DELTA_0000000000000005"], "only deltas, only after the given name");
        let all = source.list_newer("", FileKind::Snapshot, None).await.unwrap();
        assert_eq!(all, ["SNAPSHOT_0000000000000001"], "top level only");
    }
}
