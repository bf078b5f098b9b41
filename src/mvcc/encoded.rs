//! A Range's keys as protobuf bytes, copied from their stored records.
//!
//! A record is a flag byte and an encoded `KeyValue`, which is what a
//! `RangeResponse` carries in its `kvs` field: a key in the reply is its
//! record's bytes behind the field's tag and length, with nothing decoded or
//! re-encoded (only `keys_only` re-encodes, without the value).
//!
//! A [`Pinned`] range holds one read view of the `kv` table (a read
//! transaction, shared with the other Ranges until the next commit:
//! `storage/kv_view.rs`) and one revision, and walks
//! the key index a chunk at a time under the read lock, so that neither the
//! keys nor their index entries are ever whole in memory. Walked twice, it
//! gives the reply's length before the reply's bytes: both walks read the
//! same records, since the read transaction is a snapshot and the index
//! answers the same at a revision that is not compacted (each chunk checks
//! it, as a streamed Range does).

use std::sync::Arc;

use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use super::{LIVE, Store, Visible, check_rev, rev_key};
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::RangeRequest;
use crate::pb::mvccpb::KeyValue;
use crate::storage::{KvView, StorageError};

/// Index entries taken per hold of the read lock.
const CHUNK: usize = 1024;

/// The tag of `RangeResponse.kvs` (field 2, length-delimited).
const KVS_TAG: u8 = 0x12;

/// A Range pinned at its revision: what its reply says besides the keys, and
/// the means to walk the keys.
pub struct Pinned {
    store: Arc<Store>,
    /// The `kv` table the records are read from, shared with the other
    /// Ranges until the next commit.
    view: Arc<KvView>,
    /// The revision the keys are read at.
    rev: i64,
    /// The current revision when the range was pinned (the reply header's).
    pub header_rev: i64,
    key: Vec<u8>,
    end: Vec<u8>,
    keys_only: bool,
    /// Keys in the range at `rev` (the reply's `count`).
    pub count: usize,
    /// Keys in the reply: all of them, or the limit's.
    pub n: usize,
    /// Whether keys beyond the limit exist (the reply's `more`).
    pub more: bool,
    /// The index entries of the first keys, taken while counting.
    first: Vec<Visible>,
    /// The last key of `first`, after which the walk goes on.
    after: Vec<u8>,
}

impl Store {
    /// Pins `req` (a Range without sort order or revision filters: the keys
    /// come in key order): checks its revision, counts its keys and takes
    /// the read view the keys will be read from, under one hold of the read
    /// lock; keeps the index entries of up to `first` keys.
    pub fn pin_range(self: &Arc<Self>, req: &RangeRequest, first: usize) -> Result<Pinned> {
        let st = self.state.read();
        let rev = if req.revision <= 0 {
            st.rev
        } else {
            req.revision
        };
        check_rev(rev, st.rev, st.compact_rev)?;
        let want = if req.count_only {
            0
        } else if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        let keep = want.min(first);
        let mut count = 0usize;
        let mut kept = Vec::new();
        let mut after = Vec::new();
        st.index.range(&req.key, &req.range_end, rev, |k, v| {
            count += 1;
            if kept.len() < keep {
                kept.push(v);
                if kept.len() == keep {
                    after = k.to_vec();
                }
            }
            true
        });
        let view = self.backend.kv_view()?;
        Ok(Pinned {
            store: self.clone(),
            view,
            rev,
            header_rev: st.rev,
            key: req.key.clone(),
            end: req.range_end.clone(),
            keys_only: req.keys_only,
            count,
            n: want.min(count),
            more: !req.count_only && req.limit > 0 && count > req.limit as usize,
            first: kept,
            after,
        })
    }
}

/// Where a walk of a pinned range's keys stands: the index entries taken
/// and not yet read, the key the next chunk starts at, the keys still to
/// take from the index.
pub struct Walk {
    batch: Vec<Visible>,
    pos: usize,
    from: Vec<u8>,
    left: usize,
}

