//! `etcdutl`: offline tools for a member's data, as etcd's etcdutl.
//!
//!     etcdutl snapshot status <file> [-w table|simple|json|fields]
//!     etcdutl snapshot restore <file> [--data-dir <dir>] [--name <name>]
//!         [--initial-cluster ...] [--initial-cluster-token ...]
//!         [--initial-advertise-peer-urls ...] [--skip-hash-check]
//!         [--bump-revision <n> [--mark-compacted]]
//!
//! Both read snapshots in etcd's format (from etcd 3.4 to 3.6, or from
//! etcd-rs; `--skip-hash-check` for a `member/snap/db` copied from a stopped
//! member) and in etcd-rs's earlier format. A restored directory holds the
//! snapshot's keys, leases, alarms and auth; start a member on it with
//! `--initial-cluster-state new` and the cluster flags (the flags `snapshot
//! restore` takes for them are accepted and not needed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::exit;

use etcd_rs::storage::etcd_snapshot::RestoreOptions;
use etcd_rs::storage::snapshot;

/// Flags that take no value (`--flag`, or `--flag=true|false`).
const BOOL_FLAGS: &[&str] = &["skip-hash-check", "mark-compacted", "debug"];

fn usage() -> ! {
    eprintln!(
        "usage:\n  etcdutl snapshot status <file> [-w table|simple|json|fields]\n  etcdutl snapshot restore <file> [--data-dir <dir>] [--name <name>] [--skip-hash-check] [--bump-revision <n>] [--mark-compacted]"
    );
    exit(2)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("Error: {msg}");
    exit(1)
}

/// Sizes as Go's `humanize.Bytes` prints them (etcdctl's TOTAL SIZE).
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let val = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

/// A table as etcdctl prints one (tablewriter: headers centred, cells
/// right-aligned, one space of padding).
fn table(headers: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let line: String = widths.iter().fold("+".to_string(), |mut s, w| {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
        s
    });
    let mut out = format!("{line}\n|");
    for (h, w) in headers.iter().zip(&widths) {
        let pad = w - h.len();
        let left = pad / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(pad - left)
        ));
    }
    out.push_str(&format!("\n{line}\n|"));
    for (c, w) in row.iter().zip(&widths) {
        out.push_str(&format!(" {c:>w$} |"));
    }
    out.push_str(&format!("\n{line}"));
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "version" || a == "--version") {
        println!("etcdutl version: {}", etcd_rs::config::SERVER_VERSION);
        println!("API version: 3.5");
        return;
    }
    if args.len() < 2 || args[0] != "snapshot" {
        usage();
    }
    let mut file = None;
    let mut opts: HashMap<String, String> = HashMap::new();
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        if !a.starts_with('-') {
            if file.replace(PathBuf::from(a)).is_some() {
                fail(format!("unexpected argument {a:?}"));
            }
            i += 1;
            continue;
        }
        let a = a.trim_start_matches('-');
        if let Some((k, v)) = a.split_once('=') {
            opts.insert(k.to_string(), v.to_string());
            i += 1;
        } else if BOOL_FLAGS.contains(&a) {
            opts.insert(a.to_string(), "true".into());
            i += 1;
        } else {
            let Some(v) = args.get(i + 1) else {
                fail(format!("flag needs an argument: --{a}"));
            };
            opts.insert(a.to_string(), v.clone());
            i += 2;
        }
    }
    let Some(file) = file else {
        fail("snapshot path is required");
    };
    let flag = |k: &str| match opts.get(k).map(String::as_str) {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(v) => fail(format!("invalid boolean value {v:?} for --{k}")),
    };
    match args[1].as_str() {
        "status" => match snapshot::status(&file) {
            Ok(st) => {
                let size = human_bytes(st.total_size);
                match opts.get("w").or(opts.get("write-out")).map(String::as_str) {
                    Some("table") => println!(
                        "{}",
                        table(
                            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                            &[
                                format!("{:x}", st.hash),
                                st.revision.to_string(),
                                st.total_keys.to_string(),
                                size,
                            ],
                        )
                    ),
                    Some("json") => println!(
                        "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
                        st.hash, st.revision, st.total_keys, st.total_size
                    ),
                    Some("fields") => {
                        println!("\"Hash\" : {}", st.hash);
                        println!("\"Revision\" : {}", st.revision);
                        println!("\"Keys\" : {}", st.total_keys);
                        println!("\"Size\" : {}", st.total_size);
                    }
                    None | Some("simple") => println!(
                        "{:x}, {}, {}, {}",
                        st.hash, st.revision, st.total_keys, size
                    ),
                    Some(other) => fail(format!("unknown output format {other:?}")),
                }
            }
            Err(e) => fail(e),
        },
        "restore" => {
            let dir = match opts.get("data-dir") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => {
                    let name = opts
                        .get("name")
                        .cloned()
                        .unwrap_or_else(|| "default".into());
                    PathBuf::from(format!("{name}.etcd"))
                }
            };
            let bump_revision = match opts.get("bump-revision") {
                None => 0,
                Some(v) => v
                    .parse::<u64>()
                    .unwrap_or_else(|_| fail(format!("invalid value {v:?} for --bump-revision"))),
            };
            let ropts = RestoreOptions {
                skip_hash_check: flag("skip-hash-check"),
                bump_revision,
                mark_compacted: flag("mark-compacted"),
            };
            match snapshot::restore_with(&file, &dir, ropts) {
                Ok(()) => println!(
                    "restored snapshot {} into {}; start a member on it with --initial-cluster-state new",
                    file.display(),
                    dir.display()
                ),
                Err(e) => fail(e),
            }
        }
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_humanize_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(24576), "25 kB");
        assert_eq!(human_bytes(1_572_864), "1.6 MB");
    }
}
