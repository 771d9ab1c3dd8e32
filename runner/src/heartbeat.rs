//! The parent's side of the boot heartbeat, as `nitro-cli run-enclave` plays it.
//!
//! Protocol (AWS's enclave init, aws-nitro-enclaves-sdk-bootstrap `init/init.c`, and nitro-cli's
//! `enclave_ready`): before the enclave starts, the parent listens on vsock port 9000; the
//! enclave's init connects, writes the byte 0xB7 and waits (20 s) for the same byte back. A boot
//! without it is a failed boot.
//!
//! Here the guest's connection to CID 2 port 9000 reaches the Unix socket `<vsock-uds>_9000`
//! (vhost-device-vsock's guest -> host mapping). The listener stays open for the monitor's
//! whole life and answers every connection the same way: later heartbeats are harmless, and a
//! guest that connects again gets an answer instead of a reset.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// vsock port on the parent where the enclave's init sends the heartbeat.
pub const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte; the parent echoes it.
pub const HEARTBEAT_BYTE: u8 = 0xB7;
/// How long a connected guest may take to send its byte (AWS's init waits 20 s for the echo).
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The guest closed the connection without sending the byte.
    #[error("the enclave closed the heartbeat connection without sending a byte")]
    Closed,
    /// The guest sent something else.
    #[error("the enclave sent heartbeat byte {0:#04x}, expected {HEARTBEAT_BYTE:#04x}")]
    WrongByte(u8),
    /// Reading the byte or writing the echo failed (including the read timeout).
    #[error("heartbeat connection: {0}")]
    Io(#[from] io::Error),
}

/// The Unix socket where the backend delivers the guest's connection to the parent's `port`.
pub fn guest_to_host_socket(vsock_uds: &Path, port: u32) -> PathBuf {
    let mut s = vsock_uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Answers one heartbeat connection: reads the byte, echoes it.
pub fn answer<S: Read + Write>(stream: &mut S) -> Result<(), HeartbeatError> {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HeartbeatError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if byte[0] != HEARTBEAT_BYTE {
        return Err(HeartbeatError::WrongByte(byte[0]));
    }
    stream.write_all(&byte)?;
    stream.flush()?;
    Ok(())
}

/// Accepts heartbeat connections on `listener` for ever (until the process exits), one at a
/// time, and sends the outcome of each to `events`. Stops when the receiver is gone.
pub fn serve(listener: UnixListener, events: Sender<Result<(), HeartbeatError>>) -> io::Result<()> {
    std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        for conn in listener.incoming() {
            let outcome = conn.map_err(HeartbeatError::Io).and_then(|mut s: UnixStream| {
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                s.set_write_timeout(Some(READ_TIMEOUT))?;
                answer(&mut s)
            });
            if events.send(outcome).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn port_sockets_are_named_like_vhost_device_vsock_expects() {
        assert_eq!(
            guest_to_host_socket(Path::new("/run/x/vm.vsock"), HEARTBEAT_PORT),
            Path::new("/run/x/vm.vsock_9000")
        );
    }

    #[test]
    fn echoes_the_byte_and_rejects_others() {
        let tmp = tempfile::tempdir().unwrap();
        let path = guest_to_host_socket(&tmp.path().join("vm.vsock"), HEARTBEAT_PORT);
        let (tx, rx) = mpsc::channel();
        serve(UnixListener::bind(&path).unwrap(), tx).unwrap();

        let mut guest = UnixStream::connect(&path).unwrap();
        guest.write_all(&[HEARTBEAT_BYTE]).unwrap();
        let mut echo = [0u8; 1];
        guest.read_exact(&mut echo).unwrap();
        assert_eq!(echo[0], HEARTBEAT_BYTE);
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().is_ok());

        // The listener keeps answering after the first heartbeat.
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.write_all(&[0x42]).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(got, Err(HeartbeatError::WrongByte(0x42))), "{got:?}");

        let closed = UnixStream::connect(&path).unwrap();
        drop(closed);
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(got, Err(HeartbeatError::Closed)), "{got:?}");
    }
}
