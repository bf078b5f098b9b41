//! Reads a bbolt file as Go's bbolt wrote it: the newest valid meta page,
//! then buckets and their keys in order, one page in memory at a time.
//!
//! Every offset and length is checked against the page and the file before
//! it is used; a page referenced twice (a cycle, or shared subtrees), keys
//! out of order, a page id beyond the high-water mark or the file: each is
//! an error naming the file and the page, never a panic or a loop.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::BboltError;
use super::page::{
    self, BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, ELEMENT, FREELIST_PAGE, Header, LEAF_PAGE,
    META_PAGE, Meta, NO_FREELIST, PAGE_HEADER,
};

/// How deep a B+tree may be (a real one of a few GiB has 4 or 5 levels).
const MAX_DEPTH: usize = 64;

/// A bucket's content: a tree of pages, or one leaf page inline in its parent.
#[derive(Debug, Clone)]
pub enum Bucket {
    Root(u64),
    Inline(Vec<u8>),
}

/// One bbolt file open for reading.
pub struct Reader {
    file: File,
    path: PathBuf,
    /// Bytes of the file that belong to the database (an etcd snapshot has
    /// its SHA-256 after them).
    len: u64,
    page_size: usize,
    meta: Meta,
}

/// One entry of a bucket: a key and its value, or a nested bucket.
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub is_bucket: bool,
}

impl Reader {
    /// Opens the whole file as a bbolt database.
    pub fn open(path: &Path) -> Result<Reader, BboltError> {
        let len = std::fs::metadata(path)
            .map_err(|e| BboltError::io(path, &e))?
            .len();
        Self::open_prefix(path, len)
    }

