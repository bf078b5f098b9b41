//! The in-memory key index: for every key, its generations of revisions, as etcd
//! keeps them. A generation runs from a key's creation to its deletion (the
//! tombstone is the generation's last revision); the index answers "which revision
//! of this key is visible at revision R" without touching the database.

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use super::index_key::{IndexKey, Probe, Query};

/// A generation's revisions: most keys have one, held in place (no
/// allocation of its own), more move to the heap.
pub type Revisions = SmallVec<[Revision; 1]>;

/// A point in the store's history: `main` grows by one per modifying request, `sub`
/// numbers the changes within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    /// Number of puts in this generation (the key's `version` at its last put).
    pub ver: i64,
    pub created: Revision,
    pub revs: Revisions,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyIndex {
    /// The last generation is the current one; it is empty when the key is deleted.
    /// A boxed slice, not a `Vec`: the index holds one per key, and a key
    /// rarely gains a generation (a put after a delete), while its entry in
    /// the tree is 8 bytes smaller.
    pub generations: Box<[Generation]>,
}

/// What the index knows about a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl KeyIndex {
    /// Whether the key exists now: its latest generation has revisions.
    fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// The current generation, made if the key has none.
    fn current(&mut self) -> &mut Generation {
        if self.generations.is_empty() {
            self.new_generation();
        }
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    /// Opens a generation after the last one (a key's first put, or its
    /// first put after a delete). The slice is rebuilt at its exact length.
    fn new_generation(&mut self) {
        let mut gens = std::mem::take(&mut self.generations).into_vec();
        gens.push(Generation::default());
        self.generations = gens.into_boxed_slice();
    }

    fn put(&mut self, rev: Revision) {
        let g = self.current();
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    fn tombstone(&mut self, rev: Revision) -> bool {
        match self.generations.last_mut() {
            Some(g) if !g.revs.is_empty() => {
                g.revs.push(rev);
                self.new_generation();
                true
            }
            _ => false,
        }
    }

    /// The live revision of the key at `at` (None when absent or deleted then).
    pub fn get(&self, at: i64) -> Option<Visible> {
        let n = self.generations.len();
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.revs.is_empty() {
                continue;
            }
            if g.created.main > at {
                continue;
            }
            let closed = i + 1 < n; // its last revision is a tombstone
            // Find the last revision <= at.
            let pos = g.revs.partition_point(|r| r.main <= at);
            if pos == 0 {
                return None;
            }
            if closed && pos == g.revs.len() {
                return None; // deleted at or before `at`
            }
            // Version counts the puts up to pos; `ver` counts all puts of the generation
            // and earlier revisions may have been compacted away.
            let puts_after = (g.revs.len() - pos) as i64 - if closed { 1 } else { 0 };
            return Some(Visible {
                modified: g.revs[pos - 1],
                created: g.created,
                version: g.ver - puts_after,
            });
        }
        None
    }

    /// Keeps what reads at or after `at` still need; returns false when nothing is left.
    /// Revisions <= `at` that stay in storage are added to `keep`.
    fn compact(&mut self, at: i64, keep: &mut std::collections::HashSet<Revision>) -> bool {
        let n = self.generations.len();
        let mut out = Vec::with_capacity(n);
        for (i, mut g) in std::mem::take(&mut self.generations)
            .into_vec()
            .into_iter()
            .enumerate()
        {
            let closed = i + 1 < n;
            let last = match g.revs.last() {
                Some(r) => r.main,
                None => {
                    if !closed {
                        out.push(g);
                    }
                    continue;
                }
            };
            if closed && last <= at {
                // The generation ended (tombstone) at or before `at`: nothing of it is visible.
                continue;
            }
            let pos = g.revs.partition_point(|r| r.main <= at);
            if pos > 0 {
                keep.insert(g.revs[pos - 1]);
                g.revs.drain(..pos - 1);
                g.revs.shrink_to_fit();
            }
            out.push(g);
        }
        self.generations = out.into_boxed_slice();
        self.generations.iter().any(|g| !g.revs.is_empty())
    }
}

