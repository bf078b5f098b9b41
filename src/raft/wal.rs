//! The Raft log's write-ahead file: entries and hard states appended to
//! preallocated segment files and made durable with one `fdatasync` per batch,
//! in `<data-dir>/member/log/` or in `--wal-dir`.
//!
//! A segment is named `<seq>-<first index>.log` (16 hex digits each) and holds
//! the magic `etcdrsL1`, a start record (the index and term just before its
//! first entry, and the hard state so far), then records:
//!
//! ```text
//! length: u32 LE (type byte + payload) | crc32c(type byte + payload): u32 LE | type: u8 | payload
//! ```
//!
//! Types: an entry (`eraftpb.Entry`), a hard state (`eraftpb.HardState`), a
//! start (16 bytes: index, term, big-endian) and a compaction mark (same
//! payload: every entry up to that index is gone). A zero length ends the
//! written part; the rest of the segment is preallocated space. An entry whose
//! index is not above the last one replaces the log from that index (a new
//! leader overwriting an uncommitted tail).
//!
//! Segments are zero-filled before they are used, so that an append
//! overwrites blocks the filesystem already has and its `fdatasync` writes no
//! metadata: the first segment of a new log is small (4 MiB) and filled at
//! once; the next one is filled by a thread of its own while the current one
//! fills up, and renamed into place when it is needed (a spare not finished
//! by then is cut to the part it has filled, a shorter segment).
//!
//! Reading is strict: a record that does not check out in any segment but the
//! newest, or in the newest one where it is not torn, stops the member with
//! the file and the offset. A torn record is one a crash cut short during its
//! batch's sync: it runs past the end of the file, or one of the 512-byte
//! sectors it covers reads as zeros (never-written preallocated space). It was
//! never acknowledged (acknowledgement waits for the sync), so it and
//! everything after it are cut, and the space after the cut is zeroed again so
//! that later appends are never followed by older bytes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, HardState};

use crate::storage::StorageError;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

const MAGIC: &[u8; 8] = b"etcdrsL1";
const SECTOR: usize = 512;
/// The largest record the reader accepts (an entry is bounded well below it
/// by the request size limits).
pub const MAX_RECORD: usize = 1 << 30;

const T_ENTRY: u8 = 1;
const T_HARD_STATE: u8 = 2;
const T_START: u8 = 3;
const T_COMPACT: u8 = 4;

/// What the log files hold, read back.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Index and term just before the first entry.
    pub base: (u64, u64),
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
    /// A torn tail that was cut: the file, the offset, the bytes dropped.
    pub cut: Option<(PathBuf, u64, u64)>,
}

/// One segment's records, read from its bytes.
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    /// Where the written part ends (the next append goes there).
    pub end: u64,
    /// Set when a torn record was found at `end`.
    pub torn: bool,
}

#[derive(Debug)]
pub enum Record {
    Entry(Entry),
    HardState(HardState),
    Start(u64, u64),
    Compact(u64, u64),
}

fn corrupt(path: &Path, detail: String) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        detail,
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Open {
        path: path.to_path_buf(),
        detail: format!("{what}: {e}"),
    }
}

