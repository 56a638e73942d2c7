//! The secure IOMMU as the daemon runs it: the AMD-Vi unit (iommu-model) and the security state
//! (rmp-model) behind one lock, the path every endpoint access takes (translate, then check, then
//! and only then move bytes), and the event stream records of what it allowed and refused.

pub mod dma;
pub mod inject;
pub mod rmp_state;
pub mod tdx_module;

use crate::vfio::function::{EventSink, Irq};
use crate::vfio::guest_mem::GuestMem;
use abi::event as ev;
use abi::Bdf;
use iommu_model::amdvi::dte::DevTabBase;
use iommu_model::amdvi::event::Event;
use iommu_model::amdvi::mmio::AmdVi;
use iommu_model::amdvi::{self, Outcome};
use iommu_model::mem::PhysMem;
use iommu_model::vtd::unit::{Interrupt, VtdUnit};
use iommu_model::vtd::{self, FaultRecord, VtdOutcome};
use iommu_model::walk::Access;
use rmp_model::dma_check::{DmaRefusal, DmaRequest};
use rmp_model::hazard::LiveMapping;
use rmp_model::ops::RmpState;
use rmp_model::tdisp::TdispResponder;
use rmp_model::tio::Tio;
use rmp_model::{Rmp, RmpStatus};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Why a DMA moved nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The translation faulted (IO_PAGE_FAULT and friends).
    Translation(Event),
    /// The RMP check refused the access (RMP_PAGE_FAULT).
    Rmp(DmaRefusal),
    /// The VT-d unit's translation faulted (the record it holds for the fault recording
    /// registers).
    Vtd(FaultRecord),
    /// The TDX Connect personality's ownership check refused the access.
    Tdx(rmp_model::tdx::TdxRefusal),
    /// The RMP check could not be made (RMP_HW_ERROR: an injected fault, docs/fault-injection.md).
    HwError(Event),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// 4 KiB reads (device table and page tables) one conversion may spend looking for mappings of
/// its page: 16 MiB, a full 64K-entry device table (512 reads) and thousands of page tables.
pub const HAZARD_SEARCH_BUDGET: u32 = 4096;

/// A mapping of a converted page found in a driver's tables (AMD-Vi or VT-d).
struct TableHit {
    devid: u16,
    domain: u16,
    iova: u64,
    spa: u64,
    size_log2: u8,
    write: bool,
}

/// Register accesses waiting for the secure IOMMU. std's Mutex does not hand a released lock to
/// a waiter, so a DMA worker that takes it page after page could keep a register access out for
/// a whole transfer; the worker (`dma::PerPage`) steps aside while this is not 0.
pub static REGISTER_WAITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The secure IOMMU for a register access from a socket thread (counted in REGISTER_WAITERS while
/// it waits).
pub fn lock_for_registers(m: &Mutex<SecureIommu>) -> std::sync::MutexGuard<'_, SecureIommu> {
    use std::sync::atomic::Ordering;
    REGISTER_WAITERS.fetch_add(1, Ordering::SeqCst);
    let g = lock(m);
    REGISTER_WAITERS.fetch_sub(1, Ordering::SeqCst);
    g
}

pub fn bdf(devid: u16) -> String {
    Bdf(devid).to_string()
}

/// The record of a TDI's TDISP state change.
pub fn tdisp_record(devid: u16, from: rmp_model::tdisp::TdiState, to: rmp_model::tdisp::TdiState, via: impl Into<String>) -> ev::Event {
    ev::Event::Tdisp(ev::Tdisp { devid: Bdf(devid), from: from.name().into(), to: to.name().into(), via: via.into(), injected: None })
}

/// A request's direction, as the event records name it.
pub fn direction(write: bool) -> ev::Access {
    if write {
        ev::Access::Write
    } else {
        ev::Access::Read
    }
}

/// Bits 51:13 of RMP_BASE and RMP_END hold the address: the window starts and ends on 8 KiB
/// boundaries below 4 PiB.
pub use abi::mailbox::RMP_ADDR_MASK;

/// Whether the mirror window `[base, end]` can hold the RMP of `pages` pages inside guest RAM
/// (`backed(addr, len)`); `base` 0 is no mirror. The checks Linux makes of the RMP_BASE/RMP_END
/// MSRs before enabling SNP (snp_probe_rmptable_info: base below end, the table covers all of
/// RAM), plus one the model needs: every byte of the window is guest RAM the daemon can write.
pub fn check_rmp_window(base: u64, end: u64, pages: u64, backed: impl Fn(u64, u64) -> bool) -> Result<(), String> {
    if base == 0 {
        return Ok(());
    }
    if base & !RMP_ADDR_MASK != 0 || end & !RMP_ADDR_MASK != 0x1fff {
        return Err(format!("RMP_BASE {base:#x} or RMP_END {end:#x} is not on an 8 KiB boundary below 4 PiB"));
    }
    let Some(size) = end.checked_sub(base).and_then(|d| d.checked_add(1)) else {
        return Err(format!("RMP_END {end:#x} is below RMP_BASE {base:#x}"));
    };
    let need = Rmp::table_bytes(pages);
    if size < need {
        return Err(format!("the RMP window holds {size:#x} bytes; {pages} pages of guest RAM need {need:#x}"));
    }
    if !backed(base, size) {
        return Err(format!("the RMP window {base:#x}..={end:#x} is not all guest RAM"));
    }
    Ok(())
}

