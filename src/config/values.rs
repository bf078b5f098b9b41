//! Parsers for the textual value forms accepted by etcd's flags: Go-style
//! booleans, integers and durations, URL lists and `name=url` cluster lists.
//!
//! Every parser returns `Err(reason)` where `reason` completes a sentence such
//! as `invalid value "abc": <reason>`.

use std::net::IpAddr;
use std::time::Duration;

/// Parses a boolean the way Go's `strconv.ParseBool` does.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected a boolean (true or false)".to_string()),
    }
}

/// Splits an optional Go base prefix (`0x`, `0o`, `0b`, legacy leading `0`)
/// from the digits. Underscores are only allowed together with a prefix, as in Go.
fn split_radix(digits: &str) -> Option<(u32, String)> {
    let lower = digits.to_ascii_lowercase();
    let (radix, rest, prefixed) = if let Some(r) = lower.strip_prefix("0x") {
        (16, r.to_string(), true)
    } else if let Some(r) = lower.strip_prefix("0o") {
        (8, r.to_string(), true)
    } else if let Some(r) = lower.strip_prefix("0b") {
        (2, r.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower, false)
    };
    if rest.contains('_') {
        if !prefixed || rest.starts_with('_') || rest.ends_with('_') || rest.contains("__") {
            return None;
        }
        return Some((radix, rest.replace('_', "")));
    }
    if rest.is_empty() {
        return None;
    }
    Some((radix, rest))
}

/// Parses an unsigned integer like Go's `strconv.ParseUint(v, 0, 64)`.
/// `unit` is appended to the error text, e.g. `" (milliseconds)"`.
pub fn parse_u64(v: &str, unit: &str) -> Result<u64, String> {
    let syntax = || format!("expected an integer{unit}");
    if let Some(rest) = v.strip_prefix('-') {
        return if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            Err(format!("expected a non-negative integer{unit}"))
        } else {
            Err(syntax())
        };
    }
    let digits = v.strip_prefix('+').unwrap_or(v);
    let (radix, rest) = split_radix(digits).ok_or_else(syntax)?;
    if !rest.bytes().all(|b| (b as char).is_digit(radix)) {
        return Err(syntax());
    }
    u64::from_str_radix(&rest, radix).map_err(|_| format!("value out of range{unit}"))
}

/// Parses a signed integer like Go's `strconv.ParseInt(v, 0, 64)`.
pub fn parse_i64(v: &str, unit: &str) -> Result<i64, String> {
    let syntax = || format!("expected an integer{unit}");
    let (neg, digits) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    let (radix, rest) = split_radix(digits).ok_or_else(syntax)?;
    if !rest.bytes().all(|b| (b as char).is_digit(radix)) {
        return Err(syntax());
    }
    let magnitude =
        i128::from_str_radix(&rest, radix).map_err(|_| format!("value out of range{unit}"))?;
    let value = if neg { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| format!("value out of range{unit}"))
}

/// Parses an unsigned integer that must fit in `T`.
pub fn parse_uint<T: TryFrom<u64>>(v: &str, unit: &str) -> Result<T, String> {
    let n = parse_u64(v, unit)?;
    T::try_from(n).map_err(|_| format!("value out of range{unit}"))
}

const DURATION_HINT: &str = "expected a duration such as 500ms, 10s, 5m or 1h30m";

