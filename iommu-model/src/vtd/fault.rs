//! Fault records, 128 bits each, as the fault recording registers hold them (VT-d §11.4.14;
//! Linux dmar.c dmar_fault: FI = lo 63:12, SID = hi 15:0, FR = hi 39:32, T = hi bit 62 with
//! 1 = read, F = hi bit 63).

use crate::walk::Access;

/// Fault reasons of legacy-mode translation (VT-d Appendix A; Linux dma_remap_fault_reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultReason {
    RootNotPresent = 0x1,
    ContextNotPresent = 0x2,
    InvalidContext = 0x3,
    AddressBeyondMgaw = 0x4,
    WriteDenied = 0x5,
    ReadDenied = 0x6,
    NextTableInvalid = 0x7,
    RootTableInvalid = 0x8,
    ContextTableInvalid = 0x9,
    RootReserved = 0xa,
    ContextReserved = 0xb,
    PteReserved = 0xc,
    TranslationTypeBlocked = 0xd,
}

impl FaultReason {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<FaultReason> {
        use FaultReason::*;
        [
            RootNotPresent, ContextNotPresent, InvalidContext, AddressBeyondMgaw, WriteDenied, ReadDenied,
            NextTableInvalid, RootTableInvalid, ContextTableInvalid, RootReserved, ContextReserved, PteReserved,
            TranslationTypeBlocked,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    /// The reason as Linux prints it.
    pub fn description(self) -> &'static str {
        match self {
            FaultReason::RootNotPresent => "Present bit in root entry is clear",
            FaultReason::ContextNotPresent => "Present bit in context entry is clear",
            FaultReason::InvalidContext => "Invalid context entry",
            FaultReason::AddressBeyondMgaw => "Access beyond MGAW",
            FaultReason::WriteDenied => "PTE Write access is not set",
            FaultReason::ReadDenied => "PTE Read access is not set",
            FaultReason::NextTableInvalid => "Next page table ptr is invalid",
            FaultReason::RootTableInvalid => "Root table address invalid",
            FaultReason::ContextTableInvalid => "Context table ptr is invalid",
            FaultReason::RootReserved => "non-zero reserved fields in RTP",
            FaultReason::ContextReserved => "non-zero reserved fields in CTP",
            FaultReason::PteReserved => "non-zero reserved fields in PTE",
            FaultReason::TranslationTypeBlocked => "PCE for translation request specifies blocking",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub sid: u16,
    /// Faulting page address (bits 11:0 clear).
    pub fi: u64,
    pub reason: FaultReason,
    pub access: Access,
}

impl FaultRecord {
    pub fn new(sid: u16, iova: u64, access: Access, reason: FaultReason) -> FaultRecord {
        FaultRecord { sid, fi: iova & !0xfff, reason, access }
    }

    /// The 128-bit register image with F set.
    pub fn to_bytes(&self) -> [u8; 16] {
        let t = u64::from(self.access == Access::Read);
        let hi = u64::from(self.sid) | u64::from(self.reason.code()) << 32 | t << 62 | 1 << 63;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.fi.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    }

    /// Decode a register image; `None` if F is clear or the reason is not a translation fault.
    pub fn from_bytes(b: &[u8; 16]) -> Option<FaultRecord> {
        let lo = u64::from_le_bytes(b[..8].try_into().ok()?);
        let hi = u64::from_le_bytes(b[8..].try_into().ok()?);
        if hi >> 63 == 0 {
            return None;
        }
        Some(FaultRecord {
            sid: hi as u16,
            fi: lo & !0xfff,
            reason: FaultReason::from_code((hi >> 32) as u8)?,
            access: if (hi >> 62) & 1 == 1 { Access::Read } else { Access::Write },
        })
    }
}
