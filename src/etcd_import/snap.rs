//! etcd's `member/snap/*.snap` files (`%016x-%016x.snap`, term and index):
//! a `snappb.snapshot{crc, data}` whose data is a `raftpb.Snapshot`. Only its
//! metadata is imported (index, term, membership); its data, etcd's v2
//! store, has no counterpart here.

use std::path::{Path, PathBuf};

use prost::Message;

use super::pb::{ConfState, RaftSnapshot, SnapFile, WalSnapshot};

/// A snapshot's place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapInfo {
    pub path: PathBuf,
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// Reads one `.snap` file as etcd's `snap.Read` does.
pub fn read(path: &Path) -> Result<SnapInfo, String> {
    let b = std::fs::read(path).map_err(|e| e.to_string())?;
    decode(&b).map(|(index, term, conf_state)| SnapInfo {
        path: path.to_path_buf(),
        index,
        term,
        conf_state,
    })
}

/// A `.snap` file's bytes: (index, term, conf state).
pub fn decode(b: &[u8]) -> Result<(u64, u64, ConfState), String> {
    if b.is_empty() {
        return Err("empty snapshot file".into());
    }
    let f = SnapFile::decode(b).map_err(|e| format!("does not decode: {e}"))?;
    if f.data.is_empty() || f.crc == 0 {
        return Err("empty snapshot data".into());
    }
    let crc = crc32c::crc32c(&f.data);
    if crc != f.crc {
        return Err(format!(
            "CRC mismatch: file says {:#010x}, its data gives {crc:#010x}",
            f.crc
        ));
    }
    let s = RaftSnapshot::decode(&f.data[..]).map_err(|e| format!("does not decode: {e}"))?;
    let m = s.metadata.unwrap_or_default();
    Ok((m.index, m.term, m.conf_state.unwrap_or_default()))
}

/// The newest `.snap` file that the log records (etcd's
/// `LoadNewestAvailable`); a file that cannot be read is skipped with a
/// warning, as etcd skips it (etcd also renames it `.broken`; here etcd's
/// files are never touched). None when there is none.
pub fn newest_matching(dir: &Path, wal_snaps: &[WalSnapshot]) -> Result<Option<SnapInfo>, String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n.ends_with(".snap"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    names.sort();
    for name in names.iter().rev() {
        let path = dir.join(name);
        match read(&path) {
            Ok(s) => {
                if wal_snaps
                    .iter()
                    .any(|w| w.index == s.index && w.term == s.term)
                {
                    return Ok(Some(s));
                }
            }
            Err(e) => crate::warn!(
                "failed to read a snap file",
                path = path.display().to_string(),
                error = e
            ),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_import::pb::SnapshotMetadata;

    fn file(index: u64, term: u64, voters: Vec<u64>) -> Vec<u8> {
        let data = RaftSnapshot {
            data: b"{}".to_vec(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState {
                    voters,
                    ..Default::default()
                }),
                index,
                term,
            }),
        }
        .encode_to_vec();
        SnapFile {
            crc: crc32c::crc32c(&data),
            data,
        }
        .encode_to_vec()
    }

    #[test]
    fn newest_recorded_snapshot_wins() {
        let d = tempfile::tempdir().expect("dir");
        std::fs::write(
            d.path().join("0000000000000002-0000000000000010.snap"),
            file(16, 2, vec![1]),
        )
        .expect("write");
        let mut broken = file(32, 2, vec![1]);
        let n = broken.len();
        broken[n - 1] ^= 1;
        std::fs::write(
            d.path().join("0000000000000002-0000000000000020.snap"),
            broken,
        )
        .expect("write");
        let walsnaps = [
            WalSnapshot {
                index: 16,
                term: 2,
                conf_state: None,
            },
            WalSnapshot {
                index: 32,
                term: 2,
                conf_state: None,
            },
        ];
        let s = newest_matching(d.path(), &walsnaps)
            .expect("read")
            .expect("one");
        assert_eq!((s.index, s.term), (16, 2));
        assert_eq!(s.conf_state.voters, vec![1]);
        // Not recorded in the log: not used.
        assert!(
            newest_matching(d.path(), &walsnaps[1..])
                .expect("read")
                .is_none()
        );
        assert!(decode(&[]).is_err());
    }
}
