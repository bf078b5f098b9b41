//! Snapshot files. `Maintenance.Snapshot` and `etcdctl snapshot save` get
//! etcd's format (`etcd_snapshot`); this module also keeps our own earlier
//! format, which Raft snapshots between our members still use and which
//! `etcdutl` still reads (older backups).
//!
//! Our format: the magic line `etcd-rs snapshot v1\n`, then records
//! `[table u8][key len u32 BE][key][value len u32 BE][value]`, then the end marker
//! byte 0xFF, then zero bytes up to a multiple of 512, then the SHA-256 of
//! everything before it. The Raft log is not included; a member
//! restored from a snapshot starts a new log.

use std::io::{Read, Write};
use std::path::Path;

use redb::ReadableTable;
use sha2::{Digest, Sha256};

use super::{ALARMS, AUTH_ROLES, AUTH_USERS, Backend, KV, LEASES, MEMBERS, META, StorageError};

pub const MAGIC: &[u8] = b"etcd-rs snapshot v1\n";
const END: u8 = 0xFF;
/// The body (everything before the checksum) is padded to a multiple of this.
const PAD_TO: u64 = 512;

/// Meta keys that describe the Raft log and are not part of a snapshot.
const SKIPPED_META: &[&str] = &[
    super::meta::HARD_STATE,
    super::meta::CONF_STATE,
    super::meta::LOG_SNAPSHOT,
    super::meta::MEMBER_ID,
    super::meta::RESTORED,
    super::meta::LOG_IN_FILES,
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

/// Writes a snapshot of the committed state to `path` in etcd's format;
/// returns its size in bytes.
pub fn save(backend: &Backend, path: &Path) -> Result<u64, StorageError> {
    super::etcd_snapshot::save(backend, path)
}

/// Writes a snapshot of the committed state to `path` in our own format.
pub fn save_own(backend: &Backend, path: &Path) -> Result<u64, StorageError> {
    let file = std::fs::File::create(path).map_err(io(path))?;
    let txn = backend.read()?;
    let (file, len) = write_to(&txn, std::io::BufWriter::new(file)).map_err(|e| match e {
        WriteError::Io(e) => io(path)(e),
        WriteError::Db(e) => e,
    })?;
    let file = file.into_inner().map_err(|e| io(path)(e.into_error()))?;
    file.sync_all().map_err(io(path))?;
    Ok(len)
}

/// A snapshot in memory and the applied index it reflects (for Raft snapshots).
pub fn save_to_vec(backend: &Backend) -> Result<(Vec<u8>, u64), StorageError> {
    let txn = backend.read()?;
    let applied = {
        let meta = txn.open_table(META)?;
        super::get_u64(&meta, super::meta::APPLIED_INDEX)?.unwrap_or(0)
    };
    let (buf, _) = write_to(&txn, Vec::new()).map_err(|e| match e {
        WriteError::Io(e) => StorageError::Db(e.to_string()),
        WriteError::Db(e) => e,
    })?;
    Ok((buf, applied))
}

enum WriteError {
    Io(std::io::Error),
    Db(StorageError),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl<E: Into<StorageError>> From<E> for WriteError {
    fn from(e: E) -> Self {
        WriteError::Db(e.into())
    }
}

fn write_to<W: Write>(txn: &redb::ReadTransaction, out: W) -> Result<(W, u64), WriteError> {
    let mut w = Hashing {
        inner: out,
        hash: Sha256::new(),
        len: 0,
    };
    w.write_all(MAGIC)?;
    let t = txn.open_table(KV)?;
    for item in t.iter()? {
        let (k, v) = item?;
        let (a, b) = k.value();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&a.to_be_bytes());
        key[8..].copy_from_slice(&b.to_be_bytes());
        record(&mut w, 1, &key, v.value())?;
    }
    let t = txn.open_table(META)?;
    for item in t.iter()? {
        let (k, v) = item?;
        if SKIPPED_META.contains(&k.value()) {
            continue;
        }
        record(&mut w, 2, k.value().as_bytes(), v.value())?;
    }
    let t = txn.open_table(LEASES)?;
    for item in t.iter()? {
        let (k, v) = item?;
        record(&mut w, 3, &k.value().to_be_bytes(), v.value())?;
    }
    let t = txn.open_table(MEMBERS)?;
    for item in t.iter()? {
        let (k, v) = item?;
        record(&mut w, 4, &k.value().to_be_bytes(), v.value())?;
    }
    let t = txn.open_table(ALARMS)?;
    for item in t.iter()? {
        let (k, v) = item?;
        let (m, a) = k.value();
        let mut key = [0u8; 12];
        key[..8].copy_from_slice(&m.to_be_bytes());
        key[8..].copy_from_slice(&a.to_be_bytes());
        record(&mut w, 5, &key, v.value())?;
    }
    let t = txn.open_table(AUTH_USERS)?;
    for item in t.iter()? {
        let (k, v) = item?;
        record(&mut w, 6, k.value().as_bytes(), v.value())?;
    }
    let t = txn.open_table(AUTH_ROLES)?;
    for item in t.iter()? {
        let (k, v) = item?;
        record(&mut w, 7, k.value().as_bytes(), v.value())?;
    }
    w.write_all(&[END])?;
    let pad = (PAD_TO - w.len % PAD_TO) % PAD_TO;
    w.write_all(&vec![0u8; pad as usize])?;
    let digest = w.hash.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&digest)?;
    Ok((inner, w.len + 32))
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (a, b) = data.split_at(n);
    *data = b;
    Some(a)
}

