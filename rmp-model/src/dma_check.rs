//! The SEV-TIO check on every DMA after translation (SEV-TIO whitepaper p. 8 as Kevin Tian
//! summarised it: the IOMMU walks the I/O page table to the SPA, then checks the RMP; the T=1
//! rules from the SEV-TIO phase-2 patches' sDTE/vTOM semantics).
//! A refusal is an RMP_PAGE_FAULT (event type 0xd) whose fields Linux amd_iommu_print_rmp_fault
//! decodes; nothing is transferred.

use crate::rmp::{Rmp, PAGES_PER_1G, PTES_PER_2M};
use crate::tdisp::TdiState;

/// The T=1 binding of a requester: the TDI's guest and its state (from the sDTE and TDISP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdiBinding {
    pub asid: u16,
    /// Addresses at or above vTOM are shared (bytes; the sDTE holds it in 2 MiB units).
    pub vtom: u64,
    pub state: TdiState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    pub requester: u16,
    /// The TLP's T bit.
    pub t: bool,
    pub tdi: Option<TdiBinding>,
    pub iova: u64,
    pub spa: u64,
    pub write: bool,
    /// Size of the I/O mapping the translation used (log2 bytes: 12, 21, 30, ...).
    pub mapping_size_log2: u8,
}

/// Why a DMA was refused; also the bit set in the event's flags_rmp (this model's encoding:
/// docs/rmp.md; the spec's bit meanings were not available).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DmaRefusal {
    /// T=0 write to a guest or firmware page.
    AssignedPage = 0x01,
    /// The I/O mapping is larger than the RMP entry and covers assigned pages.
    MappingSize = 0x02,
    /// T=1 from a requester with no bound TDI, or a TDI not in RUN.
    TdiNotRun = 0x04,
    /// T=1 private access to a page not assigned to the TDI's ASID (or not in the RMP).
    AsidMismatch = 0x08,
    /// T=1 private access where the RMP's GPA differs from the I/O address.
    GpaMismatch = 0x10,
    NotValidated = 0x20,
    /// T=1 shared access (at or above vTOM) landing on an assigned page.
    SharedToPrivate = 0x40,
}

impl DmaRefusal {
    pub fn name(self) -> &'static str {
        match self {
            DmaRefusal::AssignedPage => "write to assigned page",
            DmaRefusal::MappingSize => "I/O mapping larger than RMP entry",
            DmaRefusal::TdiNotRun => "T=1 request from TDI not in RUN",
            DmaRefusal::AsidMismatch => "page not assigned to the TDI's ASID",
            DmaRefusal::GpaMismatch => "RMP GPA differs from I/O address",
            DmaRefusal::NotValidated => "page not validated",
            DmaRefusal::SharedToPrivate => "shared access to assigned page",
        }
    }
}

/// The fields of the RMP_PAGE_FAULT event this refusal logs (Linux drivers/iommu/amd/iommu.c
/// amd_iommu_report_rmp_fault: devid = event[0] 15:0, flags_rmp = event[0] 23:16, vmg_tag =
/// event[1] 15:0, flags = event[1] 27:16, gpa = event[3]:event[2]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmpFault {
    pub devid: u16,
    /// One [`DmaRefusal`] bit (this model's encoding, docs/rmp.md).
    pub flags_rmp: u8,
    /// The VMG tag; this model puts the TDI's ASID there for T=1 requests, 0 for T=0.
    pub vmg_tag: u16,
    /// The generic event flags: RW (0x020) for writes.
    pub flags: u16,
    /// The I/O address of the request (the guest physical address for T=1).
    pub gpa: u64,
    pub spa: u64,
    pub reason: DmaRefusal,
    /// The ASID the root complex fences for this fault: a host-caused fault (page table or RMP)
    /// on a request of a TDI bound and in RUN (SEV-TIO FW spec §2.11 as the notes quote it).
    /// `Tio::fence` applies it.
    pub fence_asid: Option<u16>,
}

/// Event flag RW (Linux EVENT_FLAG_RW).
pub const FLAG_RW: u16 = 0x020;

impl Rmp {
    /// Check one DMA access of at most one 4 KiB page (the caller splits transfers).
    pub fn check_dma(&self, req: &DmaRequest) -> Result<(), RmpFault> {
        let running = req.tdi.filter(|t| req.t && t.state == TdiState::Run);
        let refuse = |reason: DmaRefusal| {
            let vmg_tag = if req.t { req.tdi.map_or(0, |t| t.asid) } else { 0 };
            Err(RmpFault {
                devid: req.requester,
                flags_rmp: reason as u8,
                vmg_tag,
                flags: if req.write { FLAG_RW } else { 0 },
                gpa: req.iova,
                spa: req.spa,
                reason,
                fence_asid: running.map(|t| t.asid),
            })
        };
        let entry = self.entry(req.spa >> 12);
        if req.t {
            let Some(tdi) = running else { return refuse(DmaRefusal::TdiNotRun) };
            if req.iova < tdi.vtom {
                let Some(e) = entry.filter(|e| e.assigned && e.asid == tdi.asid) else {
                    return refuse(DmaRefusal::AsidMismatch);
                };
                if e.gpa != req.iova & !0xfff {
                    return refuse(DmaRefusal::GpaMismatch);
                }
                if !e.validated {
                    return refuse(DmaRefusal::NotValidated);
                }
                // Page size consistent: the I/O mapping may not be larger than the private page.
                if req.mapping_size_log2 > e.page_size.log2() {
                    return refuse(DmaRefusal::MappingSize);
                }
                return Ok(());
            }
            // Shared (at or above vTOM): reads and writes must land on hypervisor pages.
            let Some(e) = entry else { return Ok(()) };
            if e.assigned {
                return refuse(DmaRefusal::SharedToPrivate);
            }
            if req.mapping_size_log2 > e.page_size.log2() && self.large_range_has_assigned(req) {
                return refuse(DmaRefusal::MappingSize);
            }
            return Ok(());
        }
        // Not RMP-covered (e.g. MMIO above RAM): unchecked.
        let Some(e) = entry else { return Ok(()) };
        // Choice: T=0 reads of assigned pages are allowed (the device reads ciphertext), as host
        // CPU reads are.
        if !req.write {
            return Ok(());
        }
        if e.assigned {
            return refuse(DmaRefusal::AssignedPage);
        }
        if req.mapping_size_log2 > e.page_size.log2() && self.large_range_has_assigned(req) {
            return refuse(DmaRefusal::MappingSize);
        }
        Ok(())
    }

    /// Whether the naturally aligned range of the request's I/O mapping holds an assigned page.
    fn large_range_has_assigned(&self, req: &DmaRequest) -> bool {
        let log2 = req.mapping_size_log2.clamp(12, 63);
        let first = (req.spa & !(1u64 << log2).wrapping_sub(1)) >> 12;
        let pages = 1u64 << log2.saturating_sub(12);
        let end = first.saturating_add(pages).min(self.pages());
        if pages < PTES_PER_2M {
            return (first..end).any(|p| self.entries[p as usize].assigned);
        }
        if pages < PAGES_PER_1G {
            return (first..end).step_by(PTES_PER_2M as usize).any(|p| self.assigned_in_region(p) != 0);
        }
        (first..end).step_by(PAGES_PER_1G as usize).any(|p| self.assigned_in_1g(p) != 0)
    }
}
