//! Free space on the data directory's filesystem.
//!
//! The database must never meet a full disk: redb treats a failed write as
//! fatal for the open file (every later read fails too). So the member stops
//! taking writes well before the disk is full, with etcd's NOSPACE alarm, and
//! keeps serving reads:
//!
//! - below the *low mark* of free space (or when a write would take it there,
//!   counting what is already queued) writes are refused and the member raises
//!   NOSPACE for itself;
//! - a *reserve file* (`<data-dir>/member/reserve`, preallocated as etcd
//!   preallocates its WAL) holds space that nobody else can take: it is
//!   deleted when free space falls to half the low mark anyway (something
//!   else filled the disk), and before the database is opened on a disk below
//!   the low mark, so that opening, electing a leader and raising the alarm
//!   always find room;
//! - once free space is back above twice the low mark (plus the reserve, which
//!   is made again first), the member lifts the NOSPACE alarm it raised for
//!   its disk, and writes resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Smallest and largest reserve file. It must hold what a member writes on
/// a full disk: redb's recovery of a file not closed cleanly (the allocator
/// state), the Raft hard state of an election, the alarm's log entry and its
/// apply; a few MiB. Kept small because a test suite or a tmpfs pays it per
/// member.
const RESERVE_MIN: u64 = 4 << 20;
const RESERVE_MAX: u64 = 16 << 20;
/// Smallest and largest low mark.
const LOW_MIN: u64 = 8 << 20;
const LOW_MAX: u64 = 512 << 20;
/// What one byte of a proposed write may cost on disk: the log entry, the
/// key-value record, and the copied B-tree pages.
const WRITE_AMPLIFICATION: u64 = 3;

#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: PathBuf,
    reserve_size: AtomicU64,
    low: AtomicU64,
    full: AtomicBool,
    /// Free bytes as last read, and when: the request path reads the
    /// filesystem at most every [`FRESH`], and in between takes what it
    /// admits off the figure.
    cached: parking_lot::Mutex<(Option<Instant>, u64)>,
}

/// How long a free-space figure serves the request path.
const FRESH: Duration = Duration::from_millis(10);

/// Bytes an unprivileged writer can still use on the filesystem holding
/// `path`, and the filesystem's size.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(unit),
        (st.f_blocks as u64).saturating_mul(unit),
    ))
}

/// The size of the filesystem holding `path`.
pub fn filesystem_size(path: &Path) -> Option<u64> {
    statvfs(path).ok().map(|(_, total)| total)
}

