//! `etcdutl`: offline tools for a member's data, as etcd's etcdutl.
//!
//!     etcdutl snapshot status <file> [-w table|simple|json]
//!     etcdutl snapshot restore <file> --data-dir <dir> [etcd's restore flags]
//!
//! A restored directory holds the snapshot's keys, leases, alarms and auth; start
//! a member on it with `--initial-cluster-state new` and the cluster flags (the
//! flags `snapshot restore` takes for them are accepted and not needed).

use std::path::PathBuf;
use std::process::exit;

use etcd_rs::storage::snapshot;

fn usage() -> ! {
    eprintln!(
        "usage:\n  etcdutl snapshot status <file> [-w table|simple|json]\n  etcdutl snapshot restore <file> --data-dir <dir>"
    );
    exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "version" || a == "--version") {
        println!("etcdutl version: {}", etcd_rs::config::SERVER_VERSION);
        println!("API version: 3.5");
        return;
    }
    if args.len() < 3 || args[0] != "snapshot" {
        usage();
    }
    let file = PathBuf::from(&args[2]);
    let mut opts = std::collections::HashMap::new();
    let mut i = 3;
    while i < args.len() {
        let a = args[i].trim_start_matches('-').to_string();
        if let Some((k, v)) = a.split_once('=') {
            opts.insert(k.to_string(), v.to_string());
            i += 1;
        } else {
            let v = args.get(i + 1).cloned().unwrap_or_default();
            opts.insert(a, v);
            i += 2;
        }
    }
    match args[1].as_str() {
        "status" => match snapshot::status(&file) {
            Ok(st) => {
                let size = format!("{:.1} kB", st.total_size as f64 / 1000.0);
                match opts.get("w").or(opts.get("write-out")).map(String::as_str) {
                    Some("table") => {
                        println!("+----------+----------+------------+------------+");
                        println!("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |");
                        println!("+----------+----------+------------+------------+");
                        println!(
                            "| {:08x} | {:>8} | {:>10} | {:>10} |",
                            st.hash, st.revision, st.total_keys, size
                        );
                        println!("+----------+----------+------------+------------+");
                    }
                    Some("json") => println!(
                        "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
                        st.hash, st.revision, st.total_keys, st.total_size
                    ),
                    _ => println!(
                        "{:x}, {}, {}, {}",
                        st.hash, st.revision, st.total_keys, size
                    ),
                }
            }
            Err(e) => {
                eprintln!("Error: {e}");
                exit(1);
            }
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
            match snapshot::restore(&file, &dir) {
                Ok(()) => println!(
                    "restored snapshot {} into {}; start a member on it with --initial-cluster-state new",
                    file.display(),
                    dir.display()
                ),
                Err(e) => {
                    eprintln!("Error: {e}");
                    exit(1);
                }
            }
        }
        _ => usage(),
    }
}
