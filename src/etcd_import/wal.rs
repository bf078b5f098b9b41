//! etcd's write-ahead log, read as etcd reads it on restart (`wal.ReadAll`).
//!
//! `member/wal` holds files named `%016x-%016x.wal` (sequence number, index of
//! the first entry the file may hold). Each record is an 8-byte little-endian
//! length word (the low 56 bits the record's size; when the top bit is set,
//! its low three bits the zero padding after it, which keeps records 8-byte
//! aligned) followed by an encoded `walpb.Record{type, crc, data}`. The CRC is
//! a CRC-32C (Castagnoli) chain over the data of every record, across files;
//! each file starts with a `crc` record carrying the chain's value so far.
//!
//! As etcd: a zero length word ends a file (preallocated space); a last file
//! that ends inside a record, or whose final record is torn (a 512-byte sector
//! of it all zeros) is cut before that record, which was never acknowledged;
//! any other damage (a CRC mismatch, a record that does not decode, a file
//! missing from the sequence, a gap in the entries) is an error naming the
//! file and the offset. Nothing is ever written to etcd's files.

use std::path::{Path, PathBuf};

use prost::Message;

use super::pb::{self, HardState, Metadata, Record, WalSnapshot};

pub const METADATA: i64 = 1;
pub const ENTRY: i64 = 2;
pub const STATE: i64 = 3;
pub const CRC: i64 = 4;
pub const SNAPSHOT: i64 = 5;

/// etcd's bound on one record (`maxWALEntrySizeLimit`).
pub const MAX_RECORD_BYTES: u64 = 10 * 1024 * 1024;
const SECTOR: u64 = 512;
const FRAME: u64 = 8;

/// Why the log cannot be read: the file, the offset of the record (when one
/// is concerned) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct WalError {
    pub path: PathBuf,
    pub offset: Option<u64>,
    pub detail: String,
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{} at offset {o}: {}", self.path.display(), self.detail),
            None => write!(f, "{}: {}", self.path.display(), self.detail),
        }
    }
}

/// A damaged record: where and why (the decoder's view, before a file name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub offset: u64,
    pub detail: String,
}

/// How one file's records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEnd {
    /// The end of the file, or a zero length word (preallocated space), at
    /// this offset.
    End(u64),
    /// The last file's final record was torn or partial: the file is cut at
    /// this offset, as etcd repairs it.
    Torn(u64),
}

impl FileEnd {
    pub fn offset(self) -> u64 {
        match self {
            FileEnd::End(o) | FileEnd::Torn(o) => o,
        }
    }
}

/// Whether a record's bytes (starting at `file_off` in the file) hold a
/// 512-byte sector, or the part of one they cover, made only of zeros: a
/// write the crash cut short.
fn torn(data: &[u8], file_off: u64) -> bool {
    let mut off = file_off;
    let mut rest = data;
    while !rest.is_empty() {
        let n = ((SECTOR - off % SECTOR) as usize).min(rest.len());
        let (chunk, more) = rest.split_at(n);
        if chunk.iter().all(|b| *b == 0) {
            return true;
        }
        off += n as u64;
        rest = more;
    }
    false
}

/// Decodes the records of one file's bytes, calling `visit` with each
/// record's offset and the record, and carrying the CRC chain in `crc`.
/// `last` says whether this is the log's last file, the only one whose end
/// may be torn. `crc` records are checked against the chain here (as
/// `ReadAll` does) and also handed to `visit`.
pub fn decode_file(
    bytes: &[u8],
    last: bool,
    crc: &mut u32,
    mut visit: impl FnMut(u64, Record) -> Result<(), String>,
) -> Result<FileEnd, RecordError> {
    let len = bytes.len() as u64;
    let mut off = 0u64;
    loop {
        let at = |detail: String| RecordError {
            offset: off,
            detail,
        };
        if off == len {
            return Ok(FileEnd::End(off));
        }
        if len - off < FRAME {
            if last {
                return Ok(FileEnd::Torn(off));
            }
            return Err(at("unexpected end of file in a record's length".into()));
        }
        let word = u64::from_le_bytes(
            bytes[off as usize..(off + FRAME) as usize]
                .try_into()
                .map_err(|_| at("length word".into()))?,
        );
        if word == 0 {
            return Ok(FileEnd::End(off));
        }
        let rec_bytes = word & !(0xffu64 << 56);
        let pad = if word >> 63 == 1 {
            (word >> 56) & 0x7
        } else {
            0
        };
        if rec_bytes >= MAX_RECORD_BYTES - pad {
            return Err(at(format!(
                "record of {rec_bytes} bytes exceeds the limit of {MAX_RECORD_BYTES} bytes"
            )));
        }
        let start = off + FRAME;
        let need = rec_bytes + pad;
        if len - start < need {
            if last {
                return Ok(FileEnd::Torn(off));
            }
            return Err(at(format!(
                "unexpected end of file: a record of {rec_bytes} bytes, {} left",
                len - start
            )));
        }
        let data = &bytes[start as usize..(start + need) as usize];
        let rec = match Record::decode(&data[..rec_bytes as usize]) {
            Ok(r) => r,
            Err(e) => {
                if last && torn(data, start) {
                    return Ok(FileEnd::Torn(off));
                }
                return Err(at(format!("record does not decode: {e}")));
            }
        };
        if rec.r#type == CRC {
            // The chain's value at the start of a file; zero in a fresh decoder.
            if *crc != 0 && rec.crc != *crc {
                return Err(at(format!(
                    "CRC mismatch: the file continues a chain at {:#010x}, the log before it ends at {:#010x}",
                    rec.crc, *crc
                )));
            }
            *crc = rec.crc;
        } else {
            let next = crc32c::crc32c_append(*crc, &rec.data);
            if rec.crc != next {
                if last && torn(data, start) {
                    return Ok(FileEnd::Torn(off));
                }
                return Err(at(format!(
                    "CRC mismatch: record says {:#010x}, its data gives {next:#010x}",
                    rec.crc
                )));
            }
            *crc = next;
        }
        visit(off, rec).map_err(at)?;
        off = start + need;
    }
}

