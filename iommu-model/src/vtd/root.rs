//! Legacy root entries: 256 x 128 bits at RTADDR, indexed by bus (VT-d §9.1; Linux struct
//! root_entry: lo bit 0 present, bits 63:12 context-table pointer; the rest reserved).

use super::fault::FaultReason;
use crate::mem::PhysMem;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootEntry {
    pub lo: u64,
    pub hi: u64,
}

impl RootEntry {
    pub fn present(&self) -> bool {
        self.lo & 1 != 0
    }
    pub fn ctp(&self) -> u64 {
        self.lo & !0xfff & 0x000f_ffff_ffff_ffff
    }
    pub fn new(ctp: u64) -> RootEntry {
        RootEntry { lo: (ctp & !0xfff) | 1, hi: 0 }
    }
}

pub fn fetch<M: PhysMem + ?Sized>(mem: &M, rtaddr: u64, bus: u8) -> Result<RootEntry, FaultReason> {
    let addr = (rtaddr & !0xfff) + u64::from(bus) * 16;
    let read = |a| mem.read_u64(a).map_err(|_| FaultReason::RootTableInvalid);
    let e = RootEntry { lo: read(addr)?, hi: read(addr + 8)? };
    if !e.present() {
        return Err(FaultReason::RootNotPresent);
    }
    if e.lo & 0xffe != 0 || e.lo >> 52 != 0 || e.hi != 0 {
        return Err(FaultReason::RootReserved);
    }
    Ok(e)
}
