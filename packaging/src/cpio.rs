//! Deterministic cpio "newc" archives (the format the Linux kernel unpacks as an initramfs).
//!
//! Determinism: entries sorted by path bytes (a parent always precedes its children), owner
//! 0:0, one fixed mtime (`SOURCE_DATE_EPOCH`), inode numbers assigned 1, 2, 3... in that order,
//! modes normalized (directories 0755, files 0755 if any execute bit is set else 0644, symlinks
//! 0777), no device numbers. Nothing from the build machine (umask, owner, inode, time) leaks in.
//!
//! newc record: the ASCII magic `070701`, thirteen 8-digit hex fields (ino, mode, uid, gid,
//! nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize incl. NUL, check),
//! the name and NUL padded to 4 bytes, then the data padded to 4 bytes. The archive ends with a
//! `TRAILER!!!` record.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const HEADER_LEN: u64 = 110;
const TRAILER: &[u8] = b"TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: unsupported file type (only files, directories and symlinks go into a ramdisk)")]
    FileType { path: PathBuf },
    #[error("archive path {path:?} is added twice (from {first} and {second})")]
    Duplicate { path: String, first: String, second: String },
    #[error("archive path {path:?} is not usable: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path}: file is larger than 4 GiB, which newc cannot hold")]
    TooLarge { path: PathBuf },
}

#[derive(Clone, Debug)]
enum Source {
    Dir,
    Bytes(Vec<u8>),
    File { path: PathBuf, size: u64 },
    Symlink(Vec<u8>),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Dir => "a directory".into(),
            Source::Bytes(_) => "inline data".into(),
            Source::File { path, .. } => path.display().to_string(),
            Source::Symlink(_) => "a symlink".into(),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Source::Dir => 0,
            Source::Bytes(b) | Source::Symlink(b) => b.len() as u64,
            Source::File { size, .. } => *size,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    mode: u32,
    source: Source,
}

/// A planned archive: its exact size is known before a byte is written, so it can be streamed
/// straight into an EIF section.
#[derive(Clone, Debug)]
pub struct Archive {
    entries: BTreeMap<Vec<u8>, Entry>,
    mtime: u32,
}

fn align4(n: u64) -> u64 {
    (n + 3) & !3
}

fn normalized_file_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

impl Archive {
    pub fn new(mtime: u64) -> Self {
        // newc holds 32-bit times; clamp rather than wrap.
        Archive { entries: BTreeMap::new(), mtime: mtime.min(u64::from(u32::MAX)) as u32 }
    }

