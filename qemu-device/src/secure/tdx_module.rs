//! The TDX Connect personality's trusted side: a stand-in for the TDX module behind the secure
//! IOMMU function's mailbox. It owns the PAMT (rmp-model's `Tdx`: which TD owns each page), each
//! TD's secure EPT, which is also the trusted I/O page table (TDX Connect shares the two, so the
//! host cannot map a TD's private page for a device), and the TDISP state of each TDI it binds.
//! The S-EPT is a real VT-d second-stage table (the format the trusted DMA path walks) in module
//! memory, which no guest or host access reaches. Host calls (SEAMCALL stand-ins) and TD calls
//! (TDCALL stand-ins) are separate commands; no host call writes a trusted mapping to anything
//! but a page it hands to the TD. What is modelled and what is not: docs/tdx-vs-sev-tio.md.

use crate::secure::tdi::Via;
use crate::secure::SecureIommu;
use abi::event as ev;
use iommu_model::fmt::vtd_ss::{self, VtdSs};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::{self, Perm};
use rmp_model::tdisp::{self, Response, TdiState};
use rmp_model::tdx::{PageType, TdId, Tdx, TdxRefusal, TdxStatus};
use std::collections::BTreeMap;

use abi::tdx::{Call, TdxCall, TdxStatus as Status};

const INVALID_COMMAND: u32 = Status::InvalidCommand.code();
const TDI_STATE_INVALID: u32 = Status::TdiStateInvalid.code();

/// The mailbox number of a module outcome (abi::tdx::TdxStatus).
fn code(s: TdxStatus) -> u32 {
    match s {
        TdxStatus::Success => Status::Success,
        TdxStatus::OperandInvalid => Status::OperandInvalid,
        TdxStatus::PageOwnerMismatch => Status::PageOwnerMismatch,
        TdxStatus::PageInUse => Status::PageInUse,
        TdxStatus::MappingExists => Status::MappingExists,
        TdxStatus::MappingNotFound => Status::MappingNotFound,
    }
    .code()
}

/// Where module memory sits: an address range no guest RAM is at (the model never shows it).
const MODULE_BASE: u64 = 1 << 45;
/// Module memory for S-EPT pages: 4 MiB, 1024 tables (bounded, as the module's own memory is).
const MODULE_PAGES: u64 = 1024;
/// TDs at most.
const MAX_TDS: usize = 64;
/// The S-EPT's levels: 4, a 48-bit GPA (the shared bit is bit 47).
const SEPT_LEVELS: u8 = 4;
const SHARED_BIT: u8 = 47;

struct Tdi {
    td: TdId,
    /// The LOCK_INTERFACE nonce, which START_INTERFACE must echo (kept by the module).
    nonce: [u8; 32],
}

pub struct TdxModule {
    pub tdx: Tdx,
    /// TD -> the root of its S-EPT in module memory.
    sept: BTreeMap<TdId, u64>,
    mem: ByteMem,
    free: Vec<u64>,
    /// Requester -> its TDI's binding.
    tdis: BTreeMap<u16, Tdi>,
}

impl Default for TdxModule {
    fn default() -> Self {
        TdxModule {
            tdx: Tdx::new(SHARED_BIT),
            sept: BTreeMap::new(),
            mem: ByteMem::new(MODULE_BASE, (MODULE_PAGES * 0x1000) as usize),
            free: (0..MODULE_PAGES).rev().map(|i| MODULE_BASE.wrapping_add(i << 12)).collect(),
            tdis: BTreeMap::new(),
        }
    }
}

fn format() -> VtdSs {
    VtdSs { haw: 52, sp_2m: true, sp_1g: true }
}

impl TdxModule {
    fn alloc(&mut self) -> Option<u64> {
        let p = self.free.pop()?;
        self.mem.write(p, &[0u8; 4096]).ok()?;
        Some(p)
    }

    pub fn create_td(&mut self, td: TdId) -> TdxStatus {
        if self.sept.contains_key(&td) || self.sept.len() >= MAX_TDS {
            return TdxStatus::OperandInvalid;
        }
        match self.alloc() {
            Some(root) => {
                self.sept.insert(td, root);
                TdxStatus::Success
            }
            None => TdxStatus::OperandInvalid,
        }
    }

    /// The S-EPT entry slot for `gpa`'s 4 KiB page, making the tables down to it when `make`.
    fn leaf_slot(&mut self, td: TdId, gpa: u64, make: bool) -> Option<u64> {
        let mut table = *self.sept.get(&td)?;
        for level in (2..=SEPT_LEVELS).rev() {
            // Levels 2..=SEPT_LEVELS; tables are the module's own pages: no sum here wraps.
            let shift = 9u32.saturating_mul(u32::from(level).saturating_sub(1)).saturating_add(12);
            let slot = table.wrapping_add(((gpa >> shift) & 0x1ff) << 3);
            let e = self.mem.read_u64(slot).ok()?;
            table = if e & (vtd_ss::R | vtd_ss::W) != 0 {
                e & vtd_ss::ADDR_MASK
            } else if make {
                let t = self.alloc()?;
                self.mem.write_u64(slot, vtd_ss::table(t, Perm::RW)).ok()?;
                t
            } else {
                return None;
            };
        }
        Some(table.wrapping_add(((gpa >> 12) & 0x1ff) << 3))
    }