/// Whether the record at `start..end` of `data` covers a sector that reads as
/// zeros: the mark of a write a crash cut short.
fn has_zero_sector(data: &[u8], start: usize, end: usize) -> bool {
    let end = end.min(data.len());
    let mut s = start - start % SECTOR;
    while s < end {
        let lo = s.max(start);
        let hi = (s + SECTOR).min(end);
        if lo < hi && data[lo..hi].iter().all(|b| *b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

fn pair(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() != 16 {
        return None;
    }
    let mut i = [0u8; 8];
    let mut t = [0u8; 8];
    i.copy_from_slice(&b[..8]);
    t.copy_from_slice(&b[8..]);
    Some((u64::from_be_bytes(i), u64::from_be_bytes(t)))
}

/// Reads one segment's bytes. `newest`: the segment appends went to last, the
/// only one whose tail may be torn. Never panics, whatever the bytes.
pub fn parse_segment(path: &Path, data: &[u8], newest: bool) -> Result<Parsed> {
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt(
            path,
            "not an etcd-rs log segment (bad magic at offset 0)".into(),
        ));
    }
    let mut out = Parsed::default();
    let mut pos = MAGIC.len();
    loop {
        if pos + 8 > data.len() {
            // No room for a header: the rest must be unwritten.
            if data[pos..].iter().any(|b| *b != 0) {
                if !newest {
                    return Err(corrupt(
                        path,
                        format!("truncated record header at offset {pos}"),
                    ));
                }
                out.torn = true;
            }
            break;
        }
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len == 0 && crc == 0 {
            break;
        }
        let end = pos.saturating_add(8).saturating_add(len);
        let bad = if len == 0 || len > MAX_RECORD {
            Some(format!("record length {len} out of range"))
        } else if end > data.len() {
            Some(format!(
                "record of {len} bytes runs past the end of the file ({} bytes)",
                data.len()
            ))
        } else if crc32c::crc32c(&data[pos + 8..end]) != crc {
            Some("checksum mismatch".to_string())
        } else {
            None
        };
        if let Some(why) = bad {
            if newest && (end > data.len() || has_zero_sector(data, pos, end)) {
                out.torn = true;
                break;
            }
            return Err(corrupt(path, format!("record at offset {pos}: {why}")));
        }
        let kind = data[pos + 8];
        let payload = &data[pos + 9..end];
        let dec_err = |e: protobuf::ProtobufError| {
            corrupt(path, format!("record at offset {pos} does not decode: {e}"))
        };
        let rec = match kind {
            T_ENTRY => Record::Entry(Entry::parse_from_bytes(payload).map_err(dec_err)?),
            T_HARD_STATE => {
                Record::HardState(HardState::parse_from_bytes(payload).map_err(dec_err)?)
            }
            T_START | T_COMPACT => {
                let (i, t) = pair(payload).ok_or_else(|| {
                    corrupt(
                        path,
                        format!("record at offset {pos}: a mark of {} bytes", payload.len()),
                    )
                })?;
                if kind == T_START {
                    Record::Start(i, t)
                } else {
                    Record::Compact(i, t)
                }
            }
            k => {
                return Err(corrupt(
                    path,
                    format!("record at offset {pos}: unknown type {k}"),
                ));
            }
        };
        if out.records.is_empty() && !matches!(rec, Record::Start(..)) {
            return Err(corrupt(
                path,
                format!("the segment does not begin with a start record (offset {pos})"),
            ));
        }
        out.records.push(rec);
        pos = end;
    }
    if out.records.is_empty() {
        return Err(corrupt(path, "the segment has no start record".into()));
    }
    out.end = pos as u64;
    Ok(out)
}

/// Folds one segment's records into the log read so far. `first`: the
/// oldest segment, whose start record sets the base.
pub fn fold(path: &Path, log: &mut Loaded, parsed: Vec<Record>, first: bool) -> Result<u64> {
    let last_of = |log: &Loaded| log.entries.last().map(|e| e.index).unwrap_or(log.base.0);
    for rec in parsed {
        match rec {
            Record::Start(i, t) => {
                if first {
                    log.base = (i, t);
                    log.entries.clear();
                } else if i != last_of(log) {
                    return Err(corrupt(
                        path,
                        format!(
                            "the segment starts after entry {i}, but the previous segment ends at entry {}",
                            last_of(log)
                        ),
                    ));
                }
            }
            Record::Compact(i, t) => {
                if i > last_of(log) {
                    log.entries.clear();
                    log.base = (i, t);
                } else if i > log.base.0 {
                    let keep = (i - log.base.0) as usize;
                    log.entries.drain(..keep);
                    log.base = (i, t);
                }
            }
            Record::HardState(h) => log.hard_state = h,
            Record::Entry(e) => {
                let last = last_of(log);
                if e.index <= log.base.0 {
                    return Err(corrupt(
                        path,
                        format!(
                            "entry {} is at or before the start of the log ({})",
                            e.index, log.base.0
                        ),
                    ));
                }
                if e.index > last + 1 {
                    return Err(corrupt(
                        path,
                        format!("the log has a gap: entry {} follows entry {last}", e.index),
                    ));
                }
                log.entries.truncate((e.index - log.base.0 - 1) as usize);
                log.entries.push(e);
            }
        }
    }
    Ok(last_of(log))
}

/// A closed segment: deleted once every entry in it is no longer needed.
#[derive(Debug)]
struct Closed {
    path: PathBuf,
    last_index: u64,
}

/// The log's files, open for appending.
pub struct Wal {
    dir: PathBuf,
    segment_size: u64,
    /// Bytes of the current segment made ready for appends.
    capacity: u64,
    /// The next segment, being zero-filled.
    spare: Option<Spare>,
    file: File,
    path: PathBuf,
    seq: u64,
    offset: u64,
    closed: Vec<Closed>,
    last: (u64, u64),
    hard_state: HardState,
    /// Rotation failed for lack of space: the current segment grows instead.
    no_rotate: bool,
    buf: Vec<u8>,
}

fn segment_name(seq: u64, first: u64) -> String {
    format!("{seq:016x}-{first:016x}.log")
}

/// The segments in `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, "cannot list the log directory", e)),
    };
    let mut v = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| io_err(dir, "cannot list the log directory", e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        let Some((seq, first)) = stem.split_once('-') else {
            continue;
        };
        if seq.len() != 16 || first.len() != 16 {
            continue;
        }
        let (Ok(seq), Ok(_)) = (u64::from_str_radix(seq, 16), u64::from_str_radix(first, 16))
        else {
            continue;
        };
        v.push((seq, ent.path()));
    }
    v.sort();
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "cannot sync the log directory", e))
}

