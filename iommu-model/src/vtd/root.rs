//! Legacy root entries: 256 x 128 bits at RTADDR, indexed by bus (VT-d spec §9.1; Linux struct
//! root_entry: lo bit 0 present, bits 63:12 context-table pointer, the rest reserved).

use super::fault::FaultReason;
use crate::mem::PhysMem;

pub const ENTRY_SIZE: u64 = 16;
pub const P: u64 = 1 << 0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootEntry {
    pub lo: u64,
    pub hi: u64,
}

impl RootEntry {
    pub fn new(ctp: u64) -> RootEntry {
        RootEntry { lo: (ctp & !0xfff) | P, hi: 0 }
    }

    pub fn present(&self) -> bool {
        self.lo & P != 0
    }

    /// The context-table pointer (bits 63:12; those at and above HAW are reserved bits, which
    /// [`RootEntry::reserved_bits_set`] refuses before the pointer is used).
    pub fn ctp(&self) -> u64 {
        self.lo & !0xfff
    }

    /// Reserved bits for a host address width `haw`: lo 11:1 and bits at and above HAW, all of hi
    /// (QEMU VTD_ROOT_ENTRY_RSVD(aw) = 0xffe | ~VTD_HAW_MASK(aw), and `re->hi` in legacy mode).
    pub fn reserved_bits_set(&self, haw: u8) -> bool {
        self.lo & (0xffe | !haw_mask(haw)) != 0 || self.hi != 0
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        super::to_bytes(self.lo, self.hi)
    }
}

/// `(1 << haw) - 1`, QEMU VTD_HAW_MASK, with HAW taken as the second-stage format takes it.
pub(crate) fn haw_mask(haw: u8) -> u64 {
    (1u64 << u32::from(haw).clamp(crate::fmt::vtd_ss::HAW_MIN, 52)).wrapping_sub(1)
}

/// Read the root entry for `bus` (RTADDR bits 11:0 are the table type and reserved bits of the
/// register, not part of the address). A table outside memory is fault 0x8.
pub fn fetch<M: PhysMem + ?Sized>(mem: &M, rtaddr: u64, bus: u8) -> Result<RootEntry, FaultReason> {
    let addr = (rtaddr & !0xfff).wrapping_add(u64::from(bus) * ENTRY_SIZE);
    let mut b = [0u8; 16];
    mem.read(addr, &mut b).map_err(|_| FaultReason::RootTableInvalid)?;
    let (lo, hi) = super::from_bytes(&b);
    Ok(RootEntry { lo, hi })
}
