//! Raft snapshots kept in files, never whole in memory.
//!
//! A snapshot for a follower is written to a file by the leader
//! ([`super::snapshot`]), sent from that file in chunks by the transport,
//! written to a file again by the follower as the chunks arrive, and loaded
//! into the database from there. What raft-rs carries in `Snapshot.data` is
//! then only a marker that names the file:
//!
//! - [`local`]: a file of this process. The marker holds a token drawn at
//!   start, so a marker a peer sent names nothing: the transport refuses any
//!   snapshot from a peer whose data begins like one.
//! - [`streamed`]: on the wire, "the body follows as chunks, this many bytes".
//!
//! The files live beside the database (`member/snap`): `raft-out-*.snap`
//! made for followers, `raft-in-*.snap` received. A file is removed once it
//! is sent or loaded; those a crash or a dropped message left behind are
//! removed at start and when they are more than [`STALE`] old.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const LOCAL: &[u8] = b"etcd-rs local snapshot file\n";
const STREAMED: &[u8] = b"etcd-rs streamed snapshot\n";
const TOKEN_LEN: usize = 16;

/// Age after which a leftover snapshot file is removed.
pub const STALE: Duration = Duration::from_secs(600);

fn token() -> &'static [u8; TOKEN_LEN] {
    static TOKEN: OnceLock<[u8; TOKEN_LEN]> = OnceLock::new();
    TOKEN.get_or_init(rand::random)
}

/// The `Snapshot.data` that names `path`, a file of this process.
pub fn local(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = path.as_os_str().as_bytes();
    let mut d = Vec::with_capacity(LOCAL.len() + TOKEN_LEN + p.len());
    d.extend_from_slice(LOCAL);
    d.extend_from_slice(token());
    d.extend_from_slice(p);
    d
}

/// The file `data` names, when it is a marker made by this process.
pub fn local_path(data: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let rest = data.strip_prefix(LOCAL)?;
    let path = rest.strip_prefix(token().as_slice())?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

/// Whether `data` looks like a file marker, made here or not: a peer may
/// never send one.
pub fn looks_local(data: &[u8]) -> bool {
    data.starts_with(LOCAL)
}

/// The `Snapshot.data` sent on the wire ahead of a body of `len` bytes.
pub fn streamed(len: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(STREAMED.len() + 8);
    d.extend_from_slice(STREAMED);
    d.extend_from_slice(&len.to_be_bytes());
    d
}

/// The length of the body that follows, when `data` announces one.
pub fn streamed_len(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(STREAMED)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// Removes the file `data` names, when it is a marker made by this process
/// (a snapshot sent, loaded, or dropped unsent).
pub fn discard(data: &[u8]) {
    if let Some(p) = local_path(data) {
        let _ = std::fs::remove_file(p);
    }
}

/// A new file name in `dir` for a snapshot going out (`out`) or coming in.
pub fn new_path(dir: &Path, out: bool) -> PathBuf {
    let kind = if out { "out" } else { "in" };
    dir.join(format!("raft-{kind}-{:016x}.snap", rand::random::<u64>()))
}

/// Removes the snapshot files in `dir` older than `age` (all with zero).
pub fn remove_stale(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("raft-") && name.ends_with(".snap")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|a| a >= age);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_only_files_of_this_process() {
        let p = Path::new("/var/lib/etcd/member/snap/raft-in-1.snap");
        let d = local(p);
        assert_eq!(local_path(&d).as_deref(), Some(p));
        assert!(looks_local(&d));
        // Another process's token (or a peer's forgery) names nothing.
        let mut forged = d.clone();
        forged[LOCAL.len()] ^= 1;
        assert_eq!(local_path(&forged), None);
        assert!(looks_local(&forged));
        assert_eq!(local_path(b"etcd-rs snapshot v1\n..."), None);
        assert_eq!(streamed_len(&streamed(1 << 40)), Some(1 << 40));
        assert_eq!(streamed_len(&streamed(7)[..STREAMED.len() + 7]), None);
        assert_eq!(streamed_len(&d), None);
    }

    #[test]
    fn stale_files_go_and_others_stay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let snap = new_path(dir.path(), true);
        std::fs::write(&snap, b"x").expect("write");
        let db = dir.path().join("db.redb");
        std::fs::write(&db, b"x").expect("write");
        remove_stale(dir.path(), STALE);
        assert!(snap.exists(), "a fresh file removed");
        remove_stale(dir.path(), Duration::ZERO);
        assert!(!snap.exists(), "a stale file kept");
        assert!(db.exists(), "the database removed");
    }
}
