//! bbolt's on-disk layout: page headers, element headers, meta pages,
//! bucket headers and the freelist, as Go's bbolt (format version 2) writes
//! them, little-endian on every platform etcd runs on.
//!
//! A page starts with a 16-byte header (`id u64`, `flags u16`, `count u16`,
//! `overflow u32`); a page of `overflow` + 1 consecutive pages holds a node
//! too large for one. A leaf page's header is followed by `count` 16-byte
//! elements (`flags u32`, `pos u32`, `ksize u32`, `vsize u32`), a branch
//! page's by `count` 16-byte elements (`pos u32`, `ksize u32`, `pgid u64`);
//! `pos` counts from the element's own first byte to its key. A leaf
//! element whose flags carry [`BUCKET_LEAF_FLAG`] is a nested bucket: its
//! value is a bucket header (`root u64`, `sequence u64`), followed, when
//! `root` is 0, by the bucket's single leaf page inline.

/// Bytes of a page header.
pub const PAGE_HEADER: usize = 16;
/// Bytes of a leaf or branch element header.
pub const ELEMENT: usize = 16;
/// Bytes of a bucket header (`root`, `sequence`).
pub const BUCKET_HEADER: usize = 16;
/// Bytes of a meta record (after the page header), checksum included.
pub const META_SIZE: usize = 64;
/// Bytes of a meta record covered by its checksum.
const META_SUMMED: usize = 56;

pub const BRANCH_PAGE: u16 = 0x01;
pub const LEAF_PAGE: u16 = 0x02;
pub const META_PAGE: u16 = 0x04;
pub const FREELIST_PAGE: u16 = 0x10;
pub const BUCKET_LEAF_FLAG: u32 = 0x01;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
/// The page size etcd's bbolt files have on Linux (the OS page size).
pub const DEFAULT_PAGE_SIZE: usize = 4096;
/// The freelist page id meaning "no freelist written".
pub const NO_FREELIST: u64 = u64::MAX;

pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// A page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Option<Header> {
        Some(Header {
            id: u64_at(b, 0)?,
            flags: u16_at(b, 8)?,
            count: u16_at(b, 10)?,
            overflow: u32_at(b, 12)?,
        })
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }

    /// The page's kind, as bbolt names it in its messages.
    pub fn kind(&self) -> &'static str {
        if self.flags & BRANCH_PAGE != 0 {
            "branch"
        } else if self.flags & LEAF_PAGE != 0 {
            "leaf"
        } else if self.flags & META_PAGE != 0 {
            "meta"
        } else if self.flags & FREELIST_PAGE != 0 {
            "freelist"
        } else {
            "unknown"
        }
    }
}

/// A meta page's record: where the root bucket and the freelist are, the
/// high-water mark of pages, the transaction ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// Pages in use: every page id is below it.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

/// 64-bit FNV-1a, the checksum of bbolt's meta pages.
pub fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Why a meta record is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaProblem {
    Short,
    Magic,
    Version(u32),
    Checksum,
}

impl std::fmt::Display for MetaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaProblem::Short => f.write_str("meta page is truncated"),
            MetaProblem::Magic => f.write_str("invalid database (no bbolt magic number)"),
            MetaProblem::Version(v) => write!(f, "version mismatch (format {v}, expected 2)"),
            MetaProblem::Checksum => f.write_str("meta page checksum mismatch"),
        }
    }
}

impl Meta {
    /// Parses the meta record of a meta page (`page` starts at the page header).
    pub fn parse(page: &[u8]) -> Result<Meta, MetaProblem> {
        let m = page
            .get(PAGE_HEADER..PAGE_HEADER + META_SIZE)
            .ok_or(MetaProblem::Short)?;
        let u32s = |at| u32_at(m, at).unwrap_or(0);
        let u64s = |at| u64_at(m, at).unwrap_or(0);
        let meta = Meta {
            magic: u32s(0),
            version: u32s(4),
            page_size: u32s(8),
            flags: u32s(12),
            root: u64s(16),
            root_sequence: u64s(24),
            freelist: u64s(32),
            pgid: u64s(40),
            txid: u64s(48),
            checksum: u64s(56),
        };
        if meta.magic != MAGIC {
            return Err(MetaProblem::Magic);
        }
        if meta.version != VERSION {
            return Err(MetaProblem::Version(meta.version));
        }
        // As bbolt: a zero checksum is not checked.
        if meta.checksum != 0 && meta.checksum != fnv64a(&m[..META_SUMMED]) {
            return Err(MetaProblem::Checksum);
        }
        Ok(meta)
    }

    /// The 64 bytes of the record, with its checksum computed.
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut m = [0u8; META_SIZE];
        m[0..4].copy_from_slice(&self.magic.to_le_bytes());
        m[4..8].copy_from_slice(&self.version.to_le_bytes());
        m[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        m[12..16].copy_from_slice(&self.flags.to_le_bytes());
        m[16..24].copy_from_slice(&self.root.to_le_bytes());
        m[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        m[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        m[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        m[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv64a(&m[..META_SUMMED]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64a_matches_the_reference_values() {
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv64a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn meta_round_trips_and_detects_damage() {
        let meta = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: 4096,
            flags: 0,
            root: 3,
            root_sequence: 0,
            freelist: 2,
            pgid: 4,
            txid: 1,
            checksum: 0,
        };
        let mut page = vec![0u8; 4096];
        page[PAGE_HEADER..PAGE_HEADER + META_SIZE].copy_from_slice(&meta.encode());
        let back = Meta::parse(&page).expect("valid meta");
        assert_eq!(back.root, 3);
        assert_eq!(back.pgid, 4);
        page[PAGE_HEADER + 41] ^= 1;
        assert_eq!(Meta::parse(&page), Err(MetaProblem::Checksum));
        page[PAGE_HEADER] ^= 1;
        assert_eq!(Meta::parse(&page), Err(MetaProblem::Magic));
    }
}
