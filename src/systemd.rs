//! systemd integration: readiness and status notifications, the watchdog, socket
//! activation, and native journald logging. Every function is a no-op outside
//! systemd (no `NOTIFY_SOCKET`, `LISTEN_FDS`, `WATCHDOG_USEC` or `JOURNAL_STREAM`).

use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::log::Level;

pub fn notify_ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

/// How often to ping the watchdog, when systemd asked for it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub fn notify_watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// Listening sockets passed by systemd, by their `FileDescriptorName=` (sockets
/// without a name are filed under "client").
pub fn activated_listeners() -> HashMap<String, Vec<std::net::TcpListener>> {
    let mut out: HashMap<String, Vec<std::net::TcpListener>> = HashMap::new();
    let Ok(fds) = sd_notify::listen_fds_with_names() else {
        return out;
    };
    for (fd, name) in fds {
        // SAFETY: systemd passes these descriptors to this process (LISTEN_PID
        // matched) for it to own; each is taken exactly once here, and nothing else
        // in the process refers to descriptors from SD_LISTEN_FDS_START on.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let name = if name.is_empty() || name == "unknown" {
            "client".to_string()
        } else {
            name
        };
        out.entry(name).or_default().push(l);
    }
    // SAFETY: called once at startup before any other thread reads these variables.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    out
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

static JOURNAL: OnceLock<UnixDatagram> = OnceLock::new();
static MEMBER_ID: AtomicU64 = AtomicU64::new(0);
static CLUSTER_ID: AtomicU64 = AtomicU64::new(0);

/// Adds MEMBER_ID and CLUSTER_ID to every journal entry from now on.
pub fn set_ids(member: u64, cluster: u64) {
    MEMBER_ID.store(member, Ordering::Relaxed);
    CLUSTER_ID.store(cluster, Ordering::Relaxed);
}

/// True when stderr is connected to the journal (systemd sets JOURNAL_STREAM to
/// the device and inode of the stream it gave us).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer we own; we read it only on success.
    let ok = unsafe { libc::fstat(2, st.as_mut_ptr()) } == 0;
    if !ok {
        return false;
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Sends log events to journald natively when stderr is the journal.
pub fn init_journal_logging() -> bool {
    if !stderr_is_journal() {
        return false;
    }
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    if sock.connect(JOURNAL_SOCKET).is_err() {
        return false;
    }
    let _ = JOURNAL.set(sock);
    crate::log::set_sink(journal_sink);
    true
}

fn priority(l: Level) -> u8 {
    match l {
        Level::Debug => 7,
        Level::Info => 6,
        Level::Warn => 4,
        Level::Error => 3,
        Level::Fatal => 2,
    }
}

/// A journald field name: upper-case letters, digits and underscores, not
/// starting with an underscore or a digit.
fn field_name(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('_') || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.remove(0);
    }
    if s.is_empty() { "FIELD".into() } else { s }
}

fn push_field(buf: &mut Vec<u8>, name: &str, value: &str) {
    if value.contains('\n') {
        // Binary-safe form: name, newline, 64-bit little-endian length, data, newline.
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    } else {
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
}

/// Encodes one journal entry in journald's native protocol.
pub fn journal_entry(level: Level, msg: &str, fields: &[(&str, String)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    push_field(&mut buf, "MESSAGE", msg);
    push_field(&mut buf, "PRIORITY", &priority(level).to_string());
    push_field(&mut buf, "SYSLOG_IDENTIFIER", "etcd");
    push_field(&mut buf, "LEVEL", level.as_str());
    let m = MEMBER_ID.load(Ordering::Relaxed);
    if m != 0 {
        push_field(&mut buf, "MEMBER_ID", &format!("{m:x}"));
        push_field(
            &mut buf,
            "CLUSTER_ID",
            &format!("{:x}", CLUSTER_ID.load(Ordering::Relaxed)),
        );
    }
    for (k, v) in fields {
        let name = field_name(k);
        if matches!(
            name.as_str(),
            "MESSAGE" | "PRIORITY" | "SYSLOG_IDENTIFIER" | "MEMBER_ID" | "CLUSTER_ID"
        ) {
            continue;
        }
        push_field(&mut buf, &name, v);
    }
    buf
}

fn journal_sink(level: Level, msg: &str, fields: &[(&str, String)]) {
    let entry = journal_entry(level, msg, fields);
    let sent = JOURNAL
        .get()
        .map(|s| s.send(&entry).is_ok())
        .unwrap_or(false);
    if !sent {
        // Too large for a datagram, or the journal is gone: fall back to stderr.
        use std::io::Write;
        let mut line = format!("{} {}", level.as_str(), msg);
        for (k, v) in fields {
            line.push_str(&format!(" {k}={v}"));
        }
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries_are_native_protocol() {
        let e = journal_entry(
            Level::Warn,
            "hello",
            &[("took", "5ms".into()), ("multi", "a\nb".into())],
        );
        let s = String::from_utf8_lossy(&e);
        assert!(s.starts_with("MESSAGE=hello\nPRIORITY=4\nSYSLOG_IDENTIFIER=etcd\n"));
        assert!(s.contains("TOOK=5ms\n"));
        let mut bin = b"MULTI\n".to_vec();
        bin.extend_from_slice(&3u64.to_le_bytes());
        bin.extend_from_slice(b"a\nb\n");
        assert!(e.windows(bin.len()).any(|w| w == bin.as_slice()));
        assert_eq!(field_name("_9local-member.id"), "LOCAL_MEMBER_ID");
    }
}
