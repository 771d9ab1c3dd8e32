//! Dialing a guest vsock port through a VMM's host-side Unix socket.
//!
//! Protocol (Firecracker's vsock device, vhost-device-vsock): the host connects to the VMM's
//! Unix socket and writes `CONNECT <port>\n`; the VMM answers `OK <host-side port>\n` once the
//! guest accepted, after which the socket carries the guest stream. Anything else is a refusal.
//! The reply is read one byte at a time so no payload byte after the `\n` is consumed.

use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest acceptable handshake reply (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("hybrid vsock handshake: peer closed before answering CONNECT")]
    Closed,
    #[error("hybrid vsock handshake: expected `OK <port>`, got {0:?}")]
    Refused(String),
}

pub(crate) async fn connect(path: &Path, port: u32) -> Result<UnixStream, HybridError> {
    let mut stream = UnixStream::connect(path).await?;
    handshake(&mut stream, port).await?;
    Ok(stream)
}

pub(crate) async fn handshake<S>(stream: &mut S, port: u32) -> Result<(), HybridError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let byte = match stream.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(HybridError::Closed),
            Err(e) => return Err(e.into()),
        };
        if byte == b'\n' {
            break;
        }
        line.push(byte);
        if line.len() > MAX_REPLY {
            return Err(HybridError::Refused(String::from_utf8_lossy(&line).into_owned()));
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    match reply.strip_prefix("OK ") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(HybridError::Refused(reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    async fn vmm(reply: &'static [u8]) -> (tempdir::Dir, std::path::PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 5000\n");
            stream.get_mut().write_all(reply).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn ok_reply_leaves_payload_unread() {
        let (_dir, path) = vmm(b"OK 1073741824\npayload").await;
        let mut stream = connect(&path, 5000).await.unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "payload");
    }

    #[tokio::test]
    async fn refusal_and_early_close_are_errors() {
        let (_d1, path) = vmm(b"ERR no listener\n").await;
        assert!(matches!(connect(&path, 5000).await, Err(HybridError::Refused(r)) if r == "ERR no listener"));
        let (_d2, path) = vmm(b"OK 12").await;
        assert!(matches!(connect(&path, 5000).await, Err(HybridError::Closed)));
        let (_d3, path) = vmm(&[b'x'; 64]).await;
        assert!(matches!(connect(&path, 5000).await, Err(HybridError::Refused(_))));
    }

    /// A scratch directory removed on drop (no extra dependency for one test module).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "transport-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