    fn check_path(path: &str) -> Result<(), CpioError> {
        let bad = |reason| Err(CpioError::BadPath { path: path.to_string(), reason });
        if path.is_empty() {
            return bad("empty");
        }
        if path.starts_with('/') || path.ends_with('/') {
            return bad("must be relative, without a leading or trailing slash");
        }
        if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return bad("empty, '.' or '..' component");
        }
        if path.contains('\0') || path.contains('\n') {
            return bad("contains NUL or newline");
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        Self::check_path(path)?;
        // Parents first, as directories (so that any added file has its directories).
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(parent.as_bytes()) {
                Some(Entry { source: Source::Dir, .. }) => {}
                Some(other) => {
                    return Err(CpioError::Duplicate {
                        path: parent.clone(),
                        first: other.source.describe(),
                        second: "a directory (parent of another entry)".into(),
                    });
                }
                None => {
                    self.entries
                        .insert(parent.as_bytes().to_vec(), Entry { mode: 0o755, source: Source::Dir });
                }
            }
        }
        match self.entries.get(path.as_bytes()) {
            // A directory may be declared twice (e.g. rootfs/dev from the tree and the layout).
            Some(Entry { source: Source::Dir, .. }) if matches!(entry.source, Source::Dir) => Ok(()),
            Some(old) => Err(CpioError::Duplicate {
                path: path.to_string(),
                first: old.source.describe(),
                second: entry.source.describe(),
            }),
            None => {
                self.entries.insert(path.as_bytes().to_vec(), entry);
                Ok(())
            }
        }
    }

    pub fn add_dir(&mut self, path: &str) -> Result<(), CpioError> {
        self.insert(path, Entry { mode: 0o755, source: Source::Dir })
    }

    pub fn add_bytes(&mut self, path: &str, executable: bool, data: Vec<u8>) -> Result<(), CpioError> {
        let mode = if executable { 0o755 } else { 0o644 };
        self.insert(path, Entry { mode, source: Source::Bytes(data) })
    }

    /// Adds a file from disk; its content is read only when the archive is written.
    pub fn add_file(&mut self, path: &str, from: &Path) -> Result<(), CpioError> {
        let md = fs::metadata(from).map_err(|source| CpioError::Read { path: from.into(), source })?;
        if !md.is_file() {
            return Err(CpioError::FileType { path: from.into() });
        }
        if md.len() > u64::from(u32::MAX) {
            return Err(CpioError::TooLarge { path: from.into() });
        }
        let mode = normalized_file_mode(md.permissions().mode());
        self.insert(path, Entry { mode, source: Source::File { path: from.into(), size: md.len() } })
    }

    /// Adds the tree under `dir` below `prefix` (the directory itself becomes `prefix`).
    pub fn add_tree(&mut self, prefix: &str, dir: &Path) -> Result<(), CpioError> {
        let md = fs::metadata(dir).map_err(|source| CpioError::Read { path: dir.into(), source })?;
        if !md.is_dir() {
            return Err(CpioError::FileType { path: dir.into() });
        }
        self.add_dir(prefix)?;
        let mut children: Vec<_> = fs::read_dir(dir)
            .map_err(|source| CpioError::Read { path: dir.into(), source })?
            .collect::<Result<_, _>>()
            .map_err(|source| CpioError::Read { path: dir.into(), source })?;
        children.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        for child in children {
            let from = child.path();
            let name = child.file_name();
            let name = name.to_str().ok_or_else(|| CpioError::BadPath {
                path: from.display().to_string(),
                reason: "file name is not UTF-8",
            })?;
            let path = format!("{prefix}/{name}");
            let md = fs::symlink_metadata(&from)
                .map_err(|source| CpioError::Read { path: from.clone(), source })?;
            let ft = md.file_type();
            if ft.is_symlink() {
                let target =
                    fs::read_link(&from).map_err(|source| CpioError::Read { path: from.clone(), source })?;
                let target = target.as_os_str().as_bytes().to_vec();
                self.insert(&path, Entry { mode: 0o777, source: Source::Symlink(target) })?;
            } else if ft.is_dir() {
                self.add_tree(&path, &from)?;
            } else if ft.is_file() {
                self.add_file(&path, &from)?;
            } else {
                return Err(CpioError::FileType { path: from });
            }
        }
        Ok(())
    }

    /// Number of entries, without the trailer.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Exact size in bytes of what [`Archive::write_to`] produces.
    pub fn size(&self) -> u64 {
        let records: u64 = self
            .entries
            .iter()
            .map(|(name, e)| align4(HEADER_LEN + name.len() as u64 + 1) + align4(e.source.size()))
            .sum();
        records + align4(HEADER_LEN + TRAILER.len() as u64 + 1)
    }

    /// Paths in archive order (for tests and `--json` listings).
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.keys().map(|k| String::from_utf8_lossy(k).into_owned())
    }

    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        for (i, (name, e)) in self.entries.iter().enumerate() {
            let (kind, nlink) = match e.source {
                Source::Dir => (S_IFDIR, 2),
                Source::Symlink(_) => (S_IFLNK, 1),
                _ => (S_IFREG, 1),
            };
            let size = e.source.size();
            write_header(out, i as u32 + 1, kind | e.mode, nlink, self.mtime, size as u32, name)?;
            match &e.source {
                Source::Dir => {}
                Source::Bytes(b) | Source::Symlink(b) => out.write_all(b)?,
                Source::File { path, size } => {
                    let f = File::open(path).map_err(|e| annotate(path, e))?;
                    let mut left = *size;
                    let mut input = f.take(*size);
                    while left > 0 {
                        let n = input.read(&mut buf).map_err(|e| annotate(path, e))?;
                        if n == 0 {
                            return Err(io::Error::other(format!(
                                "{}: file shrank while it was being archived",
                                path.display()
                            )));
                        }
                        out.write_all(&buf[..n])?;
                        left -= n as u64;
                    }
                }
            }
            pad(out, size)?;
        }
        write_header(out, 0, 0, 1, 0, 0, TRAILER)
    }
}

fn annotate(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn pad(out: &mut dyn Write, len: u64) -> io::Result<()> {
    let n = (align4(len) - len) as usize;
    out.write_all(&[0u8; 3][..n])
}

fn write_header(
    out: &mut dyn Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    name: &[u8],
) -> io::Result<()> {
    let namesize = name.len() as u32 + 1;
    let fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, namesize, 0];
    let mut h = String::with_capacity(HEADER_LEN as usize);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    out.write_all(h.as_bytes())?;
    out.write_all(name)?;
    out.write_all(&[0])?;
    pad(out, HEADER_LEN + u64::from(namesize))
}