/// Parses a Go duration string (`time.ParseDuration`): a sequence of decimal
/// numbers with optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`,
/// `m`, `h`), e.g. `300ms`, `1.5h`, `2h45m`. A bare `0` is accepted.
/// Negative durations are rejected.
pub fn parse_go_duration(v: &str) -> Result<Duration, String> {
    let mut s = v;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return if s == "-0" {
            Ok(Duration::ZERO)
        } else {
            Err("expected a non-negative duration".to_string())
        };
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DURATION_HINT.to_string());
    }
    let mut total: f64 = 0.0;
    let mut total_ns: u128 = 0;
    while !s.is_empty() {
        let num_len = s
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let num = &s[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(DURATION_HINT.to_string());
        }
        s = &s[num_len..];
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => return Err(format!("missing unit in duration; {DURATION_HINT}")),
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in duration; {DURATION_HINT}"
                ));
            }
        };
        match num.split_once('.') {
            None => {
                let whole: u128 = num.parse().map_err(|_| DURATION_HINT.to_string())?;
                total_ns = whole
                    .checked_mul(unit_ns)
                    .and_then(|x| total_ns.checked_add(x))
                    .ok_or_else(|| "duration out of range".to_string())?;
            }
            Some((whole, frac)) => {
                let whole: u128 = if whole.is_empty() {
                    0
                } else {
                    whole.parse().map_err(|_| DURATION_HINT.to_string())?
                };
                total_ns = whole
                    .checked_mul(unit_ns)
                    .and_then(|x| total_ns.checked_add(x))
                    .ok_or_else(|| "duration out of range".to_string())?;
                if !frac.is_empty() {
                    let f: f64 = format!("0.{frac}")
                        .parse()
                        .map_err(|_| DURATION_HINT.to_string())?;
                    total += f * unit_ns as f64;
                }
            }
        }
    }
    // The float cast saturates; the sum may not fit even a u128.
    let ns = total_ns
        .checked_add(total.round() as u128)
        .and_then(|ns| u64::try_from(ns).ok())
        .ok_or_else(|| "duration out of range".to_string())?;
    Ok(Duration::from_nanos(ns))
}

/// Duration in whole milliseconds (sub-millisecond non-zero values round up to 1).
pub fn duration_ms(d: Duration) -> u64 {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        1
    } else {
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

/// What a URL is used for, which decides how strictly its host is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlUse {
    /// A listen address: the host must be an IP address or `localhost`.
    Bind,
    /// An advertised address: the host must not be empty.
    Advertise,
    /// Only the URL form is checked.
    Any,
}

/// Validates one URL the way etcd does and returns it normalized
/// (trimmed, scheme lower-cased).
pub fn parse_url(raw: &str, usage: UrlUse) -> Result<String, String> {
    let u = raw.trim();
    let Some((scheme, rest)) = u.split_once("://") else {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {u:?}"
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "http" | "https" => {
            let (authority, tail) = match rest.find(['/', '?', '#']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if !tail.is_empty() {
                return Err(format!("URL must not contain a path: {u:?}"));
            }
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = split_host_port(authority).ok_or_else(|| {
                format!("URL address does not have the form \"host:port\": {u:?}")
            })?;
            if port.parse::<u16>().is_err() {
                return Err(format!(
                    "URL port must be a number between 0 and 65535: {u:?}"
                ));
            }
            match usage {
                UrlUse::Bind => {
                    if host != "localhost" && host.parse::<IpAddr>().is_err() {
                        return Err(format!("expected IP in URL for binding ({u})"));
                    }
                }
                UrlUse::Advertise => {
                    if host.is_empty() {
                        return Err(format!("unexpected empty host ({u})"));
                    }
                }
                UrlUse::Any => {}
            }
        }
        "unix" | "unixs" => {
            // As etcd: the socket file is named by the URL's host:port, so it
            // must have that form and no path; its host is not checked.
            let (authority, tail) = match rest.find(['/', '?', '#']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if split_host_port(authority).is_none() {
                return Err(format!(
                    "URL address does not have the form \"host:port\": {u:?}"
                ));
            }
            if !tail.is_empty() {
                return Err(format!("URL must not contain a path: {u:?}"));
            }
        }
        _ => {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {u:?}"
            ));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Splits `host:port` or `[v6]:port`, as Go's `net.SplitHostPort` does.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        if port.contains(':') {
            return None;
        }
        return Some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') || host.contains('[') || host.contains(']') {
        return None;
    }
    Some((host, port))
}