    /// TDH.MEM.PAGE.ADD: the page becomes the TD's (PAMT), mapped at the private `gpa` in its
    /// S-EPT, which trusted DMA walks. The page must be the host's (no TD owns it).
    pub fn page_add(&mut self, td: TdId, gpa: u64, spa: u64) -> TdxStatus {
        if !self.sept.contains_key(&td) || gpa >> SHARED_BIT != 0 || gpa & 0xfff != 0 || spa & 0xfff != 0 || spa >> 52 != 0 {
            return TdxStatus::OperandInvalid;
        }
        if self.tdx.trusted_lookup(td, gpa).is_some() {
            return TdxStatus::MappingExists;
        }
        let st = self.tdx.page_add(td, spa, PageType::Regular);
        if st != TdxStatus::Success {
            return st;
        }
        let Some(slot) = self.leaf_slot(td, gpa, true) else {
            let _ = self.tdx.page_remove(td, spa);
            return TdxStatus::OperandInvalid;
        };
        let st = self.tdx.trusted_map(td, gpa, spa);
        if st == TdxStatus::Success {
            let _ = self.mem.write_u64(slot, vtd_ss::leaf(spa, Perm::RW, false));
        }
        st
    }

    /// TDH.MEM.PAGE.REMOVE: the page at `gpa` leaves the TD, unless a device can still reach it
    /// through the TD's trusted I/O page table (some TDI's trusted DMA is attached): the module
    /// orders the teardown, so the page stays.
    pub fn page_remove(&mut self, td: TdId, gpa: u64) -> TdxStatus {
        let Some(spa) = self.tdx.trusted_lookup(td, gpa) else { return TdxStatus::MappingNotFound };
        if self.tdx.dma_attached(td) {
            return TdxStatus::PageInUse;
        }
        if let Some(slot) = self.leaf_slot(td, gpa, false) {
            let _ = self.mem.write_u64(slot, 0);
        }
        let _ = self.tdx.trusted_unmap(td, gpa);
        self.tdx.page_remove(td, spa)
    }

    /// The S-EPT walk for a private `gpa` of the TD: the trusted DMA path's translation.
    pub fn sept_translate(&self, td: TdId, gpa: u64) -> Option<u64> {
        let root = *self.sept.get(&td)?;
        walk::walk(&format(), &self.mem, root, SEPT_LEVELS, gpa).ok().map(|t| t.spa)
    }

    /// A T=1 request for a private GPA: the TDI in RUN with its trusted DMA accepted, and the
    /// TD's trusted table, which alone translates it (the host's tables are not consulted).
    pub fn trusted_dma(&self, requester: u16, state: TdiState, gpa: u64) -> Result<u64, TdxRefusal> {
        let spa = self.tdx.check_dma(requester, true, state, gpa, 0)?;
        let td = self.tdx.bound_td(requester).ok_or(TdxRefusal::NotRun)?;
        // The ownership record and the table the module built agree by construction.
        debug_assert_eq!(self.sept_translate(td, gpa), Some(spa));
        self.sept_translate(td, gpa).ok_or(TdxRefusal::NoTrustedMapping)
    }

    /// Power-on state: no TDs, no pages given, no bindings.
    pub fn reset(&mut self) {
        *self = TdxModule::default();
    }
}

/// One module call from the mailbox (`b` is the 64-byte command buffer); the status.
pub fn command(s: &mut SecureIommu, id: u32, b: &[u8; abi::mailbox::CMDBUF_SIZE]) -> u32 {
    let c: TdxCall = abi::mailbox::parse(b);
    let (td, requester, gpa) = (c.td.get(), c.requester.get(), c.gpa.get());
    let (Some(m), Some(call)) = (s.tdx_module_mut(), Call::from_code(id)) else { return INVALID_COMMAND };
    let status = match call {
        Call::TdhMngCreate => code(m.create_td(td)),
        Call::TdhMemPageAdd => code(m.page_add(td, gpa, c.spa.get())),
        Call::TdhMemPageRemove => code(m.page_remove(td, gpa)),
        Call::TdhTdiBind => tdi_bind(s, td, requester),
        Call::TdhTdiUnbind => tdi_unbind(s, requester),
        Call::TdgTdiStart => tdi_start(s, td, requester),
        Call::TdgDmarAccept => dmar(s, td, requester, true),
        Call::TdgDmarRelease => dmar(s, td, requester, false),
    };
    s.events().emit(ev::Event::TdxCall(ev::TdxCall {
        call: call.name().into(),
        td,
        devid: abi::Bdf(requester),
        gpa,
        status: ev::Code::from_number(status.into()),
    }));
    status
}

/// One TDISP request to the requester's device, with the state change on the event stream.
fn tdisp_send(s: &SecureIommu, requester: u16, m: &[u8]) -> Option<Response> {
    tdisp::parse_response(&s.tdis().request(requester, m, Via::TdxModule)?)
}