/// A minimal newc parser for tests and `describe --list`: (path, mode, data) per entry.
pub fn parse(mut data: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    loop {
        if data.len() < HEADER_LEN as usize || &data[..6] != b"070701" {
            return Err(format!("no newc header at offset {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&data[6 + 8 * i..14 + 8 * i]).map_err(|_| "non-ASCII header")?;
            u32::from_str_radix(s, 16).map_err(|_| format!("bad hex field {i} at offset {offset}"))
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_end = HEADER_LEN as usize + namesize;
        let data_start = align4(name_end as u64) as usize;
        let data_end = data_start + size;
        if data.len() < data_end || namesize == 0 {
            return Err(format!("truncated entry at offset {offset}"));
        }
        let name = String::from_utf8_lossy(&data[HEADER_LEN as usize..name_end - 1]).into_owned();
        if name.as_bytes() == TRAILER {
            return Ok(out);
        }
        out.push((name, mode, data[data_start..data_end].to_vec()));
        let next = align4(data_end as u64) as usize;
        offset += next;
        data = &data[next.min(data.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(a: &Archive) -> Vec<u8> {
        let mut v = Vec::new();
        a.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn size_is_exact_and_entries_are_sorted_with_parents() {
        let mut a = Archive::new(1_700_000_000);
        a.add_bytes("rootfs/etc/hosts", false, b"127.0.0.1 localhost\n".to_vec()).unwrap();
        a.add_bytes("cmd", false, b"/bin/kv-server\n".to_vec()).unwrap();
        a.add_dir("rootfs/dev").unwrap();
        a.add_bytes("rootfs/a-b", true, vec![1, 2, 3]).unwrap();
        let bytes = render(&a);
        assert_eq!(bytes.len() as u64, a.size());
        assert_eq!(bytes.len() % 4, 0);
        let parsed = parse(&bytes).unwrap();
        let names: Vec<_> = parsed.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["cmd", "rootfs", "rootfs/a-b", "rootfs/dev", "rootfs/etc", "rootfs/etc/hosts"]);
        assert_eq!(parsed[2].1, S_IFREG | 0o755);
        assert_eq!(parsed[2].2, vec![1, 2, 3]);
        assert_eq!(parsed[1].1, S_IFDIR | 0o755);
        // mtime field of the first record
        assert_eq!(&bytes[6 + 8 * 5..6 + 8 * 6], format!("{:08x}", 1_700_000_000u32).as_bytes());
    }

    #[test]
    fn the_first_record_matches_a_hand_written_newc_header() {
        let mut a = Archive::new(0);
        a.add_bytes("init", true, b"ab".to_vec()).unwrap();
        let bytes = render(&a);
        let expected_header = concat!(
            "070701", "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000", "00000002",
            "00000000", "00000000", "00000000", "00000000", "00000005", "00000000"
        );
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        // name "init\0" (5 bytes) pads 115 -> 116, then "ab" + 2 bytes of padding.
        assert_eq!(&bytes[110..120], b"init\0\0ab\0\0");
        assert!(bytes[120..].starts_with(b"070701"));
    }

    #[test]
    fn duplicate_and_bad_paths_are_refused() {
        let mut a = Archive::new(0);
        a.add_bytes("env", false, vec![]).unwrap();
        assert!(matches!(a.add_bytes("env", false, vec![]), Err(CpioError::Duplicate { .. })));
        assert!(matches!(a.add_bytes("env/x", false, vec![]), Err(CpioError::Duplicate { .. })));
        for bad in ["", "/abs", "a/../b", "a//b", "dir/"] {
            assert!(matches!(a.add_dir(bad), Err(CpioError::BadPath { .. })), "{bad}");
        }
    }

    #[test]
    fn tree_is_deterministic_regardless_of_creation_order_and_permissions() {
        let build = |order: &[&str], file_mode: u32| {
            let dir = tempfile::tempdir().unwrap();
            for name in order {
                let p = dir.path().join(name);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, name.as_bytes()).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(file_mode)).unwrap();
            }
            std::os::unix::fs::symlink("b/c", dir.path().join("link")).unwrap();
            let mut a = Archive::new(42);
            a.add_tree("rootfs", dir.path()).unwrap();
            render(&a)
        };
        let one = build(&["b/c", "a", "b/d"], 0o664);
        let two = build(&["b/d", "a", "b/c"], 0o644);
        assert_eq!(one, two);
        let parsed = parse(&one).unwrap();
        let link = parsed.iter().find(|(n, _, _)| n == "rootfs/link").unwrap();
        assert_eq!(link.1, S_IFLNK | 0o777);
        assert_eq!(link.2, b"b/c");
    }
}
