//! The process's own metrics, as Prometheus' process collector for Go
//! writes them (`process_*`), and etcd's `os_fd_*`: read from `/proc/self`
//! and `getrlimit` at each scrape; the start time once, at member start.

use std::fmt::Write;
use std::sync::OnceLock;

use super::{gauge, go_float, header};

static START_TIME: OnceLock<f64> = OnceLock::new();

/// Reads the process start time once (at member start, so the value is the
/// process's).
pub fn init_process() {
    let _ = START_TIME.get_or_init(process_start_time);
}

fn process_start_time() -> f64 {
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ").map(|v| v.trim().parse::<f64>()))
            .and_then(|r| r.ok())
    });
    let start_ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().nth(19)?.parse::<f64>().ok()
        });
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    match (boot, start_ticks) {
        (Some(b), Some(t)) => b + t / ticks,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    }
}

/// The soft limit of open files, as Go's `syscall.Getrlimit` reads it.
fn fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit for the call to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some(r.rlim_cur)
}

fn address_space_limit() -> Option<f64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) };
    (rc == 0).then_some(if r.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX as f64
    } else {
        r.rlim_cur as f64
    })
}

/// process_* as Prometheus' process collector writes them, and etcd's os_fd_*.
pub(super) fn proc_stats(out: &mut String) {
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as i64)
        .unwrap_or(0);
    let limit = fd_limit().unwrap_or(0) as i64;
    gauge(out, "os_fd_limit", "The file descriptor limit.", limit);
    gauge(
        out,
        "os_fd_used",
        "The number of used file descriptors.",
        fds,
    );
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may contain spaces) start after ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14 and stime 15 of stat; `f` starts at field 3.
    let cpu = (get(11) + get(12)) / ticks;
    let vsize = get(20);
    let rss = get(21) * page;
    let w = |out: &mut String, name: &str, help: &str, kind: &str, v: f64| {
        header(out, name, help, kind);
        let _ = writeln!(out, "{name} {}", go_float(v));
    };
    w(
        out,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        cpu,
    );
    w(
        out,
        "process_max_fds",
        "Maximum number of open file descriptors.",
        "gauge",
        limit as f64,
    );
    w(
        out,
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        fds as f64,
    );
    w(
        out,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        rss,
    );
    w(
        out,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        *START_TIME.get_or_init(process_start_time),
    );
    w(
        out,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        vsize,
    );
    w(
        out,
        "process_virtual_memory_max_bytes",
        "Maximum amount of virtual memory available in bytes.",
        "gauge",
        address_space_limit().unwrap_or(0.0),
    );
}
