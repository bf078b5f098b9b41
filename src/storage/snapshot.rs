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

/// Writes a snapshot of the committed state to `path` for a Raft follower
/// (not synced: it is sent, then removed); returns the applied index it
/// reflects and its size.
pub fn save_for_raft(backend: &Backend, path: &Path) -> Result<(u64, u64), StorageError> {
    let txn = backend.read()?;
    let applied = {
        let meta = txn.open_table(META)?;
        super::get_u64(&meta, super::meta::APPLIED_INDEX)?.unwrap_or(0)
    };
    let file = std::fs::File::create(path).map_err(io(path))?;
    let (file, len) =
        write_to(&txn, std::io::BufWriter::with_capacity(1 << 20, file)).map_err(|e| match e {
            WriteError::Io(e) => io(path)(e),
            WriteError::Db(e) => e,
        })?;
    file.into_inner().map_err(|e| io(path)(e.into_error()))?;
    Ok((applied, len))
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

/// Replaces the state machine in `txn` with the snapshot `data`.
/// Raft log keys and this member's ID are left alone.
pub fn load(txn: &redb::WriteTransaction, data: &[u8]) -> Result<(), StorageError> {
    load_from(txn, data, data.len() as u64)
}

/// Replaces the state machine in `txn` with the snapshot of `len` bytes read
/// from `r`, a record at a time. The checksum is checked at the end: on any
/// error the caller drops `txn`, and nothing of the snapshot is kept.
/// Raft log keys and this member's ID are left alone.
pub fn load_from(txn: &redb::WriteTransaction, r: impl Read, len: u64) -> Result<(), StorageError> {
    if len < MAGIC.len() as u64 + 33 {
        return Err(bad("not an etcd-rs snapshot"));
    }
    let mut body = Body {
        r: std::io::BufReader::with_capacity(256 << 10, r),
        hash: Sha256::new(),
        left: len - 32,
    };
    let mut magic = [0u8; MAGIC.len()];
    body.fill(&mut magic)?;
    if magic != MAGIC {
        return Err(bad("not an etcd-rs snapshot"));
    }
    super::clear_state_machine(txn, SKIPPED_META)?;
    let mut kv = txn.open_table(KV)?;
    let mut meta = txn.open_table(META)?;
    let mut leases = txn.open_table(LEASES)?;
    let mut members = txn.open_table(MEMBERS)?;
    let mut alarms = txn.open_table(ALARMS)?;
    let mut users = txn.open_table(AUTH_USERS)?;
    let mut roles = txn.open_table(AUTH_ROLES)?;
    let (mut k, mut v) = (Vec::new(), Vec::new());
    loop {
        let mut t = [0u8; 1];
        body.fill(&mut t)?;
        let t = t[0];
        if t == END {
            break;
        }
        body.field(&mut k)?;
        body.field(&mut v)?;
        let u64_at = |b: &[u8], i: usize| -> Result<u64, StorageError> {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| bad("short key"))
        };
        match t {
            1 => {
                kv.insert((u64_at(&k, 0)?, u64_at(&k, 8)?), v.as_slice())?;
            }
            2 => {
                let key = std::str::from_utf8(&k).map_err(|_| bad("meta key is not UTF-8"))?;
                if !SKIPPED_META.contains(&key) {
                    meta.insert(key, v.as_slice())?;
                }
            }
            3 => {
                leases.insert(u64_at(&k, 0)? as i64, v.as_slice())?;
            }
            4 => {
                members.insert(u64_at(&k, 0)?, v.as_slice())?;
            }
            5 => {
                let a = k.get(8..12).ok_or_else(|| bad("short alarm key"))?;
                alarms.insert(
                    (u64_at(&k, 0)?, i32::from_be_bytes([a[0], a[1], a[2], a[3]])),
                    v.as_slice(),
                )?;
            }
            6 | 7 => {
                let name = std::str::from_utf8(&k).map_err(|_| bad("auth name is not UTF-8"))?;
                if t == 6 {
                    users.insert(name, v.as_slice())?;
                } else {
                    roles.insert(name, v.as_slice())?;
                }
            }
            _ => return Err(bad("unknown record type")),
        }
    }
    // Padding, then the checksum of everything before it.
    let mut pad = [0u8; 512];
    while body.left > 0 {
        let n = body.left.min(pad.len() as u64) as usize;
        body.fill(&mut pad[..n])?;
    }
    let mut sum = [0u8; 32];
    body.r.read_exact(&mut sum).map_err(|_| truncated())?;
    if body.hash.finalize().as_slice() != sum {
        return Err(bad("sha256 checksum mismatch"));
    }
    Ok(())
}