pub struct SecureIommu {
    pub amdvi: AmdVi,
    /// With `--iommu vtd`: the VT-d unit is the IOMMU (BAR0, translation) instead of `amdvi`.
    pub vtd: Option<VtdUnit>,
    /// With `--personality tdx-connect`: the TDX-module stand-in, whose ownership check replaces
    /// the RMP's and whose trusted table alone translates T=1 requests.
    pub tdx: Option<crate::secure::tdx_module::TdxModule>,
    /// Created when SNP is enabled, covering guest RAM.
    pub rmp: Option<Rmp>,
    pub rmp_base: u64,
    pub rmp_end: u64,
    pub tio: Tio,
    /// The TDISP responder of each endpoint, by requester ID (the "DOE" the firmware reaches).
    pub tdisp: BTreeMap<u16, Arc<Mutex<TdispResponder>>>,
    pub events: Arc<dyn EventSink>,
    pub irq: Arc<dyn Irq>,
    /// Pages of guest RAM (the RMP covers them).
    pub ram_pages: u64,
    /// The RMP state file the TCG plugin reads, when the daemon publishes one.
    pub publisher: Option<crate::secure::rmp_state::RmpPublisher>,
    /// The virtio-iommu's domains: an endpoint attached to one is translated by that domain's
    /// tables instead of the AMD-Vi unit (the second translation source; the RMP check is the same).
    pub viommu: Option<Arc<Mutex<crate::devices::virtio_iommu::domains::Domains>>>,
    /// Faults armed outside the AMD-Vi unit, and the devices that take them (crate::secure::inject).
    pub inject: crate::secure::inject::State,
}

impl SecureIommu {
    pub fn new(events: Arc<dyn EventSink>, irq: Arc<dyn Irq>) -> Self {
        SecureIommu {
            amdvi: AmdVi::new(),
            vtd: None,
            tdx: None,
            rmp: None,
            rmp_base: 0,
            rmp_end: 0,
            tio: Tio::default(),
            tdisp: BTreeMap::new(),
            events,
            irq,
            ram_pages: 0,
            publisher: None,
            viommu: None,
            inject: Default::default(),
        }
    }

    pub fn irq_if_pending(&mut self) {
        if self.amdvi.take_irq() {
            tracing::debug!("AMD-Vi interrupt");
            self.irq.raise(0);
        }
        // The VT-d unit's events are MSIs to the address and data software wrote to FEADDR/FEDATA
        // (IEADDR/IEDATA); the daemon can only signal the function's own MSI vector, which is
        // what it does (docs/device-abi.md). The stream says what the message was.
        for i in self.vtd.as_mut().map(VtdUnit::take_interrupts).unwrap_or_default() {
            let (event, m) = match i {
                Interrupt::Fault(m) => ("fault", m),
                Interrupt::InvalidationComplete(m) => ("invalidation_complete", m),
            };
            self.events.emit(ev::Event::VtdInterrupt(ev::VtdInterrupt { event: event.into(), addr: m.addr, data: m.data.into() }));
            self.irq.raise(0);
        }
    }

    /// Turn SNP on: an RMP covering guest RAM, every page hypervisor-owned, mirrored to RMP_BASE.
    /// Refused, SNP staying off, when the mirror window RMP_BASE..=RMP_END is set but cannot hold
    /// the RMP in guest RAM (`check_rmp_window`); the "snp" record says why.
    pub fn enable_snp(&mut self, mem: &mut GuestMem, ram_pages: u64) -> Result<(), String> {
        if self.rmp.is_some() {
            return Ok(());
        }
        let ram_pages = ram_pages.min(rmp_model::rmp::MAX_PAGES);
        if let Err(e) = check_rmp_window(self.rmp_base, self.rmp_end, ram_pages, |a, n| mem.backed(a, n)) {
            crate::warn_limited!("SNP_CTL.SNP_EN refused: {e}");
            self.events.emit(ev::Event::Snp(ev::Snp {
                enabled: false,
                pages: None,
                error: Some(e.clone()),
                rmp_base: Some(self.rmp_base),
                rmp_end: Some(self.rmp_end),
            }));
            return Err(e);
        }
        // Translations cached before now were never checked against an RMP; dropping cached
        // entries is always allowed, and the next walk registers live mappings for hazards.
        self.amdvi.flush_caches();
        if let Some(v) = &mut self.vtd {
            v.flush_caches();
        }
        self.ram_pages = ram_pages;
        self.rmp = Some(Rmp::new(ram_pages));
        self.mirror(mem, 0, ram_pages);
        self.events.emit(ev::Event::Snp(ev::Snp { enabled: true, pages: Some(ram_pages), ..Default::default() }));
        Ok(())
    }

