//! Stand-in for the bbolt reader: `import_backend` copies etcd's backend
//! (`member/snap/db`) into our tables. Replaced by the real reader.

use std::path::Path;

use crate::storage::Backend;

/// What the backend said about itself.
#[derive(Debug, Clone, Default)]
pub struct ImportedMeta {
    /// The index of the last log entry applied to the backend.
    pub consistent_index: u64,
    /// The term of that entry (etcd 3.5 records it; 0 when absent).
    pub term: u64,
    /// The current revision.
    pub revision: i64,
}

pub fn import_backend(bbolt: &Path, _be: &Backend) -> Result<ImportedMeta, String> {
    Err(format!(
        "{}: reading etcd's bbolt backend is not available",
        bbolt.display()
    ))
}
