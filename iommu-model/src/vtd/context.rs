//! Legacy context entries: 256 x 128 bits per bus, indexed by devfn (VT-d §9.3; Linux
//! intel/iommu.h context_*; reserved masks as QEMU's VTD_CONTEXT_ENTRY_RSVD_*).
//! lo: 0 P, 1 FPD, 3:2 TT, 63:12 SSPTPTR. hi: 2:0 AW, 6:3 available, 23:8 DID.

use super::fault::FaultReason;
use super::root::RootEntry;
use crate::mem::PhysMem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// TT=0: untranslated requests go through the second-stage tables.
    Untranslated,
    /// TT=2: requests pass through untranslated (ECAP.PT).
    PassThrough,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry {
    pub lo: u64,
    pub hi: u64,
}

impl ContextEntry {
    pub fn new(ssptptr: u64, aw: u8, did: u16, tt: u8) -> ContextEntry {
        ContextEntry {
            lo: (ssptptr & !0xfff) | (u64::from(tt & 3) << 2) | 1,
            hi: u64::from(aw & 7) | u64::from(did) << 8,
        }
    }
    pub fn present(&self) -> bool {
        self.lo & 1 != 0
    }
    /// FPD: fault processing disable (faults are not recorded).
    pub fn fpd(&self) -> bool {
        self.lo & 2 != 0
    }
    /// TT=1 (device-TLB) needs ECAP.DT, which this model does not advertise; TT=3 is reserved.
    pub fn translation_type(&self) -> Option<TranslationType> {
        match (self.lo >> 2) & 3 {
            0 => Some(TranslationType::Untranslated),
            2 => Some(TranslationType::PassThrough),
            _ => None,
        }
    }
    pub fn ssptptr(&self) -> u64 {
        self.lo & 0x000f_ffff_ffff_f000
    }
    pub fn aw(&self) -> u8 {
        (self.hi & 7) as u8
    }
    /// AW 1/2/3: 39/48/57-bit, 3/4/5 levels (all in SAGAW here); other values are invalid.
    pub fn levels(&self) -> Option<u8> {
        match self.aw() {
            1..=3 => Some(self.aw() + 2),
            _ => None,
        }
    }
    pub fn did(&self) -> u16 {
        (self.hi >> 8) as u16
    }
}

pub fn fetch<M: PhysMem + ?Sized>(mem: &M, root: &RootEntry, devfn: u8) -> Result<ContextEntry, FaultReason> {
    let addr = root.ctp() + u64::from(devfn) * 16;
    let read = |a| mem.read_u64(a).map_err(|_| FaultReason::ContextTableInvalid);
    let e = ContextEntry { lo: read(addr)?, hi: read(addr + 8)? };
    if !e.present() {
        return Err(FaultReason::ContextNotPresent);
    }
    // lo bits 11:4 and above bit 51; hi bit 7 and bits 63:24.
    if e.lo & 0xff0 != 0 || e.lo >> 52 != 0 || e.hi & 0xffff_ffff_ff00_0080 != 0 {
        return Err(FaultReason::ContextReserved);
    }
    Ok(e)
}