    /// Write the raw entries of pages `[first, first + n)` where the guest reads the RMP, and to
    /// the published state file.
    pub fn mirror(&self, mem: &mut GuestMem, first: u64, n: u64) {
        let Some(rmp) = &self.rmp else { return };
        let range = first..first.saturating_add(n).min(rmp.pages());
        if let Some(p) = &self.publisher {
            for pfn in range.clone() {
                if let Some(raw) = rmp.raw(pfn) {
                    p.publish(pfn, &raw);
                }
            }
        }
        if self.rmp_base == 0 {
            return;
        }
        // check_rmp_window made the whole RMP fit below RMP_END when SNP was enabled, and the
        // window is locked since; checked again so no sum can wrap whatever the registers hold.
        for pfn in range {
            let Some(at) = Rmp::entry_offset(pfn).checked_add(self.rmp_base) else { break };
            if at.checked_add(rmp_model::rmp::ENTRY_SIZE - 1).is_none_or(|last| last > self.rmp_end) {
                break;
            }
            if let Some(raw) = rmp.raw(pfn) {
                let _ = mem.write(at, &raw);
            }
        }
    }

    /// RMPUPDATE from the firmware mailbox, reporting hazards of mappings still live in the
    /// tables (re-walked now: a mapping the driver has since removed is no hazard).
    pub fn rmpupdate(&mut self, mem: &mut GuestMem, spa: u64, st: &RmpState) -> RmpStatus {
        let Some(rmp) = self.rmp.as_mut() else { return RmpStatus::FailInput };
        let res = rmp.rmpupdate(spa, st);
        let devtab = DevTabBase(self.amdvi.mmio_read(0, 8));
        let mut reported = std::collections::BTreeSet::new();
        for h in &res.hazards {
            let through_viommu =
                self.viommu.as_ref().and_then(|v| lock(v).translate(u32::from(h.mapping.requester), h.mapping.iova, Access::Read));
            let outcome = match (through_viommu, &self.vtd) {
                (Some(o), _) => o.translation(),
                (None, Some(v)) => v.lookup(mem, h.mapping.requester, h.mapping.iova, Access::Read).translation(),
                (None, None) => amdvi::translate(mem, devtab, h.mapping.requester, h.mapping.iova, Access::Read).translation(),
            };
            let live = matches!(outcome, Some(t) if t.spa & !0xfff == h.mapping.spa & !0xfff);
            if !live {
                rmp.hazards.unregister(h.mapping.requester, h.mapping.iova);
                continue;
            }
            reported.insert((h.mapping.requester, h.mapping.iova));
            self.events.emit(ev::Event::Hazard(ev::Hazard {
                spa: h.spa,
                asid: h.asid,
                devid: Bdf(h.mapping.requester),
                iova: h.mapping.iova,
                size: h.mapping.size,
                write: h.mapping.write,
                via: None,
                domain: None,
            }));
        }
        // Tables a driver built in guest RAM (Linux's amd_iommu, intel_iommu): every translating
        // device-table or context entry's tables are searched for the page, so a mapping counts
        // whether or not a device has walked it yet.
        if st.assigned && res.status == RmpStatus::Success {
            let mut budget = HAZARD_SEARCH_BUDGET;
            let len = st.page_size.bytes();
            let found = match &self.vtd {
                Some(v) if v.enabled() => {
                    let hits = |ms: Vec<vtd::reverse::Mapping>| {
                        ms.iter()
                            .map(|m| TableHit {
                                devid: m.sid,
                                domain: m.did,
                                iova: m.iova,
                                spa: m.spa,
                                size_log2: m.size_log2,
                                write: m.perm.write,
                            })
                            .collect()
                    };
                    Some((
                        ev::Via::VtD,
                        vtd::reverse::mappings_of(mem, v.caps(), v.root_table(), spa, len, &mut budget).map(hits).map_err(hits),
                    ))
                }
                None if self.amdvi.enabled() => {
                    let hits = |ms: Vec<amdvi::reverse::Mapping>| {
                        ms.iter()
                            .map(|m| TableHit {
                                devid: m.devid,
                                domain: m.domain_id,
                                iova: m.iova,
                                spa: m.spa,
                                size_log2: m.size_log2,
                                write: m.perm.write,
                            })
                            .collect()
                    };
                    Some((ev::Via::AmdVi, amdvi::reverse::mappings_of(mem, devtab, spa, len, &mut budget).map(hits).map_err(hits)))
                }
                _ => None,
            };
            if let Some((via, found)) = found {
                let complete = found.is_ok();
                for m in found.unwrap_or_else(|partial: Vec<TableHit>| partial) {
                    // The first converted 4 KiB page the mapping reaches, and its IOVA there.
                    let hit = (spa & !0xfff).max(m.spa);
                    // hit >= m.spa, inside the mapping that starts at m.iova.
                    let iova = m.iova.wrapping_add(hit.wrapping_sub(m.spa));
                    if reported.insert((m.devid, iova)) {
                        self.events.emit(ev::Event::Hazard(ev::Hazard {
                            spa: hit,
                            asid: st.asid,
                            devid: Bdf(m.devid),
                            iova,
                            size: 1u64 << m.size_log2,
                            write: m.write,
                            via: Some(via),
                            domain: Some(m.domain),
                        }));
                    }
                }
                if !complete {
                    self.events
                        .emit(ev::Event::HazardSearchIncomplete(ev::HazardSearchIncomplete { spa, budget: HAZARD_SEARCH_BUDGET.into() }));
                }
            }
        }
        // The virtio-iommu's domains are tables the daemon owns: every mapping of the page is
        // known, whether or not a device has used it yet.
        if st.assigned && res.status == RmpStatus::Success {
            let mappers = self.viommu.as_ref().map(|v| lock(v).mappers_of(spa, st.page_size.bytes())).unwrap_or_default();
            for (endpoint, iova, first, write) in mappers {
                let requester = endpoint as u16;
                if reported.insert((requester, iova & !0xfff)) {
                    self.events.emit(ev::Event::Hazard(ev::Hazard {
                        spa: first & !0xfff,
                        asid: st.asid,
                        devid: Bdf(requester),
                        iova: iova & !0xfff,
                        size: 0x1000,
                        write,
                        via: Some(ev::Via::VirtioIommu),
                        domain: None,
                    }));
                }
            }
        }
        self.events.emit(ev::Event::Rmpupdate(ev::Rmpupdate {
            spa,
            gpa: st.gpa,
            assigned: st.assigned,
            asid: st.asid,
            page_size: st.page_size.bytes(),
            status: ev::Code::from_number(res.status.code().into()),
        }));
        if res.status == RmpStatus::Success {
            self.mirror(mem, res.changed.start, res.changed.end.saturating_sub(res.changed.start));
        }
        res.status
    }

