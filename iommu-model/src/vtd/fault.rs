//! Fault records, 128 bits each, as the fault recording registers hold them (VT-d spec §11.4.14;
//! Linux dmar.c dmar_fault: FI = lo 63:12, SID = hi 15:0, FR = hi 39:32, T = hi bit 62 with
//! 1 = read, F = hi bit 63).

use crate::walk::Access;
use std::fmt;

/// Fault reasons of legacy-mode DMA remapping (VT-d spec Appendix A; Linux dmar.c
/// dma_remap_fault_reasons; QEMU VTDFaultReason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    pub const ALL: [FaultReason; 13] = {
        use FaultReason::*;
        [
            RootNotPresent,
            ContextNotPresent,
            InvalidContext,
            AddressBeyondMgaw,
            WriteDenied,
            ReadDenied,
            NextTableInvalid,
            RootTableInvalid,
            ContextTableInvalid,
            RootReserved,
            ContextReserved,
            PteReserved,
            TranslationTypeBlocked,
        ]
    };

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<FaultReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Qualified faults are the ones a context entry's FPD suppresses; faults found before a
    /// context entry is in hand (root entry, root or context table access, reserved bits of
    /// either entry) are always recorded (spec §7.1.3; QEMU vtd_qualified_faults).
    pub fn is_qualified(self) -> bool {
        use FaultReason::*;
        !matches!(self, RootNotPresent | RootTableInvalid | ContextTableInvalid | RootReserved | ContextReserved)
    }

    /// The reason as Linux prints it (dmar.c dma_remap_fault_reasons).
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

const T: u64 = 1 << 62;
const F: u64 = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Source-id: bus << 8 | devfn.
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

    /// The 128-bit register image with F set, little-endian as the registers read.
    pub fn to_bytes(&self) -> [u8; 16] {
        let t = if self.access == Access::Read { T } else { 0 };
        let hi = u64::from(self.sid) | u64::from(self.reason.code()) << 32 | t | F;
        super::to_bytes(self.fi, hi)
    }

    /// Decode a register image; `None` if F is clear (no fault recorded) or FR is not a
    /// legacy-mode DMA remapping reason.
    pub fn from_bytes(b: &[u8; 16]) -> Option<FaultRecord> {
        let (lo, hi) = super::from_bytes(b);
        if hi & F == 0 {
            return None;
        }
        Some(FaultRecord {
            sid: hi as u16,
            fi: lo & !0xfff,
            reason: FaultReason::from_code((hi >> 32) as u8)?,
            access: if hi & T != 0 { Access::Read } else { Access::Write },
        })
    }
}

/// One line with what Linux's DMAR fault message carries: access, requester, page, reason.
impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.access == Access::Read { "DMA Read" } else { "DMA Write" };
        write!(
            f,
            "{kind} from {:02x}:{:02x}.{} at {:#x}: fault reason {:#04x} ({})",
            self.sid >> 8,
            (self.sid >> 3) & 0x1f,
            self.sid & 7,
            self.fi,
            self.reason.code(),
            self.reason.description()
        )
    }
}
