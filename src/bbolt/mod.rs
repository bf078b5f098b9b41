//! bbolt files, the format of etcd's backend and of its snapshots: a reader
//! that checks what it reads, and a bulk writer that streams a new file.
//!
//! `page.rs` the on-disk layout, `reader.rs` opening and walking a file,
//! `writer.rs` writing one from buckets and keys given in order.

use std::path::{Path, PathBuf};

pub mod page;
pub mod reader;
pub mod writer;

pub use reader::{Bucket, Entry, Reader};
pub use writer::Writer;

/// What can go wrong reading or writing a bbolt file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BboltError {
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("{path}: {}{detail}", page.map(|p| format!("page {p}: ")).unwrap_or_default())]
    Corrupt {
        path: PathBuf,
        page: Option<u64>,
        detail: String,
    },
    #[error("{path}: {detail}")]
    Usage { path: PathBuf, detail: String },
}

impl BboltError {
    pub fn io(path: &Path, e: &std::io::Error) -> BboltError {
        BboltError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    }
}
