//! Refuse disk images that are not raw: the EBS direct APIs write the bytes as they are, so a
//! qcow2/VHD/VMDK container would become an unbootable volume without any error from AWS.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// A container format we recognise and refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonRaw {
    Qcow2,
    Vhd,
    Vhdx,
    VmdkSparse,
    VmdkDescriptor,
}

impl NonRaw {
    pub fn name(self) -> &'static str {
        match self {
            NonRaw::Qcow2 => "qcow2 (magic QFI\\xfb at offset 0)",
            NonRaw::Vhd => "VHD (footer cookie \"conectix\")",
            NonRaw::Vhdx => "VHDX (signature \"vhdxfile\" at offset 0)",
            NonRaw::VmdkSparse => "VMDK sparse extent (magic KDMV at offset 0)",
            NonRaw::VmdkDescriptor => "VMDK descriptor (\"# Disk DescriptorFile\")",
        }
    }
}

/// Classify from the first bytes and the last 512 bytes of the file (VHD keeps its footer at the
/// end; dynamic VHDs also copy it to offset 0).
pub fn classify(head: &[u8], tail: &[u8]) -> Option<NonRaw> {
    if head.starts_with(b"QFI\xfb") {
        return Some(NonRaw::Qcow2);
    }
    if head.starts_with(b"KDMV") {
        return Some(NonRaw::VmdkSparse);
    }
    if head.starts_with(b"vhdxfile") {
        return Some(NonRaw::Vhdx);
    }
    if head.starts_with(b"conectix") || tail.starts_with(b"conectix") {
        return Some(NonRaw::Vhd);
    }
    // A descriptor-only VMDK is a text file; the marker sits in the first lines.
    let probe = &head[..head.len().min(1024)];
    let marker = b"# Disk DescriptorFile";
    if probe.windows(marker.len()).any(|w| w == marker) {
        return Some(NonRaw::VmdkDescriptor);
    }
    None
}

/// Read the probes from `path` and fail with a message naming the file and the format found.
pub fn ensure_raw(path: &Path) -> Result<u64, String> {
    let shown = path.display();
    let mut f = std::fs::File::open(path).map_err(|e| format!("{shown}: cannot open image: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{shown}: cannot stat image: {e}"))?.len();
    if len == 0 {
        return Err(format!("{shown}: image is empty"));
    }
    let mut head = vec![0u8; len.min(1024) as usize];
    f.read_exact(&mut head).map_err(|e| format!("{shown}: cannot read image header: {e}"))?;
    let tail_len = len.min(512);
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| format!("{shown}: cannot read image footer: {e}"))?;
    match classify(&head, &tail) {
        Some(kind) => Err(format!(
            "{shown}: is a {} image, not a raw disk image; convert it first (qemu-img convert -O raw)",
            kind.name()
        )),
        None => Ok(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_containers() {
        assert_eq!(classify(b"QFI\xfb\0\0\0\x03", &[]), Some(NonRaw::Qcow2));
        assert_eq!(classify(b"KDMV\x01\0\0\0", &[]), Some(NonRaw::VmdkSparse));
        assert_eq!(classify(b"vhdxfile....", &[]), Some(NonRaw::Vhdx));
        let mut tail = b"conectix".to_vec();
        tail.resize(512, 0);
        assert_eq!(classify(&[0u8; 1024], &tail), Some(NonRaw::Vhd));
        let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n";
        assert_eq!(classify(desc, desc), Some(NonRaw::VmdkDescriptor));
    }

    #[test]
    fn raw_images_pass() {
        assert_eq!(classify(&[0u8; 1024], &[0u8; 512]), None);
        // An MBR boot sector is raw.
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(classify(&mbr, &mbr), None);
    }

    #[test]
    fn refusal_names_file_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.qcow2");
        let mut data = b"QFI\xfb".to_vec();
        data.resize(4096, 0);
        std::fs::write(&p, &data).unwrap();
        let err = ensure_raw(&p).unwrap_err();
        assert!(err.contains("disk.qcow2") && err.contains("qcow2"), "{err}");
        let r = dir.path().join("disk.raw");
        std::fs::write(&r, vec![0u8; 4096]).unwrap();
        assert_eq!(ensure_raw(&r).unwrap(), 4096);
        let e = dir.path().join("empty.raw");
        std::fs::write(&e, b"").unwrap();
        assert!(ensure_raw(&e).unwrap_err().contains("empty"));
    }
}
