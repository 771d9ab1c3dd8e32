//! Where data files come from. A [`Source`] lists the names of the files it holds and fetches one
//! file's bytes; the loader decides what to load and in which order, so it works the same whatever
//! the source (a local directory here; S3 through the parent's SOCKS5 egress elsewhere).

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;

use crate::data::{DataError, DataFileName, FileKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of the data source (not of the data): the loader retries at the next poll. Except
/// [`SourceError::TooLarge`], which is the file's fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Listing the files failed.
    #[error("list data files in {location}: {source}")]
    List { location: String, source: BoxError },
    /// Reading one file failed.
    #[error("fetch data file {file} from {location}: {source}")]
    Fetch { location: String, file: String, source: BoxError },
    /// The file is larger than the limit given to [`Source::fetch`] (`max_file_bytes`): not a
    /// failure of the source, and fetching again would find the same file, so the loader rejects
    /// it like a file that fails to parse (counted, never retried). The error names the object
    /// and the limit.
    #[error(transparent)]
    TooLarge(DataError),
}

impl SourceError {
    /// [`SourceError::TooLarge`] for `file` (as the loader names it), stored as `object`, where
    /// `found` says how the size showed (`Content-Length 5000000 bytes`).
    pub fn too_large(file: &str, object: impl Display, limit: u64, found: impl Display) -> SourceError {
        SourceError::TooLarge(DataError::header(
            file,
            format!("{object} is larger than max_file_bytes ({limit} bytes): {found}"),
        ))
    }
}

/// The capacity to start a file's buffer with: its stated length (already within the limit), but
/// at most 64 MiB up front. A length is a claim (a server's Content-Length, a file that shrinks
/// while read) and the limit may be set very high: beyond that, the buffer grows with what
/// arrives.
pub(crate) fn initial_capacity(stated: u64) -> usize {
    usize::try_from(stated.min(64 << 20)).unwrap_or(0)
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

    /// The bytes of one file named by [`Source::list`]. A file larger than `max_bytes` is
    /// [`SourceError::TooLarge`], found from its stated size where there is one and otherwise
    /// while reading, so that no more than `max_bytes` (and one read's worth) is ever held.
    fn fetch(&self, name: &str, max_bytes: u64) -> impl Future<Output = Result<Vec<u8>, SourceError>> + Send;
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

    async fn fetch(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, SourceError> {
        let fetch_err = |source: BoxError| SourceError::Fetch {
            location: self.location(),
            file: name.to_string(),
            source,
        };
        // Names come from `list`, but refuse anything that could leave the directory anyway.
        if name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(fetch_err("not a relative path inside the data directory".into()));
        }
        let path = self.root.join(name);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| fetch_err(e.into()))?;
        let len = file.metadata().await.map_err(|e| fetch_err(e.into()))?.len();
        if len > max_bytes {
            return Err(SourceError::too_large(name, path.display(), max_bytes, format!("{len} bytes")));
        }
        // The length may change under us (a writer appending instead of renaming): read no
        // further than the limit allows either way.
        let mut bytes = Vec::with_capacity(initial_capacity(len));
        (&mut file)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| fetch_err(e.into()))?;
        if bytes.len() as u64 > max_bytes {
            return Err(SourceError::too_large(
                name,
                path.display(),
                max_bytes,
                "it grew past the limit while it was read",
            ));
        }
        Ok(bytes)
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
        assert_eq!(source.fetch("shard1/DELTA_0000000000000002", 10).await.unwrap(), b"b");
        let err = source.fetch("../etc/passwd", 10).await.unwrap_err().to_string();
        assert!(err.contains("../etc/passwd"), "{err}");
        let err = source.fetch("DELTA_0000000000000009", 10).await.unwrap_err().to_string();
        assert!(err.contains("DELTA_0000000000000009"), "{err}");

        std::fs::write(dir.path().join("shard1/DELTA_0000000000000005"), b"d").unwrap();
        std::fs::write(dir.path().join("shard1/SNAPSHOT_0000000000000004"), b"e").unwrap();
        let newer =
            source.list_newer("shard1", FileKind::Delta, Some("DELTA_0000000000000002")).await.unwrap();
        assert_eq!(newer, ["shard1/DELTA_0000000000000005"], "only deltas, only after the given name");
        let all = source.list_newer("", FileKind::Snapshot, None).await.unwrap();
        assert_eq!(all, ["SNAPSHOT_0000000000000001"], "top level only");
    }

    /// Issue 14 item 5: objects were read whole, whatever their size.
    #[tokio::test]
    async fn a_file_over_the_limit_is_refused_as_too_large_naming_file_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("p/DELTA_0000000000000001"), vec![b'x'; 1000]).unwrap();
        let source = LocalDir::new(dir.path());
        assert_eq!(source.fetch("p/DELTA_0000000000000001", 1000).await.unwrap().len(), 1000);
        let err = source.fetch("p/DELTA_0000000000000001", 999).await.map(|b| b.len()).unwrap_err();
        let SourceError::TooLarge(rejection) = &err else { panic!("not TooLarge: {err}") };
        assert_eq!(rejection.file, "p/DELTA_0000000000000001");
        assert_eq!(
            err.to_string(),
            format!(
                "p/DELTA_0000000000000001: {}/p/DELTA_0000000000000001 is larger than max_file_bytes (999 \
                 bytes): 1000 bytes",
                dir.path().display()
            )
        );
    }
}
