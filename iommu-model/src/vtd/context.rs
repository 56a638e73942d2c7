//! Legacy context entries: 256 x 128 bits per bus, indexed by devfn (VT-d spec §9.3; Linux
//! intel/iommu.h context_*; reserved masks as QEMU's VTD_CONTEXT_ENTRY_RSVD_LO/HI).
//! lo: 0 P, 1 FPD, 3:2 TT, 63:12 SSPTPTR. hi: 2:0 AW, 6:3 available to software, 23:8 DID.

use super::fault::FaultReason;
use super::root::{haw_mask, RootEntry};
use crate::mem::PhysMem;

pub const ENTRY_SIZE: u64 = 16;
pub const P: u64 = 1 << 0;
pub const FPD: u64 = 1 << 1;
/// hi bit 7 and bits 63:24 (QEMU VTD_CONTEXT_ENTRY_RSVD_HI 0xffffffffff000080).
const RSVD_HI: u64 = 0xffff_ffff_ff00_0080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// TT=0: untranslated requests go through the second-stage tables.
    Untranslated,
    /// TT=1: as 0, and translation requests (ATS) too; needs ECAP.DT.
    DeviceTlb,
    /// TT=2: untranslated requests pass through (needs ECAP.PT).
    PassThrough,
    /// TT=3 is reserved.
    Reserved,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry {
    pub lo: u64,
    pub hi: u64,
}

impl ContextEntry {
    /// A present entry: second-stage root `ssptptr`, AW `aw` (1 = 39-bit, 2 = 48, 3 = 57), domain
    /// `did`, translation type `tt`.
    pub fn new(ssptptr: u64, aw: u8, did: u16, tt: u8) -> ContextEntry {
        ContextEntry { lo: (ssptptr & !0xfff) | (u64::from(tt & 3) << 2) | P, hi: u64::from(aw & 7) | u64::from(did) << 8 }
    }

    pub fn present(&self) -> bool {
        self.lo & P != 0
    }

    /// FPD: qualified faults of requests using this entry are not recorded. The spec has hardware
    /// evaluate it whatever P says (§9.3, FPD field), as QEMU does.
    pub fn fpd(&self) -> bool {
        self.lo & FPD != 0
    }

    pub fn translation_type(&self) -> TranslationType {
        match (self.lo >> 2) & 3 {
            0 => TranslationType::Untranslated,
            1 => TranslationType::DeviceTlb,
            2 => TranslationType::PassThrough,
            _ => TranslationType::Reserved,
        }
    }

    pub fn ssptptr(&self) -> u64 {
        self.lo & !0xfff
    }

    pub fn aw(&self) -> u8 {
        (self.hi & 7) as u8
    }

    /// Second-stage levels for AW: 3, 4, 5 for AW 1, 2, 3 (QEMU vtd_ce_get_level: 2 + AW).
    pub fn levels(&self) -> u8 {
        self.aw().saturating_add(2)
    }

    /// The adjusted guest address width AW selects, 30 + 9 * AW bits (39, 48, 57).
    pub fn agaw(&self) -> u32 {
        // AW is three bits.
        30u32.saturating_add(9u32.saturating_mul(u32::from(self.aw())))
    }

    pub fn did(&self) -> u16 {
        (self.hi >> 8) as u16
    }

    /// lo 11:4 and bits at and above HAW (QEMU VTD_CONTEXT_ENTRY_RSVD_LO(aw) = 0xff0 | ~HAW), hi
    /// bit 7 and 63:24.
    pub fn reserved_bits_set(&self, haw: u8) -> bool {
        self.lo & (0xff0 | !haw_mask(haw)) != 0 || self.hi & RSVD_HI != 0
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        super::to_bytes(self.lo, self.hi)
    }
}

/// Read the context entry for `devfn` from the table the root entry points at; present or not,
/// since FPD counts in either case. A table outside memory is fault 0x9.
pub fn fetch<M: PhysMem + ?Sized>(mem: &M, root: &RootEntry, devfn: u8) -> Result<ContextEntry, FaultReason> {
    let addr = root.ctp().wrapping_add(u64::from(devfn) * ENTRY_SIZE);
    let mut b = [0u8; 16];
    mem.read(addr, &mut b).map_err(|_| FaultReason::ContextTableInvalid)?;
    let (lo, hi) = super::from_bytes(&b);
    Ok(ContextEntry { lo, hi })
}
