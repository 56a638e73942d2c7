//! The TDX Connect personality's mailbox (`tiommu daemon --personality tdx-connect`): BAR2's
//! doorbell and command buffer ([`crate::mailbox::reg`]) run a TDX-module stand-in's calls
//! instead of the PSP's. The ids and status numbers are the model's: the module's SEAMCALL and
//! TDCALL leaf numbers and error codes are not modelled. Behaviour: docs/device-abi.md, "Secure
//! IOMMU: BAR2 with `tiommu daemon --personality tdx-connect`".

use crate::codes::codes;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

codes! {
    /// The module's calls: host calls (SEAMCALL stand-ins) and TD calls (TDCALL stand-ins).
    pub enum Call: u32 {
        /// Host: create TD `td` with an empty S-EPT.
        TdhMngCreate = 0x40 => "TDH.MNG.CREATE",
        /// Host: give page `spa` to TD `td`, mapped in its S-EPT at private `gpa`.
        TdhMemPageAdd = 0x41 => "TDH.MEM.PAGE.ADD",
        /// Host: take the page at `gpa` back from TD `td`.
        TdhMemPageRemove = 0x42 => "TDH.MEM.PAGE.REMOVE",
        /// Host: bind the TDI of `requester` to TD `td` (LOCK_INTERFACE).
        TdhTdiBind = 0x43 => "TDH.TDI.BIND",
        /// Host: STOP_INTERFACE, detach the TDI's trusted DMA and forget the binding.
        TdhTdiUnbind = 0x44 => "TDH.TDI.UNBIND",
        /// TD: start its bound TDI (START_INTERFACE with the nonce LOCK gave the module).
        TdgTdiStart = 0x50 => "TDG.TDI.START",
        /// TD: accept trusted DMA for its TDI (attach the TD's trusted I/O page table).
        TdgDmarAccept = 0x51 => "TDG.DMAR.ACCEPT",
        /// TD: release it.
        TdgDmarRelease = 0x52 => "TDG.DMAR.RELEASE",
    }
}

codes! {
    /// What a call answers (in the style of the module's TDX_* errors).
    pub enum TdxStatus: u32 {
        Success = 0 => "SUCCESS",
        OperandInvalid = 1 => "OPERAND_INVALID",
        /// The page is a TD's already, or the TDI is another TD's.
        PageOwnerMismatch = 2 => "PAGE_OWNER_MISMATCH",
        /// The page is still mapped for trusted DMA.
        PageInUse = 3 => "PAGE_IN_USE",
        MappingExists = 4 => "MAPPING_EXISTS",
        MappingNotFound = 5 => "MAPPING_NOT_FOUND",
        /// Not a module call (the SEV commands and RMP registers do not exist here).
        InvalidCommand = 0x11 => "INVALID_COMMAND",
        /// The device refused the TDISP step.
        TdiStateInvalid = 0x20 => "TDI_STATE_INVALID",
    }
}

/// Every call's buffer: the fields a call does not use are ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TdxCall {
    pub td: U32,
    /// The TDI's requester id.
    pub requester: U16,
    pub _reserved: [u8; 2],
    /// Private GPA (below bit 47, the shared bit).
    pub gpa: U64,
    /// TDH.MEM.PAGE.ADD: the page.
    pub spa: U64,
}

impl TdxCall {
    pub fn new(td: u32, requester: u16, gpa: u64, spa: u64) -> TdxCall {
        TdxCall { td: U32::new(td), requester: U16::new(requester), _reserved: [0; 2], gpa: U64::new(gpa), spa: U64::new(spa) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn the_buffer_and_codes_are_as_documented() {
        assert_eq!((offset_of!(TdxCall, requester), offset_of!(TdxCall, gpa), offset_of!(TdxCall, spa)), (4, 8, 16));
        assert_eq!(Call::from_code(0x43), Some(Call::TdhTdiBind));
        assert_eq!(Call::TdgDmarAccept.to_string(), "TDG.DMAR.ACCEPT");
        assert_eq!(TdxStatus::from_code(0x20), Some(TdxStatus::TdiStateInvalid));
    }
}