fn push_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = (payload.len() + 1) as u32;
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

fn push_pb<M: PbMessage>(buf: &mut Vec<u8>, kind: u8, m: &M) -> Result<()> {
    let b = m.write_to_bytes().map_err(|e| StorageError::Decode {
        what: "raft log record".into(),
        detail: e.to_string(),
    })?;
    push_record(buf, kind, &b);
    Ok(())
}

fn push_pair(buf: &mut Vec<u8>, kind: u8, (i, t): (u64, u64)) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[8..].copy_from_slice(&t.to_be_bytes());
    push_record(buf, kind, &b);
}

/// Reserves `len` bytes for the file without writing them (they read as zeros).
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    // SAFETY: fallocate(2) on a descriptor `file` keeps open for the call;
    // mode 0 only allocates, it reads and writes no memory of ours.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The size of a new log's first segment.
const FIRST_SEGMENT: u64 = 4 << 20;
/// The next segment, while it is being prepared.
const SPARE: &str = "spare.tmp";

/// The thread zero-filling the next segment. Dropping it stops the thread
/// and waits for it, so no write to the log's directory outlives the log
/// that asked for it (a log opened again in the same directory would
/// otherwise share `spare.tmp` with a writer it does not know of).
struct Spare {
    thread: Option<std::thread::JoinHandle<std::io::Result<File>>>,
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

/// What the thread filling a spare is told ([`Spare::state`]).
const FILL: u8 = 0;
/// Stop, and remove the file.
const FILL_STOP: u8 = 1;
/// Stop, and keep the part filled so far.
const FILL_CUT: u8 = 2;

/// The least of a spare, filled, that a rotation takes before it is
/// finished; with less, the next segment is reserved instead.
const MIN_CUT_SPARE: u64 = 1 << 20;

impl Spare {
    fn start(path: PathBuf, len: u64) -> Option<Spare> {
        let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(FILL));
        let flag = state.clone();
        let thread = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || zero_filled(&path, len, Some(&flag)))
            .ok()?;
        Some(Spare {
            thread: Some(thread),
            state,
        })
    }

    /// The spare's file: whole when the thread is done; else the fill stops
    /// (after the part being written) and what it has filled is the file,
    /// shorter than asked, when it holds at least [`MIN_CUT_SPARE`] bytes.
    /// None when it holds less (its file removed), so that the segment is
    /// reserved. Appends to a file already filled overwrite blocks the
    /// filesystem has, where appends to reserved space make every sync
    /// write metadata too (ext4 converts the extent written to, and the
    /// inode with it); a member under load fills its first segment before
    /// the spare for the next is whole.
    fn finish(mut self) -> Option<std::io::Result<File>> {
        let thread = self.thread.take()?;
        if thread.is_finished() {
            return thread.join().ok();
        }
        self.state
            .store(FILL_CUT, std::sync::atomic::Ordering::Relaxed);
        match thread.join() {
            Ok(Ok(f)) => Some(Ok(f)),
            _ => None,
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.state
                .store(FILL_STOP, std::sync::atomic::Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

/// A file of `len` zero bytes, durable, at `path`. A spare made beside the
/// appends (the one given a `state`) is written 128 KiB at a time,
/// each written out to the disk before the next with a pause between: the
/// log's own fdatasync, on the same disk, then waits behind 128 KiB at most
/// instead of the whole segment (64 MiB written at once held appends, and
/// with them a leader's heartbeats, for hundreds of milliseconds; a mebibyte
/// at a time still showed in the p99 of single-client puts on three members,
/// whose three logs fill their spares at once). A part is written out
/// without a flush of the disk's cache (`sync_file_range`): the log's
/// fdatasyncs flush the disk's cache every few milliseconds under load, and
/// the one sync at the end makes the whole file durable; a flush per part
/// cost the fill a third more CPU. Told [`FILL_STOP`], the fill ends and the
/// file is removed; told [`FILL_CUT`], it ends and the file holds what was
/// filled (the caller syncs it).
fn zero_filled(
    path: &Path,
    len: u64,
    state: Option<&std::sync::atomic::AtomicU8>,
) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let chunk = vec![0u8; ZERO_FILL_CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], off)?;
        off += n as u64;
        if let Some(state) = state {
            let given_up = match state.load(std::sync::atomic::Ordering::Relaxed) {
                FILL_STOP => Some("the log was closed"),
                FILL_CUT if off >= MIN_CUT_SPARE => return Ok(file),
                FILL_CUT => Some("too little of the spare was filled"),
                _ => None,
            };
            if let Some(given_up) = given_up {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    given_up,
                ));
            }
            written_out(&file, off - n as u64, n)?;
            std::thread::sleep(ZERO_FILL_PAUSE);
        }
    }
    file.sync_all()?;
    Ok(file)
}

