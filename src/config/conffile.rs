//! Reader for the environment-style conf file (`/etc/etcd/etcd.conf`):
//! `ETCD_KEY=value` lines, as also read by systemd's `EnvironmentFile=`.

use std::path::Path;

use super::ConfigError;

/// One `KEY=value` assignment, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub line: usize,
    pub key: String,
    pub value: String,
}

/// Splits the text of a conf file into assignments. Key names are not checked here.
///
/// Accepted syntax: blank lines; lines whose first non-blank character is `#`
/// (comments and section markers such as `#[Member]`); an optional leading
/// `export `; `KEY = value` with blanks around `=`; values in double quotes
/// (with `\"`, `\\`, `\n`, `\t` and `\$` escapes), in single quotes (taken
/// literally) or bare, where a ` #` starts a trailing comment.
pub(super) fn parse_text(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut entries = Vec::new();
    for (idx, raw_line) in text.lines().enumerate() {
        let line = idx + 1;
        let malformed = |reason: String| ConfigError::MalformedFileLine {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut s = raw_line.trim();
        if s.is_empty() || s.starts_with('#') || s.starts_with(';') {
            continue;
        }
        if let Some(rest) = s.strip_prefix("export")
            && rest.starts_with([' ', '\t'])
        {
            s = rest.trim_start();
        }
        let Some((key, rest)) = s.split_once('=') else {
            return Err(malformed(format!("expected KEY=value, found {s:?}")));
        };
        let key = key.trim();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(malformed(format!("invalid key name {key:?}")));
        }
        let value = parse_value(rest.trim_start())
            .map_err(|reason| malformed(format!("{key}: {reason}")))?;
        entries.push(Entry {
            line,
            key: key.to_string(),
            value,
        });
    }
    Ok(entries)
}

fn parse_value(v: &str) -> Result<String, String> {
    let (value, after) = if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e @ ('"' | '\\' | '$' | '\''))) => out.push(e),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                },
                _ => out.push(c),
            }
        }
        let Some(end) = end else {
            return Err("unterminated double-quoted value".to_string());
        };
        (out, &body[end..])
    } else if let Some(body) = v.strip_prefix('\'') {
        let Some(end) = body.find('\'') else {
            return Err("unterminated single-quoted value".to_string());
        };
        (body[..end].to_string(), &body[end + 1..])
    } else {
        let bytes = v.as_bytes();
        let comment = (0..bytes.len()).find(|&i| {
            bytes[i] == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t')
        });
        let bare = comment.map_or(v, |i| &v[..i]);
        return Ok(bare.trim_end().to_string());
    };
    let after = after.trim();
    if !after.is_empty() && !after.starts_with('#') {
        return Err(format!("unexpected text {after:?} after the closing quote"));
    }
    Ok(value)
}

/// Reads and splits a conf file. Returns `Ok(None)` when the file does not
/// exist and `required` is false.
pub(super) fn read(path: &Path, required: bool) -> Result<Option<Vec<Entry>>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_text(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(source) => Err(ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(usize, String, String)> {
        parse_text(Path::new("t.conf"), text)
            .unwrap()
            .into_iter()
            .map(|e| (e.line, e.key, e.value))
            .collect()
    }

    #[test]
    fn syntax_forms() {
        let text = "\
#[Member]
ETCD_NAME=\"node1\"
  ETCD_DATA_DIR = '/var/lib/etcd'   # comment
export ETCD_WAL_DIR=/wal # trailing comment

ETCD_INITIAL_CLUSTER=\"a=http://h:2380,b=http://i:2380\" # c
ETCD_X=a#b
ETCD_Y=
ETCD_Z=\"say \\\"hi\\\"\"
";
        assert_eq!(
            values(text),
            vec![
                (2, "ETCD_NAME".into(), "node1".into()),
                (3, "ETCD_DATA_DIR".into(), "/var/lib/etcd".into()),
                (4, "ETCD_WAL_DIR".into(), "/wal".into()),
                (
                    6,
                    "ETCD_INITIAL_CLUSTER".into(),
                    "a=http://h:2380,b=http://i:2380".into()
                ),
                (7, "ETCD_X".into(), "a#b".into()),
                (8, "ETCD_Y".into(), "".into()),
                (9, "ETCD_Z".into(), "say \"hi\"".into()),
            ]
        );
    }

    #[test]
    fn malformed_lines() {
        let err = parse_text(Path::new("/x.conf"), "\n\nETCD_NAME\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x.conf:3: expected KEY=value, found \"ETCD_NAME\""
        );
        let err = parse_text(Path::new("/x.conf"), "ETCD_NAME=\"abc\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x.conf:1: ETCD_NAME: unterminated double-quoted value"
        );
        let err = parse_text(Path::new("/x.conf"), "ETCD_NAME=\"a\" b\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/x.conf:1: ETCD_NAME: unexpected text")
        );
    }
}
