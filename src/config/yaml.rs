//! Loader for etcd's YAML configuration file (`--config-file`).
//!
//! Top-level keys are etcd's option names (the flag names, e.g. `data-dir`,
//! `listen-client-urls: http://a:2379,http://b:2379`), plus the nested
//! `client-transport-security`, `peer-transport-security` and
//! `socket-options` mappings. As in etcd, an integer given for a duration
//! option counts nanoseconds; Go duration strings such as `10m` are accepted
//! too. Lists (`log-outputs`, `cipher-suites`, `allowed-cn`, ...) may be YAML
//! sequences or comma-separated strings. Unknown keys produce a warning.

use std::path::Path;

use serde_yaml::Value;

use super::flags::{self, Arg, FlagSpec, Support};
use super::values::parse_string_list;
use super::{ConfigError, Draft, Origin};

pub(super) fn load(path: &Path, draft: &mut Draft) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(path, &text, draft)
}

pub(super) fn load_str(path: &Path, text: &str, draft: &mut Draft) -> Result<(), ConfigError> {
    let syntax = |message: String| ConfigError::ConfigFileSyntax {
        path: path.to_path_buf(),
        message,
    };
    let doc: Value = serde_yaml::from_str(text).map_err(|e| syntax(e.to_string()))?;
    let map = match doc {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        _ => {
            return Err(syntax(
                "expected a mapping of option names to values".to_string(),
            ));
        }
    };
    for (k, v) in &map {
        let Some(key) = k.as_str() else {
            return Err(syntax(format!("option names must be strings, found {k:?}")));
        };
        match key {
            "client-transport-security" | "peer-transport-security" | "socket-options" => {
                let sub = match v {
                    Value::Null => continue,
                    Value::Mapping(m) => m,
                    _ => {
                        return Err(syntax(format!("{key}: expected a mapping")));
                    }
                };
                for (sk, sv) in sub {
                    let Some(skey) = sk.as_str() else {
                        return Err(syntax(format!(
                            "{key}: option names must be strings, found {sk:?}"
                        )));
                    };
                    let full = format!("{key}.{skey}");
                    if key == "client-transport-security" && skey == "allowed-cn" {
                        if let Some(text) = scalar_text(path, &full, sv, Arg::Value)? {
                            let items = parse_string_list(&text);
                            draft.cfg.client_tls.allowed_cn =
                                (!items.is_empty()).then(|| items.join(","));
                        }
                        continue;
                    }
                    match nested_flag(key, skey).and_then(flags::lookup) {
                        Some(spec) => apply(path, &full, spec, sv, draft)?,
                        None => draft.cfg.warnings.push(unknown_key(path, &full)),
                    }
                }
            }
            "experimental-snapshot-catch-up-entries" => {
                if let Some(spec) = flags::lookup("experimental-snapshot-catchup-entries") {
                    apply(path, key, spec, v, draft)?;
                }
            }
            _ => match flags::lookup(key) {
                Some(spec) if matches!(spec.support, Support::Yes | Support::No) => {
                    apply(path, key, spec, v, draft)?
                }
                _ => draft.cfg.warnings.push(unknown_key(path, key)),
            },
        }
    }
    Ok(())
}

fn unknown_key(path: &Path, key: &str) -> String {
    format!(
        "unknown key {key:?} in configuration file {}; ignoring it",
        path.display()
    )
}

/// The flag behind a key of a nested YAML section.
fn nested_flag(section: &str, key: &str) -> Option<&'static str> {
    Some(match (section, key) {
        ("client-transport-security", "cert-file") => "cert-file",
        ("client-transport-security", "key-file") => "key-file",
        ("client-transport-security", "client-cert-file") => "client-cert-file",
        ("client-transport-security", "client-key-file") => "client-key-file",
        ("client-transport-security", "client-cert-auth") => "client-cert-auth",
        ("client-transport-security", "trusted-ca-file") => "trusted-ca-file",
        ("client-transport-security", "auto-tls") => "auto-tls",
        ("client-transport-security", "crl-file") => "client-crl-file",
        ("client-transport-security", "allowed-hostname") => "client-cert-allowed-hostname",
        ("peer-transport-security", "cert-file") => "peer-cert-file",
        ("peer-transport-security", "key-file") => "peer-key-file",
        ("peer-transport-security", "client-cert-file") => "peer-client-cert-file",
        ("peer-transport-security", "client-key-file") => "peer-client-key-file",
        ("peer-transport-security", "client-cert-auth") => "peer-client-cert-auth",
        ("peer-transport-security", "trusted-ca-file") => "peer-trusted-ca-file",
        ("peer-transport-security", "auto-tls") => "peer-auto-tls",
        ("peer-transport-security", "crl-file") => "peer-crl-file",
        ("peer-transport-security", "allowed-cn") => "peer-cert-allowed-cn",
        ("peer-transport-security", "allowed-hostname") => "peer-cert-allowed-hostname",
        ("socket-options", "reuse-port") => "socket-reuse-port",
        ("socket-options", "reuse-address") => "socket-reuse-address",
        _ => return None,
    })
}

fn apply(
    path: &Path,
    key: &str,
    spec: &'static FlagSpec,
    v: &Value,
    draft: &mut Draft,
) -> Result<(), ConfigError> {
    let Some(text) = scalar_text(path, key, v, spec.arg)? else {
        return Ok(());
    };
    if spec.arg == Arg::Urls && text.is_empty() {
        return Ok(());
    }
    draft
        .apply(spec, &text, Origin::Yaml(path.to_path_buf()))
        .map_err(|reason| ConfigError::InvalidConfigFileValue {
            path: path.to_path_buf(),
            key: key.to_string(),
            value: text,
            reason,
        })
}

/// The textual form of a YAML value, or `None` for null (option left unset).
fn scalar_text(path: &Path, key: &str, v: &Value, arg: Arg) -> Result<Option<String>, ConfigError> {
    let bad = |what: &str| ConfigError::InvalidConfigFileValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: format!("{v:?}"),
        reason: format!("expected a single value, not {what}"),
    };
    Ok(match v {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            if arg == Arg::Duration && (n.is_i64() || n.is_u64()) {
                Some(format!("{n}ns"))
            } else {
                Some(n.to_string())
            }
        }
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match scalar_text(path, key, item, arg)? {
                    Some(s) => parts.push(s),
                    None => continue,
                }
            }
            Some(parts.join(","))
        }
        Value::Mapping(_) => return Err(bad("a mapping")),
        Value::Tagged(t) => return scalar_text(path, key, &t.value, arg),
    })
}
