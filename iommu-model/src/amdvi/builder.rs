//! A v1 page-table builder: writes tables the way Linux's drivers/iommu/amd/io_pgtable.c does
//! (PDEs with PR|IR|IW and the next level; natural-size leaves with NextLevel 0; other power-of-two
//! sizes as NextLevel 7 entries replicated over their slots). It never reads entries back through
//! the walker, so tests can use it as the reference the walker is checked against; the daemon and
//! tools use it to own tables.
// Builds tables from the caller's (a test's, a tool's) addresses, never from guest-written values.
#![allow(clippy::arithmetic_side_effects)]

use crate::fmt::amdv1::{self, next_level};
use crate::mem::{MemError, PhysMem};
use crate::walk::Perm;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The pool for table pages is used up.
    OutOfTables,
    /// Size not between 4 KiB and the mode's reach, or addresses not aligned to it.
    BadMapping,
    /// A larger page already maps part of the range, or a table sits where a leaf should go.
    Overlap,
    Memory(MemError),
}

impl From<MemError> for BuildError {
    fn from(e: MemError) -> Self {
        BuildError::Memory(e)
    }
}

pub struct V1Builder {
    pub root: u64,
    pub mode: u8,
    next_free: u64,
    pool_end: u64,
}

fn level_shift(level: u8) -> u32 {
    12 + 9 * (u32::from(level) - 1)
}

impl V1Builder {
    /// Tables are taken from `[pool_start, pool_end)` (4 KiB aligned), root first.
    pub fn new<M: PhysMem + ?Sized>(mem: &mut M, pool_start: u64, pool_end: u64, mode: u8) -> Result<Self, BuildError> {
        if !(1..=6).contains(&mode) {
            return Err(BuildError::BadMapping);
        }
        let mut b = V1Builder { root: 0, mode, next_free: (pool_start + 0xfff) & !0xfff, pool_end };
        b.root = b.alloc(mem)?;
        Ok(b)
    }

    /// Bytes of the pool used so far.
    pub fn used(&self) -> u64 {
        self.next_free - self.root
    }

    fn alloc<M: PhysMem + ?Sized>(&mut self, mem: &mut M) -> Result<u64, BuildError> {
        if self.next_free + 0x1000 > self.pool_end {
            return Err(BuildError::OutOfTables);
        }
        let page = self.next_free;
        mem.write(page, &[0u8; 4096])?;
        self.next_free += 0x1000;
        Ok(page)
    }

    /// The level a page of `1 << size_log2` bytes is written at.
    pub fn leaf_level(size_log2: u8) -> u8 {
        ((u32::from(size_log2) - 12) / 9 + 1) as u8
    }

    /// Map `[iova, iova + 2^size_log2)` to `spa` with `perm`.
    pub fn map<M: PhysMem + ?Sized>(&mut self, mem: &mut M, iova: u64, spa: u64, size_log2: u8, perm: Perm) -> Result<(), BuildError> {
        let reach = 12 + 9 * u32::from(self.mode);
        let size_ok = (12..=52).contains(&size_log2) && u32::from(size_log2) < reach.min(64);
        if !size_ok {
            return Err(BuildError::BadMapping);
        }
        let mask = (1u64 << size_log2) - 1;
        if iova & mask != 0 || spa & mask != 0 || (reach < 64 && iova >> reach != 0) {
            return Err(BuildError::BadMapping);
        }
        let leaf = Self::leaf_level(size_log2);
        if leaf > self.mode {
            return Err(BuildError::BadMapping);
        }
        let table = self.table_for(mem, iova, leaf)?;
        let natural = u32::from(size_log2) == level_shift(leaf);
        let (raw, count) = if natural {
            (amdv1::pte(spa, perm), 1)
        } else {
            (amdv1::sized_pte(spa, size_log2, perm), 1u64 << (u32::from(size_log2) - level_shift(leaf)))
        };
        let first = (iova >> level_shift(leaf)) & 0x1ff;
        for i in 0..count {
            let addr = table + (first + i) * 8;
            let old = mem.read_u64(addr)?;
            if old & amdv1::PR != 0 && !matches!(next_level(old), 0 | 7) {
                return Err(BuildError::Overlap);
            }
            mem.write_u64(addr, raw)?;
        }
        Ok(())
    }

    /// Clear the leaf entries of a mapping made with the same iova and size.
    pub fn unmap<M: PhysMem + ?Sized>(&mut self, mem: &mut M, iova: u64, size_log2: u8) -> Result<(), BuildError> {
        let leaf = Self::leaf_level(size_log2);
        if !(12..=52).contains(&size_log2) || leaf > self.mode {
            return Err(BuildError::BadMapping);
        }
        let Some(table) = self.find_table(mem, iova, leaf)? else { return Ok(()) };
        let count = 1u64 << (u32::from(size_log2) - level_shift(leaf));
        let first = (iova >> level_shift(leaf)) & 0x1ff;
        for i in 0..count.min(512 - first) {
            mem.write_u64(table + (first + i) * 8, 0)?;
        }
        Ok(())
    }

    /// The table at `leaf` level that holds `iova`, creating PDEs on the way.
    fn table_for<M: PhysMem + ?Sized>(&mut self, mem: &mut M, iova: u64, leaf: u8) -> Result<u64, BuildError> {
        let mut table = self.root;
        let mut level = self.mode;
        while level > leaf {
            let addr = table + ((iova >> level_shift(level)) & 0x1ff) * 8;
            let raw = mem.read_u64(addr)?;
            if raw & amdv1::PR == 0 {
                let next = self.alloc(mem)?;
                mem.write_u64(addr, amdv1::pde(next, level - 1, Perm::RW))?;
                table = next;
            } else if matches!(next_level(raw), 0 | 7) {
                return Err(BuildError::Overlap);
            } else {
                table = raw & amdv1::ADDR_MASK;
            }
            level -= 1;
        }
        Ok(table)
    }

    fn find_table<M: PhysMem + ?Sized>(&self, mem: &M, iova: u64, leaf: u8) -> Result<Option<u64>, BuildError> {
        let mut table = self.root;
        let mut level = self.mode;
        while level > leaf {
            let raw = mem.read_u64(table + ((iova >> level_shift(level)) & 0x1ff) * 8)?;
            if raw & amdv1::PR == 0 || matches!(next_level(raw), 0 | 7) {
                return Ok(None);
            }
            table = raw & amdv1::ADDR_MASK;
            level -= 1;
        }
        Ok(Some(table))
    }
}
