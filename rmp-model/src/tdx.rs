//! The TDX Connect personality: page ownership (which trust domain owns each page and as what,
//! the PAMT's job), secure I/O mappings that only the TDX module creates and removes, the shared
//! bit of TD guest physical addresses, and the DMA check for trusted (T=1) and untrusted (T=0)
//! requests. Sources: the Linux TDX Connect series and its review (trusted DMA translates through
//! the TD's secure tables, identical to its S-EPT; T=0 DMA must never reach TD-private memory).
//! Where it differs from SEV-TIO: docs/tdx-vs-sev-tio.md.

use crate::dma_check::DmaRequest;
use crate::tdisp::TdiState;
use std::collections::BTreeMap;

pub type TdId = u32;

/// What a private page is used for (PAMT page types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageType {
    /// TD private memory.
    Regular,
    /// Secure EPT / secure I/O page-table pages.
    SecureEpt,
    /// TD control structures (TDR, TDCS, TDVPR).
    Control,
    /// Module metadata (PAMT, IOMMU_MT).
    Metadata,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub td: TdId,
    pub ty: PageType,
}

/// Outcomes of the module calls (names in the style of the TDX module's TDX_* errors; the
/// numeric values of the ABI are not modelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdxStatus {
    Success,
    OperandInvalid,
    /// The page is owned by a TD already, or by another TD than the one named.
    PageOwnerMismatch,
    /// The page is still mapped for trusted DMA.
    PageInUse,
    MappingExists,
    MappingNotFound,
}

impl TdxStatus {
    pub fn name(self) -> &'static str {
        match self {
            TdxStatus::Success => "SUCCESS",
            TdxStatus::OperandInvalid => "OPERAND_INVALID",
            TdxStatus::PageOwnerMismatch => "PAGE_OWNER_MISMATCH",
            TdxStatus::PageInUse => "PAGE_IN_USE",
            TdxStatus::MappingExists => "MAPPING_EXISTS",
            TdxStatus::MappingNotFound => "MAPPING_NOT_FOUND",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdxRefusal {
    /// T=0 access to a page a TD owns.
    PrivatePage,
    /// T=1 from a requester not bound to a TD, or whose TDI is not in RUN.
    NotRun,
    /// T=1 private access without a trusted mapping of that GPA.
    NoTrustedMapping,
    /// T=1 shared access (shared bit set) landing on a TD-owned page.
    SharedToPrivate,
}

impl TdxRefusal {
    pub fn name(self) -> &'static str {
        match self {
            TdxRefusal::PrivatePage => "untrusted access to a TD-private page",
            TdxRefusal::NotRun => "T=1 without a TDI in RUN whose trusted DMA the TD accepted",
            TdxRefusal::NoTrustedMapping => "T=1 private access with no trusted mapping",
            TdxRefusal::SharedToPrivate => "T=1 shared access landing on a TD-private page",
        }
    }
}

/// Pages tracked at most (one entry per private page; hypervisor pages have none).
pub const MAX_PRIVATE_PAGES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct Tdx {
    /// Position of the shared bit in a TD GPA (GPAW - 1: 47 or 51).
    pub shared_bit: u8,
    pamt: BTreeMap<u64, Owner>,
    /// (TD, private GPA page) -> SPA page: the trusted I/O page table (the S-EPT's view).
    trusted: BTreeMap<(TdId, u64), u64>,
    /// Requester -> the TD its TDI is bound to.
    bound: BTreeMap<u16, TdId>,
}

impl Tdx {
    pub fn new(shared_bit: u8) -> Tdx {
        Tdx { shared_bit: shared_bit.clamp(47, 51), pamt: BTreeMap::new(), trusted: BTreeMap::new(), bound: BTreeMap::new() }
    }

    pub fn is_shared_gpa(&self, gpa: u64) -> bool {
        gpa >> self.shared_bit & 1 == 1
    }

    pub fn owner(&self, spa: u64) -> Option<Owner> {
        self.pamt.get(&(spa >> 12)).copied()
    }

    /// TDH.MEM.PAGE.ADD-like: a hypervisor page becomes the TD's page of type `ty`.
    pub fn page_add(&mut self, td: TdId, spa: u64, ty: PageType) -> TdxStatus {
        if spa & 0xfff != 0 {
            return TdxStatus::OperandInvalid;
        }
        if self.pamt.contains_key(&(spa >> 12)) {
            return TdxStatus::PageOwnerMismatch;
        }
        if self.pamt.len() >= MAX_PRIVATE_PAGES {
            return TdxStatus::OperandInvalid;
        }
        self.pamt.insert(spa >> 12, Owner { td, ty });
        TdxStatus::Success
    }

    /// TDH.MEM.PAGE.REMOVE-like: the page returns to the hypervisor; refused while a trusted
    /// mapping still points at it (the module orders teardown).
    pub fn page_remove(&mut self, td: TdId, spa: u64) -> TdxStatus {
        match self.pamt.get(&(spa >> 12)) {
            Some(o) if o.td == td => {}
            _ => return TdxStatus::PageOwnerMismatch,
        }
        if self.trusted.iter().any(|(&(t, _), &s)| t == td && s == spa >> 12) {
            return TdxStatus::PageInUse;
        }
        self.pamt.remove(&(spa >> 12));
        TdxStatus::Success
    }

    /// A trusted I/O mapping of the TD's private `gpa` to its page `spa`: only the module makes
    /// these, and only onto the TD's own regular pages.
    pub fn trusted_map(&mut self, td: TdId, gpa: u64, spa: u64) -> TdxStatus {
        if gpa & 0xfff != 0 || spa & 0xfff != 0 || self.is_shared_gpa(gpa) {
            return TdxStatus::OperandInvalid;
        }
        if self.owner(spa) != Some(Owner { td, ty: PageType::Regular }) {
            return TdxStatus::PageOwnerMismatch;
        }
        if self.trusted.contains_key(&(td, gpa >> 12)) {
            return TdxStatus::MappingExists;
        }
        self.trusted.insert((td, gpa >> 12), spa >> 12);
        TdxStatus::Success
    }

