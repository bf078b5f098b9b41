//! Structured logging: one JSON object per line on stderr, shaped like etcd's zap
//! output (`level`, `ts`, `msg`, then the event's fields), so that tools which grep
//! etcd's log lines keep working. The `systemd` module may redirect events to the
//! journal; everything goes through [`emit`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

/// Severity, ordered from most to least verbose (etcd's zap levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
    Fatal = 4,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }
}

static MIN_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the lowest level that is written.
pub fn set_level(level: Level) {
    MIN_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 >= MIN_LEVEL.load(Ordering::Relaxed)
}

/// Appends `s` to `out` as a JSON string literal.
pub fn json_escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats a UNIX time in milliseconds as RFC 3339 UTC (`2024-01-02T03:04:05.678Z`).
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A sink that receives every event instead of stderr (the journal, for example).
pub type Sink = fn(Level, &str, &[(&str, String)]);

static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();

/// Routes all further events to `sink`. Only the first call has an effect.
pub fn set_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Writes one event. Field values are already formatted.
pub fn emit(level: Level, msg: &str, fields: &[(&str, String)]) {
    if !enabled(level) {
        return;
    }
    if let Some(sink) = SINK.get() {
        sink(level, msg, fields);
        return;
    }
    let mut line = String::with_capacity(128);
    line.push_str("{\"level\":\"");
    line.push_str(level.as_str());
    line.push_str("\",\"ts\":\"");
    line.push_str(&rfc3339_millis(now_ms()));
    line.push_str("\",\"msg\":");
    json_escape(&mut line, msg);
    for (k, v) in fields {
        line.push(',');
        json_escape(&mut line, k);
        line.push(':');
        json_escape(&mut line, v);
    }
    line.push_str("}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `log_event!(Level::Info, "message", key = value, ...)`; values use `Display`.
#[macro_export]
macro_rules! log_event {
    ($lvl:expr, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {{
        if $crate::log::enabled($lvl) {
            $crate::log::emit($lvl, &$msg, &[$((stringify!($k), format!("{}", $v))),*]);
        }
    }};
}

#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log_event!($crate::log::Level::Debug, $($t)*) }; }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log_event!($crate::log::Level::Info, $($t)*) }; }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log_event!($crate::log::Level::Warn, $($t)*) }; }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log_event!($crate::log::Level::Error, $($t)*) }; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_798_761_599_000),
            "2026-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn escapes_json() {
        let mut s = String::new();
        json_escape(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
