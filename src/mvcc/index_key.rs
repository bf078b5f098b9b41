//! The key index's keys: a key's bytes with its first eight held in place.
//!
//! Finding a key in the index's B-tree compares it with a few dozen keys on
//! its way down, and each of those keys lives in an allocation of its own: a
//! comparison of bytes is a cache miss. Each entry therefore also holds its
//! key's first eight bytes as a number ([`head`]), in the tree's node, and a
//! comparison reads the bytes only when the heads are equal.
//!
//! Heads order keys as their bytes do. Two keys that differ within their first
//! eight bytes differ first at a position where both have a byte (the heads
//! order them as the bytes do), or where the shorter has ended: the shorter is
//! then a prefix of the longer up to there and sorts first, and its head holds
//! a zero there, no more than the longer's byte. When the longer's byte is zero
//! too, the heads are equal and the bytes decide.
//!
//! Lookups go through [`Probe`], which a stored [`IndexKey`] and a borrowed
//! [`Query`] both implement, so a lookup needs no allocation.

use std::borrow::Borrow;
use std::cmp::Ordering;

/// A key's first eight bytes as a big-endian number, zeros after a shorter key.
pub fn head(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// A key as the index stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct IndexKey {
    head: u64,
    /// A boxed slice, not a `Vec`: 8 bytes less per entry, and no spare capacity.
    bytes: Box<[u8]>,
}

impl IndexKey {
    pub fn new(key: &[u8]) -> Self {
        IndexKey {
            head: head(key),
            bytes: key.into(),
        }
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.bytes))
    }
}

/// A key to look up, borrowed from the request.
pub struct Query<'a> {
    head: u64,
    bytes: &'a [u8],
}

impl<'a> Query<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        Query {
            head: head(key),
            bytes: key,
        }
    }

    /// As the tree's lookups take it.
    pub fn probe(&self) -> &(dyn Probe + 'a) {
        self
    }
}

/// What a comparison in the tree reads of a key.
pub trait Probe {
    fn head(&self) -> u64;
    fn bytes(&self) -> &[u8];
}

impl Probe for IndexKey {
    fn head(&self) -> u64 {
        self.head
    }
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Probe for Query<'_> {
    fn head(&self) -> u64 {
        self.head
    }
    fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

/// The one order of keys: heads first, bytes when they are equal.
fn compare<A: Probe + ?Sized, B: Probe + ?Sized>(a: &A, b: &B) -> Ordering {
    a.head()
        .cmp(&b.head())
        .then_with(|| a.bytes().cmp(b.bytes()))
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self, other)
    }
}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<'a> Borrow<dyn Probe + 'a> for IndexKey {
    fn borrow(&self) -> &(dyn Probe + 'a) {
        self
    }
}

impl Ord for dyn Probe + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self, other)
    }
}

impl PartialOrd for dyn Probe + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn Probe + '_ {
    fn eq(&self, other: &Self) -> bool {
        compare(self, other) == Ordering::Equal
    }
}

impl Eq for dyn Probe + '_ {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys around the edges of the head: shorter and longer than eight
    /// bytes, zero bytes inside and at the end, 0xff.
    fn keys() -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0\0\0\0\0\0".to_vec(),
            b"a\0\0\0\0\0\0\0\0".to_vec(),
            b"a\0\0\0\0\0\0\0\x01".to_vec(),
            b"a\x01".to_vec(),
            b"abcdefg".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefgha".to_vec(),
            b"abcdefgi".to_vec(),
            b"/registry/pods/default/a".to_vec(),
            b"/registry/pods/default/b".to_vec(),
            vec![0xff; 8],
            vec![0xff; 9],
        ];
        let mut seed = 7u64;
        for _ in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 60) as usize;
            keys.push((0..len).map(|i| ((seed >> (i * 4)) & 3) as u8).collect());
        }
        keys
    }

    #[test]
    fn keys_sort_as_their_bytes() {
        let keys = keys();
        for a in &keys {
            for b in &keys {
                let (ka, kb) = (IndexKey::new(a), IndexKey::new(b));
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} against {b:?}");
                let (qa, qb) = (Query::new(a), Query::new(b));
                assert_eq!(qa.probe().cmp(qb.probe()), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(
                    Borrow::<dyn Probe>::borrow(&ka).cmp(qb.probe()),
                    a.cmp(b),
                    "{a:?} against {b:?}"
                );
            }
        }
    }

    #[test]
    fn a_tree_finds_keys_by_query() {
        let keys = keys();
        let tree: std::collections::BTreeMap<IndexKey, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (IndexKey::new(k), i))
            .collect();
        let sorted: std::collections::BTreeSet<&Vec<u8>> = keys.iter().collect();
        assert_eq!(
            tree.keys().map(|k| k.bytes().to_vec()).collect::<Vec<_>>(),
            sorted.iter().map(|k| k.to_vec()).collect::<Vec<_>>()
        );
        for k in &keys {
            let found = tree.get(Query::new(k).probe()).map(|i| &keys[*i]);
            assert_eq!(found, Some(k));
        }
        assert!(!tree.contains_key(Query::new(b"zz-absent").probe()));
    }
}
