//! The RMP state the daemon publishes for the TCG plugin: a file of raw 16-byte RMP entries at
//! pfn × 16 (the layout Linux reads, without the bookkeeping area), mapped shared by both; the
//! daemon is its only writer and updates an entry before the operation that changed it completes,
//! so a guest store after the mailbox command sees the new state. Mapped through vm-memory (safe
//! API, bounds-checked).

use std::fs::OpenOptions;
use std::path::Path;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress};

/// Pages the file covers: 64 GiB of guest RAM; the file is sparse, so untouched parts cost nothing.
pub const PAGES: u64 = 1 << 24;

/// The published file could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {detail}")]
pub struct PublishError {
    what: &'static str,
    path: std::path::PathBuf,
    detail: String,
}

impl PublishError {
    fn new(what: &'static str, path: &Path, e: impl std::fmt::Display) -> Self {
        PublishError { what, path: path.to_path_buf(), detail: e.to_string() }
    }
}

pub struct RmpPublisher {
    region: GuestRegionMmap,
}

impl RmpPublisher {
    pub fn create(path: &Path) -> Result<RmpPublisher, PublishError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| PublishError::new("create", path, e))?;
        f.set_len(PAGES * 16).map_err(|e| PublishError::new("size", path, e))?;
        let region = GuestRegionMmap::from_range(GuestAddress(0), (PAGES * 16) as usize, Some(FileOffset::new(f, 0)))
            .map_err(|e| PublishError::new("map", path, e))?;
        Ok(RmpPublisher { region })
    }

    pub fn publish(&self, pfn: u64, raw: &[u8; 16]) {
        if pfn < PAGES {
            let _ = self.region.write_slice(raw, MemoryRegionAddress(pfn.saturating_mul(16)));
        }
    }
}
