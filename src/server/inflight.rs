//! The bound on requests queued into the Raft loop. Every proposal and read
//! barrier holds a slot from the moment it is sent to the loop until its caller
//! has its answer (or gives up); with all slots taken, or with the applied
//! index too far behind the committed one (etcd's 5,000 entries), a new request
//! is refused at once with etcd's `etcdserver: too many requests`, so a client
//! cannot make the member queue unbounded work or memory.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Most requests waiting on the Raft loop at once.
pub const MAX_REQUESTS: usize = 10_000;
/// Most bytes of proposed entries waiting on the Raft loop at once.
pub const MAX_BYTES: usize = 256 * 1024 * 1024;
/// etcd's `maxGapBetweenApplyAndCommitIndex`.
pub const MAX_APPLY_GAP: u64 = 5_000;

#[derive(Debug, Default)]
pub struct InFlight {
    requests: AtomicUsize,
    bytes: AtomicUsize,
}

/// A slot; released when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    of: &'a InFlight,
    bytes: usize,
}

impl InFlight {
    /// Takes a slot for a request carrying `bytes`, if the member has room
    /// for it (`commit` and `applied` are the Raft loop's indexes).
    pub fn admit(&self, bytes: usize, commit: u64, applied: u64) -> Result<Slot<'_>> {
        if commit > applied.saturating_add(MAX_APPLY_GAP) {
            return Err(Error::TooManyRequests);
        }
        let n = self.requests.fetch_add(1, Ordering::AcqRel);
        let b = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let slot = Slot { of: self, bytes };
        if n >= MAX_REQUESTS || b.saturating_add(bytes) > MAX_BYTES {
            return Err(Error::TooManyRequests);
        }
        Ok(slot)
    }

    /// Whether the request holding a slot is the only one in flight.
    pub fn alone(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 1
    }

    /// Bytes of the requests holding slots.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.of.requests.fetch_sub(1, Ordering::AcqRel);
        self.of.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let f = InFlight::default();
        let slots: Vec<_> = (0..MAX_REQUESTS)
            .map(|_| f.admit(10, 0, 0).expect("room"))
            .collect();
        assert_eq!(f.admit(10, 0, 0).unwrap_err(), Error::TooManyRequests);
        // A refused request leaves nothing taken.
        assert_eq!(f.requests(), MAX_REQUESTS);
        drop(slots);
        assert_eq!(f.requests(), 0);
        assert!(f.admit(MAX_BYTES, 0, 0).is_ok());
        assert_eq!(
            f.admit(MAX_BYTES + 1, 0, 0).unwrap_err(),
            Error::TooManyRequests
        );
        assert_eq!(
            f.admit(1, MAX_APPLY_GAP + 11, 10).unwrap_err(),
            Error::TooManyRequests
        );
        assert!(f.admit(1, MAX_APPLY_GAP + 10, 10).is_ok());
    }
}
