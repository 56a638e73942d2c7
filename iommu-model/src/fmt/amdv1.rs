//! AMD-Vi v1 host I/O page-table entries (AMD IOMMU spec 48882 §2.2.3, "I/O Page Tables for Host
//! Translations"; Linux drivers/iommu/generic_pt/fmt/amdv1.h and amd_iommu_types.h IOMMU_PTE_*).

use crate::walk::{Entry, Format, Perm};

pub const PR: u64 = 1 << 0;
pub const IR: u64 = 1 << 61;
pub const IW: u64 = 1 << 62;
pub const FC: u64 = 1 << 60;
pub const U: u64 = 1 << 59;
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000; // bits 51:12
const NEXT_LEVEL_SHIFT: u32 = 9;
/// PTE bits 58:52 and PDE bits 60:52 are reserved (spec Tables 14 and 15).
const PTE_RSVD: u64 = 0x07f0_0000_0000_0000;
const PDE_RSVD: u64 = 0x1ff0_0000_0000_0000;

/// NextLevel 7: the page size is encoded in the address bits (spec Table 14, "NextLevel=7").
pub const NEXT_LEVEL_SIZED: u8 = 7;

pub fn next_level(raw: u64) -> u8 {
    ((raw >> NEXT_LEVEL_SHIFT) & 7) as u8
}

fn perm(raw: u64) -> Perm {
    Perm::new(raw & IR != 0, raw & IW != 0)
}

/// The v1 format. Stateless: every rule is in the entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct AmdV1;

impl Format for AmdV1 {
    fn decode(&self, level: u8, raw: u64) -> Entry {
        if raw & PR == 0 {
            return Entry::NotPresent;
        }
        let nl = next_level(raw);
        // Level 6 (the top of a Mode 6 table) holds no translations (spec Table 15, as Linux
        // generic_pt amdv1.h amdv1pt_can_have_leaf quotes it).
        if level >= 6 && (nl == 0 || nl == NEXT_LEVEL_SIZED) {
            return Entry::Invalid;
        }
        match nl {
            // NextLevel 0 ends the walk with a page of the level's natural size.
            0 => {
                if raw & PTE_RSVD != 0 {
                    return Entry::Invalid;
                }
                // The walker passes levels 1..=6.
                let size_log2 = 12u8.saturating_add(9u8.saturating_mul(level.saturating_sub(1)));
                Entry::Page { addr: raw & ADDR_MASK, size_log2, perm: perm(raw) }
            }
            // NextLevel 7: size = 2^(1 + position of the first zero address bit from bit 12)
            // (Linux PTE_PAGE_SIZE: 1ULL << (1 + ffz(pte | 0xfff))).
            NEXT_LEVEL_SIZED => {
                if raw & PTE_RSVD != 0 {
                    return Entry::Invalid;
                }
                let ones = (raw | 0xfff).trailing_ones();
                if ones >= 52 {
                    return Entry::Invalid;
                }
                // ones is 12..=51 here.
                let size_log2 = ones.saturating_add(1) as u8;
                let addr = raw & ADDR_MASK & !(1u64 << size_log2).wrapping_sub(1);
                Entry::Page { addr, size_log2, perm: perm(raw) }
            }
            n => {
                if raw & PDE_RSVD != 0 {
                    return Entry::Invalid;
                }
                Entry::Table { addr: raw & ADDR_MASK, next_level: n, perm: perm(raw) }
            }
        }
    }
}

/// A PDE pointing at a table of level `next_level`, as Linux writes it (PM_LEVEL_PDE).
pub fn pde(table: u64, next_level: u8, perm: Perm) -> u64 {
    (table & ADDR_MASK) | (u64::from(next_level) << NEXT_LEVEL_SHIFT) | PR | perm_bits(perm)
}

/// A leaf of the level's natural size (NextLevel 0).
pub fn pte(page: u64, perm: Perm) -> u64 {
    (page & ADDR_MASK) | PR | perm_bits(perm)
}

/// A NextLevel-7 leaf of `1 << size_log2` bytes (Linux PAGE_SIZE_PTE: the run of ones below the
/// size bit encodes the size).
pub fn sized_pte(page: u64, size_log2: u8, perm: Perm) -> u64 {
    let size = 1u64.checked_shl(u32::from(size_log2)).unwrap_or(0);
    let addr = ((page | size.wrapping_sub(1)) & !(size >> 1)) & ADDR_MASK;
    addr | (u64::from(NEXT_LEVEL_SIZED) << NEXT_LEVEL_SHIFT) | PR | perm_bits(perm)
}

fn perm_bits(p: Perm) -> u64 {
    (if p.read { IR } else { 0 }) | (if p.write { IW } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_pte_round_trips() {
        for size_log2 in 13..=51u8 {
            let page = 0x000a_bcde_0000_0000u64 & !((1u64 << size_log2) - 1) & ADDR_MASK;
            let raw = sized_pte(page, size_log2, Perm::RW);
            let level = if size_log2 < 21 { 1 } else { 1 + (size_log2 - 12) / 9 };
            assert_eq!(AmdV1.decode(level, raw), Entry::Page { addr: page, size_log2, perm: Perm::RW }, "size 2^{size_log2}");
        }
    }

    #[test]
    fn level_six_holds_no_leaves() {
        assert_eq!(AmdV1.decode(6, pte(0, Perm::RW)), Entry::Invalid);
        assert_eq!(AmdV1.decode(6, sized_pte(0, 52, Perm::RW)), Entry::Invalid);
        assert_eq!(AmdV1.decode(6, pde(0x5000, 5, Perm::RW)), Entry::Table { addr: 0x5000, next_level: 5, perm: Perm::RW });
        assert_eq!(AmdV1.decode(5, pte(1 << 48, Perm::RW)), Entry::Page { addr: 1 << 48, size_log2: 48, perm: Perm::RW });
    }
}
