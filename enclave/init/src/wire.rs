//! Wire constants shared with the parent instance, in one place.
//!
//! Source: AWS's enclave init, aws-nitro-enclaves-sdk-bootstrap `init/init.c`
//! (`VSOCK_PORT 9000`, `VSOCK_CID 3`, `HEART_BEAT 0xB7`), and the vsock address plan
//! (`transport::plan`). `nitro-cli run-enclave` listens on port 9000 of the parent and treats an
//! enclave that does not send the byte (and read it back) as a failed boot.

/// vsock port on the parent where nitro-cli waits for the boot heartbeat.
pub const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte; nitro-cli echoes it back.
pub const HEARTBEAT_BYTE: u8 = 0xB7;
/// The parent instance's CID as seen from inside an enclave. The same value is
/// `transport::plan::PARENT_CID` (what `vsock://parent` dials when `ENCLAVE_PARENT_CID` is unset;
/// a test compares them); kept apart because init links nothing but libc.
pub const DEFAULT_PARENT_CID: u32 = 3;
/// How long to wait for the echo before giving up (AWS's init defines 20 s).
pub const HEARTBEAT_TIMEOUT_MS: i32 = 20_000;

#[cfg(test)]
mod tests {
    /// transport is a dev-dependency only: the binary still links nothing but libc.
    #[test]
    fn the_parent_cid_is_the_address_plans() {
        assert_eq!(super::DEFAULT_PARENT_CID, transport::plan::PARENT_CID);
    }
}
