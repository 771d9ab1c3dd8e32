//! Connection caps: one global, one per listener, and the admin endpoint's own ([`Slot`]).
//! Over a cap a connection is refused at once (never queued). Caps are atomics so that a reload
//! can change them under live traffic; a lowered cap refuses new connections until enough old
//! ones have ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Limit {
    active: AtomicUsize,
    max: AtomicUsize,
}

impl Limit {
    pub fn new(max: usize) -> Arc<Limit> {
        Arc::new(Limit { active: AtomicUsize::new(0), max: AtomicUsize::new(max) })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A place under this cap alone (the admin endpoint's), or `None` when it is full.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.try_take().then(|| Slot { limit: self.clone() })
    }

    fn try_take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One place under a single cap; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<Limit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.give_back();
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Listener,
    Global,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Listener => "limit_listener",
            Refusal::Global => "limit_global",
        }
    }
}

/// One admitted connection; dropping it frees its place under both caps.
#[derive(Debug)]
pub struct Permit {
    global: Arc<Limit>,
    listener: Arc<Limit>,
}

impl Permit {
    pub fn acquire(global: &Arc<Limit>, listener: &Arc<Limit>) -> Result<Permit, Refusal> {
        if !listener.try_take() {
            return Err(Refusal::Listener);
        }
        if !global.try_take() {
            listener.give_back();
            return Err(Refusal::Global);
        }
        Ok(Permit { global: global.clone(), listener: listener.clone() })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.listener.give_back();
        self.global.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_and_release() {
        let global = Limit::new(3);
        let (a, b) = (Limit::new(2), Limit::new(2));
        let p1 = Permit::acquire(&global, &a).unwrap();
        let _p2 = Permit::acquire(&global, &a).unwrap();
        assert_eq!(Permit::acquire(&global, &a).unwrap_err(), Refusal::Listener);
        let _p3 = Permit::acquire(&global, &b).unwrap();
        assert_eq!(Permit::acquire(&global, &b).unwrap_err(), Refusal::Global);
        assert_eq!(b.active(), 1, "a global refusal gives the listener place back");
        drop(p1);
        assert_eq!((global.active(), a.active()), (2, 1));
        let _p4 = Permit::acquire(&global, &b).unwrap();
        b.set_max(1);
        assert_eq!(Permit::acquire(&global, &b).unwrap_err(), Refusal::Listener);
    }

    #[test]
    fn single_cap_slots() {
        let admin = Limit::new(1);
        let s = admin.try_acquire().unwrap();
        assert!(admin.try_acquire().is_none());
        drop(s);
        assert!(admin.try_acquire().is_some());
    }
}