/// One WAL file's name: sequence number and first index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub seq: u64,
    pub index: u64,
    pub path: PathBuf,
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// The WAL files of `dir` in name order (other files are ignored, as etcd
/// ignores them).
pub fn list(dir: &Path) -> Result<Vec<WalName>, WalError> {
    let err = |e: std::io::Error| WalError {
        path: dir.to_path_buf(),
        offset: None,
        detail: e.to_string(),
    };
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir).map_err(err)? {
        let item = item.map_err(err)?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((seq, index)) = parse_name(name) {
            names.push((name.to_string(), seq, index));
        }
    }
    names.sort();
    Ok(names
        .into_iter()
        .map(|(n, seq, index)| WalName {
            seq,
            index,
            path: dir.join(n),
        })
        .collect())
}

/// Reads `files` in order as one log, calling `visit` with each file, record
/// offset and record. Returns where the last file was cut when its tail was
/// torn.
fn walk(
    files: &[WalName],
    mut visit: impl FnMut(&Path, u64, Record) -> Result<(), String>,
) -> Result<Option<(PathBuf, u64)>, WalError> {
    let mut crc = 0u32;
    let mut cut = None;
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(&f.path).map_err(|e| WalError {
            path: f.path.clone(),
            offset: None,
            detail: e.to_string(),
        })?;
        let last = i + 1 == files.len();
        let end = decode_file(&bytes, last, &mut crc, |off, rec| visit(&f.path, off, rec))
            .map_err(|e| WalError {
                path: f.path.clone(),
                offset: Some(e.offset),
                detail: e.detail,
            })?;
        if let FileEnd::Torn(off) = end {
            cut = Some((f.path.clone(), off));
        }
    }
    Ok(cut)
}

/// The snapshots the log records at or below its commit index (etcd's
/// `ValidSnapshotEntries`): the `.snap` files a restart may start from.
pub fn valid_snapshots(dir: &Path) -> Result<Vec<WalSnapshot>, WalError> {
    let files = list(dir)?;
    let mut snaps = Vec::new();
    let mut commit = 0;
    walk(&files, |_, _, rec| {
        match rec.r#type {
            SNAPSHOT => snaps.push(
                WalSnapshot::decode(&rec.data[..])
                    .map_err(|e| format!("snapshot record does not decode: {e}"))?,
            ),
            STATE => {
                commit = HardState::decode(&rec.data[..])
                    .map_err(|e| format!("state record does not decode: {e}"))?
                    .commit
            }
            _ => {}
        }
        Ok(())
    })?;
    snaps.retain(|s| s.index <= commit);
    Ok(snaps)
}

/// What the log holds after a snapshot.
#[derive(Debug, Clone, Default)]
pub struct WalContents {
    pub metadata: Metadata,
    pub hard_state: HardState,
    /// The entries after the snapshot's index, in index order, as the last
    /// leader left them (an overwritten tail is replaced).
    pub entries: Vec<pb::Entry>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Where a torn tail was cut (file, offset).
    pub cut: Option<(PathBuf, u64)>,
}

