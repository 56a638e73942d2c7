//! Guest RAM as QEMU hands it over vfio-user: each DMA_MAP with a file descriptor is mapped
//! (MAP_SHARED) through vm-memory; the daemon reads tables and moves DMA bytes there. Every access
//! goes through vm-memory's bounds-checked `Bytes` API, so an address outside the mapped regions is
//! an error, never a touch outside guest RAM. The mapping itself is vm-memory's (its `unsafe` is
//! in that crate), which is why this module has none.

use iommu_model::mem::{MemError, PhysMem};
use std::fs::File;
use std::sync::{Arc, RwLock};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestRegionMmap};

/// At most this many regions: QEMU sends a handful; a misbehaving client cannot make the daemon
/// hold unbounded mappings.
const MAX_REGIONS: usize = 64;

#[derive(Default)]
struct Regions {
    list: Vec<Arc<GuestRegionMmap>>,
    mem: Arc<GuestMemoryMmap>,
}

/// The shared, updatable set of mapped regions. Cheap to clone; each worker takes snapshots.
#[derive(Clone, Default)]
pub struct GuestRam {
    inner: Arc<RwLock<Regions>>,
}

impl GuestRam {
    /// Map `size` bytes of `file` at `offset` as guest physical `gpa`.
    pub fn map(&self, gpa: u64, size: u64, file: File, offset: u64) -> std::io::Result<()> {
        let err = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let size_us = usize::try_from(size).map_err(|_| err(format!("region size {size:#x}")))?;
        if size == 0 || gpa.checked_add(size).is_none() {
            return Err(err(format!("bad region {gpa:#x}+{size:#x}")));
        }
        let region = GuestRegionMmap::from_range(GuestAddress(gpa), size_us, Some(FileOffset::new(file, offset)))
            .map_err(|e| err(format!("cannot map {gpa:#x}+{size:#x}: {e}")))?;
        let mut r = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if r.list.len() >= MAX_REGIONS {
            return Err(err("too many regions".into()));
        }
        let mut list = r.list.clone();
        list.retain(|x| {
            // Regions were checked not to wrap when they were mapped (gpa + size above).
            let (s, e) = (x.start_addr().0, x.start_addr().0.saturating_add(x.len()));
            e <= gpa || s >= gpa.saturating_add(size)
        });
        list.push(Arc::new(region));
        list.sort_by_key(|x| x.start_addr().0);
        let mem = GuestMemoryMmap::from_arc_regions(list.clone()).map_err(|e| err(format!("regions: {e}")))?;
        *r = Regions { list, mem: Arc::new(mem) };
        Ok(())
    }

    /// Unmap every region inside `[gpa, gpa + size)`.
    pub fn unmap(&self, gpa: u64, size: u64) {
        let mut r = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let end = gpa.saturating_add(size);
        let list: Vec<_> = r.list.iter().filter(|x| !(x.start_addr().0 >= gpa && x.start_addr().0 < end)).cloned().collect();
        let mem = GuestMemoryMmap::from_arc_regions(list.clone()).unwrap_or_default();
        *r = Regions { list, mem: Arc::new(mem) };
    }

    /// A consistent view for one operation; later map/unmap calls do not change it.
    pub fn snapshot(&self) -> GuestMem {
        GuestMem(self.inner.read().unwrap_or_else(|p| p.into_inner()).mem.clone())
    }

    /// The mapped regions, (guest physical address, size), lowest first.
    pub fn regions(&self) -> Vec<(u64, u64)> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).list.iter().map(|r| (r.start_addr().0, r.len())).collect()
    }

    /// One past the highest mapped guest physical address.
    pub fn top(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .list
            .iter()
            .map(|r| r.start_addr().0.saturating_add(r.len()))
            .max()
            .unwrap_or(0)
    }
}

use vm_memory::GuestMemoryRegion;

/// A snapshot of guest RAM, implementing the models' physical-memory trait.
#[derive(Clone)]
pub struct GuestMem(Arc<GuestMemoryMmap>);

impl GuestMem {
    /// Whether every byte of `[addr, addr + len)` is in a mapped region.
    pub fn backed(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|n| n > 0 && self.0.check_range(GuestAddress(addr), n))
    }

    /// The vm-memory view, for rust-vmm crates that take a `GuestMemory` (virtio-queue).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.0
    }

    /// Copy guest memory to guest memory without a bounce buffer (the DMA engine's data path);
    /// both ranges must lie inside one mapped region each.
    pub fn copy(&mut self, src: u64, dst: u64, len: usize) -> Result<(), MemError> {
        let s = self.0.get_slice(GuestAddress(src), len).map_err(|_| MemError { addr: src, len })?;
        let d = self.0.get_slice(GuestAddress(dst), len).map_err(|_| MemError { addr: dst, len })?;
        s.copy_to_volatile_slice(d);
        Ok(())
    }
}

impl PhysMem for GuestMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.0.read_slice(buf, GuestAddress(addr)).map_err(|_| MemError { addr, len: buf.len() })
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        self.0.write_slice(data, GuestAddress(addr)).map_err(|_| MemError { addr, len: data.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memfd(size: u64) -> File {
        let path = std::env::temp_dir().join(format!("tiommu-gm-{}-{size}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(&vec![0u8; size as usize]).unwrap();
        f
    }

    #[test]
    fn accesses_are_bounded_by_the_mapped_regions() {
        let ram = GuestRam::default();
        ram.map(0x10_0000, 0x1_0000, memfd(0x1_0000), 0).unwrap();
        let mut m = ram.snapshot();
        m.write_u64(0x10_fff8, 42).unwrap();
        assert_eq!(m.read_u64(0x10_fff8).unwrap(), 42);
        assert!(m.read_u64(0x10_fffc).is_err(), "crosses the end");
        assert!(m.read_u64(0xf_fff8).is_err(), "below");
        assert!(m.write_u64(u64::MAX - 3, 1).is_err());
        ram.unmap(0x10_0000, 0x1_0000);
        assert!(m.read_u64(0x10_0000).is_ok(), "an old snapshot keeps its mapping alive");
        assert!(ram.snapshot().read_u64(0x10_0000).is_err());
        assert!(ram.map(u64::MAX - 0xfff, 0x2000, memfd(0x2000), 0).is_err());
    }
}
