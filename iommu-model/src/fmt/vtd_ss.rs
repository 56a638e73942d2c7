//! Intel VT-d second-stage page-table entries (VT-d spec §9.8, "Second-Stage Paging Entries";
//! Linux drivers/iommu/generic_pt/fmt/vtdss.h and intel/iommu.h DMA_PTE_*; reserved masks as
//! QEMU hw/i386/intel_iommu_internal.h VTD_SS_* lay them out).

use crate::walk::{Entry, Format, Perm};

pub const R: u64 = 1 << 0;
pub const W: u64 = 1 << 1;
/// PS: the entry maps a superpage (2 MiB at level 2, 1 GiB at level 3).
pub const PS: u64 = 1 << 7;
/// SNP (bit 11) is reserved unless ECAP.SC; this model does not advertise SC.
const SNP: u64 = 1 << 11;
/// TM (bit 62) is reserved unless ECAP.DT; not advertised either.
const TM: u64 = 1 << 62;

/// A second-stage format for a host address width (bits above it are reserved).
#[derive(Clone, Copy, Debug)]
pub struct VtdSs {
    /// Host address width in bits (CAP.MGAW-limited output addresses); 39..=52.
    pub haw: u8,
    /// CAP.SLLPS: 2 MiB and 1 GiB superpages supported.
    pub sp_2m: bool,
    pub sp_1g: bool,
}

impl Default for VtdSs {
    fn default() -> Self {
        VtdSs { haw: 48, sp_2m: true, sp_1g: true }
    }
}

impl VtdSs {
    fn addr_mask(&self) -> u64 {
        ((1u64 << self.haw) - 1) & !0xfff
    }
}

impl Format for VtdSs {
    fn decode(&self, level: u8, raw: u64) -> Entry {
        // Present iff R or W (Linux dma_pte_present).
        if raw & (R | W) == 0 {
            return Entry::NotPresent;
        }
        let perm = Perm::new(raw & R != 0, raw & W != 0);
        // Address bits above HAW, up to bit 51, are reserved, as are SNP and TM here.
        let above_haw = 0x000f_ffff_ffff_f000 & !self.addr_mask();
        if raw & (above_haw | SNP | TM) != 0 {
            return Entry::Invalid;
        }
        let ps = raw & PS != 0;
        match (level, ps) {
            (1, _) => {
                // Bit 7 is ignored in a PTE (it is PAT-related in other modes); treat as leaf.
                Entry::Page { addr: raw & self.addr_mask(), size_log2: 12, perm }
            }
            (2, true) if self.sp_2m => {
                // Address bits 20:12 of a 2 MiB superpage are reserved.
                if raw & 0x1f_f000 != 0 {
                    return Entry::Invalid;
                }
                Entry::Page { addr: raw & self.addr_mask(), size_log2: 21, perm }
            }
            (3, true) if self.sp_1g => {
                if raw & 0x3fff_f000 != 0 {
                    return Entry::Invalid;
                }
                Entry::Page { addr: raw & self.addr_mask(), size_log2: 30, perm }
            }
            (_, true) => Entry::Invalid,
            (_, false) => {
                // Non-leaf entries: bit 7 clear; bits 6:3 (EMT/IPAT) are reserved in them.
                if raw & 0x78 != 0 {
                    return Entry::Invalid;
                }
                Entry::Table { addr: raw & self.addr_mask(), next_level: level - 1, perm }
            }
        }
    }
}

/// A non-leaf entry pointing at `table`.
pub fn table(table: u64, perm: Perm) -> u64 {
    (table & !0xfff) | bits(perm)
}

/// A leaf: 4 KiB at level 1, or a superpage when `superpage`.
pub fn leaf(page: u64, perm: Perm, superpage: bool) -> u64 {
    (page & !0xfff) | bits(perm) | if superpage { PS } else { 0 }
}

fn bits(p: Perm) -> u64 {
    (if p.read { R } else { 0 }) | (if p.write { W } else { 0 })
}
