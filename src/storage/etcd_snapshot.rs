//! Snapshot files in etcd's format: an etcd backend (a bbolt file, see
//! `etcd_schema`) followed by the 32-byte SHA-256 of the database, as
//! `etcdctl snapshot save` writes them and `etcdctl snapshot restore` reads
//! them. A bare `member/snap/db` copied from a member has no checksum.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::etcd_schema::{self, ImportedMeta};
use super::{Backend, MEMBERS, META, StorageError, meta, put_u64};
use crate::bbolt::Reader;

fn io(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn corrupt(path: &Path, detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Writes the committed state to `path` as etcd writes a snapshot (one
/// consistent read transaction; the database, then its SHA-256); returns
/// the file's size.
pub fn save(backend: &Backend, path: &Path) -> Result<u64, StorageError> {
    let r = write_snapshot(backend, path);
    if r.is_err() {
        // No partial file is left behind.
        let _ = std::fs::remove_file(path);
    }
    r
}

fn write_snapshot(backend: &Backend, path: &Path) -> Result<u64, StorageError> {
    {
        let txn = backend.read()?;
        etcd_schema::export(&txn, path)?;
    }
    let mut hash = Sha256::new();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        len += n as u64;
    }
    file.write_all(&hash.finalize()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(len + 32)
}

/// Whether `path` starts like a bbolt file.
pub fn is_bbolt(path: &Path) -> Result<bool, StorageError> {
    let mut head = [0u8; 32];
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut got = 0;
    while got < head.len() {
        let n = f.read(&mut head[got..]).map_err(io(path))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Reader::looks_like_bbolt(&head[..got]))
}

/// Opens an etcd snapshot file: checks its SHA-256 (a file whose size is
/// not 32 more than a multiple of 512 has none, as etcd tells them apart;
/// it is accepted only with `skip_hash_check`), then every page of the
/// database as `bbolt check` does.
pub fn open(path: &Path, skip_hash_check: bool) -> Result<Reader, StorageError> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    let has_hash = len % 512 == 32;
    let db_len = if has_hash { len - 32 } else { len };
    if !is_bbolt(path)? {
        return Err(corrupt(path, "not an etcd snapshot (invalid database)"));
    }
    if has_hash && !skip_hash_check {
        let mut f = std::fs::File::open(path).map_err(io(path))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = db_len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            f.read_exact(&mut buf[..want]).map_err(io(path))?;
            hash.update(&buf[..want]);
            left -= want as u64;
        }
        let mut sum = [0u8; 32];
        f.read_exact(&mut sum).map_err(io(path))?;
        let got = hash.finalize();
        if got.as_slice() != sum {
            return Err(corrupt(
                path,
                format!(
                    "sha256 checksum mismatch: the file says {}, its database hashes to {}",
                    hex(&sum),
                    hex(&got)
                ),
            ));
        }
    } else if !has_hash && !skip_hash_check {
        return Err(corrupt(
            path,
            "snapshot missing hash but --skip-hash-check=false",
        ));
    }
    let reader = Reader::open_prefix(path, db_len)?;
    reader.check()?;
    Ok(reader)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Facts about a snapshot, as `etcdctl snapshot status` computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C of every bucket's name, keys and values, in order.
    pub hash: u32,
    /// The newest revision in the `key` bucket.
    pub revision: u64,
    /// Entries in all buckets.
    pub total_keys: u64,
    /// The database's size (pages in use times the page size).
    pub total_size: u64,
}

/// `snapshot status` of an etcd snapshot (checked first).
pub fn status(path: &Path) -> Result<Status, StorageError> {
    // As etcdctl: a bare database (no checksum) is summarised too.
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    let reader = open(path, len % 512 != 32)?;
    status_of(&reader)
}

/// `snapshot status` of an open database.
pub fn status_of(reader: &Reader) -> Result<Status, StorageError> {
    let mut st = Status {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size: reader.size(),
    };
    for name in reader.bucket_names()? {
        let Some(bucket) = reader.bucket(&name)? else {
            continue;
        };
        st.hash = crc32c::crc32c_append(st.hash, &name);
        let is_key = name == etcd_schema::KEY;
        reader.for_each(&bucket, |e| {
            st.hash = crc32c::crc32c_append(st.hash, e.key);
            if !e.is_bucket {
                st.hash = crc32c::crc32c_append(st.hash, e.value);
            }
            if is_key && let Some((main, _, _)) = etcd_schema::parse_rev_key(e.key) {
                st.revision = main;
            }
            st.total_keys += 1;
            Ok(())
        })?;
    }
    Ok(st)
}

/// etcd's `snapshot restore` flags beyond the file and the directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    pub skip_hash_check: bool,
    /// Raise the newest revision by this much (`--bump-revision`).
    pub bump_revision: u64,
    /// Make the raised revision the compaction revision (`--mark-compacted`).
    pub mark_compacted: bool,
}

/// Makes `data_dir` (which must not exist or be empty) a data directory for
/// the first member of a new cluster holding the snapshot's keys, leases,
/// alarms and auth. Nothing is left in `data_dir` when this fails.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    opts: RestoreOptions,
) -> Result<ImportedMeta, StorageError> {
    if opts.mark_compacted && opts.bump_revision == 0 {
        return Err(StorageError::Open {
            path: path.to_path_buf(),
            detail: "--mark-compacted requires --bump-revision".into(),
        });
    }
    let nonempty = std::fs::read_dir(data_dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if nonempty {
        return Err(StorageError::Open {
            path: data_dir.to_path_buf(),
            detail: "data-dir exists and is not empty".into(),
        });
    }
    let reader = open(path, opts.skip_hash_check)?;
    let existed = data_dir.exists();
    let result = restore_into(&reader, data_dir, opts);
    if result.is_err() {
        // Leave nothing behind: the directory as it was (absent or empty).
        if existed {
            if let Ok(entries) = std::fs::read_dir(data_dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
    result
}

fn restore_into(
    reader: &Reader,
    data_dir: &Path,
    opts: RestoreOptions,
) -> Result<ImportedMeta, StorageError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(data_dir))?;
    }
    let backend = Backend::open(data_dir)?;
    let imported = etcd_schema::import_reader(reader, &backend)?;
    let mut txn = backend.write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    {
        let mut members = txn.open_table(MEMBERS)?;
        members.retain(|_, _| false)?;
        let mut m = txn.open_table(META)?;
        m.remove(meta::APPLIED_INDEX)?;
        m.remove(meta::CONSISTENT_TERM)?;
        m.remove(meta::CLUSTER_ID)?;
        put_u64(&mut m, meta::RESTORED, 1)?;
        if opts.bump_revision > 0 {
            let rev = imported.revision.max(imported.compact_revision) + opts.bump_revision;
            put_u64(&mut m, meta::CURRENT_REV, rev)?;
            if opts.mark_compacted {
                put_u64(&mut m, meta::COMPACT_REV, rev)?;
            }
        }
    }
    txn.commit()?;
    Ok(imported)
}
