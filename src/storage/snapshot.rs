//! Snapshot files: a consistent, self-checking copy of the state machine.
//!
//! Layout: the magic line `etcd-rs snapshot v1\n`, then records
//! `[table u8][key len u32 BE][key][value len u32 BE][value]`, then the end marker
//! byte 0xFF, then the SHA-256 of everything before it (as etcd's snapshots end
//! with a SHA-256 of their contents). The Raft log is not included; a member
//! restored from a snapshot starts a new log.

use std::io::{Read, Write};
use std::path::Path;

use redb::ReadableTable;
use sha2::{Digest, Sha256};

use super::{ALARMS, Backend, KV, LEASES, MEMBERS, META, StorageError};

pub const MAGIC: &[u8] = b"etcd-rs snapshot v1\n";
const END: u8 = 0xFF;

/// Meta keys that describe the Raft log and are not part of a snapshot.
const SKIPPED_META: &[&str] = &[
    super::meta::HARD_STATE,
    super::meta::CONF_STATE,
    super::meta::LOG_SNAPSHOT,
];

struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn record<W: Write>(w: &mut W, table: u8, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    w.write_all(&[table])?;
    w.write_all(&(k.len() as u32).to_be_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_be_bytes())?;
    w.write_all(v)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Writes a snapshot of the committed state to `path`; returns its size in bytes.
pub fn save(backend: &Backend, path: &Path) -> Result<u64, StorageError> {
    let file = std::fs::File::create(path).map_err(io(path))?;
    let mut w = Hashing {
        inner: std::io::BufWriter::new(file),
        hash: Sha256::new(),
        len: 0,
    };
    let txn = backend.read()?;
    w.write_all(MAGIC).map_err(io(path))?;
    {
        let t = txn.open_table(KV)?;
        for item in t.iter()? {
            let (k, v) = item?;
            let (a, b) = k.value();
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&a.to_be_bytes());
            key[8..].copy_from_slice(&b.to_be_bytes());
            record(&mut w, 1, &key, v.value()).map_err(io(path))?;
        }
        let t = txn.open_table(META)?;
        for item in t.iter()? {
            let (k, v) = item?;
            if SKIPPED_META.contains(&k.value()) {
                continue;
            }
            record(&mut w, 2, k.value().as_bytes(), v.value()).map_err(io(path))?;
        }
        let t = txn.open_table(LEASES)?;
        for item in t.iter()? {
            let (k, v) = item?;
            record(&mut w, 3, &k.value().to_be_bytes(), v.value()).map_err(io(path))?;
        }
        let t = txn.open_table(MEMBERS)?;
        for item in t.iter()? {
            let (k, v) = item?;
            record(&mut w, 4, &k.value().to_be_bytes(), v.value()).map_err(io(path))?;
        }
        let t = txn.open_table(ALARMS)?;
        for item in t.iter()? {
            let (k, _) = item?;
            let (m, a) = k.value();
            let mut key = [0u8; 12];
            key[..8].copy_from_slice(&m.to_be_bytes());
            key[8..].copy_from_slice(&a.to_be_bytes());
            record(&mut w, 5, &key, &[]).map_err(io(path))?;
        }
    }
    w.write_all(&[END]).map_err(io(path))?;
    let digest = w.hash.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&digest).map_err(io(path))?;
    let file = inner.into_inner().map_err(|e| io(path)(e.into_error()))?;
    file.sync_all().map_err(io(path))?;
    Ok(w.len + 32)
}

/// Checks a snapshot file's structure and checksum.
pub fn verify(path: &Path) -> Result<(), StorageError> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    let bad = |detail: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    if data.len() < MAGIC.len() + 33 || !data.starts_with(MAGIC) {
        return Err(bad("not an etcd-rs snapshot"));
    }
    let (body, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad("sha256 checksum mismatch"));
    }
    if body.last() != Some(&END) {
        return Err(bad("missing end marker"));
    }
    Ok(())
}