/// All keys of the store.
#[derive(Debug, Default)]
pub struct TreeIndex {
    /// Keys with their first bytes in the tree's nodes (see [`super::index_key`]).
    tree: BTreeMap<IndexKey, KeyIndex>,
    /// Keys whose latest generation is open (not deleted).
    live: usize,
}

/// How a range request names its keys: one key, a half-open range, or every key from
/// a start (etcd's `range_end = "\0"`).
pub fn key_bounds<'a>(key: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(end))
    }
}

impl TreeIndex {
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Keys that exist now (etcd's `etcd_debugging_mvcc_keys_total`); deleted
    /// keys still in the index for their history do not count.
    pub fn live(&self) -> usize {
        self.live
    }

    #[cfg(test)]
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        self.put_seen(key, rev, i64::MAX);
    }

    /// Writes `key` at `rev`; returns what was visible of it at `at` before.
    /// One walk down the tree: the key's copy is made whether or not the
    /// key is new (an allocation costs less than a second walk's misses).
    pub fn put_seen(&mut self, key: &[u8], rev: Revision, at: i64) -> Option<Visible> {
        let ki = self.tree.entry(IndexKey::new(key)).or_default();
        let seen = ki.get(at);
        if !ki.is_live() {
            self.live += 1;
        }
        ki.put(rev);
        seen
    }

