//! Intel VT-d second-stage page-table entries (VT-d spec §9.8, "Second-Stage Paging Entries";
//! Linux drivers/iommu/generic_pt/fmt/vtdss.h and intel/iommu.h DMA_PTE_*; reserved bits per level
//! as QEMU hw/i386/intel_iommu_internal.h VTD_SPTE_*_RSVD_MASK lay them out).

use crate::walk::{Entry, Format, Perm};

pub const R: u64 = 1 << 0;
pub const W: u64 = 1 << 1;
/// PS: the entry maps a superpage (2 MiB at level 2, 1 GiB at level 3).
pub const PS: u64 = 1 << 7;
/// SNP (bit 11) is reserved unless ECAP.SC (QEMU clears it from the masks only for snoop control
/// or scalable mode); this model advertises neither.
pub const SNP: u64 = 1 << 11;
/// TM (bit 62): reserved since spec rev 3.2 (QEMU `stale_tm` off).
pub const TM: u64 = 1 << 62;
/// Bits 51:12, before the host address width cuts them.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Ignored in every entry: 10, 61:52, 63 (vtdss.h pt_sw_bit; QEMU VTD_SL_IGN_COM with bit 10).
/// Bits 2 (X), 6:3 (EMT/IPAT), 8 (A) and 9 (D) are ignored in legacy mode as well: QEMU's masks
/// reserve none of them.
pub const IGNORED: u64 = 0xbff0_0000_0000_0400;

/// No x86 platform has fewer physical address bits; a smaller HAW would leave no room for the
/// address of a 1 GiB page.
pub const HAW_MIN: u32 = 32;

/// A second-stage format for a host address width (address bits at and above it are reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSs {
    /// Host address width in bits, 32..=52 (other values are taken as the nearest of those); table
    /// and page addresses must lie below 2^haw.
    pub haw: u8,
    /// CAP.SLLPS bit 34: 2 MiB superpages. Without it PS at level 2 is a reserved bit.
    pub sp_2m: bool,
    /// CAP.SLLPS bit 35: 1 GiB superpages.
    pub sp_1g: bool,
}

impl Default for VtdSs {
    fn default() -> Self {
        VtdSs { haw: 52, sp_2m: true, sp_1g: true }
    }
}

impl VtdSs {
    /// Address bits below the host address width (QEMU VTD_HAW_MASK & ~0xfff).
    pub fn addr_mask(&self) -> u64 {
        let haw = u32::from(self.haw).clamp(HAW_MIN, 52);
        (1u64 << haw).wrapping_sub(1) & ADDR_MASK
    }

    /// Bits that must be zero in every entry, whatever the level: SNP, TM and address bits at or
    /// above HAW (QEMU: `0x800 | ~(VTD_HAW_MASK(aw) | VTD_SL_IGN_COM)`).
    fn reserved_common(&self) -> u64 {
        SNP | TM | (ADDR_MASK & !self.addr_mask())
    }
}

impl Format for VtdSs {
    fn decode(&self, level: u8, raw: u64) -> Entry {
        // No present bit: an entry is present iff R or W (Linux dma_pte_present; vtdss.h).
        if raw & (R | W) == 0 {
            return Entry::NotPresent;
        }
        let perm = Perm::new(raw & R != 0, raw & W != 0);
        if raw & self.reserved_common() != 0 {
            return Entry::Invalid;
        }
        let addr = raw & self.addr_mask();
        let ps = raw & PS != 0;
        match level {
            // Bit 7 of a PTE is ignored (QEMU VTD_SPTE_PAGE_L1_RSVD_MASK leaves it out).
            1 => Entry::Page { addr, size_log2: 12, perm },
            // Address bits 20:12 of a 2 MiB page are reserved (VTD_SPTE_LPAGE_L2_RSVD_MASK 0x1ff800).
            2 if ps && self.sp_2m && raw & 0x1f_f000 == 0 => Entry::Page { addr, size_log2: 21, perm },
            // Address bits 29:12 of a 1 GiB page (VTD_SPTE_LPAGE_L3_RSVD_MASK 0x3ffff800).
            3 if ps && self.sp_1g && raw & 0x3fff_f000 == 0 => Entry::Page { addr, size_log2: 30, perm },
            // PS where the level (4, 5) or CAP.SLLPS allows no superpage is a reserved bit
            // (VTD_SPTE_PAGE_L4_RSVD_MASK 0x880), as are misaligned superpage addresses.
            _ if ps => Entry::Invalid,
            2..=5 => Entry::Table { addr, next_level: level.saturating_sub(1), perm },
            _ => Entry::Invalid,
        }
    }
}

/// A non-leaf entry pointing at `table`, as Linux writes them (R and W, vtdss.h install_table) when
/// `perm` is RW.
pub fn table(table: u64, perm: Perm) -> u64 {
    (table & ADDR_MASK) | bits(perm)
}

/// A leaf: 4 KiB at level 1, or a superpage when `superpage`.
pub fn leaf(page: u64, perm: Perm, superpage: bool) -> u64 {
    (page & ADDR_MASK) | bits(perm) | if superpage { PS } else { 0 }
}

fn bits(p: Perm) -> u64 {
    (if p.read { R } else { 0 }) | (if p.write { W } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bits_per_level_follow_qemus_masks() {
        let f = VtdSs { haw: 48, sp_2m: true, sp_1g: true };
        let pde = table(0x1000, Perm::RW);
        // Ignored bits and the EMT/IPAT/A/D bits are accepted at every level.
        for level in 2..=5 {
            assert!(matches!(f.decode(level, pde | IGNORED | 0x37c), Entry::Table { .. }), "level {level}");
        }
        assert!(matches!(f.decode(1, leaf(0x1000, Perm::RW, false) | IGNORED | 0xfc), Entry::Page { .. }));
        for level in 1..=5 {
            assert_eq!(f.decode(level, pde | SNP), Entry::Invalid, "SNP at level {level}");
            assert_eq!(f.decode(level, pde | TM), Entry::Invalid, "TM at level {level}");
            assert_eq!(f.decode(level, pde | 1 << 48), Entry::Invalid, "bit 48 with HAW 48 at {level}");
        }
        assert!(matches!(f.decode(3, pde | 1 << 47), Entry::Table { .. }));
        assert_eq!(f.decode(4, pde | PS), Entry::Invalid);
        assert_eq!(f.decode(5, pde | PS), Entry::Invalid);
        assert_eq!(f.decode(2, leaf(0x20_1000, Perm::RW, true)), Entry::Invalid);
        assert_eq!(f.decode(3, leaf(0x4020_0000, Perm::RW, true)), Entry::Invalid);
        let no_1g = VtdSs { sp_1g: false, ..f };
        assert_eq!(no_1g.decode(3, leaf(0x4000_0000, Perm::RW, true)), Entry::Invalid);
        assert!(matches!(no_1g.decode(2, leaf(0x20_0000, Perm::RW, true)), Entry::Page { size_log2: 21, .. }));
    }

    #[test]
    fn present_iff_read_or_write() {
        let f = VtdSs::default();
        assert_eq!(f.decode(1, 0x1000 | IGNORED), Entry::NotPresent);
        assert_eq!(f.decode(1, 0x1000 | R), Entry::Page { addr: 0x1000, size_log2: 12, perm: Perm::new(true, false) });
        assert_eq!(f.decode(2, 0x1000 | W), Entry::Table { addr: 0x1000, next_level: 1, perm: Perm::new(false, true) });
    }
}