fn tdi_bind(s: &mut SecureIommu, td: TdId, requester: u16) -> u32 {
    let Some(m) = s.tdx_module() else { return INVALID_COMMAND };
    if !m.sept.contains_key(&td) {
        return code(TdxStatus::OperandInvalid);
    }
    if m.tdis.contains_key(&requester) {
        return code(TdxStatus::MappingExists);
    }
    let nonce = match tdisp_send(s, requester, &tdisp::lock_interface(u32::from(requester), 0, 0, 0)) {
        Some(Response::Locked { nonce }) => nonce,
        _ => return TDI_STATE_INVALID,
    };
    if let Some(m) = s.tdx_module_mut() {
        m.tdis.insert(requester, Tdi { td, nonce });
    }
    0
}

fn tdi_unbind(s: &mut SecureIommu, requester: u16) -> u32 {
    let Some(m) = s.tdx_module_mut() else { return INVALID_COMMAND };
    if m.tdis.remove(&requester).is_none() {
        return code(TdxStatus::MappingNotFound);
    }
    // Trusted DMA is detached after STOP and before the binding goes (the order TDX Connect
    // enforces); STOP's answer does not matter, the binding is gone either way.
    m.tdx.unbind(requester);
    let _ = tdisp_send(s, requester, &tdisp::request(tdisp::req::STOP_INTERFACE, u32::from(requester), &[]));
    0
}

fn tdi_start(s: &mut SecureIommu, td: TdId, requester: u16) -> u32 {
    let Some(tdi) = s.tdx_module().and_then(|m| m.tdis.get(&requester)) else { return code(TdxStatus::MappingNotFound) };
    if tdi.td != td {
        return code(TdxStatus::PageOwnerMismatch);
    }
    let nonce = tdi.nonce;
    match tdisp_send(s, requester, &tdisp::start_interface(u32::from(requester), &nonce)) {
        Some(Response::Started) => 0,
        _ => TDI_STATE_INVALID,
    }
}

fn dmar(s: &mut SecureIommu, td: TdId, requester: u16, accept: bool) -> u32 {
    let Some(m) = s.tdx_module_mut() else { return INVALID_COMMAND };
    match m.tdis.get(&requester) {
        Some(t) if t.td == td => {}
        Some(_) => return code(TdxStatus::PageOwnerMismatch),
        None => return code(TdxStatus::MappingNotFound),
    }
    if accept {
        m.tdx.bind(requester, td);
    } else {
        m.tdx.unbind(requester);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sept_is_the_trusted_table_and_only_module_calls_change_it() {
        let mut m = TdxModule::default();
        assert_eq!(m.page_add(1, 0x5000, 0x30_0000), TdxStatus::OperandInvalid, "no TD 1 yet");
        assert_eq!(m.create_td(1), TdxStatus::Success);
        assert_eq!(m.create_td(1), TdxStatus::OperandInvalid);
        assert_eq!(m.page_add(1, 0x5000, 0x30_0000), TdxStatus::Success);
        assert_eq!(m.page_add(1, 0x6000, 0x30_0000), TdxStatus::PageOwnerMismatch, "the page is the TD's already");
        assert_eq!(m.page_add(1, 1 << 47 | 0x7000, 0x31_0000), TdxStatus::OperandInvalid, "a shared GPA");
        assert_eq!(m.sept_translate(1, 0x5123), Some(0x30_0123), "a VT-d second-stage walk of module memory");
        assert_eq!(m.sept_translate(1, 0x6000), None);
        m.tdx.bind(0x20, 1);
        assert_eq!(m.trusted_dma(0x20, TdiState::Run, 0x5010), Ok(0x30_0010));
        assert_eq!(m.trusted_dma(0x20, TdiState::ConfigLocked, 0x5010), Err(TdxRefusal::NotRun));
        assert_eq!(m.trusted_dma(0x20, TdiState::Run, 0x6000), Err(TdxRefusal::NoTrustedMapping));
        assert_eq!(m.page_remove(1, 0x5000), TdxStatus::PageInUse, "trusted DMA attached");
        m.tdx.unbind(0x20);
        assert_eq!(m.page_remove(1, 0x5000), TdxStatus::Success);
        assert_eq!(m.sept_translate(1, 0x5000), None, "gone from the table");
        assert_eq!(m.tdx.owner(0x30_0000), None, "and from the PAMT");
        assert_eq!(m.page_remove(1, 0x5000), TdxStatus::MappingNotFound);
    }

    #[test]
    fn module_memory_is_bounded() {
        let mut m = TdxModule::default();
        m.create_td(1);
        // Each 1 GiB-apart GPA needs three new tables; the pool runs out and says so.
        let mut last = TdxStatus::Success;
        for i in 0..1024u64 {
            last = m.page_add(1, i << 30, 0x100_0000 + (i << 12));
            if last != TdxStatus::Success {
                break;
            }
        }
        assert_eq!(last, TdxStatus::OperandInvalid);
        assert!(m.free.is_empty());
    }
}