/// Writes `len` bytes of `file` from `off` out to the disk and waits for
/// them, without flushing the disk's cache; where the filesystem cannot,
/// the file's data is synced.
fn written_out(file: &File, off: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return file.sync_data();
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range(2) on a descriptor `file` keeps open for the
    // call; it starts and waits for writeback, and reads and writes no
    // memory of ours.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, flags) };
    if r != 0 {
        return file.sync_data();
    }
    Ok(())
}

/// How much of a spare segment is zero-filled and written out at a time,
/// and the pause after each part.
const ZERO_FILL_CHUNK: usize = 128 << 10;
const ZERO_FILL_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Removes what a stopped member left half made: a spare segment, a segment
/// not yet renamed into place.
fn remove_temporaries(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for ent in rd.flatten() {
        let p = ent.path();
        if p.extension().is_some_and(|x| x == "tmp") {
            std::fs::remove_file(&p)
                .map_err(|e| io_err(&p, "cannot remove a temporary file", e))?;
        }
    }
    Ok(())
}

/// How a new segment's file is made.
enum Fresh {
    /// Zero-filled now, `len` bytes.
    Zeroed(u64),
    /// Reserved now (fast, for a rotation without a spare), `len` bytes.
    Reserved(u64),
    /// The spare, zero-filled already.
    Spare(File),
}

impl Wal {
    /// Whether `dir` holds log segments.
    pub fn exists(dir: &Path) -> Result<bool> {
        Ok(!list(dir)?.is_empty())
    }

