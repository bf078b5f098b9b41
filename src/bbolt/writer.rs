//! Writes a new bbolt file in one pass from top-level buckets given in name
//! order and keys given in key order, as Go's bbolt would lay them out after
//! one transaction: leaf pages are written as they fill, then the branch
//! pages above them, then the root bucket, an empty freelist and the two
//! meta pages. Memory holds one leaf page and the first key of each leaf
//! of the bucket being written, never the database.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::BboltError;
use super::page::{
    BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, DEFAULT_PAGE_SIZE, ELEMENT, FREELIST_PAGE,
    Header, LEAF_PAGE, MAGIC, META_PAGE, META_SIZE, Meta, PAGE_HEADER, VERSION,
};

/// The page the freelist is written to; data pages follow it.
const FREELIST_PGID: u64 = 2;

/// One B+tree being written: the leaf being filled and the leaves written.
#[derive(Default)]
struct Tree {
    entries: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// Bytes the leaf being filled takes.
    size: usize,
    /// (first key, page id) of each leaf written.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

/// A bbolt file being written.
pub struct Writer {
    file: File,
    path: PathBuf,
    page_size: usize,
    next_pgid: u64,
    /// The top-level bucket being written, and its name.
    current: Option<(Vec<u8>, Tree)>,
    /// The root bucket: one entry per top-level bucket written.
    root: Tree,
    last_bucket: Option<Vec<u8>>,
}

impl Writer {
    /// Creates (or truncates) `path` for a new database with etcd's page size.
    pub fn create(path: &Path) -> Result<Writer, BboltError> {
        let file = File::create(path).map_err(|e| BboltError::io(path, &e))?;
        Ok(Writer {
            file,
            path: path.to_path_buf(),
            page_size: DEFAULT_PAGE_SIZE,
            next_pgid: FREELIST_PGID + 1,
            current: None,
            root: Tree::default(),
            last_bucket: None,
        })
    }

    fn usage(&self, detail: String) -> BboltError {
        BboltError::Usage {
            path: self.path.clone(),
            detail,
        }
    }

    /// Starts the next top-level bucket (its name greater than the last).
    pub fn bucket(&mut self, name: &[u8]) -> Result<(), BboltError> {
        self.end_bucket()?;
        if self.last_bucket.as_deref().is_some_and(|l| l >= name) {
            return Err(self.usage(format!(
                "bucket {:?} is not after the previous one",
                String::from_utf8_lossy(name)
            )));
        }
        self.last_bucket = Some(name.to_vec());
        self.current = Some((name.to_vec(), Tree::default()));
        Ok(())
    }

    /// Adds a key to the current bucket (keys in increasing order).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BboltError> {
        let Some((name, mut tree)) = self.current.take() else {
            return Err(self.usage("a key outside any bucket".into()));
        };
        let r = self.add(&mut tree, 0, key, value);
        self.current = Some((name, tree));
        r
    }

    fn add(
        &mut self,
        tree: &mut Tree,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), BboltError> {
        if key.is_empty() {
            return Err(self.usage("an empty key".into()));
        }
        if tree.last.as_deref().is_some_and(|l| l >= key) {
            return Err(self.usage("keys are not in increasing order".into()));
        }
        if u32::try_from(key.len()).is_err() || u32::try_from(value.len()).is_err() {
            return Err(self.usage("a key or value over 4 GiB".into()));
        }
        tree.last = Some(key.to_vec());
        let need = ELEMENT + key.len() + value.len();
        if !tree.entries.is_empty() && tree.size + need > self.page_size {
            self.flush_leaf(tree)?;
        }
        if tree.entries.is_empty() {
            tree.size = PAGE_HEADER;
        }
        tree.size += need;
        tree.entries.push((flags, key.to_vec(), value.to_vec()));
        Ok(())
    }

    /// Allocates pages for `bytes` bytes; returns the first page id and the page count.
    fn allocate(&mut self, bytes: usize) -> (u64, u64) {
        let pages = bytes.div_ceil(self.page_size).max(1) as u64;
        let id = self.next_pgid;
        self.next_pgid += pages;
        (id, pages)
    }

    fn write_page(&self, id: u64, buf: &[u8]) -> Result<(), BboltError> {
        self.file
            .write_all_at(buf, id * self.page_size as u64)
            .map_err(|e| BboltError::io(&self.path, &e))
    }