    /// A refusal of the TDX Connect ownership check, on the stream with the fields of an
    /// `rmp_violation` (there is no IOMMU log record for it: on hardware an untrusted access to
    /// TD-private memory ends in a machine check, not a fault record).
    fn tdx_refused(&self, rid: u16, t: bool, iova: u64, spa: Option<u64>, write: bool, f: rmp_model::tdx::TdxRefusal) -> Refusal {
        self.events.emit(ev::Event::TdxViolation(ev::TdxViolation {
            event: "TDX_DMA_REFUSED".into(),
            devid: Bdf(rid),
            t,
            iova,
            spa,
            access: direction(write),
            reason: f.name().into(),
            logged: false,
        }));
        Refusal::Tdx(f)
    }

    /// A host page-table fault on a request of a TDI in RUN fences its ASID too (SEV-TIO FW spec
    /// §2.11: "a host page table fault or an RMP check violation").
    fn fence_if_running(&mut self, rid: u16, t: bool, iova: u64) {
        if !t {
            return;
        }
        let state = self.tdisp.get(&rid).map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).state()).unwrap_or_default();
        if let Some(b) = self.tio.binding_for(rid, u32::from(rid), state).filter(|b| b.state == rmp_model::tdisp::TdiState::Run) {
            self.tio.fence(b.asid);
            self.events.emit(ev::Event::AsidFence(ev::AsidFence { asid: b.asid, devid: Bdf(rid), iova }));
        }
    }

    /// Translate and check one page-bounded access, logging a refusal (event log record and
    /// event stream) as the IOMMU does; `dma::plan` runs it for every page of a transfer.
    pub fn page<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal> {
        self.before_request(mem, rid, iova);
        let r = self.check_page(mem, rid, t, iova, access);
        self.after_request(rid, iova);
        r
    }

    fn check_page<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal> {
        let write = access == Access::Write;
        // TDX Connect: a T=1 request for a private GPA is translated by the TD's trusted table
        // alone; the host's tables are never consulted for it.
        if let Some(m) = self.tdx.as_ref().filter(|m| t && !m.tdx.is_shared_gpa(iova)) {
            let state = self.tdisp.get(&rid).map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).state()).unwrap_or_default();
            return match m.trusted_dma(rid, state, iova) {
                Ok(spa) => Ok(spa),
                Err(f) => Err(self.tdx_refused(rid, t, iova, None, write, f)),
            };
        }
        let walks = (self.amdvi.walks, self.vtd.as_ref().map_or(0, |v| v.walks));
        // An endpoint attached to a virtio-iommu domain is translated by that domain's tables
        // (owned by the daemon, walked uncached: an UNMAP holds from the next access on); its
        // faults are not the AMD-Vi unit's to log.
        let (through_viommu, reporter) = match &self.viommu {
            Some(v) => {
                let d = lock(v);
                (d.translate(u32::from(rid), iova, access), d.reporter.clone())
            }
            None => (None, None),
        };
        let via = match (&through_viommu, &self.vtd) {
            (Some(_), _) => ev::Via::VirtioIommu,
            (None, Some(_)) => ev::Via::VtD,
            (None, None) => ev::Via::AmdVi,
        };
        let outcome = match through_viommu {
            Some(Outcome::Fault { event, level, .. }) => Outcome::Fault { event, level, logged: false },
            Some(o) => o,
            None => match self.vtd.as_mut().map(|v| v.translate(&*mem, rid, iova, access)) {
                Some(VtdOutcome::Ok(tr)) => Outcome::Ok(tr),
                Some(VtdOutcome::Fault { record, level, recorded }) => {
                    self.events.emit(ev::Event::TranslationFault(ev::TranslationFault {
                        event: "DMA_REMAP_FAULT".into(),
                        devid: Bdf(rid),
                        iova,
                        access: direction(write),
                        level,
                        flags: record.reason.code().into(),
                        logged: recorded,
                        via,
                        reason: Some(format!("{:#04x}", record.reason.code())),
                        description: Some(record.reason.description().into()),
                        injected: None,
                    }));
                    self.fence_if_running(rid, t, iova);
                    return Err(Refusal::Vtd(record));
                }
                None => self.amdvi.translate(mem, rid, iova, access),
            },
        };
        let injected = self.collect_amdvi();
        let walked = via == ev::Via::VirtioIommu || (self.amdvi.walks, self.vtd.as_ref().map_or(0, |v| v.walks)) != walks;
        let tr = match outcome {
            Outcome::Ok(tr) => tr,
            Outcome::Fault { event, level, logged } => {
                self.events.emit(ev::Event::TranslationFault(ev::TranslationFault {
                    event: event.name().into(),
                    devid: Bdf(rid),
                    iova,
                    access: direction(write),
                    level,
                    flags: event.flags.into(),
                    logged,
                    via,
                    reason: None,
                    description: None,
                    injected: injected.iter().any(|f| f.event == Some(event)).then_some(true),
                }));
                // The virtio-iommu's driver hears of it on the event queue (no domain lock held).
                if let (true, Some(report)) = (via == ev::Via::VirtioIommu, reporter) {
                    use crate::devices::virtio_iommu::proto::{fault, Fault};
                    let rw = if write { fault::F_WRITE } else { fault::F_READ };
                    report(Fault { reason: fault::R_MAPPING, flags: rw | fault::F_ADDRESS, endpoint: u32::from(rid), address: iova });
                }
                self.fence_if_running(rid, t, iova);
                return Err(Refusal::Translation(event));
            }
        };
        // TDX Connect: T=0 and shared T=1 requests go through the host's tables, then the PAMT.
        if let Some(m) = &self.tdx {
            let state = self.tdisp.get(&rid).map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).state()).unwrap_or_default();
            return match m.tdx.check_dma(rid, t, state, iova, tr.spa) {
                Ok(spa) => Ok(spa),
                Err(f) => Err(self.tdx_refused(rid, t, iova, Some(tr.spa), write, f)),
            };
        }
        if let Some(ev) = self.rmp_read_fails(mem, rid, iova, tr.spa, write) {
            return Err(Refusal::HwError(ev));
        }
        let Some(rmp) = &mut self.rmp else {
            // Without SNP there is no TIO: T=1 requests have nothing to be checked against.
            if t {
                return Err(Refusal::Rmp(DmaRefusal::TdiNotRun));
            }
            return Ok(tr.spa);
        };
        let tdi = if t {
            let state = self.tdisp.get(&rid).map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).state()).unwrap_or_default();
            self.tio.binding_for(rid, u32::from(rid), state)
        } else {
            None
        };
        let req = DmaRequest { requester: rid, t, tdi, iova, spa: tr.spa, write, mapping_size_log2: tr.size_log2 };
        match rmp.check_dma(&req) {
            Ok(()) => {
                // A mapping becomes live for the hazard check when the IOMMU walks it (an IOTLB
                // hit is one already registered).
                if !t && tr.level > 0 && walked {
                    let m = LiveMapping { requester: rid, iova: iova & !0xfff, spa: tr.spa & !0xfff, size: 0x1000, write: tr.perm.write };
                    let _ = rmp.hazards.register(m);
                }
                Ok(tr.spa)
            }
            Err(f) => {
                let ev = Event::rmp_page_fault(f.devid, f.flags_rmp, f.vmg_tag, f.flags, f.gpa);
                let logged = self.amdvi.log_event(mem, &ev);
                self.events.emit(ev::Event::RmpViolation(ev::RmpViolation {
                    event: "RMP_PAGE_FAULT".into(),
                    devid: Bdf(rid),
                    t,
                    iova,
                    spa: tr.spa,
                    access: direction(write),
                    reason: f.reason.name().into(),
                    flags_rmp: f.flags_rmp,
                    vmg_tag: f.vmg_tag,
                    logged,
                }));
                // A host-caused fault on a request of a TDI in RUN fences its guest's ASID from all
                // further I/O until TIO_ASID_FENCE_CLEAR (SEV-TIO FW spec §2.11, notes §1.7).
                if let Some(asid) = f.fence_asid {
                    self.tio.fence(asid);
                    self.events.emit(ev::Event::AsidFence(ev::AsidFence { asid, devid: Bdf(rid), iova }));
                }
                Err(Refusal::Rmp(f.reason))
            }
        }
    }
}