    /// Reads every segment in `dir` and opens the newest for appending; a torn
    /// tail is cut (and reported in [`Loaded::cut`]).
    pub fn open(dir: &Path, segment_size: u64) -> Result<(Wal, Loaded)> {
        remove_temporaries(dir)?;
        let segs = list(dir)?;
        let Some((newest_seq, newest_path)) = segs.last().cloned() else {
            return Err(corrupt(dir, "the log directory holds no segment".into()));
        };
        let mut log = Loaded::default();
        let mut closed = Vec::new();
        let mut end = 0;
        for (n, (_, path)) in segs.iter().enumerate() {
            let newest = n + 1 == segs.len();
            let data =
                std::fs::read(path).map_err(|e| io_err(path, "cannot read log segment", e))?;
            let parsed = parse_segment(path, &data, newest)?;
            let last = fold(path, &mut log, parsed.records, n == 0)?;
            if newest {
                end = parsed.end;
                if parsed.torn {
                    let dropped = data[parsed.end as usize..]
                        .iter()
                        .rposition(|b| *b != 0)
                        .map(|p| p as u64 + 1)
                        .unwrap_or(0);
                    log.cut = Some((path.clone(), parsed.end, dropped));
                }
            } else {
                closed.push(Closed {
                    path: path.clone(),
                    last_index: last,
                });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&newest_path)
            .map_err(|e| io_err(&newest_path, "cannot open log segment", e))?;
        if log.cut.is_some() {
            // Zero what follows the cut: drop the blocks, then reserve them again.
            file.set_len(end)
                .and_then(|_| preallocate(&file, segment_size.max(end)))
                .and_then(|_| file.sync_all())
                .map_err(|e| io_err(&newest_path, "cannot cut the torn tail", e))?;
        }
        let last = log
            .entries
            .last()
            .map(|e| (e.index, e.term))
            .unwrap_or(log.base);
        let capacity = file
            .metadata()
            .map_err(|e| io_err(&newest_path, "cannot read log segment", e))?
            .len();
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_size,
            capacity,
            spare: None,
            file,
            path: newest_path,
            seq: newest_seq,
            offset: end,
            closed,
            last,
            hard_state: log.hard_state.clone(),
            no_rotate: false,
            buf: Vec::new(),
        };
        Ok((wal, log))
    }