fn take_u32(data: &mut &[u8]) -> Option<usize> {
    take(data, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Replaces the state machine in `txn` with the snapshot `data` (checked first).
/// Raft log keys and this member's ID are left alone.
pub fn load(txn: &redb::WriteTransaction, data: &[u8]) -> Result<(), StorageError> {
    let bad = |d: &str| StorageError::Decode {
        what: "snapshot".into(),
        detail: d.to_string(),
    };
    if data.len() < MAGIC.len() + 33 || !data.starts_with(MAGIC) {
        return Err(bad("not an etcd-rs snapshot"));
    }
    let (body, sum) = data.split_at(data.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad("sha256 checksum mismatch"));
    }
    {
        super::clear_state_machine(txn, SKIPPED_META)?;
        let mut kv = txn.open_table(KV)?;
        let mut meta = txn.open_table(META)?;
        let mut leases = txn.open_table(LEASES)?;
        let mut members = txn.open_table(MEMBERS)?;
        let mut alarms = txn.open_table(ALARMS)?;
        let mut users = txn.open_table(AUTH_USERS)?;
        let mut roles = txn.open_table(AUTH_ROLES)?;
        for_each_record(&body[MAGIC.len()..], |t, k, v| {
            let u64_at = |b: &[u8], i: usize| -> Result<u64, StorageError> {
                b.get(i..i + 8)
                    .and_then(|s| s.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| bad("short key"))
            };
            match t {
                1 => {
                    kv.insert((u64_at(k, 0)?, u64_at(k, 8)?), v)?;
                }
                2 => {
                    let key = std::str::from_utf8(k).map_err(|_| bad("meta key is not UTF-8"))?;
                    if !SKIPPED_META.contains(&key) {
                        meta.insert(key, v)?;
                    }
                }
                3 => {
                    leases.insert(u64_at(k, 0)? as i64, v)?;
                }
                4 => {
                    members.insert(u64_at(k, 0)?, v)?;
                }
                5 => {
                    let a = k.get(8..12).ok_or_else(|| bad("short alarm key"))?;
                    alarms.insert(
                        (u64_at(k, 0)?, i32::from_be_bytes([a[0], a[1], a[2], a[3]])),
                        v,
                    )?;
                }
                6 | 7 => {
                    let name = std::str::from_utf8(k).map_err(|_| bad("auth name is not UTF-8"))?;
                    if t == 6 {
                        users.insert(name, v)?;
                    } else {
                        roles.insert(name, v)?;
                    }
                }
                _ => return Err(bad("unknown record type")),
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Calls `f(table, key, value)` for every record of a snapshot body (after the
/// magic line, before the checksum), up to the end marker.
fn for_each_record<'a>(
    mut rest: &'a [u8],
    mut f: impl FnMut(u8, &'a [u8], &'a [u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let bad = || StorageError::Decode {
        what: "snapshot".into(),
        detail: "truncated".into(),
    };
    loop {
        let t = take(&mut rest, 1).ok_or_else(bad)?[0];
        if t == END {
            return Ok(());
        }
        let kl = take_u32(&mut rest).ok_or_else(bad)?;
        let k = take(&mut rest, kl).ok_or_else(bad)?;
        let vl = take_u32(&mut rest).ok_or_else(bad)?;
        let v = take(&mut rest, vl).ok_or_else(bad)?;
        f(t, k, v)?;
    }
}

/// Checks a snapshot file's structure and checksum.
pub fn verify(path: &Path) -> Result<(), StorageError> {
    check(path, &read_file(path)?)
}

fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    Ok(data)
}

/// Checks the structure and checksum of `data`, the contents of `path`.
pub(crate) fn check(path: &Path, data: &[u8]) -> Result<(), StorageError> {
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
    if body.iter().rev().find(|b| **b != 0) != Some(&END) {
        return Err(bad("missing end marker"));
    }
    Ok(())
}

/// Facts about a snapshot file, as `etcdutl snapshot status` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C of the key-value records.
    pub hash: u32,
    /// The newest revision in the snapshot.
    pub revision: u64,
    /// Key-value records (every revision of every key).
    pub total_keys: u64,
    pub total_size: u64,
}

/// Checks `path` (etcd's format or ours) and summarises it.
pub fn status(path: &Path) -> Result<Status, StorageError> {
    if !is_own_format(path)? {
        let st = super::etcd_snapshot::status(path)?;
        return Ok(Status {
            hash: st.hash,
            revision: st.revision,
            total_keys: st.total_keys,
            total_size: st.total_size,
        });
    }
    summarise(path, &read_file(path)?)
}

/// Whether `path` starts with our own format's magic line.
fn is_own_format(path: &Path) -> Result<bool, StorageError> {
    let mut head = vec![0u8; MAGIC.len()];
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut got = 0;
    while got < head.len() {
        let n = f.read(&mut head[got..]).map_err(io(path))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(head == MAGIC)
}

/// Checks `data`, the contents of `path`, and summarises it.
pub(crate) fn summarise(path: &Path, data: &[u8]) -> Result<Status, StorageError> {
    check(path, data)?;
    let bad = |d: &str| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail: d.to_string(),
    };
    let body = &data[MAGIC.len()..data.len() - 32];
    let mut st = Status {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size: data.len() as u64,
    };
    for_each_record(body, |t, k, v| {
        if t == 1 {
            st.total_keys += 1;
            st.hash = crc32c::crc32c_append(st.hash, k);
            st.hash = crc32c::crc32c_append(st.hash, v);
            if let Some(main) = k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            {
                st.revision = st.revision.max(main);
            }
        }
        Ok(())
    })
    .map_err(|_| bad("truncated"))?;
    Ok(st)
}

/// Creates a data directory holding the snapshot's state, ready for a member to
/// start on it as the first member of a new cluster (`--initial-cluster-state
/// new`): membership and the Raft log are not carried over, the keys, leases,
/// alarms and auth are.
pub fn restore(path: &Path, data_dir: &Path) -> Result<(), StorageError> {
    restore_with(path, data_dir, Default::default())
}

/// [`restore`] with etcd's options; a file in our own format takes none
/// but the hash check (it always has its checksum, and it is verified).
pub fn restore_with(
    path: &Path,
    data_dir: &Path,
    opts: super::etcd_snapshot::RestoreOptions,
) -> Result<(), StorageError> {
    if !is_own_format(path)? {
        super::etcd_snapshot::restore(path, data_dir, opts)?;
        return Ok(());
    }
    let data = read_file(path)?;
    check(path, &data)?;
    let nonempty = std::fs::read_dir(data_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if nonempty {
        return Err(StorageError::Open {
            path: data_dir.to_path_buf(),
            detail: "data-dir exists and is not empty".into(),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(data_dir))?;
    }
    let backend = Backend::open(data_dir)?;
    let mut txn = backend.write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    load(&txn, &data)?;
    {
        let mut members = txn.open_table(MEMBERS)?;
        members.retain(|_, _| false)?;
        let mut meta = txn.open_table(META)?;
        meta.remove(super::meta::APPLIED_INDEX)?;
        meta.remove(super::meta::CONSISTENT_TERM)?;
        meta.remove(super::meta::CLUSTER_ID)?;
        super::put_u64(&mut meta, super::meta::RESTORED, 1)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(b: &Backend) -> Result<bool, StorageError> {
        let txn = b.read()?;
        let meta = txn.open_table(META)?;
        Ok(super::super::get_u64(&meta, super::super::meta::RESTORED)?.is_some())
    }

    #[test]
    fn restore_marks_the_data_dir_and_snapshots_leave_the_mark_out() -> Result<(), StorageError> {
        let tmp = tempfile::tempdir().map_err(|e| StorageError::Db(e.to_string()))?;
        let src = Backend::open(&tmp.path().join("src"))?;
        let file = tmp.path().join("snap.db");
        save(&src, &file)?;
        assert!(!marked(&src)?);

        let restored_dir = tmp.path().join("restored");
        restore(&file, &restored_dir)?;
        let restored = Backend::open(&restored_dir)?;
        assert!(marked(&restored)?);

        // What a member joining the restored cluster installs carries no mark.
        let (data, _) = save_to_vec(&restored)?;
        let joiner = Backend::open(&tmp.path().join("joiner"))?;
        let txn = joiner.write()?;
        load(&txn, &data)?;
        txn.commit()?;
        assert!(!marked(&joiner)?);
        Ok(())
    }
}
