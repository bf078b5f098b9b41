//! The write side of the store, used only by the apply loop: one [`Writer`] per
//! applied batch, one write "transaction" (a main revision) per modifying request.

use std::collections::HashSet;

use super::{Revision, State, Visible, encode_record, range_at, read_kv, rev_key};
use crate::error::{Error, Result};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
use crate::pb::mvccpb::{Event, KeyValue, event::EventType};
use crate::storage::{self, KV, META, StorageError};

pub struct Writer<'t, 's> {
    table: redb::Table<'t, (u64, u64), &'static [u8]>,
    st: &'s mut State,
    /// Events of this batch, in revision order.
    pub events: Vec<Event>,
    /// Sub-revision of the next change in the open request; 0 = nothing written yet.
    sub: i64,
}

impl<'t, 's> Writer<'t, 's> {
    pub fn new(txn: &'t redb::WriteTransaction, st: &'s mut State) -> Result<Self, StorageError> {
        Ok(Writer {
            table: txn.open_table(KV)?,
            st,
            events: Vec::new(),
            sub: 0,
        })
    }

    pub fn state(&self) -> &State {
        self.st
    }

    /// Starts a modifying request.
    pub fn begin(&mut self) {
        self.sub = 0;
    }

    /// Ends a modifying request; returns the store's revision after it.
    pub fn end(&mut self) -> i64 {
        if self.sub > 0 {
            self.st.rev += 1;
        }
        self.sub = 0;
        self.st.rev
    }

    /// The revision reads inside the open request see (its own writes included).
    pub fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.st.rev + 1
        } else {
            self.st.rev
        }
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision::new(self.st.rev + 1, self.sub);
        self.sub += 1;
        r
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let mut req = req.clone();
        let cur = self.read_rev();
        if req.revision > 0 && req.revision > cur {
            return Err(Error::FutureRev);
        }
        if req.revision <= 0 {
            req.revision = cur;
        }
        range_at(&self.table, &self.st.index, cur, self.st.compact_rev, &req)
    }

    /// Visits the index entry of every key live in `[key, end)` (etcd's
    /// range ends) now, inside the open request, until `f` returns false.
    pub fn visible(&self, key: &[u8], end: &[u8], mut f: impl FnMut(Visible) -> bool) {
        self.st.index.range(key, end, self.read_rev(), |_, v| f(v));
    }

    /// The live record of `key` now (inside the open request).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let Some(v) = self.st.index.get(key, self.read_rev()) else {
            return Ok(None);
        };
        Ok(read_kv(&self.table, v.modified)?.and_then(|(kv, tomb)| (!tomb).then_some(kv)))
    }

    /// Writes `key`; its event joins the batch's.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<()> {
        let at = self.read_rev();
        let rev = self.next_rev();
        let prev = self.st.index.put_seen(key, rev, at);
        let (create, version) = match prev {
            Some(p) => (p.created.main, p.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.table
            .insert(rev_key(rev), encode_record(&kv, false).as_slice())
            .map_err(StorageError::from)?;
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    /// Deletes every live key in the range; returns the deleted records.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        let at = self.read_rev();
        let mut keys = Vec::new();
        self.st.index.range(key, end, at, |k, v| {
            keys.push((k.to_vec(), v));
            true
        });
        let mut deleted = Vec::with_capacity(keys.len());
        for (k, v) in keys {
            let prev = match read_kv(&self.table, v.modified)? {
                Some((kv, false)) => kv,
                _ => {
                    return Err(Error::Storage(format!(
                        "kv revision {}/{} named by the index is missing",
                        v.modified.main, v.modified.sub
                    )));
                }
            };
            let rev = self.next_rev();
            let tomb = KeyValue {
                key: k.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.table
                .insert(rev_key(rev), encode_record(&tomb, true).as_slice())
                .map_err(StorageError::from)?;
            self.st.index.tombstone(&k, rev);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: None,
            });
            deleted.push(prev);
        }
        Ok(deleted)
    }

    /// Compacts history at `rev`: the index forgets superseded revisions at
    /// once; their records leave the `kv` table in the background, in write
    /// transactions that commit this batch first (see [`super::CompactJob`]
    /// and `storage::held`). The caller has
    /// validated `rev`.
    pub fn compact(&mut self, meta: &mut redb::Table<&str, &[u8]>, rev: i64) -> Result<()> {
        let start = std::time::Instant::now();
        let keep: HashSet<Revision> = self.st.index.compact(rev);
        crate::metrics::MVCC_INDEX_COMPACTION_PAUSE.observe_ms(start.elapsed());
        self.st.compact_rev = rev;
        storage::put_u64(meta, storage::meta::COMPACT_REV, rev as u64)?;
        self.st.compactions.push(super::CompactJob { rev, keep });
        Ok(())
    }
}

/// Opens the meta table of a write transaction.
pub fn meta_table(
    txn: &redb::WriteTransaction,
) -> Result<redb::Table<'_, &'static str, &'static [u8]>, StorageError> {
    Ok(txn.open_table(META)?)
}