impl Pinned {
    /// A walk from the first key.
    pub fn walk(&self) -> Walk {
        let first = self.first.len().min(self.n);
        let from = if self.first.is_empty() {
            self.key.clone()
        } else {
            let mut k = self.after.clone();
            k.push(0);
            k
        };
        Walk {
            batch: self.first[..first].to_vec(),
            pos: 0,
            from,
            left: self.n - first,
        }
    }

    /// The bytes of the reply's `kvs` fields.
    pub fn kvs_len(&self) -> Result<u64> {
        let mut len = 0u64;
        self.each(&mut self.walk(), |kv| {
            len += field_len(kv.len()) as u64;
            true
        })?;
        Ok(len)
    }

    /// Appends the `kvs` fields to `out`, going on from `w`, until `out`
    /// holds at least `up_to` bytes. Returns whether every key is written.
    pub fn write(&self, w: &mut Walk, out: &mut Vec<u8>, up_to: usize) -> Result<bool> {
        if out.len() >= up_to {
            return Ok(w.pos == w.batch.len() && w.left == 0);
        }
        self.each(w, |kv| {
            put_field(out, kv);
            out.len() < up_to
        })
    }

    /// Calls `f` with the encoded `KeyValue` of each key of the reply, in
    /// key order, going on from `w`, until `f` returns false (the key it was
    /// given counts as walked). Returns whether every key was walked.
    pub fn each(&self, w: &mut Walk, mut f: impl FnMut(&[u8]) -> bool) -> Result<bool> {
        let table = self.view.table();
        let mut scratch = Vec::new();
        loop {
            while let Some(v) = w.batch.get(w.pos) {
                w.pos += 1;
                let go_on = self.read(table, v, &mut scratch, &mut f)?;
                if !go_on {
                    return Ok(w.pos == w.batch.len() && w.left == 0);
                }
            }
            if w.left == 0 {
                return Ok(true);
            }
            self.next_chunk(w)?;
        }
    }

    /// Takes the next chunk of index entries, under the read lock.
    fn next_chunk(&self, w: &mut Walk) -> Result<()> {
        w.batch.clear();
        w.pos = 0;
        let st = self.store.state.read();
        check_rev(self.rev, st.rev, st.compact_rev)?;
        let take = CHUNK.min(w.left);
        let mut next = None;
        st.index.range(&w.from, &self.end, self.rev, |k, v| {
            w.batch.push(v);
            if w.batch.len() == take {
                let mut k = k.to_vec();
                k.push(0);
                next = Some(k);
                return false;
            }
            true
        });
        if w.batch.is_empty() {
            return Err(Error::Storage(format!(
                "the range of {:?} at revision {} ended {} keys early",
                String::from_utf8_lossy(&self.key),
                self.rev,
                w.left
            )));
        }
        if let Some(k) = next {
            w.from = k;
        }
        w.left -= w.batch.len();
        Ok(())
    }

    /// Reads the record `v` names and gives `f` its `KeyValue`.
    fn read(
        &self,
        table: &redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
        v: &Visible,
        scratch: &mut Vec<u8>,
        f: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<bool> {
        let missing = || {
            Error::Storage(format!(
                "kv revision {}/{} named by the index is missing",
                v.modified.main, v.modified.sub
            ))
        };
        let key = rev_key(v.modified);
        let record = table.get(key).map_err(StorageError::from)?;
        let record = record.ok_or_else(missing)?;
        let Some((&LIVE, kv)) = record.value().split_first() else {
            return Err(missing());
        };
        if !self.keys_only {
            return Ok(f(kv));
        }
        let mut kv = KeyValue::decode(kv).map_err(|e| StorageError::Decode {
            what: format!("kv revision {}/{}", key.0, key.1),
            detail: e.to_string(),
        })?;
        kv.value.clear();
        scratch.clear();
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = kv.encode(scratch);
        Ok(f(scratch))
    }
}

/// The bytes of one `kvs` field holding an encoded `KeyValue` of `len` bytes.
pub fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Appends one `kvs` field holding the encoded `KeyValue` `kv`.
pub fn put_field(out: &mut Vec<u8>, kv: &[u8]) {
    out.push(KVS_TAG);
    encode_varint(kv.len() as u64, out);
    out.extend_from_slice(kv);
}
