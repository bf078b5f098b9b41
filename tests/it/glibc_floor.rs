//! The oldest glibc the release binaries run on: `packaging/binaries` links
//! them against glibc 2.28's symbols and refuses newer ones, so a call to a
//! glibc function that came after 2.28 breaks the packages' build. The
//! binaries the tests build link against this machine's glibc, which gives
//! an old function its newest version (`pthread_create` is GLIBC_2.34 here,
//! GLIBC_2.2.5 against 2.28's symbols), so each function they need is looked
//! up in this machine's libc and libm: the oldest version they define it
//! under must be at most the floor. A weak reference is allowed: the Rust
//! standard library looks such functions up and falls back when they are
//! missing.

use std::collections::HashMap;

const FLOOR: (u32, u32) = (2, 28);

/// Functions glibc exports only since 2.33; before, its headers made them
/// calls of `__xstat` and the like through the static `libc_nonshared.a`,
/// which a link against an older glibc's symbols supplies in their place.
const STATIC_BEFORE_2_33: [&str; 10] = [
    "stat",
    "fstat",
    "lstat",
    "fstatat",
    "stat64",
    "fstat64",
    "lstat64",
    "fstatat64",
    "mknod",
    "mknodat",
];

/// Debian's glibc, whose symbol tables name the version each function came with.
const GLIBC: [&str; 2] = [
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
];

/// A versioned glibc symbol in a dynamic symbol table.
struct Symbol {
    name: String,
    version: (u32, u32),
    weak: bool,
    undefined: bool,
}

/// The glibc-versioned symbols of `file`'s dynamic symbol table.
fn glibc_symbols(file: &str) -> Vec<Symbol> {
    let out = std::process::Command::new("objdump")
        .arg("-T")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("objdump -T {file} (package binutils): {e}"));
    assert!(out.status.success(), "objdump -T {file}: {out:?}");
    let mut symbols = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "0000000000000000  w   DF *UND*  0000000000000000 (GLIBC_2.28) statx"
        // "000000000010a2a0  w   DF .text  0000000000000008  GLIBC_2.30  gettid"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(tag) = fields
            .iter()
            .find_map(|f| f.trim_start_matches('(').strip_prefix("GLIBC_"))
        else {
            continue;
        };
        let mut parts = tag
            .trim_end_matches(')')
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        symbols.push(Symbol {
            name: fields.last().unwrap_or(&"").to_string(),
            version: (parts.next().unwrap_or(0), parts.next().unwrap_or(0)),
            weak: fields.get(1) == Some(&"w"),
            undefined: line.contains("*UND*"),
        });
    }
    symbols
}

#[test]
fn the_binaries_need_no_glibc_function_newer_than_the_packages_floor() {
    // The oldest version under which glibc defines each function.
    let mut oldest: HashMap<String, (u32, u32)> = HashMap::new();
    for lib in GLIBC {
        for s in glibc_symbols(lib).into_iter().filter(|s| !s.undefined) {
            let v = oldest.entry(s.name).or_insert(s.version);
            *v = (*v).min(s.version);
        }
    }
    assert_eq!(oldest.get("gettid"), Some(&(2, 30)), "glibc's gettid");
    assert_eq!(
        oldest.get("pthread_create"),
        Some(&(2, 2)),
        "glibc's pthread_create"
    );
    for bin in [env!("CARGO_BIN_EXE_etcd"), env!("CARGO_BIN_EXE_etcdutl")] {
        let needed: Vec<Symbol> = glibc_symbols(bin)
            .into_iter()
            .filter(|s| s.undefined && !s.weak)
            .filter(|s| !STATIC_BEFORE_2_33.contains(&s.name.as_str()))
            .collect();
        assert!(
            needed.iter().any(|s| s.name == "__libc_start_main"),
            "{bin}: objdump -T lists none of the glibc functions every build needs"
        );
        let newer: Vec<String> = needed
            .iter()
            .filter_map(|s| {
                let v = oldest.get(&s.name).copied().unwrap_or(s.version);
                (v > FLOOR).then(|| format!("{} (GLIBC_{}.{})", s.name, v.0, v.1))
            })
            .collect();
        assert!(
            newer.is_empty(),
            "{bin} needs glibc functions newer than {}.{}: {}",
            FLOOR.0,
            FLOOR.1,
            newer.join(", ")
        );
    }
}