/// For tests: the device `rid`'s TDI through the TIO flow to RUN, bound to `asid`, its sDTE
/// written with `vtom`, answered by a TDISP responder registered for it.
#[cfg(test)]
pub(crate) fn bind_running_tdi(s: &mut SecureIommu, rid: u16, asid: u16, vtom: u64) {
    let responder = Arc::new(Mutex::new(TdispResponder::new(u32::from(rid), Vec::new())));
    s.tdisp.insert(rid, responder.clone());
    let mut tr = |_: u16, m: &[u8]| Some(responder.lock().unwrap_or_else(|p| p.into_inner()).handle_request(m));
    s.tio.init();
    s.tio.dev_create(rid, 0);
    s.tio.dev_connect(rid, [0; 8], &mut tr);
    let tdi = s.tio.tdi_create(rid, u32::from(rid)).expect("a TDI for the device");
    s.tio.tdi_bind(tdi, asid, 0x100, 0, true, &mut tr);
    s.tio.sdte_write(tdi, vtom);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Collect;
    use crate::testing::Irqs;
    use iommu_model::amdvi::builder::V1Builder;
    use iommu_model::amdvi::dte::Dte;
    use iommu_model::amdvi::mmio::{self, control};
    use iommu_model::mem::ByteMem;
    use iommu_model::walk::Perm;
    use rmp_model::ops::GuestCtx;
    use rmp_model::tdisp::TdiState;
    use rmp_model::tdx::TdxRefusal;
    use rmp_model::PageSize;

    const RID: u16 = 0x20;

    /// An IOMMU with SNP on, the endpoint's TDI bound to ASID 2, in RUN, vTOM 1 TiB, and one
    /// private page of ASID 2 mapped at IOVA = GPA 0x5000.
    fn bound() -> (SecureIommu, ByteMem, Arc<Collect>) {
        let mut mem = ByteMem::new(0, 4 << 20);
        let mut pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).unwrap();
        pt.map(&mut mem, 0x5000, 0x30_0000, 12, Perm::RW).unwrap();
        mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
        let events = Arc::new(Collect::default());
        let mut s = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
        s.amdvi.mmio_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        s.amdvi.mmio_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
        let mut rmp = Rmp::new(1024);
        assert_eq!(rmp.rmpupdate(0x30_0000, &RmpState::private(0x5000, 2, PageSize::Size4K)).status, RmpStatus::Success);
        rmp.pvalidate(GuestCtx { asid: 2, vmpl: 0 }, 0x30_0000, 0x5000, PageSize::Size4K, true);
        s.rmp = Some(rmp);
        bind_running_tdi(&mut s, RID, 2, 1 << 40);
        (s, mem, events)
    }

    /// A page mapped by a driver's tables that no device has used yet is still a live mapping:
    /// turning it private reports the hazard, found by searching the enabled DTEs' tables.
    #[test]
    fn conversion_reports_mappings_no_device_has_walked() {
        let ram = crate::testing::guest_ram("secure", 4 << 20).0;
        let mut mem = ram.snapshot();
        let mut pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 3).unwrap();
        pt.map(&mut mem, 0x7000, 0x30_0000, 12, Perm::RW).unwrap();
        pt.map(&mut mem, 0x20_0000, 0x20_0000, 21, Perm::new(true, false)).unwrap();
        mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 3, 7, Perm::RW).to_bytes()).unwrap();
        let events = Arc::new(Collect::default());
        let mut s = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
        s.amdvi.mmio_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        s.amdvi.mmio_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
        s.enable_snp(&mut mem, 1024).unwrap();
        assert_eq!(s.amdvi.walks, 0, "nothing walked");
        assert_eq!(s.rmpupdate(&mut mem, 0x30_0000, &RmpState::private(0x7000, 2, PageSize::Size4K)), RmpStatus::Success);
        assert_eq!(s.rmpupdate(&mut mem, 0x20_5000, &RmpState::private(0x5000, 2, PageSize::Size4K)), RmpStatus::Success);
        let ev = events.0.lock().unwrap();
        let hazards: Vec<_> = ev.iter().filter(|e| e["type"] == "hazard").collect();
        // 0x300000 is mapped twice: at IOVA 0x7000, and inside the 2 MiB page at 0x200000.
        assert_eq!(hazards.len(), 3, "{hazards:?}");
        assert_eq!(
            (hazards[0]["iova"].as_str(), hazards[0]["spa"].as_str(), hazards[0]["write"].as_bool()),
            (Some("0x7000"), Some("0x300000"), Some(true))
        );
        assert_eq!(
            (hazards[0]["via"].as_str(), hazards[0]["domain"].as_u64(), hazards[0]["devid"].as_str()),
            (Some("amd-vi"), Some(7), Some("00:04.0"))
        );
        // Inside the 2 MiB read-only mapping: the IOVA of that 4 KiB page within it.
        assert_eq!(
            (hazards[1]["iova"].as_str(), hazards[1]["size"].as_u64(), hazards[1]["write"].as_bool()),
            (Some("0x300000"), Some(1 << 21), Some(false))
        );
        assert_eq!((hazards[2]["iova"].as_str(), hazards[2]["spa"].as_str()), (Some("0x205000"), Some("0x205000")));
        assert!(!ev.iter().any(|e| e["type"] == "hazard_search_incomplete"));
    }

    #[test]
    fn the_rmp_window_must_hold_the_table_inside_guest_ram() {
        let ram = |a: u64, n: u64| a >= 0x10_0000 && a.checked_add(n).is_some_and(|e| e <= 0x20_0000);
        let need = Rmp::table_bytes(0x200);
        assert_eq!(check_rmp_window(0, 0, 0x200, ram), Ok(()), "no mirror");
        assert_eq!(check_rmp_window(0x10_0000, 0x10_0000 + need - 1, 0x200, ram), Ok(()));
        for (base, end) in [
            (0x10_0000, 0x10_0000 + need - 0x2001), // one 8 KiB block short
            (0x10_2000, 0x10_1fff),                 // end below base
            (0x1f_e000, 0x20_7fff),                 // runs past the end of RAM
            (0x10_1000, 0x10_ffff),                 // base not 8 KiB aligned
            (0x10_0000, 0x10_ffff_fff0),            // end + 1 not 8 KiB aligned
            (RMP_ADDR_MASK, u64::MAX),              // top of the address space: the sum would wrap
            (RMP_ADDR_MASK & !0xffff, RMP_ADDR_MASK | 0x1fff),
        ] {
            assert!(check_rmp_window(base, end, 0x200, ram).is_err(), "{base:#x}..={end:#x}");
        }
    }

    #[test]
    fn host_faults_on_a_running_tdi_fence_its_asid() {
        // A page-table fault (IOVA not mapped) on a T=1 request.
        let (mut s, mut mem, events) = bound();
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Write).is_ok(), "the private page is reachable");
        assert!(matches!(s.page(&mut mem, RID, true, 0x9000, Access::Write), Err(Refusal::Translation(_))));
        assert_ne!(s.tio.asid_fence_status(2), 0, "fenced by the page-table fault");
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Write).is_err(), "no T=1 I/O while fenced");
        assert!(events.0.lock().unwrap().iter().any(|e| e["type"] == "asid_fence" && e["asid"] == 2));
        s.tio.asid_fence_clear(2);
        assert!(s.page(&mut mem, RID, true, 0x5000, Access::Write).is_ok(), "cleared");
        // T=0 faults of the same device do not fence.
        assert!(s.page(&mut mem, RID, false, 0x9000, Access::Write).is_err());
        assert_eq!(s.tio.asid_fence_status(2), 0);
    }

    /// An IOMMU whose BAR0 is a VT-d unit: root table at 0x1000, context for RID in domain 1,
    /// 4-level tables mapping IOVA 0x5000 to 0x30_0000 read-write; translation on, fault event
    /// unmasked to 0xfee0_0000 / 0x41.
    fn vtd() -> (SecureIommu, ByteMem, Arc<Collect>) {
        use iommu_model::vtd::regs;
        let mut mem = ByteMem::new(0, 4 << 20);
        mem.write_u64(0x1000, 0x2000 | 1).unwrap();
        mem.write_u64(0x2000 + u64::from(RID & 0xff) * 16, 0x10_0000 | 1).unwrap();
        mem.write_u64(0x2000 + u64::from(RID & 0xff) * 16 + 8, 2 | 1 << 8).unwrap();
        for l in 0..3u64 {
            mem.write_u64(0x10_0000 + l * 0x1000, (0x10_1000 + l * 0x1000) | 3).unwrap();
        }
        mem.write_u64(0x10_3000 + 5 * 8, 0x30_0000 | 3).unwrap();
        let events = Arc::new(Collect::default());
        let mut s = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
        let mut v = VtdUnit::default();
        v.mmio_write(&mut mem, regs::RTADDR, 8, 0x1000);
        v.mmio_write(&mut mem, regs::GCMD, 4, u64::from(regs::gcmd::SRTP));
        v.mmio_write(&mut mem, regs::FEDATA, 4, 0x41);
        v.mmio_write(&mut mem, regs::FEADDR, 4, 0xfee0_0000);
        v.mmio_write(&mut mem, regs::FECTL, 4, 0);
        v.mmio_write(&mut mem, regs::GCMD, 4, u64::from(regs::gcmd::TE));
        s.vtd = Some(v);
        (s, mem, events)
    }

    fn last(events: &Collect, ty: &str) -> serde_json::Value {
        events.0.lock().unwrap().iter().rev().find(|e| e["type"] == ty).cloned().unwrap_or_default()
    }

    #[test]
    fn vtd_translates_the_endpoint_and_records_its_faults() {
        let (mut s, mut mem, events) = vtd();
        assert_eq!(s.page(&mut mem, RID, false, 0x5010, Access::Write), Ok(0x30_0010));
        // Not mapped: the unit's fault, recorded in its first fault recording register, on the
        // stream with the AMD-Vi side's fields, and the fault event's message.
        let r = s.page(&mut mem, RID, false, 0x9000, Access::Read);
        assert!(matches!(r, Err(Refusal::Vtd(rec)) if rec.reason == iommu_model::vtd::FaultReason::ReadDenied && rec.fi == 0x9000));
        let f = last(&events, "translation_fault");
        assert_eq!((f["via"].as_str(), f["devid"].as_str(), f["iova"].as_str()), (Some("vt-d"), Some("00:04.0"), Some("0x9000")));
        assert_eq!(
            (f["access"].as_str(), f["level"].as_u64(), f["logged"].as_bool(), f["reason"].as_str()),
            (Some("read"), Some(1), Some(true), Some("0x06"))
        );
        let v = s.vtd.as_ref().unwrap();
        let hi = v.mmio_read(iommu_model::vtd::unit::FRCD_BASE + 8, 8);
        assert_eq!((hi >> 63, (hi >> 32) & 0xff, hi & 0xffff), (1, 6, u64::from(RID)), "F, FR, SID");
        s.irq_if_pending();
        let i = last(&events, "vtd_interrupt");
        assert_eq!((i["event"].as_str(), i["addr"].as_str(), i["data"].as_str()), (Some("fault"), Some("0xfee00000"), Some("0x41")));
    }

    #[test]
    fn vtd_translation_then_the_rmp_check() {
        let (mut s, mut mem, events) = vtd();
        let mut rmp = Rmp::new(1024);
        assert_eq!(rmp.rmpupdate(0x30_0000, &RmpState::private(0x5000, 2, PageSize::Size4K)).status, RmpStatus::Success);
        s.rmp = Some(rmp);
        // T=0 to a page assigned to a guest: translated by VT-d, refused by the RMP.
        assert_eq!(s.page(&mut mem, RID, false, 0x5000, Access::Write), Err(Refusal::Rmp(DmaRefusal::AssignedPage)));
        let v = last(&events, "rmp_violation");
        assert_eq!((v["spa"].as_str(), v["logged"].as_bool()), (Some("0x300000"), Some(false)), "no AMD-Vi event log to log it in");
        assert!(s.page(&mut mem, RID, false, 0x5000, Access::Read).is_ok(), "reads of it are allowed");
    }

    /// TDX Connect: T=1 through the TD's trusted table only, T=0 through the host's VT-d tables
    /// and the PAMT, removal refused while trusted DMA is attached, all through module calls.
    #[test]
    fn tdx_connect_trusted_and_untrusted_dma() {
        use crate::secure::tdx_module::{command, TdxModule};
        use abi::tdx::{Call, TdxCall};
        let (mut s, mut mem, events) = vtd();
        s.tdx = Some(TdxModule::default());
        s.tdisp.insert(RID, Arc::new(Mutex::new(TdispResponder::new(u32::from(RID), Vec::new()))));
        let call = |s: &mut SecureIommu, c: Call, td: u32, gpa: u64, spa: u64| {
            command(s, c.code(), &abi::mailbox::buffer(&TdxCall::new(td, RID, gpa, spa)))
        };
        let state = |s: &SecureIommu| s.tdisp[&RID].lock().unwrap().state();
        const GPA: u64 = 0x4000_0000;
        assert_eq!(call(&mut s, Call::TdhMngCreate, 1, 0, 0), 0);
        assert_eq!(call(&mut s, Call::TdhMemPageAdd, 1, GPA, 0x31_0000), 0);
        assert_eq!(call(&mut s, Call::TdhTdiBind, 1, 0, 0), 0);
        assert_eq!(state(&s), TdiState::ConfigLocked);
        assert_eq!(s.page(&mut mem, RID, true, GPA, Access::Write), Err(Refusal::Tdx(TdxRefusal::NotRun)), "not in RUN");
        assert_eq!(call(&mut s, Call::TdgTdiStart, 2, 0, 0), 2, "another TD cannot start it");
        assert_eq!(call(&mut s, Call::TdgTdiStart, 1, 0, 0), 0);
        assert_eq!(state(&s), TdiState::Run);
        assert_eq!(s.page(&mut mem, RID, true, GPA, Access::Write), Err(Refusal::Tdx(TdxRefusal::NotRun)), "trusted DMA not accepted");
        assert_eq!(call(&mut s, Call::TdgDmarAccept, 1, 0, 0), 0);
        // The host's VT-d tables map nothing at GPA: the trusted table alone translates T=1.
        assert_eq!(s.page(&mut mem, RID, true, GPA + 0x10, Access::Write), Ok(0x31_0010));
        // The host maps GPA to a page of its own: T=1 is unchanged, T=0 goes there.
        // GPA 0x4000_0000 is L3 index 1: new L2 and L1 tables under it.
        mem.write_u64(0x10_1000 + 8, 0x10_5000 | 3).unwrap();
        mem.write_u64(0x10_5000, 0x10_6000 | 3).unwrap();
        mem.write_u64(0x10_6000, 0x32_0000 | 3).unwrap();
        assert_eq!(s.page(&mut mem, RID, true, GPA, Access::Write), Ok(0x31_0000), "host tables do not reach T=1");
        assert_eq!(s.page(&mut mem, RID, false, GPA, Access::Write), Ok(0x32_0000));
        // The host points IOVA 0x5000 at the TD's page: T=0 is refused by the PAMT.
        mem.write_u64(0x10_3000 + 5 * 8, 0x31_0000 | 3).unwrap();
        s.vtd.as_mut().unwrap().flush_caches();
        assert_eq!(s.page(&mut mem, RID, false, 0x5000, Access::Read), Err(Refusal::Tdx(TdxRefusal::PrivatePage)));
        let v = last(&events, "tdx_violation");
        assert_eq!((v["t"].as_bool(), v["spa"].as_str(), v["devid"].as_str()), (Some(false), Some("0x310000"), Some("00:04.0")));
        // The page cannot leave the TD while trusted DMA can reach it.
        assert_eq!(call(&mut s, Call::TdhMemPageRemove, 1, GPA, 0), abi::tdx::TdxStatus::PageInUse.code());
        assert_eq!(call(&mut s, Call::TdhTdiUnbind, 0, 0, 0), 0);
        assert_eq!(state(&s), TdiState::ConfigUnlocked);
        assert_eq!(s.page(&mut mem, RID, true, GPA, Access::Write), Err(Refusal::Tdx(TdxRefusal::NotRun)));
        assert_eq!(call(&mut s, Call::TdhMemPageRemove, 1, GPA, 0), 0);
        assert_eq!(s.page(&mut mem, RID, false, 0x5000, Access::Read), Ok(0x31_0000), "the host's page again");
        assert!(events
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "tdx_call" && e["call"] == "TDH.MEM.PAGE.REMOVE" && e["status"] == "PAGE_IN_USE"));
    }
}