    /// Writes a new log in `dir` that starts after `base` with `hs` and
    /// `entries`, made durable before any older segment is deleted.
    pub fn create(
        dir: &Path,
        segment_size: u64,
        base: (u64, u64),
        hs: &HardState,
        entries: &[Entry],
    ) -> Result<Wal> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(dir, "cannot create the log directory", e))?;
        remove_temporaries(dir)?;
        let old = list(dir)?;
        let seq = old.last().map(|(s, _)| s + 1).unwrap_or(1);
        let mut buf = Vec::new();
        for e in entries {
            push_pb(&mut buf, T_ENTRY, e)?;
        }
        let first = Fresh::Zeroed(segment_size.min(FIRST_SEGMENT));
        let (file, path, offset) = Self::new_segment(dir, seq, base, hs, &buf, first)?;
        for (_, p) in old {
            std::fs::remove_file(&p).map_err(|e| io_err(&p, "cannot remove log segment", e))?;
        }
        sync_dir(dir)?;
        let capacity = file
            .metadata()
            .map_err(|e| io_err(&path, "cannot read log segment", e))?
            .len();
        let last = entries.last().map(|e| (e.index, e.term)).unwrap_or(base);
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_size,
            capacity,
            spare: None,
            file,
            path,
            seq,
            offset,
            closed: Vec::new(),
            last,
            hard_state: hs.clone(),
            no_rotate: false,
            buf: Vec::new(),
        })
    }

    /// A durable segment named `seq`: magic, start record, hard state, then
    /// `body`; written under a temporary name and renamed into place.
    fn new_segment(
        dir: &Path,
        seq: u64,
        base: (u64, u64),
        hs: &HardState,
        body: &[u8],
        fresh: Fresh,
    ) -> Result<(File, PathBuf, u64)> {
        let path = dir.join(segment_name(seq, base.0 + 1));
        let mut head = Vec::with_capacity(64 + body.len());
        head.extend_from_slice(MAGIC);
        push_pair(&mut head, T_START, base);
        push_pb(&mut head, T_HARD_STATE, hs)?;
        head.extend_from_slice(body);
        let need = head.len() as u64;
        let named_tmp = || dir.join(format!("{}.tmp", segment_name(seq, base.0 + 1)));
        let (tmp, made) = match fresh {
            Fresh::Spare(f) => (dir.join(SPARE), Ok(f)),
            Fresh::Zeroed(len) => {
                let tmp = named_tmp();
                let f = zero_filled(&tmp, len.max(need), None);
                (tmp, f)
            }
            Fresh::Reserved(len) => {
                let tmp = named_tmp();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .and_then(|f| preallocate(&f, len.max(need)).map(|_| f));
                (tmp, f)
            }
        };
        let written = made.and_then(|f| {
            f.write_all_at(&head, 0)?;
            f.sync_all()?;
            Ok(f)
        });
        let file = match written {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(&tmp, "cannot write log segment", e));
            }
        };
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, "cannot rename log segment", e))?;
        sync_dir(dir)?;
        Ok((file, path, need))
    }

    /// Appends `entries` (replacing the log from the first one's index) and
    /// the hard state; with `sync` they are durable on return.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        if self.offset >= self.capacity && !self.no_rotate {
            self.rotate()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for e in entries {
            push_pb(&mut buf, T_ENTRY, e)?;
        }
        if let Some(h) = hs {
            push_pb(&mut buf, T_HARD_STATE, h)?;
            self.hard_state = h.clone();
        }
        let res = self
            .file
            .write_all_at(&buf, self.offset)
            .and_then(|_| if sync { self.file.sync_data() } else { Ok(()) });
        self.buf = buf;
        res.map_err(|e| io_err(&self.path, "cannot append to the log", e))?;
        self.offset += self.buf.len() as u64;
        if let Some(e) = entries.last() {
            self.last = (e.index, e.term);
        }
        if self.spare.is_none() && !self.no_rotate && self.offset > self.capacity / 2 {
            let path = self.dir.join(SPARE);
            let len = self.segment_size;
            self.spare = Spare::start(path, len);
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| io_err(&self.path, "cannot sync the log", e))
    }

    /// Closes the full segment and continues in a new one: the spare when
    /// it is ready (it almost always is), else a file reserved now.
    fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        let seq = self.seq + 1;
        let fresh = match self.spare.take().and_then(Spare::finish) {
            Some(Ok(f)) => Fresh::Spare(f),
            Some(Err(e)) => {
                crate::warn!(
                    "cannot prepare the next log segment; reserving it now",
                    path = self.dir.join(SPARE).display().to_string(),
                    error = e
                );
                let _ = std::fs::remove_file(self.dir.join(SPARE));
                Fresh::Reserved(self.segment_size)
            }
            _ => Fresh::Reserved(self.segment_size),
        };
        match Self::new_segment(&self.dir, seq, self.last, &self.hard_state, &[], fresh) {
            Ok((file, path, offset)) => {
                let old = std::mem::replace(&mut self.path, path);
                self.closed.push(Closed {
                    path: old,
                    last_index: self.last.0,
                });
                self.capacity = file
                    .metadata()
                    .map(|m| m.len())
                    .unwrap_or(self.segment_size);
                self.file = file;
                self.seq = seq;
                self.offset = offset;
                Ok(())
            }
            Err(e) => {
                // Most likely a full disk: the current segment grows instead
                // (until a later start, which tries again).
                crate::warn!(
                    "cannot start a new log segment; appending to the current one",
                    path = self.path.display().to_string(),
                    error = e
                );
                self.no_rotate = true;
                Ok(())
            }
        }
    }

    /// Records that every entry up to `index` (of `term`) is gone, and deletes
    /// the closed segments whose entries are all at or below `deletable`.
    pub fn compact(&mut self, index: u64, term: u64, deletable: u64) -> Result<()> {
        let mut buf = Vec::with_capacity(32);
        push_pair(&mut buf, T_COMPACT, (index, term));
        self.file
            .write_all_at(&buf, self.offset)
            .map_err(|e| io_err(&self.path, "cannot append to the log", e))?;
        self.offset += buf.len() as u64;
        if index > self.last.0 {
            self.last = (index, term);
        }
        self.release(deletable.min(index))
    }

    /// Deletes the closed segments, oldest first, whose entries are all at or
    /// below `upto`.
    pub fn release(&mut self, upto: u64) -> Result<()> {
        let n = self
            .closed
            .iter()
            .take_while(|c| c.last_index <= upto)
            .count();
        if n == 0 {
            return Ok(());
        }
        for c in self.closed.drain(..n) {
            std::fs::remove_file(&c.path)
                .map_err(|e| io_err(&c.path, "cannot remove log segment", e))?;
        }
        sync_dir(&self.dir)
    }

    /// Starts the log over after an installed snapshot at `base`.
    pub fn reset(&mut self, base: (u64, u64), hs: &HardState) -> Result<()> {
        // Stops the spare's thread before its directory is written anew.
        self.spare = None;
        *self = Self::create(&self.dir, self.segment_size, base, hs, &[])?;
        Ok(())
    }

    /// The segment appends go to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..Default::default()
        }
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "wal-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn indexes(l: &Loaded) -> Vec<(u64, u64)> {
        l.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn appends_read_back_with_overwrites_rotation_and_compaction() {
        let d = tmp();
        let mut w = Wal::create(&d, 4096, (0, 0), &hs(1, 0), &[entry(1, 1, b"a")]).unwrap();
        for i in 2..=60 {
            w.append(&[entry(i, 1, &[7u8; 100])], Some(&hs(1, i - 1)), true)
                .unwrap();
        }
        // A new leader replaces 59 and 60.
        w.append(&[entry(59, 2, b"x")], Some(&hs(2, 58)), true)
            .unwrap();
        assert!(list(&d).unwrap().len() > 1, "segments rotated");
        drop(w);
        let (mut w, l) = Wal::open(&d, 4096).unwrap();
        assert_eq!(l.base, (0, 0));
        assert_eq!(l.entries.len(), 59);
        assert_eq!(indexes(&l).last(), Some(&(59, 2)));
        assert_eq!(l.hard_state, hs(2, 58));
        assert!(l.cut.is_none());
        w.append(&[entry(60, 2, b"y")], None, true).unwrap();
        w.compact(40, 1, 40).unwrap();
        let before = list(&d).unwrap().len();
        drop(w);
        let (_, l) = Wal::open(&d, 4096).unwrap();
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".log")), "{names:?}");
        assert_eq!(l.base, (40, 1));
        assert_eq!(indexes(&l).first(), Some(&(41, 1)));
        assert_eq!(indexes(&l).last(), Some(&(60, 2)));
        assert!(
            before < 8,
            "closed segments below the compaction were deleted"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A log in `d` of `segment`-byte segments whose first segment
    /// ([`FIRST_SEGMENT`]) holds three 1-MiB entries, with its spare being
    /// filled.
    fn with_a_spare_being_filled(d: &Path, segment: u64) -> Wal {
        let mut w = Wal::create(d, segment, (0, 0), &hs(1, 0), &[]).unwrap();
        let big = vec![5u8; 1 << 20];
        for i in 1..=3 {
            w.append(&[entry(i, 1, &big)], None, true).unwrap();
        }
        assert!(w.spare.is_some(), "a spare is being prepared");
        w
    }

    #[test]
    fn a_closed_log_leaves_no_spare_being_written() {
        let d = tmp();
        let w = with_a_spare_being_filled(&d, 64 << 20);
        // Filling 64 MiB paced takes well over a hundred milliseconds: the
        // file is gone right after the drop only if the drop stopped it.
        drop(w);
        assert!(!d.join(SPARE).exists(), "spare.tmp outlived its log");
        let (_, l) = Wal::open(&d, 64 << 20).unwrap();
        assert_eq!(l.entries.len(), 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_segment_full_before_its_spare_is_ready_goes_on_without_it() {
        let d = tmp();
        // The first segment is 4 MiB; its 256 MiB spare, paced, takes
        // seconds to fill.
        let mut w = with_a_spare_being_filled(&d, 256 << 20);
        let big = vec![5u8; 1 << 20];
        let first = w.path().to_path_buf();
        // The segment is full: the next append rotates, and the spare being
        // filled is not waited for (what it has filled becomes the segment,
        // or with too little it is removed and the segment reserved).
        w.append(&[entry(4, 1, &big)], None, true).unwrap();
        w.append(&[entry(5, 1, b"x")], None, true).unwrap();
        assert_ne!(w.path(), first.as_path(), "rotated");
        assert!(
            w.spare.is_none() && !d.join(SPARE).exists(),
            "the unfinished spare was stopped"
        );
        drop(w);
        let (_, l) = Wal::open(&d, 256 << 20).unwrap();
        assert_eq!(indexes(&l).last(), Some(&(5, 1)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_rotation_takes_what_an_unfinished_spare_has_filled() {
        let d = tmp();
        let mut w = with_a_spare_being_filled(&d, 256 << 20);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(d.join(SPARE)).map_or(0, |m| m.len()) < 2 * MIN_CUT_SPARE {
            assert!(
                std::time::Instant::now() < deadline,
                "the spare is not filling"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let big = vec![5u8; 1 << 20];
        let first = w.path().to_path_buf();
        w.append(&[entry(4, 1, &big)], None, true).unwrap();
        w.append(&[entry(5, 1, b"x")], None, true).unwrap();
        assert_ne!(w.path(), first.as_path(), "rotated");
        let len = std::fs::metadata(w.path()).unwrap().len();
        assert!(
            (2 * MIN_CUT_SPARE..256 << 20).contains(&len),
            "the new segment is the part filled, {len} bytes"
        );
        assert_eq!(len % ZERO_FILL_CHUNK as u64, 0, "whole chunks, {len} bytes");
        assert!(w.spare.is_none() && !d.join(SPARE).exists());
        // It fills up and rotates like any other.
        let n = len / (1 << 20) + 2;
        for i in 6..6 + n {
            w.append(&[entry(i, 1, &big)], None, true).unwrap();
        }
        let second = w.path().to_path_buf();
        w.append(&[entry(6 + n, 1, b"y")], None, true).unwrap();
        drop(w);
        assert!(list(&d).unwrap().len() >= 3, "{second:?} rotated in turn");
        let (_, l) = Wal::open(&d, 256 << 20).unwrap();
        assert_eq!(indexes(&l).last(), Some(&(6 + n, 1)));
        assert_eq!(l.entries.len() as u64, 6 + n);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_damaged_record_is_refused() {
        let d = tmp();
        let mut w = Wal::create(&d, 1 << 16, (0, 0), &hs(1, 0), &[]).unwrap();
        for i in 1..=10 {
            w.append(&[entry(i, 1, &[9u8; 700])], None, true).unwrap();
        }
        let path = w.path().to_path_buf();
        let end = w.offset;
        drop(w);
        let clean = std::fs::read(&path).unwrap();
        // The last record's second sector never reached the disk.
        let mut torn = clean.clone();
        // The last record is over 700 bytes long: its last sector is in here.
        for b in &mut torn[end as usize - 600..end as usize] {
            *b = 0;
        }
        std::fs::write(&path, &torn).unwrap();
        let (mut w, l) = Wal::open(&d, 1 << 16).unwrap();
        assert_eq!(l.entries.len(), 9);
        let (p, off, _) = l.cut.clone().unwrap();
        assert_eq!(p, path);
        assert!(off < end);
        // Appends after the cut are read back, and nothing older follows them.
        w.append(&[entry(10, 2, b"z")], None, true).unwrap();
        drop(w);
        let (_, l) = Wal::open(&d, 1 << 16).unwrap();
        assert_eq!(indexes(&l).last(), Some(&(10, 2)));
        assert!(l.cut.is_none());
        // A flipped byte in the middle of a record whose sectors are all
        // written is damage, not a torn write: refused with file and offset.
        let mut bad = std::fs::read(&path).unwrap();
        bad[200] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = Wal::open(&d, 1 << 16).err().unwrap().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("offset"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_in_an_older_segment_is_refused() {
        let d = tmp();
        let mut w = Wal::create(&d, 2048, (0, 0), &hs(1, 0), &[]).unwrap();
        for i in 1..=40 {
            w.append(&[entry(i, 1, &[1u8; 100])], None, true).unwrap();
        }
        drop(w);
        let segs = list(&d).unwrap();
        assert!(segs.len() > 2);
        // Cut the oldest segment short in the middle of a record.
        let p = &segs[0].1;
        let data = std::fs::read(p).unwrap();
        std::fs::write(p, &data[..1000]).unwrap();
        let err = Wal::open(&d, 2048).err().unwrap().to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        // A foreign file with a segment's name.
        std::fs::write(p, b"not a log").unwrap();
        let err = Wal::open(&d, 2048).err().unwrap().to_string();
        assert!(err.contains("magic"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_fuzz_seeds_read_as_written() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/raft_wal");
        let p = root.join("segment");
        let data = std::fs::read(&p).unwrap();
        let parsed = parse_segment(&p, &data, false).unwrap();
        assert_eq!(parsed.records.len(), 7);
        let mut log = Loaded::default();
        fold(&p, &mut log, parsed.records, true).unwrap();
        assert_eq!(log.base, (5, 1));
        assert_eq!(indexes(&log), vec![(6, 1), (7, 2)]);
        assert_eq!(log.hard_state.commit, 4);
        let p = root.join("torn");
        let data = std::fs::read(&p).unwrap();
        let parsed = parse_segment(&p, &data, true).unwrap();
        assert!(parsed.torn);
        assert_eq!(parsed.records.len(), 5);
        assert!(parse_segment(&p, &data, false).is_err());
    }
}