/// A snapshot whose bytes do not read as one, and why.
fn bad(detail: &str) -> StorageError {
    StorageError::Decode {
        what: "snapshot".into(),
        detail: detail.into(),
    }
}

fn truncated() -> StorageError {
    bad("truncated")
}

/// The body of a snapshot being loaded: hashed as it is read, and never
/// read past its end (so no length in it can ask for more than is there).
struct Body<R: Read> {
    r: std::io::BufReader<R>,
    hash: Sha256,
    left: u64,
}

impl<R: Read> Body<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        if buf.len() as u64 > self.left {
            return Err(truncated());
        }
        self.r.read_exact(buf).map_err(|_| truncated())?;
        self.hash.update(&*buf);
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// A length-prefixed key or value, into `out`.
    fn field(&mut self, out: &mut Vec<u8>) -> Result<(), StorageError> {
        let mut n = [0u8; 4];
        self.fill(&mut n)?;
        let n = u32::from_be_bytes(n) as u64;
        if n > self.left {
            return Err(truncated());
        }
        out.clear();
        out.resize(n as usize, 0);
        self.fill(out)
    }
}

/// Calls `f(table, key, value)` for every record of a snapshot body (after the
/// magic line, before the checksum), up to the end marker.
fn for_each_record<'a>(
    mut rest: &'a [u8],
    mut f: impl FnMut(u8, &'a [u8], &'a [u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    loop {
        let t = take(&mut rest, 1).ok_or_else(truncated)?[0];
        if t == END {
            return Ok(());
        }
        let kl = take_u32(&mut rest).ok_or_else(truncated)?;
        let k = take(&mut rest, kl).ok_or_else(truncated)?;
        let vl = take_u32(&mut rest).ok_or_else(truncated)?;
        let v = take(&mut rest, vl).ok_or_else(truncated)?;
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
        let raft_file = tmp.path().join("raft.snap");
        save_for_raft(&restored, &raft_file)?;
        let data = std::fs::read(&raft_file).map_err(|e| StorageError::Db(e.to_string()))?;
        let joiner = Backend::open(&tmp.path().join("joiner"))?;
        let txn = joiner.write()?;
        load(&txn, &data)?;
        txn.commit()?;
        assert!(!marked(&joiner)?);
        Ok(())
    }

    fn keys(b: &Backend) -> Result<Vec<(u64, u64)>, StorageError> {
        let txn = b.read()?;
        let kv = txn.open_table(KV)?;
        let mut out = Vec::new();
        for item in kv.iter()? {
            out.push(item?.0.value());
        }
        Ok(out)
    }

    #[test]
    fn a_raft_snapshot_loads_from_its_file_and_a_damaged_one_changes_nothing()
    -> Result<(), StorageError> {
        let tmp = tempfile::tempdir().map_err(|e| StorageError::Db(e.to_string()))?;
        let src = Backend::open(&tmp.path().join("src"))?;
        let txn = src.write()?;
        {
            let mut kv = txn.open_table(KV)?;
            for main in 1..=3_000u64 {
                kv.insert((main, 0), vec![main as u8; 700].as_slice())?;
            }
        }
        txn.commit()?;
        let file = tmp.path().join("raft.snap");
        let (_, len) = save_for_raft(&src, &file)?;
        let io = |e: std::io::Error| StorageError::Db(e.to_string());
        assert_eq!(std::fs::metadata(&file).map_err(io)?.len(), len);

        let dst = Backend::open(&tmp.path().join("dst"))?;
        let txn = dst.write()?;
        load_from(&txn, std::fs::File::open(&file).map_err(io)?, len)?;
        txn.commit()?;
        assert_eq!(keys(&dst)?, keys(&src)?);

        // Damaged copies: cut short, one byte changed, a length past the end.
        let bytes = std::fs::read(&file).map_err(io)?;
        let mut flipped = bytes.clone();
        flipped[len as usize / 2] ^= 0x40;
        let mut long_key = bytes.clone();
        long_key[MAGIC.len() + 1..MAGIC.len() + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        let other = Backend::open(&tmp.path().join("other"))?;
        for (what, data) in [
            ("cut short", &bytes[..bytes.len() - 100]),
            ("a byte changed", &flipped[..]),
            ("a key longer than the file", &long_key[..]),
        ] {
            let txn = other.write()?;
            assert!(
                load_from(&txn, data, data.len() as u64).is_err(),
                "{what}: loaded"
            );
            drop(txn);
            assert!(keys(&other)?.is_empty(), "{what}: records kept");
        }
        Ok(())
    }
}
