//! The bundle manifest (`manifest.json`): its one definition, how it is read, and how a listed
//! file is checked against the bundle directory. `kv-packager bundle` writes it,
//! `kv-packager verify` checks a whole bundle with it (plus modes, extra files and the PCRs), and
//! `kv-ami bake` checks every listed file with it before the first AWS call.
//!
//! The SHA-256 of the manifest file is the bundle's content key (kv-ami tags every image with
//! it), so the manifest names every byte that ships: each file's size and SHA-256, and the PCRs.

use crate::eif::Measurements;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The manifest's file name in the bundle directory.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this library writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub role: String,
    pub size: u64,
    pub sha256: String,
    /// Octal, as a string ("0644"), so it reads like `ls -l` and `install -m`.
    pub mode: String,
    /// Where the AMI build installs it.
    pub install_to: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteArtifact {
    pub role: String,
    pub url: String,
    pub sha256: String,
    pub install_to: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub build_time: String,
    pub git_commit: String,
    pub versions: BTreeMap<String, String>,
    pub enclave_image: String,
    /// PCR0/1/2 (and PCR8) of the enclave image; terraform's kv-service module reads `pcrs`.
    pub pcrs: Measurements,
    pub files: Vec<FileEntry>,
    /// Artifacts the AMI build downloads and checks against the pinned SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetch: Vec<RemoteArtifact>,
}

/// The manifest file cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be read.
    #[error("{}: cannot read the manifest: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    /// The file is not a bundle manifest (unknown or missing keys, not JSON).
    #[error("{}: not a valid bundle manifest: {cause}", path.display())]
    Parse { path: PathBuf, cause: serde_json::Error },
    /// Written by another manifest format.
    #[error("{}: format {found} is not the supported {MANIFEST_FORMAT}", path.display())]
    Format { path: PathBuf, found: u32 },
}

/// What is wrong with one listed file; the texts are those `kv-packager verify` reports.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("manifest lists a path outside the bundle")]
    OutsideBundle,
    #[error("path must be relative, inside the bundle, of A-Za-z0-9/_.-")]
    NotPortable,
    #[error("not a regular file")]
    NotRegular,
    #[error("missing")]
    Missing,
    #[error("cannot stat: {0}")]
    Stat(io::Error),
    #[error("cannot read: {0}")]
    Read(io::Error),
    #[error("mode is {found}, manifest says {listed}")]
    Mode { found: String, listed: String },
    #[error("size is {found}, manifest says {listed}")]
    Size { found: u64, listed: u64 },
    #[error("sha256 is {found}, manifest says {listed}")]
    Sha256 { found: String, listed: String },
}

/// A listed file that does not match the bundle: which manifest, which entry, what.
#[derive(Debug, thiserror::Error)]
#[error("{}: files[{index}] {path:?}: {problem}", manifest.display())]
pub struct FileMismatch {
    pub manifest: PathBuf,
    pub index: usize,
    pub path: String,
    pub problem: FileProblem,
}

impl Manifest {
    /// Reads and parses `path` (unknown keys are errors) and checks the format.
    pub fn read(path: &Path) -> Result<Manifest, ReadError> {
        Manifest::read_with_key(path).map(|(m, _)| m)
    }

    /// [`Manifest::read`], and the bundle's content key: the SHA-256 (hex) of the file's bytes,
    /// which name every artifact and the PCRs (kv-ami tags every image with it).
    pub fn read_with_key(path: &Path) -> Result<(Manifest, String), ReadError> {
        let text = fs::read(path).map_err(|cause| ReadError::Read { path: path.into(), cause })?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|cause| ReadError::Parse { path: path.into(), cause })?;
        if m.format != MANIFEST_FORMAT {
            return Err(ReadError::Format { path: path.into(), found: m.format });
        }
        Ok((m, hex::encode(Sha256::digest(&text))))
    }

    /// Reads and parses `path` whatever its `format` says (`verify` reports that as a problem).
    pub fn read_any_format(path: &Path) -> Result<Manifest, ReadError> {
        let text = fs::read(path).map_err(|cause| ReadError::Read { path: path.into(), cause })?;
        serde_json::from_slice(&text).map_err(|cause| ReadError::Parse { path: path.into(), cause })
    }

    /// For a consumer of the bundle (kv-ami uploads it to S3 and the builder installs it): every
    /// listed file is present under `dir` with its size and SHA-256, and its path is portable
    /// (it becomes an S3 key and a shell word). Modes are not checked: S3 does not keep them,
    /// the install step applies the listed ones. Stops at the first mismatch.
    pub fn check_files(&self, dir: &Path) -> Result<(), FileMismatch> {
        for (index, f) in self.files.iter().enumerate() {
            let problem = if !is_portable_path(&f.path) {
                Some(FileProblem::NotPortable)
            } else {
                f.problems(dir, false).into_iter().next()
            };
            if let Some(problem) = problem {
                return Err(FileMismatch {
                    manifest: dir.join(MANIFEST),
                    index,
                    path: f.path.clone(),
                    problem,
                });
            }
        }
        Ok(())
    }
}

