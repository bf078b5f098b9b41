//! Leases: the table of granted leases, the keys attached to each, and their expiry.
//!
//! Grants, revokes and attachments change only in the apply loop (they are Raft
//! entries); keep-alives renew the in-memory deadline on the leader only, as etcd
//! does. After a restart or a leader change every deadline is pushed to now + TTL, so
//! no lease expires early.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// etcd's upper bound for a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: i64,
    /// The TTL the lease was granted with (after raising it to the minimum).
    pub ttl: i64,
    pub deadline: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

/// `ttl` seconds after `now`. A TTL beyond etcd's maximum (it can come from a
/// snapshot or a log entry, which the API's check never saw) counts as the
/// maximum, so the deadline is always representable.
fn deadline(now: Instant, ttl: i64) -> Instant {
    let secs = ttl.clamp(0, MAX_LEASE_TTL) as u64;
    now.checked_add(Duration::from_secs(secs)).unwrap_or(now)
}

impl Lease {
    /// Whole seconds left, rounded down as etcd reports them (a lease just
    /// granted or renewed with TTL 60 reports 59).
    pub fn remaining(&self, now: Instant) -> i64 {
        self.deadline.saturating_duration_since(now).as_secs() as i64
    }
}

#[derive(Debug, Default)]
struct Table {
    leases: HashMap<i64, Lease>,
    /// key -> lease it is attached to.
    items: HashMap<Vec<u8>, i64>,
}

#[derive(Debug)]
pub struct Lessor {
    table: Mutex<Table>,
    min_ttl: i64,
}

impl Lessor {
    /// `min_ttl` is etcd's floor: 1.5 election timeouts, rounded up to a second.
    pub fn new(min_ttl: i64) -> Self {
        Lessor {
            table: Mutex::new(Table::default()),
            min_ttl: min_ttl.max(1),
        }
    }

    /// Forgets every lease (before reloading them from storage).
    pub fn clear(&self) {
        let mut t = self.table.lock();
        t.leases.clear();
        t.items.clear();
    }

    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    pub fn exists(&self, id: i64) -> bool {
        self.table.lock().leases.contains_key(&id)
    }

    /// Creates a lease (apply loop). Returns the effective TTL.
    pub fn grant(&self, id: i64, ttl: i64) -> i64 {
        let ttl = ttl.max(self.min_ttl);
        let mut t = self.table.lock();
        t.leases.insert(
            id,
            Lease {
                id,
                ttl,
                deadline: deadline(Instant::now(), ttl),
                keys: BTreeSet::new(),
            },
        );
        ttl
    }

    /// Restores a lease at startup with a fresh deadline.
    pub fn restore(&self, id: i64, ttl: i64) {
        self.grant(id, ttl);
    }

    /// Removes a lease (apply loop); returns the keys that were attached to it.
    pub fn revoke(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        let mut t = self.table.lock();
        let lease = t.leases.remove(&id)?;
        for k in &lease.keys {
            t.items.remove(k);
        }
        Some(lease.keys.into_iter().collect())
    }

    /// Records that `key` is now written with `lease` (0 = none), detaching it from any
    /// other lease.
    pub fn attach(&self, key: &[u8], lease: i64) {
        let mut t = self.table.lock();
        let old = t.items.get(key).copied();
        if old == Some(lease) {
            return;
        }
        if let Some(old) = old {
            if let Some(l) = t.leases.get_mut(&old) {
                l.keys.remove(key);
            }
            t.items.remove(key);
        }
        if let Some(l) = t.leases.get_mut(&lease).filter(|_| lease != 0) {
            l.keys.insert(key.to_vec());
            t.items.insert(key.to_vec(), lease);
        }
    }

    /// The key was deleted.
    pub fn detach(&self, key: &[u8]) {
        self.attach(key, 0);
    }

    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.table.lock().items.get(key).copied().unwrap_or(0)
    }

    /// Renews a lease (leader only). Returns its TTL, or None when unknown.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut t = self.table.lock();
        let l = t.leases.get_mut(&id)?;
        l.deadline = deadline(Instant::now(), l.ttl);
        Some(l.ttl)
    }

    /// Pushes every deadline to now + TTL (on becoming leader).
    pub fn refresh_all(&self) {
        let now = Instant::now();
        for l in self.table.lock().leases.values_mut() {
            l.deadline = deadline(now, l.ttl);
        }
    }

    pub fn get(&self, id: i64) -> Option<Lease> {
        self.table.lock().leases.get(&id).cloned()
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.table.lock().leases.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.table
            .lock()
            .leases
            .values()
            .filter(|l| l.deadline <= now)
            .map(|l| l.id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.table.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_detach_revoke() {
        let l = Lessor::new(2);
        assert_eq!(l.grant(7, 1), 2);
        l.grant(8, 10);
        l.attach(b"a", 7);
        l.attach(b"b", 7);
        l.attach(b"b", 8);
        assert_eq!(l.lease_of(b"b"), 8);
        l.detach(b"a");
        assert_eq!(l.revoke(7), Some(vec![]));
        assert_eq!(l.revoke(8), Some(vec![b"b".to_vec()]));
        assert_eq!(l.revoke(8), None);
        assert_eq!(l.lease_of(b"b"), 0);
    }

    /// Found with the snapshot fuzz target (on an input written for it): a
    /// restored lease with a TTL no client could grant (i64::MAX seconds)
    /// panicked the member adding it to the clock.
    #[test]
    fn a_ttl_beyond_the_maximum_counts_as_the_maximum() {
        let l = Lessor::new(1);
        assert_eq!(l.grant(7, i64::MAX), i64::MAX);
        l.restore(8, i64::MAX - 1);
        assert!(l.renew(7).is_some());
        l.refresh_all();
        let now = Instant::now();
        let left = l.get(8).map(|x| x.remaining(now)).unwrap_or(0);
        assert!(
            (MAX_LEASE_TTL - 10..=MAX_LEASE_TTL).contains(&left),
            "{left}"
        );
    }
}