    pub fn trusted_unmap(&mut self, td: TdId, gpa: u64) -> TdxStatus {
        match self.trusted.remove(&(td, gpa >> 12)) {
            Some(_) => TdxStatus::Success,
            None => TdxStatus::MappingNotFound,
        }
    }

    pub fn bind(&mut self, requester: u16, td: TdId) {
        self.bound.insert(requester, td);
    }

    pub fn unbind(&mut self, requester: u16) {
        self.bound.remove(&requester);
    }

    /// The TD the requester's trusted DMA is attached to, if any.
    pub fn bound_td(&self, requester: u16) -> Option<TdId> {
        self.bound.get(&requester).copied()
    }

    /// Some requester's trusted DMA is attached to the TD's trusted mappings.
    pub fn dma_attached(&self, td: TdId) -> bool {
        self.bound.values().any(|&t| t == td)
    }

    /// The SPA the TD's trusted mapping of `gpa` points at.
    pub fn trusted_lookup(&self, td: TdId, gpa: u64) -> Option<u64> {
        self.trusted.get(&(td, gpa >> 12)).map(|p| p << 12)
    }

    /// The same [`DmaRequest`] the SEV-TIO check takes, answered under TDX Connect rules: the
    /// TDI is in RUN when the request carries a binding in RUN (its ASID and vTOM are not used:
    /// the TD comes from [`Tdx::bind`], private vs shared from the GPA's shared bit). Ok is the
    /// SPA the access uses.
    pub fn check_request(&self, req: &DmaRequest) -> Result<u64, TdxRefusal> {
        let state = req.tdi.map_or(TdiState::ConfigUnlocked, |t| t.state);
        self.check_dma(req.requester, req.t, state, req.iova, req.spa)
    }

    /// Check one page-sized DMA access. `spa` is what the host's (untrusted) IOMMU tables gave
    /// for T=0 and for shared T=1 accesses; for private T=1 accesses the trusted mapping decides
    /// and its SPA is returned.
    pub fn check_dma(&self, requester: u16, t: bool, state: TdiState, iova: u64, spa: u64) -> Result<u64, TdxRefusal> {
        if !t {
            return match self.owner(spa) {
                Some(_) => Err(TdxRefusal::PrivatePage),
                None => Ok(spa),
            };
        }
        let td = match self.bound.get(&requester) {
            Some(&td) if state == TdiState::Run => td,
            _ => return Err(TdxRefusal::NotRun),
        };
        if self.is_shared_gpa(iova) {
            return match self.owner(spa) {
                Some(_) => Err(TdxRefusal::SharedToPrivate),
                None => Ok(spa),
            };
        }
        let page = self.trusted.get(&(td, iova >> 12)).ok_or(TdxRefusal::NoTrustedMapping)?;
        Ok(page << 12 | (iova & 0xfff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_and_untrusted_dma() {
        let mut x = Tdx::new(51);
        assert_eq!(x.page_add(1, 0x10_0000, PageType::Regular), TdxStatus::Success);
        assert_eq!(x.page_add(2, 0x10_0000, PageType::Regular), TdxStatus::PageOwnerMismatch);
        x.page_add(1, 0x11_0000, PageType::SecureEpt);
        assert_eq!(x.trusted_map(1, 0x5000, 0x11_0000), TdxStatus::PageOwnerMismatch, "S-EPT page");
        assert_eq!(x.trusted_map(2, 0x5000, 0x10_0000), TdxStatus::PageOwnerMismatch, "another TD's page");
        assert_eq!(x.trusted_map(1, 1 << 51 | 0x5000, 0x10_0000), TdxStatus::OperandInvalid, "shared GPA");
        assert_eq!(x.trusted_map(1, 0x5000, 0x10_0000), TdxStatus::Success);
        x.bind(0x20, 1);
        assert_eq!(x.check_dma(0x20, true, TdiState::Run, 0x5123, 0xdead_0000), Ok(0x10_0123), "trusted mapping decides");
        assert_eq!(x.check_dma(0x20, true, TdiState::ConfigLocked, 0x5123, 0), Err(TdxRefusal::NotRun));
        assert_eq!(x.check_dma(0x20, true, TdiState::Run, 0x6000, 0), Err(TdxRefusal::NoTrustedMapping));
        assert_eq!(x.check_dma(0x20, true, TdiState::Run, 1 << 51 | 0x6000, 0x20_0000), Ok(0x20_0000), "shared");
        assert_eq!(x.check_dma(0x20, true, TdiState::Run, 1 << 51 | 0x6000, 0x10_0000), Err(TdxRefusal::SharedToPrivate));
        assert_eq!(x.check_dma(0x21, false, TdiState::ConfigUnlocked, 0, 0x10_0000), Err(TdxRefusal::PrivatePage));
        assert_eq!(x.check_dma(0x21, false, TdiState::ConfigUnlocked, 0, 0x20_0000), Ok(0x20_0000));
        assert_eq!(x.page_remove(1, 0x10_0000), TdxStatus::PageInUse);
        assert_eq!(x.trusted_unmap(1, 0x5000), TdxStatus::Success);
        assert_eq!(x.page_remove(1, 0x10_0000), TdxStatus::Success);
        assert_eq!(x.check_dma(0x21, false, TdiState::ConfigUnlocked, 0, 0x10_0000), Ok(0x10_0000));
    }
}