    /// Opens the first `len` bytes of the file as a bbolt database.
    pub fn open_prefix(path: &Path, len: u64) -> Result<Reader, BboltError> {
        let file = File::open(path).map_err(|e| BboltError::io(path, &e))?;
        let mut r = Reader {
            file,
            path: path.to_path_buf(),
            len,
            page_size: page::DEFAULT_PAGE_SIZE,
            meta: Meta {
                magic: 0,
                version: 0,
                page_size: 0,
                flags: 0,
                root: 0,
                root_sequence: 0,
                freelist: 0,
                pgid: 0,
                txid: 0,
                checksum: 0,
            },
        };
        // As bbolt: the page size comes from meta page 0, or, if that one is
        // damaged, the default page size is tried for meta page 1.
        let first = r.read_at(0, (PAGE_HEADER + page::META_SIZE) as u64)?;
        let m0 = Meta::parse(&first);
        let page_size = match &m0 {
            Ok(m) => m.page_size as usize,
            Err(_) => page::DEFAULT_PAGE_SIZE,
        };
        if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(r.invalid(None, format!("invalid page size {page_size}")));
        }
        r.page_size = page_size;
        let m1 = if (2 * page_size as u64) <= len {
            let b = r.read_at(page_size as u64, (PAGE_HEADER + page::META_SIZE) as u64)?;
            Meta::parse(&b)
        } else {
            Err(page::MetaProblem::Short)
        };
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(r.invalid(Some(0), e.to_string())),
        };
        if meta.page_size as usize != page_size {
            return Err(r.invalid(None, "meta pages disagree on the page size".into()));
        }
        if meta.pgid < 2 || meta.pgid.saturating_mul(page_size as u64) > len {
            return Err(r.invalid(
                None,
                format!(
                    "file is truncated: {} pages of {page_size} bytes in use, {len} bytes in the file",
                    meta.pgid
                ),
            ));
        }
        if meta.root < 2 || meta.root >= meta.pgid {
            return Err(r.invalid(
                None,
                format!("root bucket page {} out of bounds", meta.root),
            ));
        }
        if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pgid) {
            return Err(r.invalid(
                None,
                format!("freelist page {} out of bounds", meta.freelist),
            ));
        }
        r.meta = meta;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The database's size as bbolt reports it (`Tx.Size`): pages in use
    /// times the page size.
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size as u64
    }

    fn invalid(&self, page: Option<u64>, detail: String) -> BboltError {
        BboltError::Corrupt {
            path: self.path.clone(),
            page,
            detail,
        }
    }

    fn read_at(&self, off: u64, n: u64) -> Result<Vec<u8>, BboltError> {
        if off.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(self.invalid(
                None,
                format!("file is truncated: {n} bytes at offset {off} are past its end"),
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| BboltError::io(&self.path, &e))?;
        Ok(buf)
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<(Header, Vec<u8>), BboltError> {
        if id >= self.meta.pgid {
            return Err(self.invalid(
                Some(id),
                format!("page id beyond the high-water mark {}", self.meta.pgid),
            ));
        }
        let ps = self.page_size as u64;
        let head = self.read_at(id * ps, PAGE_HEADER as u64)?;
        let h =
            Header::parse(&head).ok_or_else(|| self.invalid(Some(id), "short header".into()))?;
        if h.id != id {
            return Err(self.invalid(Some(id), format!("page header names page {}", h.id)));
        }
        let pages = u64::from(h.overflow) + 1;
        if id + pages > self.meta.pgid {
            return Err(self.invalid(
                Some(id),
                format!("{} overflow pages run past the high-water mark", h.overflow),
            ));
        }
        let data = self.read_at(id * ps, pages * ps)?;
        Ok((h, data))
    }

    /// The root bucket (the one holding the top-level buckets).
    pub fn root(&self) -> Bucket {
        Bucket::Root(self.meta.root)
    }

    /// The names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BboltError> {
        let mut names = Vec::new();
        self.for_each(&self.root(), |e| {
            if e.is_bucket {
                names.push(e.key.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// The nested bucket `name` of `parent`, if there is one.
    pub fn bucket_in(&self, parent: &Bucket, name: &[u8]) -> Result<Option<Bucket>, BboltError> {
        let mut found = None;
        self.for_each(parent, |e| {
            if e.is_bucket && e.key == name {
                found = Some(self.parse_bucket(e.value)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// A top-level bucket.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>, BboltError> {
        self.bucket_in(&self.root(), name)
    }

    /// Reads a bucket header (and inline page) from a bucket entry's value.
    pub fn parse_bucket(&self, value: &[u8]) -> Result<Bucket, BboltError> {
        let root = page::u64_at(value, 0)
            .filter(|_| value.len() >= BUCKET_HEADER)
            .ok_or_else(|| self.invalid(None, "bucket header is truncated".into()))?;
        if root == 0 {
            Ok(Bucket::Inline(value[BUCKET_HEADER..].to_vec()))
        } else {
            Ok(Bucket::Root(root))
        }
    }

    /// Calls `f` for every entry of `bucket`, in key order.
    pub fn for_each<F>(&self, bucket: &Bucket, mut f: F) -> Result<(), BboltError>
    where
        F: FnMut(Entry<'_>) -> Result<(), BboltError>,
    {
        let mut walk = Walk {
            seen: HashSet::new(),
            last: None,
        };
        match bucket {
            Bucket::Root(id) => self.walk(*id, 0, &mut walk, &mut f),
            Bucket::Inline(data) => {
                let h = Header::parse(data)
                    .ok_or_else(|| self.invalid(None, "inline bucket is truncated".into()))?;
                if h.flags & LEAF_PAGE == 0 {
                    return Err(self.invalid(
                        None,
                        format!("inline bucket page is a {} page, not a leaf", h.kind()),
                    ));
                }
                self.leaf(None, &h, data, &mut walk, &mut f)
            }
        }
    }

    fn walk<F>(&self, id: u64, depth: usize, w: &mut Walk, f: &mut F) -> Result<(), BboltError>
    where
        F: FnMut(Entry<'_>) -> Result<(), BboltError>,
    {
        if depth > MAX_DEPTH {
            return Err(self.invalid(Some(id), "B+tree is too deep".into()));
        }
        if !w.seen.insert(id) {
            return Err(self.invalid(Some(id), "page is referenced twice".into()));
        }
        let (h, data) = self.page(id)?;
        if h.flags & BRANCH_PAGE != 0 {
            let children = self.branch(id, &h, &data)?;
            drop(data);
            for child in children {
                self.walk(child, depth + 1, w, f)?;
            }
            Ok(())
        } else if h.flags & LEAF_PAGE != 0 {
            self.leaf(Some(id), &h, &data, w, f)
        } else {
            Err(self.invalid(
                Some(id),
                format!("a {} page where a branch or leaf page belongs", h.kind()),
            ))
        }
    }

    /// The children of a branch page, in order.
    fn branch(&self, id: u64, h: &Header, data: &[u8]) -> Result<Vec<u64>, BboltError> {
        let n = usize::from(h.count);
        if n == 0 {
            return Err(self.invalid(Some(id), "empty branch page".into()));
        }
        let mut children = Vec::with_capacity(n);
        let mut last: Option<&[u8]> = None;
        for i in 0..n {
            let at = PAGE_HEADER + i * ELEMENT;
            let bad = || self.invalid(Some(id), format!("branch element {i} is out of bounds"));
            let pos = page::u32_at(data, at).ok_or_else(bad)? as usize;
            let ksize = page::u32_at(data, at + 4).ok_or_else(bad)? as usize;
            let child = page::u64_at(data, at + 8).ok_or_else(bad)?;
            let key = at
                .checked_add(pos)
                .and_then(|s| Some((s, s.checked_add(ksize)?)))
                .and_then(|(s, e)| data.get(s..e))
                .ok_or_else(bad)?;
            if last.is_some_and(|l| l >= key) {
                return Err(self.invalid(Some(id), format!("branch element {i} is out of order")));
            }
            last = Some(key);
            children.push(child);
        }
        Ok(children)
    }

    fn leaf<F>(
        &self,
        id: Option<u64>,
        h: &Header,
        data: &[u8],
        w: &mut Walk,
        f: &mut F,
    ) -> Result<(), BboltError>
    where
        F: FnMut(Entry<'_>) -> Result<(), BboltError>,
    {
        for i in 0..usize::from(h.count) {
            let at = PAGE_HEADER + i * ELEMENT;
            let bad = || self.invalid(id, format!("leaf element {i} is out of bounds"));
            let flags = page::u32_at(data, at).ok_or_else(bad)?;
            let pos = page::u32_at(data, at + 4).ok_or_else(bad)? as usize;
            let ksize = page::u32_at(data, at + 8).ok_or_else(bad)? as usize;
            let vsize = page::u32_at(data, at + 12).ok_or_else(bad)? as usize;
            let k0 = at.checked_add(pos).ok_or_else(bad)?;
            let v0 = k0.checked_add(ksize).ok_or_else(bad)?;
            let v1 = v0.checked_add(vsize).ok_or_else(bad)?;
            let key = data.get(k0..v0).ok_or_else(bad)?;
            let value = data.get(v0..v1).ok_or_else(bad)?;
            if let Some(last) = &w.last
                && last.as_slice() >= key
            {
                return Err(self.invalid(id, format!("leaf element {i} is out of order")));
            }
            w.last = Some(key.to_vec());
            f(Entry {
                key,
                value,
                is_bucket: flags & BUCKET_LEAF_FLAG != 0,
            })?;
        }
        Ok(())
    }

    /// Checks the whole file as `bbolt check` does: every page of every
    /// bucket readable and referenced once, the freelist's pages not in use,
    /// and every page below the high-water mark either in use or free.
    pub fn check(&self) -> Result<(), BboltError> {
        let mut reachable: HashSet<u64> = [0, 1].into_iter().collect();
        let mut free = HashSet::new();
        if self.meta.freelist != NO_FREELIST {
            let (h, data) = self.page(self.meta.freelist)?;
            if h.flags & FREELIST_PAGE == 0 {
                return Err(self.invalid(
                    Some(self.meta.freelist),
                    format!("a {} page where the freelist belongs", h.kind()),
                ));
            }
            for i in 0..=u64::from(h.overflow) {
                reachable.insert(self.meta.freelist + i);
            }
            let (count, start) = if h.count == 0xFFFF {
                let n = page::u64_at(&data, PAGE_HEADER).unwrap_or(0);
                (n, PAGE_HEADER + 8)
            } else {
                (u64::from(h.count), PAGE_HEADER)
            };
            if count > (data.len() as u64) / 8 {
                return Err(self.invalid(Some(self.meta.freelist), "freelist is truncated".into()));
            }
            for i in 0..count as usize {
                let id = page::u64_at(&data, start + i * 8).ok_or_else(|| {
                    self.invalid(Some(self.meta.freelist), "freelist is truncated".into())
                })?;
                if !free.insert(id) {
                    return Err(self.invalid(Some(id), "already freed".into()));
                }
            }
        }
        self.check_bucket(&self.root(), &mut reachable, &free, 0)?;
        if self.meta.freelist != NO_FREELIST {
            for id in 0..self.meta.pgid {
                if !reachable.contains(&id) && !free.contains(&id) {
                    return Err(self.invalid(Some(id), "unreachable unfreed".into()));
                }
            }
        }
        Ok(())
    }

    fn check_bucket(
        &self,
        bucket: &Bucket,
        reachable: &mut HashSet<u64>,
        free: &HashSet<u64>,
        depth: usize,
    ) -> Result<(), BboltError> {
        if depth > MAX_DEPTH {
            return Err(self.invalid(None, "buckets are nested too deep".into()));
        }
        if let Bucket::Root(root) = bucket {
            self.pages_of(*root, 0, reachable, free)?;
        }
        let mut nested = Vec::new();
        self.for_each(bucket, |e| {
            if e.is_bucket {
                nested.push(self.parse_bucket(e.value)?);
            }
            Ok(())
        })?;
        for b in nested {
            self.check_bucket(&b, reachable, free, depth + 1)?;
        }
        Ok(())
    }

    fn pages_of(
        &self,
        id: u64,
        depth: usize,
        reachable: &mut HashSet<u64>,
        free: &HashSet<u64>,
    ) -> Result<(), BboltError> {
        if depth > MAX_DEPTH {
            return Err(self.invalid(Some(id), "B+tree is too deep".into()));
        }
        let (h, data) = self.page(id)?;
        for i in 0..=u64::from(h.overflow) {
            if !reachable.insert(id + i) {
                return Err(self.invalid(Some(id + i), "multiple references".into()));
            }
        }
        if free.contains(&id) {
            return Err(self.invalid(Some(id), "reachable freed".into()));
        }
        if h.flags & BRANCH_PAGE != 0 {
            for child in self.branch(id, &h, &data)? {
                self.pages_of(child, depth + 1, reachable, free)?;
            }
        } else if h.flags & LEAF_PAGE == 0 {
            return Err(self.invalid(Some(id), format!("invalid type: {}", h.kind())));
        }
        Ok(())
    }

    /// Whether the first page of the file is a bbolt meta page (a cheap
    /// test of what kind of file this is).
    pub fn looks_like_bbolt(head: &[u8]) -> bool {
        Header::parse(head).is_some_and(|h| h.flags & META_PAGE != 0)
            && page::u32_at(head, PAGE_HEADER) == Some(page::MAGIC)
    }
}

struct Walk {
    seen: HashSet<u64>,
    last: Option<Vec<u8>>,
}