    /// Lays out a leaf page of `entries`: `len` bytes (whole pages, or for
    /// an inline bucket's page exactly its size, with id 0).
    fn encode_leaf(
        entries: &[(u32, Vec<u8>, Vec<u8>)],
        id: u64,
        len: usize,
        pages: u64,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        Header {
            id,
            flags: LEAF_PAGE,
            count: entries.len() as u16,
            overflow: (pages - 1) as u32,
        }
        .write(&mut buf);
        let mut data = PAGE_HEADER + entries.len() * ELEMENT;
        for (i, (flags, k, v)) in entries.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            buf[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&((data - at) as u32).to_le_bytes());
            buf[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            buf[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            buf[data..data + k.len()].copy_from_slice(k);
            data += k.len();
            buf[data..data + v.len()].copy_from_slice(v);
            data += v.len();
        }
        buf
    }

    fn flush_leaf(&mut self, tree: &mut Tree) -> Result<(), BboltError> {
        let size = if tree.entries.is_empty() {
            PAGE_HEADER
        } else {
            tree.size
        };
        let (id, pages) = self.allocate(size);
        let buf = Self::encode_leaf(&tree.entries, id, pages as usize * self.page_size, pages);
        self.write_page(id, &buf)?;
        let first = tree
            .entries
            .first()
            .map(|(_, k, _)| k.clone())
            .unwrap_or_default();
        tree.leaves.push((first, id));
        tree.entries.clear();
        tree.size = PAGE_HEADER;
        Ok(())
    }

    /// Writes what is left of `tree` and the branch pages above its leaves;
    /// returns the root page id.
    fn finish_tree(&mut self, mut tree: Tree) -> Result<u64, BboltError> {
        if !tree.entries.is_empty() || tree.leaves.is_empty() {
            self.flush_leaf(&mut tree)?;
        }
        let mut level = tree.leaves;
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut start = 0;
            while start < level.len() {
                // Fill one branch page (at least two children when there are).
                let mut size = PAGE_HEADER;
                let mut end = start;
                while end < level.len() {
                    let need = ELEMENT + level[end].0.len();
                    if end - start >= 2 && size + need > self.page_size {
                        break;
                    }
                    size += need;
                    end += 1;
                }
                // Never leave a single child for the last branch page.
                if level.len() - end == 1 && end - start > 2 {
                    end -= 1;
                    size -= ELEMENT + level[end].0.len();
                }
                let (id, pages) = self.allocate(size);
                let mut buf = vec![0u8; pages as usize * self.page_size];
                let n = end - start;
                Header {
                    id,
                    flags: BRANCH_PAGE,
                    count: n as u16,
                    overflow: (pages - 1) as u32,
                }
                .write(&mut buf);
                let mut data = PAGE_HEADER + n * ELEMENT;
                for (i, (k, child)) in level[start..end].iter().enumerate() {
                    let at = PAGE_HEADER + i * ELEMENT;
                    buf[at..at + 4].copy_from_slice(&((data - at) as u32).to_le_bytes());
                    buf[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                    buf[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
                    buf[data..data + k.len()].copy_from_slice(k);
                    data += k.len();
                }
                self.write_page(id, &buf)?;
                next.push((level[start].0.clone(), id));
                start = end;
            }
            level = next;
        }
        Ok(level.first().map(|l| l.1).unwrap_or(0))
    }

    fn end_bucket(&mut self) -> Result<(), BboltError> {
        if let Some((name, tree)) = self.current.take() {
            let size = if tree.entries.is_empty() {
                PAGE_HEADER
            } else {
                tree.size
            };
            let header = if tree.leaves.is_empty() && size <= self.page_size / 4 {
                // As bbolt: a small bucket lives inline in its parent's leaf,
                // its root 0 and its one leaf page after the header.
                let mut v = vec![0u8; BUCKET_HEADER];
                v.extend_from_slice(&Self::encode_leaf(&tree.entries, 0, size, 1));
                v
            } else {
                let root = self.finish_tree(tree)?;
                let mut v = vec![0u8; BUCKET_HEADER];
                v[..8].copy_from_slice(&root.to_le_bytes());
                v
            };
            let mut rt = std::mem::take(&mut self.root);
            let r = self.add(&mut rt, BUCKET_LEAF_FLAG, &name, &header);
            self.root = rt;
            r?;
        }
        Ok(())
    }

    /// Writes the root bucket, the freelist and the meta pages, and syncs
    /// the file; returns its size in bytes.
    pub fn finish(mut self) -> Result<u64, BboltError> {
        self.end_bucket()?;
        let root = std::mem::take(&mut self.root);
        let root_id = self.finish_tree(root)?;
        let ps = self.page_size;
        let mut freelist = vec![0u8; ps];
        Header {
            id: FREELIST_PGID,
            flags: FREELIST_PAGE,
            count: 0,
            overflow: 0,
        }
        .write(&mut freelist);
        self.write_page(FREELIST_PGID, &freelist)?;
        for txid in 0..2u64 {
            let mut buf = vec![0u8; ps];
            Header {
                id: txid,
                flags: META_PAGE,
                count: 0,
                overflow: 0,
            }
            .write(&mut buf);
            let meta = Meta {
                magic: MAGIC,
                version: VERSION,
                page_size: ps as u32,
                flags: 0,
                root: root_id,
                root_sequence: 0,
                freelist: FREELIST_PGID,
                pgid: self.next_pgid,
                txid,
                checksum: 0,
            };
            buf[PAGE_HEADER..PAGE_HEADER + META_SIZE].copy_from_slice(&meta.encode());
            self.write_page(txid, &buf)?;
        }
        let size = self.next_pgid * ps as u64;
        self.file
            .set_len(size)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| BboltError::io(&self.path, &e))?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Reader;
    use super::*;

    type Contents = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn read_all(path: &Path) -> Result<Contents, BboltError> {
        let r = Reader::open(path)?;
        r.check()?;
        let mut out = Vec::new();
        for name in r.bucket_names()? {
            let b = r.bucket(&name)?.ok_or_else(|| BboltError::Usage {
                path: path.to_path_buf(),
                detail: "bucket vanished".into(),
            })?;
            let mut kvs = Vec::new();
            r.for_each(&b, |e| {
                kvs.push((e.key.to_vec(), e.value.to_vec()));
                Ok(())
            })?;
            out.push((name, kvs));
        }
        Ok(out)
    }

    #[test]
    fn what_is_written_reads_back_in_order() -> Result<(), BboltError> {
        let dir = tempfile::tempdir().map_err(|e| BboltError::io(Path::new("tmp"), &e))?;
        let path = dir.path().join("db");
        let mut want: Contents = Vec::new();
        want.push((b"a".to_vec(), vec![]));
        want.push((b"b".to_vec(), vec![(b"k".to_vec(), b"inline".to_vec())]));
        let many = (0u32..20_000)
            .map(|i| {
                (
                    i.to_be_bytes().to_vec(),
                    vec![(i % 251) as u8; (i % 97) as usize],
                )
            })
            .collect();
        want.push((b"key".to_vec(), many));
        want.push((
            b"large".to_vec(),
            vec![
                (b"x".to_vec(), vec![7u8; 1_500_000]),
                (b"y".to_vec(), vec![]),
                (vec![0xff; 3000], vec![1u8; 3000]),
            ],
        ));
        want.sort();
        let mut w = Writer::create(&path)?;
        for (name, kvs) in &want {
            w.bucket(name)?;
            for (k, v) in kvs {
                w.put(k, v)?;
            }
        }
        let size = w.finish()?;
        assert_eq!(size % 4096, 0);
        assert_eq!(read_all(&path)?, want);
        Ok(())
    }

    /// Damage anywhere in a file is an error or goes unnoticed (in a value),
    /// never a panic or a hang.
    #[test]
    fn damaged_files_never_panic() -> Result<(), BboltError> {
        let dir = tempfile::tempdir().map_err(|e| BboltError::io(Path::new("tmp"), &e))?;
        let path = dir.path().join("db");
        let mut w = Writer::create(&path)?;
        w.bucket(b"a")?;
        w.put(b"k", b"v")?;
        w.bucket(b"key")?;
        for i in 0u32..400 {
            w.put(&i.to_be_bytes(), &[i as u8; 20])?;
        }
        w.finish()?;
        let good = std::fs::read(&path).map_err(|e| BboltError::io(&path, &e))?;
        let bad = dir.path().join("bad");
        let mut errors = 0;
        for at in (0..good.len()).step_by(11) {
            let mut b = good.clone();
            b[at] ^= 0xa5;
            std::fs::write(&bad, &b).map_err(|e| BboltError::io(&bad, &e))?;
            let r = Reader::open(&bad).and_then(|r| {
                r.check()?;
                for name in r.bucket_names()? {
                    if let Some(bucket) = r.bucket(&name)? {
                        r.for_each(&bucket, |_| Ok(()))?;
                    }
                }
                Ok(())
            });
            errors += usize::from(r.is_err());
        }
        assert!(errors > 0);
        Ok(())
    }

    #[test]
    fn order_is_enforced() -> Result<(), BboltError> {
        let dir = tempfile::tempdir().map_err(|e| BboltError::io(Path::new("tmp"), &e))?;
        let mut w = Writer::create(&dir.path().join("db"))?;
        w.bucket(b"b")?;
        w.put(b"2", b"")?;
        assert!(w.put(b"1", b"").is_err());
        assert!(w.bucket(b"a").is_err());
        Ok(())
    }
}