/// Reads the log from the file holding the snapshot `start` (index 0 when
/// there is none) to its end, as etcd's `ReadAll`.
pub fn read_all(dir: &Path, start: &WalSnapshot) -> Result<WalContents, WalError> {
    let whole = |detail: String| WalError {
        path: dir.to_path_buf(),
        offset: None,
        detail,
    };
    let names = list(dir)?;
    if names.is_empty() {
        return Err(whole("no WAL files".into()));
    }
    let Some(first) = names.iter().rposition(|n| start.index >= n.index) else {
        return Err(whole(format!(
            "no WAL file holds the snapshot's index {} (the oldest begins at {})",
            start.index, names[0].index
        )));
    };
    let files = &names[first..];
    for pair in files.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(WalError {
                path: pair[1].path.clone(),
                offset: None,
                detail: format!(
                    "WAL files are not in sequence: {} follows {}",
                    pair[1].seq, pair[0].seq
                ),
            });
        }
    }
    let mut out = WalContents {
        files: files.iter().map(|f| f.path.clone()).collect(),
        ..Default::default()
    };
    let mut metadata: Option<Vec<u8>> = None;
    let mut matched = false;
    let cut = walk(files, |_, _, rec| {
        match rec.r#type {
            ENTRY => {
                let e = pb::Entry::decode(&rec.data[..])
                    .map_err(|e| format!("entry record does not decode: {e}"))?;
                if e.index > start.index {
                    let up = e.index - start.index - 1;
                    if up > out.entries.len() as u64 {
                        return Err(format!(
                            "gap in the log: entry {} follows entry {}",
                            e.index,
                            start.index + out.entries.len() as u64
                        ));
                    }
                    out.entries.truncate(up as usize);
                    out.entries.push(e);
                }
            }
            STATE => {
                out.hard_state = HardState::decode(&rec.data[..])
                    .map_err(|e| format!("state record does not decode: {e}"))?;
            }
            METADATA => {
                if let Some(m) = &metadata
                    && *m != rec.data
                {
                    return Err("metadata record conflicts with an earlier one".into());
                }
                metadata = Some(rec.data);
            }
            CRC => {}
            SNAPSHOT => {
                let s = WalSnapshot::decode(&rec.data[..])
                    .map_err(|e| format!("snapshot record does not decode: {e}"))?;
                if s.index == start.index {
                    if s.term != start.term {
                        return Err(format!(
                            "snapshot record at index {} has term {}, the snapshot file term {}",
                            s.index, s.term, start.term
                        ));
                    }
                    matched = true;
                }
            }
            other => return Err(format!("unexpected record type {other}")),
        }
        Ok(())
    })?;
    out.cut = cut;
    if !matched {
        return Err(whole(format!(
            "no snapshot record for index {} term {}",
            start.index, start.term
        )));
    }
    let Some(m) = metadata else {
        return Err(whole("no metadata record (member and cluster IDs)".into()));
    };
    out.metadata = Metadata::decode(&m[..])
        .map_err(|e| whole(format!("metadata record does not decode: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames a record as etcd's encoder does.
    pub fn frame(out: &mut Vec<u8>, crc: &mut u32, r#type: i64, data: &[u8]) {
        let c = if r#type == CRC {
            *crc
        } else {
            *crc = crc32c::crc32c_append(*crc, data);
            *crc
        };
        let rec = Record {
            r#type,
            crc: c,
            data: data.to_vec(),
        }
        .encode_to_vec();
        let pad = (8 - rec.len() % 8) % 8;
        let mut word = rec.len() as u64;
        if pad != 0 {
            word |= (0x80 | pad as u64) << 56;
        }
        out.extend_from_slice(&word.to_le_bytes());
        out.extend_from_slice(&rec);
        out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
        pb::Entry {
            r#type: 0,
            term,
            index,
            data: data.to_vec(),
        }
        .encode_to_vec()
    }

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let mut crc = 0;
        frame(&mut out, &mut crc, CRC, &[]);
        let md = Metadata {
            node_id: 7,
            cluster_id: 9,
        }
        .encode_to_vec();
        frame(&mut out, &mut crc, METADATA, &md);
        frame(
            &mut out,
            &mut crc,
            SNAPSHOT,
            &WalSnapshot::default().encode_to_vec(),
        );
        for i in 1..=3 {
            frame(&mut out, &mut crc, ENTRY, &entry(i, 2, b"x"));
        }
        let hs = HardState {
            term: 2,
            vote: 7,
            commit: 3,
        };
        frame(&mut out, &mut crc, STATE, &hs.encode_to_vec());
        out
    }

    fn write_dir(files: &[Vec<u8>]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("temp dir");
        for (i, f) in files.iter().enumerate() {
            let name = format!("{:016x}-{:016x}.wal", i, if i == 0 { 0 } else { 4 });
            std::fs::write(d.path().join(name), f).expect("write");
        }
        d
    }

    #[test]
    fn reads_a_log() {
        let d = write_dir(&[sample()]);
        let c = read_all(d.path(), &WalSnapshot::default()).expect("read");
        assert_eq!(c.metadata.node_id, 7);
        assert_eq!(c.metadata.cluster_id, 9);
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.hard_state.commit, 3);
        assert!(c.cut.is_none());
    }

    #[test]
    fn preallocated_zeros_end_the_file() {
        let mut f = sample();
        f.extend(std::iter::repeat_n(0u8, 4096));
        let d = write_dir(&[f]);
        let c = read_all(d.path(), &WalSnapshot::default()).expect("read");
        assert_eq!(c.entries.len(), 3);
        assert!(c.cut.is_none());
    }

    #[test]
    fn torn_tail_is_cut() {
        let good = sample();
        let mut f = good.clone();
        let mut crc = 0;
        // Recompute the chain up to the end of `good`.
        decode_file(&good, true, &mut crc, |_, _| Ok(())).expect("decode");
        frame(&mut f, &mut crc, ENTRY, &entry(4, 2, &[7u8; 600]));
        // The crash left a partial record.
        let partial = f[..f.len() - 100].to_vec();
        let d = write_dir(&[partial]);
        let c = read_all(d.path(), &WalSnapshot::default()).expect("read");
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.cut.as_ref().map(|c| c.1), Some(good.len() as u64));
        // A zeroed sector inside the last record: torn, cut.
        let mut zeroed = f.clone();
        let from = good.len() + 8 + 20;
        for b in &mut zeroed[from..] {
            *b = 0;
        }
        let d = write_dir(&[zeroed]);
        let c = read_all(d.path(), &WalSnapshot::default()).expect("read");
        assert_eq!(c.entries.len(), 3);
        assert!(c.cut.is_some());
    }

    #[test]
    fn crc_mismatch_names_file_and_offset() {
        let mut f = sample();
        // Flip a byte inside the data of the second entry record.
        let mut offs = Vec::new();
        let mut crc = 0;
        decode_file(&f, true, &mut crc, |o, r| {
            if r.r#type == ENTRY {
                offs.push(o);
            }
            Ok(())
        })
        .expect("decode");
        let at = offs[1] as usize + 8 + 6;
        f[at] ^= 0x01;
        let d = write_dir(&[f]);
        let e = read_all(d.path(), &WalSnapshot::default()).expect_err("corrupt");
        assert_eq!(e.offset, Some(offs[1]));
        assert!(
            e.to_string()
                .contains("0000000000000000-0000000000000000.wal"),
            "{e}"
        );
        assert!(e.detail.contains("CRC mismatch"), "{e}");
    }

    #[test]
    fn partial_record_in_an_earlier_file_is_an_error() {
        let first = sample();
        let mut crc = 0;
        decode_file(&first, true, &mut crc, |_, _| Ok(())).expect("decode");
        let mut second = Vec::new();
        frame(&mut second, &mut crc, CRC, &[]);
        frame(&mut second, &mut crc, ENTRY, &entry(4, 2, b"y"));
        let d = write_dir(&[first[..first.len() - 3].to_vec(), second.clone()]);
        let e = read_all(d.path(), &WalSnapshot::default()).expect_err("partial");
        assert!(e.detail.contains("unexpected end of file"), "{e}");
        // Whole files: the log continues across them.
        let d = write_dir(&[first, second]);
        let c = read_all(d.path(), &WalSnapshot::default()).expect("read");
        assert_eq!(c.entries.len(), 4);
    }

    #[test]
    fn gaps_are_errors() {
        let mut out = Vec::new();
        let mut crc = 0;
        frame(&mut out, &mut crc, CRC, &[]);
        frame(
            &mut out,
            &mut crc,
            METADATA,
            &Metadata::default().encode_to_vec(),
        );
        frame(
            &mut out,
            &mut crc,
            SNAPSHOT,
            &WalSnapshot::default().encode_to_vec(),
        );
        frame(&mut out, &mut crc, ENTRY, &entry(1, 1, b""));
        frame(&mut out, &mut crc, ENTRY, &entry(3, 1, b""));
        let d = write_dir(&[out]);
        let e = read_all(d.path(), &WalSnapshot::default()).expect_err("gap");
        assert!(e.detail.contains("gap"), "{e}");
    }

    #[test]
    fn oversized_length_is_refused() {
        let mut f = sample();
        f.extend_from_slice(&(MAX_RECORD_BYTES + 8).to_le_bytes());
        f.extend(std::iter::repeat_n(1u8, 64));
        let mut crc = 0;
        let e = decode_file(&f, true, &mut crc, |_, _| Ok(())).expect_err("too big");
        assert!(e.detail.contains("exceeds"), "{}", e.detail);
    }
}
