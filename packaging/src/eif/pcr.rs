//! PCR computation for an EIF, as nitro-cli does it at build and at describe time.
//!
//! Source: aws-nitro-enclaves-image-format `src/utils/mod.rs` (`EifBuilder::measure`,
//! `get_pcrs`) and `src/defs/eif_hasher.rs`. nitro-cli uses `EifHasher::new_without_cache`, which
//! passes every byte straight to one SHA-384; at the end `tpm_extend_finalize_reset` returns
//! `SHA-384(48 zero bytes || SHA-384(data))`, i.e. one TPM-style extend of a zeroed register.
//!
//! - PCR0: kernel, cmdline, every ramdisk (in file order);
//! - PCR1: kernel, cmdline, the first ramdisk (the bootstrap ramdisk);
//! - PCR2: the other ramdisks (the application);
//! - PCR8: the DER form of the signing certificate (signed images only).
//!
//! Metadata and the signature section are not measured.

use sha2::{Digest, Sha384};
use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Application bytes are handed to the PCR2 thread in blocks of this size.
const APP_BLOCK: usize = 1 << 20;

/// What nitro-cli prints as `HashAlgorithm` (it formats its hasher with `{:?}`).
pub const HASH_ALGORITHM: &str = "Sha384 { ... }";
pub const PCR_LEN: usize = 48;

/// `SHA-384(zeros || SHA-384(data))` given the inner digest.
pub fn extend_from_zero(inner: &[u8]) -> [u8; PCR_LEN] {
    let mut h = Sha384::new();
    h.update([0u8; PCR_LEN]);
    h.update(inner);
    h.finalize().into()
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Measurements {
    #[serde(rename = "HashAlgorithm")]
    pub hash_algorithm: String,
    #[serde(rename = "PCR0")]
    pub pcr0: String,
    #[serde(rename = "PCR1")]
    pub pcr1: String,
    #[serde(rename = "PCR2")]
    pub pcr2: String,
    #[serde(rename = "PCR8", skip_serializing_if = "Option::is_none", default)]
    pub pcr8: Option<String>,
}

impl Measurements {
    pub fn as_map(&self) -> BTreeMap<&'static str, &str> {
        let mut m = BTreeMap::new();
        m.insert("PCR0", self.pcr0.as_str());
        m.insert("PCR1", self.pcr1.as_str());
        m.insert("PCR2", self.pcr2.as_str());
        if let Some(p) = &self.pcr8 {
            m.insert("PCR8", p.as_str());
        }
        m
    }
}

/// Feeds section data in file order; knows which register each section belongs to.
///
/// PCR0 and PCR1 hash the same prefix (kernel, cmdline, first ramdisk), so there is one running
/// hasher for it, cloned into PCR1's when the second ramdisk starts: those bytes are hashed once.
/// The application ramdisks go into PCR0 and PCR2, two different hash chains: PCR2's runs on a
/// second thread, so hashing an image costs about one pass over it on two cores.
#[derive(Default)]
pub struct PcrHasher {
    image: Sha384,
    /// PCR1's state, frozen when the second ramdisk starts.
    bootstrap: Option<Sha384>,
    app: AppHasher,
    cert: Option<[u8; PCR_LEN]>,
    ramdisks_seen: usize,
}

/// PCR2's chain: buffered blocks sent to a worker thread (hashed inline if no thread can start).
#[derive(Default)]
struct AppHasher {
    buf: Vec<u8>,
    worker: Option<(SyncSender<Vec<u8>>, JoinHandle<Sha384>)>,
    tried_worker: bool,
    inline: Sha384,
}

impl AppHasher {
    fn update(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= APP_BLOCK {
            let block = std::mem::replace(&mut self.buf, Vec::with_capacity(APP_BLOCK));
            self.send(block);
        }
    }

    fn send(&mut self, block: Vec<u8>) {
        if !self.tried_worker {
            self.tried_worker = true;
            // Two blocks in flight bound the memory; the producer waits if the worker lags.
            let (tx, rx) = sync_channel::<Vec<u8>>(2);
            let spawned = std::thread::Builder::new().name("pcr2".into()).spawn(move || {
                let mut h = Sha384::new();
                for b in rx {
                    h.update(&b);
                }
                h
            });
            // No thread: every block is hashed inline instead (same result, one core).
            self.worker = spawned.ok().map(|handle| (tx, handle));
        }
        match &self.worker {
            // A send fails only if the worker died; `finalize` reports that when it joins.
            Some((tx, _)) => drop(tx.send(block)),
            None => self.inline.update(&block),
        }
    }

    fn finalize(mut self) -> [u8; PCR_LEN] {
        let rest = std::mem::take(&mut self.buf);
        match self.worker.take() {
            Some((tx, handle)) => {
                let _ = tx.send(rest);
                drop(tx);
                // Hashing cannot panic, so the worker cannot have died; were it to, there is no
                // digest to return (the bytes are gone): a bug, not bad input.
                handle.join().expect("PCR2 hashing thread").finalize().into()
            }
            None => {
                self.inline.update(&rest);
                self.inline.finalize().into()
            }
        }
    }
}