    /// Marks `key` deleted at `rev`; false when it was not live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        let closed = match self.tree.get_mut(Query::new(key).probe()) {
            Some(ki) => ki.tombstone(rev),
            None => false,
        };
        if closed {
            self.live -= 1;
        }
        closed
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<Visible> {
        self.tree
            .get(Query::new(key).probe())
            .and_then(|ki| ki.get(at))
    }

    /// Visits every key in the range that is live at `at`, in key order, until `f`
    /// returns false.
    pub fn range<F: FnMut(&[u8], Visible) -> bool>(
        &self,
        key: &[u8],
        end: &[u8],
        at: i64,
        mut f: F,
    ) {
        if !end.is_empty() && end != [0] && key >= end {
            return;
        }
        let (lo, hi) = key_bounds(key, end);
        let (lo, hi) = (lo.map(Query::new), hi.map(Query::new));
        let bounds = (lo.as_ref().map(Query::probe), hi.as_ref().map(Query::probe));
        for (k, ki) in self.tree.range::<dyn Probe, _>(bounds) {
            if let Some(v) = ki.get(at)
                && !f(k.bytes(), v)
            {
                break;
            }
        }
    }

    /// Counts the keys live at `at` in the range.
    pub fn count(&self, key: &[u8], end: &[u8], at: i64) -> usize {
        let mut n = 0;
        self.range(key, end, at, |_, _| {
            n += 1;
            true
        });
        n
    }

    /// The revision of `key` that was live just before `rev` (for an event's prev_kv).
    pub fn before(&self, key: &[u8], rev: Revision) -> Option<Revision> {
        let ki = self.tree.get(Query::new(key).probe())?;
        for g in ki.generations.iter().rev() {
            let pos = g.revs.partition_point(|r| *r < rev);
            if pos == 0 {
                continue;
            }
            let prev = g.revs[pos - 1];
            // The tombstone of a closed generation is never a previous value.
            let is_tomb = pos == g.revs.len() && !std::ptr::eq(g, ki.generations.last()?);
            if is_tomb {
                return None;
            }
            return Some(prev);
        }
        None
    }

    /// The revisions a compaction at `at` would keep (etcd's `Keep`): for
    /// each key, its last revision at or before `at` unless that is a tombstone.
    pub fn keep(&self, at: i64) -> std::collections::HashSet<Revision> {
        let mut keep = std::collections::HashSet::new();
        for ki in self.tree.values() {
            let n = ki.generations.len();
            for (i, g) in ki.generations.iter().enumerate() {
                let Some(last) = g.revs.last() else { continue };
                if i + 1 < n && last.main <= at {
                    continue;
                }
                let pos = g.revs.partition_point(|r| r.main <= at);
                if pos > 0 {
                    keep.insert(g.revs[pos - 1]);
                }
                break;
            }
        }
        keep
    }

    /// Compacts every key at `at`; returns the revisions <= `at` that stay in storage.
    pub fn compact(&mut self, at: i64) -> std::collections::HashSet<Revision> {
        let mut keep = std::collections::HashSet::new();
        self.tree.retain(|_, ki| ki.compact(at, &mut keep));
        keep
    }

    /// Restores a key's history from storage, record by record in revision order.
    pub fn restore(
        &mut self,
        key: &[u8],
        rev: Revision,
        created: Revision,
        version: i64,
        tombstone: bool,
    ) {
        let ki = match self.tree.get_mut(Query::new(key).probe()) {
            Some(ki) => ki,
            None => self.tree.entry(IndexKey::new(key)).or_default(),
        };
        if tombstone {
            if ki.tombstone(rev) {
                self.live -= 1;
            }
            return;
        }
        if !ki.is_live() {
            self.live += 1;
        }
        let g = ki.current();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(rev);
        g.ver = version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_restored_from_storage_holds_what_puts_made() {
        let (mut put, mut restored) = (TreeIndex::default(), TreeIndex::default());
        for (i, key) in [b"a", b"b"].iter().enumerate() {
            let rev = Revision::new(i as i64 + 1, 0);
            put.put(*key, rev);
            restored.restore(*key, rev, rev, 1, false);
        }
        for t in [&put, &restored] {
            for ki in t.tree.values() {
                assert_eq!(ki.generations.len(), 1, "{:?}", ki);
                assert!(!ki.generations[0].revs.spilled(), "{:?}", ki);
            }
        }
        assert_eq!(put.tree, restored.tree);
    }

    fn r(m: i64) -> Revision {
        Revision::new(m, 0)
    }

    #[test]
    fn generations_and_visibility() {
        let mut t = TreeIndex::default();
        t.put(b"a", r(2));
        t.put(b"a", r(3));
        assert!(t.tombstone(b"a", r(4)));
        t.put(b"a", r(6));
        assert_eq!(t.get(b"a", 1), None);
        let v = t.get(b"a", 3).unwrap();
        assert_eq!((v.modified, v.created, v.version), (r(3), r(2), 2));
        assert_eq!(t.get(b"a", 4), None);
        assert_eq!(t.get(b"a", 5), None);
        let v = t.get(b"a", 7).unwrap();
        assert_eq!((v.modified, v.created, v.version), (r(6), r(6), 1));
        assert!(!t.tombstone(b"b", r(8)));
        assert_eq!(t.before(b"a", r(6)), None);
        assert_eq!(t.before(b"a", r(3)), Some(r(2)));
        assert_eq!(t.before(b"a", r(4)), Some(r(3)));
    }

    #[test]
    fn live_keys_are_counted_without_the_deleted() {
        let mut t = TreeIndex::default();
        t.put(b"k", r(2));
        t.put(b"a", r(3));
        t.put(b"a", r(4));
        assert_eq!(t.live(), 2);
        assert!(t.tombstone(b"a", r(5)));
        assert!(!t.tombstone(b"a", r(6)));
        assert_eq!((t.live(), t.len()), (1, 2));
        t.put(b"a", r(7));
        assert_eq!(t.live(), 2);
        assert!(t.tombstone(b"a", r(8)));
        t.compact(9);
        assert_eq!((t.live(), t.len()), (1, 1));
        let mut u = TreeIndex::default();
        u.restore(b"x", r(2), r(2), 1, false);
        u.restore(b"x", r(3), r(2), 2, false);
        u.restore(b"x", r(4), r(2), 0, true);
        u.restore(b"y", r(5), r(5), 1, false);
        assert_eq!(u.live(), 1);
    }

    #[test]
    fn compaction_keeps_latest() {
        let mut t = TreeIndex::default();
        t.put(b"a", r(2));
        t.put(b"a", r(3));
        t.put(b"b", r(4));
        t.tombstone(b"b", r(5));
        t.put(b"a", r(6));
        let keep = t.compact(5);
        assert!(keep.contains(&r(3)));
        assert!(!keep.contains(&r(2)));
        assert_eq!(t.get(b"b", 6), None);
        assert_eq!(t.count(b"", &[0], 6), 1);
        let v = t.get(b"a", 5).unwrap();
        assert_eq!((v.modified, v.version), (r(3), 2));
        let v = t.get(b"a", 6).unwrap();
        assert_eq!(v.version, 3);
    }
}
