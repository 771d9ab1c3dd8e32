//! The enclave's HPKE key pairs for v2 (`ObliviousGetValues`).
//!
//! Key pairs are generated here, in the process, from the kernel's random number generator
//! (`getrandom`; inside a Nitro Enclave the kernel is seeded by the NSM's hardware RNG), never read
//! from configuration, a file or the parent. Each has a 1-byte key id: the first is random, each
//! rotation takes the next. Every `key_rotation` a new pair becomes current; the previous one
//! still decrypts for `key_grace` (clients that fetched the key set just before the rotation), then
//! it is dropped. Secret keys are zeroized when dropped and never logged; only key ids and public
//! keys are.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kv_protocol::ProtocolError;
use kv_protocol::keys::{KeyPair, PublicKey, SecretKey};
use tokio::time::Instant;

use crate::config::V2Config;

/// The keys in force at one moment: the current pair, and earlier pairs each accepted until its
/// deadline. Empty while fleet keys are not loaded yet ([`crate::fleet`]).
#[derive(Debug, Default)]
pub struct KeyRing {
    current: Option<KeyPair>,
    /// Rotated-out pairs and when each stops being accepted.
    previous: Vec<(KeyPair, Instant)>,
}

impl KeyRing {
    /// A ring of `current` and rotated-out pairs with their deadlines (expired ones are ignored).
    pub fn new(current: KeyPair, previous: Vec<(KeyPair, Instant)>) -> KeyRing {
        KeyRing { current: Some(current), previous }
    }

    fn previous_at(&self, now: Instant) -> impl Iterator<Item = &KeyPair> {
        self.previous.iter().filter(move |(_, until)| now < *until).map(|(pair, _)| pair)
    }

    /// The secret key for a request's key id, if it is current or still in its grace period.
    pub fn secret(&self, id: u8) -> Option<&SecretKey> {
        if let Some(current) = self.current.as_ref().filter(|c| c.id == id) {
            return Some(&current.secret);
        }
        self.previous_at(Instant::now()).find(|pair| pair.id == id).map(|pair| &pair.secret)
    }

    /// The public keys to publish: the current one first; empty when no key is loaded.
    pub fn public_keys(&self) -> Vec<(u8, PublicKey)> {
        let mut keys: Vec<(u8, PublicKey)> = self.current.iter().map(|c| (c.id, c.public)).collect();
        keys.extend(self.previous_at(Instant::now()).map(|pair| (pair.id, pair.public)));
        keys
    }

    /// The current key id; `None` while no key is loaded.
    pub fn current_id(&self) -> Option<u8> {
        self.current.as_ref().map(|c| c.id)
    }
}

/// Owns the key ring and rotates it.
#[derive(Debug)]
pub struct KeyManager {
    ring: RwLock<Arc<KeyRing>>,
    rotation: Duration,
    grace: Duration,
}

impl KeyManager {
    /// A manager with a fresh key pair under a random key id.
    pub fn new(config: &V2Config) -> Result<KeyManager, ProtocolError> {
        let mut id = [0u8; 1];
        getrandom::fill(&mut id).map_err(|_| ProtocolError::Random)?;
        let current = KeyPair::generate(id[0])?;
        tracing::info!(key_id = current.id, public_key = %current.public.to_base64(), "HPKE key pair generated");
        Ok(KeyManager {
            ring: RwLock::new(Arc::new(KeyRing::new(current, Vec::new()))),
            rotation: config.key_rotation,
            grace: config.key_grace,
        })
    }

    /// A manager with no key until [`KeyManager::install`] gives it the fleet's (`run` must not be
    /// called: the fleet task rotates).
    pub fn pending(config: &V2Config) -> KeyManager {
        KeyManager {
            ring: RwLock::new(Arc::new(KeyRing::default())),
            rotation: config.key_rotation,
            grace: config.key_grace,
        }
    }

    /// Replaces the keys in force (the fleet task, whenever the key set or the time changes them).
    pub fn install(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    /// The keys in force now (cheap: one `Arc` clone).
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes a new pair current; the old current pair is accepted for the grace period.
    pub fn rotate(&self) -> Result<(), ProtocolError> {
        let old = self.ring();
        let next_id = old.current_id().map_or(0, |id| id.wrapping_add(1));
        let next = KeyPair::generate(next_id)?;
        tracing::info!(
            key_id = next.id,
            public_key = %next.public.to_base64(),
            previous_key_id = ?old.current_id(),
            grace_s = self.grace.as_secs(),
            "HPKE key rotated"
        );
        let previous = match (&old.current, self.grace.is_zero()) {
            (Some(current), false) => vec![(current.clone(), Instant::now() + self.grace)],
            _ => Vec::new(),
        };
        self.install(KeyRing::new(next, previous));
        Ok(())
    }

    /// Rotates every `key_rotation` until `shutdown` resolves. A failed rotation (the random
    /// number generator failing) keeps the current key and is retried a minute later.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut next = Instant::now() + self.rotation;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            next = match self.rotate() {
                Ok(()) => Instant::now() + self.rotation,
                Err(e) => {
                    tracing::error!(error = %e, "HPKE key rotation failed; keeping the current key");
                    Instant::now() + self.rotation.min(Duration::from_secs(60))
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rotation: u64, grace: u64) -> V2Config {
        V2Config {
            key_rotation: Duration::from_secs(rotation),
            key_grace: Duration::from_secs(grace),
            ..V2Config::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_keeps_the_previous_key_for_the_grace_period_only() {
        let manager = Arc::new(KeyManager::new(&config(100, 10)).unwrap());
        let first = manager.ring();
        let first_id = first.current_id().unwrap();
        assert!(first.secret(first_id).is_some());
        assert!(first.secret(first_id.wrapping_add(1)).is_none());
        assert_eq!(first.public_keys().len(), 1);

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(manager.clone().run(async move {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_secs(101)).await;
        let second = manager.ring();
        assert_eq!(second.current_id(), Some(first_id.wrapping_add(1)), "the next id");
        let keys = second.public_keys();
        assert_eq!(keys.len(), 2, "current and previous during the grace period");
        assert_eq!(Some(keys[0].0), second.current_id(), "the current key first");
        assert_eq!(keys[1], first.public_keys()[0]);
        assert!(second.secret(first_id).is_some(), "the previous key still decrypts");

        tokio::time::sleep(Duration::from_secs(10)).await;
        let ring = manager.ring();
        assert!(ring.secret(first_id).is_none(), "the grace period is over");
        assert_eq!(ring.public_keys().len(), 1);
        assert_ne!(ring.public_keys()[0].1, first.public_keys()[0].1, "a new key, not the old one renamed");

        let _ = stop.send(());
        task.await.unwrap();
    }

    #[test]
    fn without_grace_the_old_key_goes_at_once_and_ids_wrap() {
        let manager = KeyManager::new(&config(100, 0)).unwrap();
        let first = manager.ring().current_id().unwrap();
        for _ in 0..256 {
            manager.rotate().unwrap();
        }
        let ring = manager.ring();
        assert_eq!(ring.current_id(), Some(first), "256 rotations wrap the 1-byte id");
        assert_eq!(ring.public_keys().len(), 1);
        assert!(ring.secret(first.wrapping_sub(1)).is_none());
    }
}