/// Where the bytes being fed belong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measured {
    /// kernel and cmdline: PCR0 and PCR1.
    Boot,
    /// the first ramdisk: PCR0 and PCR1; later ramdisks: PCR0 and PCR2.
    Ramdisk,
    NotMeasured,
}

impl PcrHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call once before feeding each ramdisk's bytes with `update(Measured::Ramdisk, ..)`.
    pub fn start_ramdisk(&mut self) {
        self.ramdisks_seen += 1;
        if self.ramdisks_seen == 2 {
            self.bootstrap = Some(self.image.clone());
        }
    }

    pub fn update(&mut self, what: Measured, data: &[u8]) {
        match what {
            Measured::Boot => {
                self.image.update(data);
                if let Some(b) = &mut self.bootstrap {
                    // kernel/cmdline after a second ramdisk: not nitro-cli's order, but measured
                    // the way nitro-cli's reader would (into PCR0 and PCR1).
                    b.update(data);
                }
            }
            Measured::Ramdisk => {
                self.image.update(data);
                if self.ramdisks_seen > 1 {
                    self.app.update(data);
                }
            }
            Measured::NotMeasured => {}
        }
    }

    /// PCR0 over what has been fed so far (what a signature over the image covers).
    pub fn pcr0_now(&self) -> [u8; PCR_LEN] {
        extend_from_zero(&self.image.clone().finalize())
    }

    /// Records the signing certificate (DER) for PCR8.
    pub fn set_certificate_der(&mut self, der: &[u8]) {
        self.cert = Some(Sha384::digest(der).into());
    }

    pub fn finish(self) -> Measurements {
        let reg = |h: Sha384| hex::encode(extend_from_zero(&h.finalize()));
        let bootstrap = self.bootstrap.unwrap_or_else(|| self.image.clone());
        Measurements {
            hash_algorithm: HASH_ALGORITHM.to_string(),
            pcr0: reg(self.image),
            pcr1: reg(bootstrap),
            pcr2: hex::encode(extend_from_zero(&self.app.finalize())),
            pcr8: self.cert.map(|c| hex::encode(extend_from_zero(&c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_matches_the_definition() {
        // sha384(48 zero bytes || sha384("abc")), spelled out independently.
        let inner = Sha384::digest(b"abc");
        let mut buf = vec![0u8; 48];
        buf.extend_from_slice(&inner);
        assert_eq!(extend_from_zero(&inner).to_vec(), Sha384::digest(&buf).to_vec());
    }

    #[test]
    fn registers_split_ramdisks_between_pcr1_and_pcr2() {
        let mut h = PcrHasher::new();
        h.update(Measured::Boot, b"kernel");
        h.update(Measured::Boot, b"cmdline");
        h.update(Measured::NotMeasured, b"metadata");
        h.start_ramdisk();
        h.update(Measured::Ramdisk, b"first");
        h.start_ramdisk();
        h.update(Measured::Ramdisk, b"second");
        h.start_ramdisk();
        h.update(Measured::Ramdisk, b"third");
        let m = h.finish();
        let pcr = |d: &[u8]| hex::encode(extend_from_zero(&Sha384::digest(d)));
        assert_eq!(m.pcr0, pcr(b"kernelcmdlinefirstsecondthird"));
        assert_eq!(m.pcr1, pcr(b"kernelcmdlinefirst"));
        assert_eq!(m.pcr2, pcr(b"secondthird"));
        assert_eq!(m.pcr8, None);
    }

    #[test]
    fn pcr2_spanning_many_worker_blocks_equals_one_pass() {
        let data: Vec<u8> = (0..(3 * APP_BLOCK + 12_345)).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = PcrHasher::new();
        h.update(Measured::Boot, b"k");
        h.start_ramdisk();
        h.update(Measured::Ramdisk, b"r1");
        h.start_ramdisk();
        // Uneven writes, as the cpio writer makes them.
        for chunk in data.chunks(110_000 - 3) {
            h.update(Measured::Ramdisk, chunk);
        }
        let m = h.finish();
        assert_eq!(m.pcr2, hex::encode(extend_from_zero(&Sha384::digest(&data))));
        let mut all = b"kr1".to_vec();
        all.extend_from_slice(&data);
        assert_eq!(m.pcr0, hex::encode(extend_from_zero(&Sha384::digest(&all))));
    }

    #[test]
    fn empty_pcr2_is_the_extend_of_the_empty_digest() {
        // An image with a single ramdisk has PCR2 = extend(sha384("")), as nitro-cli reports.
        let m = PcrHasher::new().finish();
        assert_eq!(m.pcr2, hex::encode(extend_from_zero(&Sha384::digest(b""))));
    }
}