/// Parses a comma-separated URL list. As etcd does, the result is de-duplicated
/// and sorted. `allow_empty` accepts an empty value as an empty list.
pub fn parse_url_list(v: &str, usage: UrlUse, allow_empty: bool) -> Result<Vec<String>, String> {
    if v.trim().is_empty() {
        return if allow_empty {
            Ok(Vec::new())
        } else {
            Err("expected at least one URL".to_string())
        };
    }
    let mut out = Vec::new();
    for part in v.split(',') {
        out.push(parse_url(part, usage)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Parses `name=url,name=url,...` (a name may appear several times). Empty
/// elements are skipped; an empty value yields an empty list.
pub fn parse_initial_cluster(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in v.split(',') {
        if item.is_empty() {
            continue;
        }
        let (name, url) = item.split_once('=').unwrap_or((item, ""));
        let url = parse_url(url, UrlUse::Any).map_err(|e| format!("member {name:?}: {e}"))?;
        let pair = (name.to_string(), url);
        if !out.contains(&pair) {
            out.push(pair);
        }
    }
    Ok(out)
}

/// Formats a cluster list back into etcd's `name=url,...` notation.
pub fn format_initial_cluster(members: &[(String, String)]) -> String {
    members
        .iter()
        .map(|(n, u)| format!("{n}={u}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits a comma-separated list, dropping empty items.
pub fn parse_string_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Accepts one of `choices` exactly.
pub fn parse_choice<'a>(v: &str, choices: &[&'a str]) -> Result<&'a str, String> {
    choices.iter().copied().find(|c| *c == v).ok_or_else(|| {
        let list = choices
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("expected one of {list}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_booleans() {
        assert_eq!(parse_bool("T"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn go_integers() {
        assert_eq!(parse_u64("100", ""), Ok(100));
        assert_eq!(parse_u64("0x10", ""), Ok(16));
        assert_eq!(parse_u64("0o10", ""), Ok(8));
        assert_eq!(parse_u64("010", ""), Ok(8));
        assert_eq!(parse_u64("1_000", "").ok(), None);
        assert_eq!(parse_u64("0x1_0", ""), Ok(16));
        assert_eq!(
            parse_u64("abc", " (milliseconds)"),
            Err("expected an integer (milliseconds)".to_string())
        );
        assert!(parse_u64("-1", "").is_err());
        assert_eq!(parse_i64("-5", ""), Ok(-5));
        assert_eq!(parse_uint::<u32>("4294967296", "").ok(), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(parse_go_duration(".5s"), Ok(Duration::from_millis(500)));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("10x").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("-1s").is_err());
        // Whole units that fill a u128, then a fraction: out of range, not a
        // wrapped-around short duration.
        assert!(parse_go_duration(&format!("{}ns.9h", u128::MAX)).is_err());
        assert!(parse_go_duration(&format!("{}ns", u64::MAX)).is_ok());
        assert!(parse_go_duration(&format!("{}ns", u128::from(u64::MAX) + 1)).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url_list("http://b:1,http://a:1,http://a:1", UrlUse::Any, false),
            Ok(vec!["http://a:1".to_string(), "http://b:1".to_string()])
        );
        assert!(parse_url("http://10.0.0.1:2379", UrlUse::Bind).is_ok());
        assert!(parse_url("http://[::1]:2379", UrlUse::Bind).is_ok());
        assert!(parse_url("https://localhost:2379", UrlUse::Bind).is_ok());
        assert!(parse_url("http://example.com:2379", UrlUse::Bind).is_err());
        assert!(parse_url("http://example.com:2379", UrlUse::Advertise).is_ok());
        assert!(parse_url("http://:2379", UrlUse::Advertise).is_err());
        assert!(parse_url("http://host", UrlUse::Any).is_err());
        assert!(parse_url("http://host:2379/path", UrlUse::Any).is_err());
        assert!(parse_url("ftp://host:21", UrlUse::Any).is_err());
        assert!(parse_url("localhost:2379", UrlUse::Any).is_err());
        assert!(parse_url("unix://localhost:1234", UrlUse::Bind).is_ok());
        assert!(parse_url("unixs://m1:0", UrlUse::Advertise).is_ok());
        assert!(parse_url("unix:///tmp/etcd.sock", UrlUse::Bind).is_err());
        assert!(parse_url("unix://localhost:1234/x", UrlUse::Bind).is_err());
        assert!(parse_url_list("", UrlUse::Any, false).is_err());
        assert_eq!(parse_url_list("", UrlUse::Any, true), Ok(vec![]));
    }

    #[test]
    fn cluster_lists() {
        let c =
            parse_initial_cluster("a=http://h1:2380,b=http://h2:2380,a=http://h3:2380").unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[2], ("a".to_string(), "http://h3:2380".to_string()));
        assert!(parse_initial_cluster("a").is_err());
        assert_eq!(parse_initial_cluster(""), Ok(vec![]));
        assert_eq!(
            format_initial_cluster(&c),
            "a=http://h1:2380,b=http://h2:2380,a=http://h3:2380"
        );
    }
}