impl DiskSpace {
    /// The guard of `data_dir`; [`Self::prepare`] must run before the database is opened.
    pub fn new(data_dir: &Path) -> DiskSpace {
        let dir = data_dir.join("member");
        DiskSpace {
            reserve: dir.join("reserve"),
            dir,
            reserve_size: AtomicU64::new(RESERVE_MIN),
            low: AtomicU64::new(LOW_MIN),
            full: AtomicBool::new(false),
            cached: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// Bytes an unprivileged writer can still use on the filesystem, and its size.
    fn statvfs(&self) -> std::io::Result<(u64, u64)> {
        statvfs(&self.dir)
    }

    /// Free bytes (u64::MAX when the filesystem cannot tell).
    pub fn available(&self) -> u64 {
        self.statvfs().map(|(a, _)| a).unwrap_or(u64::MAX)
    }

    pub fn low_mark(&self) -> u64 {
        self.low.load(Ordering::Relaxed)
    }

    fn reserve_held(&self) -> bool {
        std::fs::metadata(&self.reserve)
            .map(|m| m.len() >= self.reserve_size.load(Ordering::Relaxed))
            .unwrap_or(false)
    }

    /// Before the database is opened: sizes the marks to the filesystem, and
    /// frees the reserve when the disk is below the low mark (the member then
    /// starts read-only with NOSPACE), or makes the reserve when there is room.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (avail, total) = self.statvfs()?;
        self.reserve_size.store(
            (total / 64).clamp(RESERVE_MIN, RESERVE_MAX),
            Ordering::Relaxed,
        );
        self.low
            .store((total / 32).clamp(LOW_MIN, LOW_MAX), Ordering::Relaxed);
        if avail < self.low_mark() {
            self.full.store(true, Ordering::SeqCst);
            self.release_reserve();
            crate::warn!(
                "starting on a full disk: the member serves reads only (NOSPACE) until space is freed",
                available_bytes = self.available(),
                low_mark_bytes = self.low_mark()
            );
        } else if !self.reserve_held() {
            self.make_reserve();
        }
        Ok(())
    }

    fn release_reserve(&self) {
        match std::fs::remove_file(&self.reserve) {
            Ok(()) => crate::warn!(
                "released the reserved disk space",
                path = self.reserve.display(),
                available_bytes = self.available()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::warn!(
                "cannot release the reserved disk space",
                path = self.reserve.display(),
                error = e
            ),
        }
    }

    /// Preallocates the reserve file; false when the disk has no room for it.
    fn make_reserve(&self) -> bool {
        use std::os::unix::io::AsRawFd;
        let size = self.reserve_size.load(Ordering::Relaxed);
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.reserve)?;
            // SAFETY: fallocate(2) on an open file descriptor we own.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
                // A filesystem without fallocate: write the blocks.
                use std::io::Write;
                let zeros = vec![0u8; 1 << 20];
                let mut left = size;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
            }
            f.sync_all()
        })();
        match r {
            Ok(()) => true,
            Err(e) => {
                crate::warn!(
                    "cannot reserve disk space",
                    path = self.reserve.display(),
                    error = e
                );
                let _ = std::fs::remove_file(&self.reserve);
                false
            }
        }
    }

    /// Whether the member is out of disk space (writes refused).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// Marks the member full.
    pub fn set_full(&self) {
        if !self.full.swap(true, Ordering::SeqCst) {
            crate::warn!(
                "disk space is running out: refusing writes (NOSPACE)",
                available_bytes = self.available(),
                low_mark_bytes = self.low_mark()
            );
        }
    }

    /// Whether a write of `bytes`, with `queued` bytes of writes still
    /// waiting to be written, leaves the disk above the low mark; when it
    /// does not, the member becomes full.
    pub fn admit(&self, queued: u64, bytes: u64) -> bool {
        if self.is_full() {
            return false;
        }
        let cost = bytes.saturating_mul(WRITE_AMPLIFICATION);
        let need = self
            .low_mark()
            .saturating_add(queued.saturating_mul(WRITE_AMPLIFICATION))
            .saturating_add(cost);
        let mut c = self.cached.lock();
        if c.0.is_none_or(|t| t.elapsed() >= FRESH) {
            *c = (Some(Instant::now()), self.available());
        }
        let available = c.1;
        if available < need {
            drop(c);
            self.set_full();
            self.release_if_short(available);
            return false;
        }
        c.1 = available - cost;
        true
    }

    /// Gives up the reserve when free space is below half the low mark:
    /// something other than this member's writes is filling the disk, and
    /// the member's own small writes (the alarm, its Raft state) need room.
    fn release_if_short(&self, available: u64) {
        if available < self.low_mark() / 2 && self.reserve_held() {
            self.release_reserve();
        }
    }

    /// The periodic check (from the Raft loop): becomes full below the low
    /// mark; frees the reserve when even that is being eaten; leaves the full
    /// state once there is room again (the reserve made first).
    pub fn check(&self) {
        let low = self.low_mark();
        let available = self.available();
        if !self.is_full() {
            if available < low {
                self.set_full();
                self.release_if_short(available);
            }
        } else {
            let held = self.reserve_held();
            if held && available < low / 2 {
                self.release_reserve();
            } else {
                let need = 2 * low
                    + if held {
                        0
                    } else {
                        self.reserve_size.load(Ordering::Relaxed)
                    };
                if available >= need && (held || self.make_reserve()) {
                    *self.cached.lock() = (None, 0);
                    self.full.store(false, Ordering::SeqCst);
                    crate::info!(
                        "disk space is available again: accepting writes",
                        available_bytes = self.available()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_until_there_is_room_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = DiskSpace::new(dir.path());
        d.prepare().expect("prepare");
        let available = d.available();
        assert!(
            available >= 4 * d.low_mark() + RESERVE_MAX,
            "this test needs {} bytes free in the temp directory, found {available}",
            4 * d.low_mark() + RESERVE_MAX
        );
        assert!(!d.is_full());
        assert!(d.reserve_held(), "the reserve is made at start");
        assert!(d.admit(0, 1024));
        // A write that would take the disk under the low mark is refused,
        // and so is everything after it.
        assert!(!d.admit(0, available / WRITE_AMPLIFICATION));
        assert!(d.is_full());
        assert!(!d.admit(0, 1));
        // The disk never filled: the periodic check finds room and lifts it.
        d.check();
        assert!(!d.is_full());
        assert!(d.admit(0, 1024));
        // Queued writes count too.
        assert!(!d.admit(available / WRITE_AMPLIFICATION, 1));
    }
}