impl FileEntry {
    /// Everything wrong with this entry's file under `dir` (empty: it matches). With `check_mode`
    /// the file's mode must be the listed one too.
    pub fn problems(&self, dir: &Path, check_mode: bool) -> Vec<FileProblem> {
        if !is_bundle_path(&self.path) || self.path == MANIFEST {
            return vec![FileProblem::OutsideBundle];
        }
        let p = dir.join(&self.path);
        let md = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return vec![FileProblem::NotRegular],
            Err(e) if e.kind() == io::ErrorKind::NotFound => return vec![FileProblem::Missing],
            Err(e) => return vec![FileProblem::Stat(e)],
        };
        let mut out = Vec::new();
        let mode = format!("{:04o}", md.permissions().mode() & 0o7777);
        if check_mode && mode != self.mode {
            out.push(FileProblem::Mode { found: mode, listed: self.mode.clone() });
        }
        match hash_file(&p) {
            Ok((size, sha)) => {
                if size != self.size {
                    out.push(FileProblem::Size { found: size, listed: self.size });
                }
                if sha != self.sha256 {
                    out.push(FileProblem::Sha256 { found: sha, listed: self.sha256.clone() });
                }
            }
            Err(e) => out.push(FileProblem::Read(e)),
        }
        out
    }
}

/// Relative, `/`-separated, no empty, `.` or `..` parts.
pub fn is_bundle_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A bundle path of `A-Za-z0-9/_.-` only: safe as an S3 key and inside single quotes.
pub fn is_portable_path(p: &str) -> bool {
    is_bundle_path(p) && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
}

/// Size and SHA-256 (hex) of a file, read once.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut input = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            build_time: "2026-01-01T00:00:00Z".into(),
            git_commit: "unknown".into(),
            versions: BTreeMap::new(),
            enclave_image: "server_enclave_image.eif".into(),
            pcrs: Measurements {
                hash_algorithm: "Sha384 { ... }".into(),
                pcr0: "00".into(),
                pcr1: "01".into(),
                pcr2: "02".into(),
                pcr8: None,
            },
            files,
            fetch: Vec::new(),
        }
    }

    fn entry(path: &str, body: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            role: "r".into(),
            size: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body)),
            mode: "0755".into(),
            install_to: format!("/opt/{path}"),
        }
    }

    #[test]
    fn read_refuses_unknown_keys_and_other_formats_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(MANIFEST);
        let m = manifest(vec![]);
        let bytes = serde_json::to_vec(&m).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(Manifest::read_with_key(&p).unwrap(), (m.clone(), hex::encode(Sha256::digest(&bytes))));
        let mut v = serde_json::to_value(&m).unwrap();
        v["extra"] = 1.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("manifest.json") && e.contains("extra"), "{e}");
        v.as_object_mut().unwrap().remove("extra");
        v["format"] = 2.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Manifest::read(&p).unwrap_err().to_string();
        assert!(e.contains("format 2"), "{e}");
        let e = Manifest::read(&dir.path().join("none.json")).unwrap_err().to_string();
        assert!(e.contains("none.json: cannot read"), "{e}");
    }

    #[test]
    fn check_files_names_the_entry_and_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("proxy"), b"binary").unwrap();
        let m = manifest(vec![entry("proxy", b"binary")]);
        m.check_files(dir.path()).unwrap();
        // Modes are not the consumer's business (S3 does not keep them); verify checks them.
        assert!(m.files[0].problems(dir.path(), false).is_empty());
        assert!(matches!(m.files[0].problems(dir.path(), true)[..], [FileProblem::Mode { .. }]));

        std::fs::write(dir.path().join("proxy"), b"BINARY").unwrap();
        let e = m.check_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("files[0] \"proxy\": sha256 is "), "{e}");
        std::fs::remove_file(dir.path().join("proxy")).unwrap();
        let e = m.check_files(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("files[0] \"proxy\": missing"), "{e}");
        for bad in ["../x", "/etc/passwd", "a//b", "it's"] {
            let e = manifest(vec![entry(bad, b"")]).check_files(dir.path()).unwrap_err();
            assert!(matches!(e.problem, FileProblem::NotPortable), "{bad}: {e}");
        }
    }
}
