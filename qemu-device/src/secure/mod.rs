//! The secure core: the IOMMU units and the security state (rmp-model's RMP and TIO, or the TDX
//! module stand-in) behind one lock, and the path every device access takes through them.
//!
//! A DMA request of one page (`SecureIommu::page`, run by `dma::plan` for every page of a
//! transfer) passes these stages, in `SecureIommu::stages`:
//!
//! 1. **Translate** (`front.rs`): the device's front, one implementation of the `Front` trait
//!    each: the virtio-iommu's domains when the device is attached to one (virtio 1.2 §5.13,
//!    `devices/virtio_iommu/domains.rs`), else the VT-d unit with `--iommu vtd` (legacy mode,
//!    iommu-model `vtd`), else the AMD-Vi unit (spec 48882 §2.2, iommu-model `amdvi`). The answer
//!    is typed: which front, the translation (SPA, permissions, page size), whether the tables
//!    were walked for it, or that front's fault. A fault is recorded where the front records it
//!    (the AMD-Vi event log, a VT-d fault recording register; the virtio-iommu's is returned for
//!    the caller to post on the device's event queue), a `translation_fault` record is emitted,
//!    and a host fault on a T=1 request of a TDI in RUN fences its ASID (SEV-TIO firmware spec
//!    §2.11). Under TDX Connect a T=1 request for a private GPA skips the host's fronts: the TD's
//!    S-EPT translates it alone (`tdx_module.rs`).
//! 2. **Check** the system physical page: under TDX Connect the PAMT's ownership rule (rmp-model
//!    `tdx`), else the RMP (rmp-model `dma_check`: the SEV-SNP / SEV-TIO rules, T=1 requests
//!    through the TDI's binding in `Tio`); a refusal is logged as RMP_PAGE_FAULT and may fence
//!    the ASID. Injected faults (`inject.rs`) can fail the check here (RMP_HW_ERROR).
//! 3. **Note the mapping live** for the conversion hazard check: an allowed T=0 access whose
//!    translation the front walked its tables for (the answer's `fresh_walk`) registers its page
//!    with the RMP's hazard registry. RMPUPDATE (`hazard.rs`) reports a page turned private while
//!    a registered mapping, or one found by searching the drivers' tables, can still reach it;
//!    "live" is decided from the units' state (unit enabled, the device's entry translating, the
//!    mapping present, or its virtio-iommu domain attached), never from a counter.
//! 4. **Move** the bytes (`dma.rs`): only after every page of the transfer passed 1-3, with the
//!    lock released between pages.
//!
//! The TDISP responders have one owner (`tdi.rs`), which alone changes a TDI's state and emits
//! `tdisp` records. The fields are private: the PCI functions, the control socket, the TDX
//! module stand-in and fault injection use the named operations below.

pub mod dma;
pub mod front;
mod hazard;
pub mod inject;
pub mod rmp_state;
pub mod tdi;
pub mod tdx_module;

use crate::devices::virtio_iommu::domains::Domains;
use crate::devices::virtio_iommu::proto::Fault;
use crate::vfio::function::{EventSink, Irq};
use crate::vfio::guest_mem::GuestMem;
use abi::event as ev;
use abi::Bdf;
use front::{Answer, Front, FrontFault, Translated};
use iommu_model::amdvi::event::Event;
use iommu_model::amdvi::inject::Fired;
use iommu_model::amdvi::mmio::AmdVi;
use iommu_model::mem::PhysMem;
use iommu_model::vtd::unit::{Interrupt, VtdUnit};
use iommu_model::vtd::FaultRecord;
use iommu_model::walk::{Access, Translation};
use rmp_model::dma_check::{DmaRefusal, DmaRequest, RmpFault};
use rmp_model::hazard::LiveMapping;
use rmp_model::tdx::TdxRefusal;
use rmp_model::tio::{Tio, Transport};
use rmp_model::Rmp;
use std::sync::{Arc, Mutex};
use tdi::{Tdis, Via};
use tdx_module::TdxModule;

/// Why a DMA moved nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The AMD-Vi unit's translation faulted (IO_PAGE_FAULT and friends).
    Translation(Event),
    /// The virtio-iommu's domain did not map the page: the walk's event, and the fault the
    /// caller posts on the device's event queue.
    Viommu { event: Event, fault: Fault },
    /// The RMP check refused the access (RMP_PAGE_FAULT).
    Rmp(DmaRefusal),
    /// The VT-d unit's translation faulted (the record it holds for the fault recording
    /// registers).
    Vtd(FaultRecord),
    /// The TDX Connect personality's ownership check refused the access.
    Tdx(TdxRefusal),
    /// The RMP check could not be made (RMP_HW_ERROR: an injected fault, docs/fault-injection.md).
    HwError(Event),
}

/// Where the virtio-iommu's faults go: its event queue (virtio 1.2 §5.13.6.9). The DMA path posts
/// a `Refusal::Viommu` there after the translation returned, with the secure IOMMU's lock
/// released (`dma::PerPage`).
pub trait FaultQueue: Send + Sync {
    fn post(&self, fault: Fault);
}

/// The virtio-iommu front: its domains, and its event queue.
struct Viommu {
    domains: Arc<Mutex<Domains>>,
    queue: Option<Arc<dyn FaultQueue>>,
}

/// One page-bounded request.
#[derive(Clone, Copy, Debug)]
struct Req {
    rid: u16,
    t: bool,
    iova: u64,
    access: Access,
}

impl Req {
    fn write(self) -> bool {
        self.access == Access::Write
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
pub fn check_rmp_window(base: u64, end: u64, pages: u64, backed: impl Fn(u64, u64) -> bool) -> Result<(), RmpWindowError> {
    if base == 0 {
        return Ok(());
    }
    if base & !RMP_ADDR_MASK != 0 || end & !RMP_ADDR_MASK != 0x1fff {
        return Err(RmpWindowError::Unaligned { base, end });
    }
    let Some(size) = end.checked_sub(base).and_then(|d| d.checked_add(1)) else {
        return Err(RmpWindowError::EndBelowBase { base, end });
    };
    let need = Rmp::table_bytes(pages);
    if size < need {
        return Err(RmpWindowError::TooSmall { size, pages, need });
    }
    if !backed(base, size) {
        return Err(RmpWindowError::NotGuestRam { base, end });
    }
    Ok(())
}

/// Why SNP_EN was refused: the RMP_BASE/RMP_END window cannot hold the RMP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RmpWindowError {
    #[error("RMP_BASE {base:#x} or RMP_END {end:#x} is not on an 8 KiB boundary below 4 PiB")]
    Unaligned { base: u64, end: u64 },
    #[error("RMP_END {end:#x} is below RMP_BASE {base:#x}")]
    EndBelowBase { base: u64, end: u64 },
    #[error("the RMP window holds {size:#x} bytes; {pages} pages of guest RAM need {need:#x}")]
    TooSmall { size: u64, pages: u64, need: u64 },
    #[error("the RMP window {base:#x}..={end:#x} is not all guest RAM")]
    NotGuestRam { base: u64, end: u64 },
}

pub struct SecureIommu {
    amdvi: AmdVi,
    /// With `--iommu vtd`: the VT-d unit is the IOMMU (BAR0, translation) instead of `amdvi`.
    vtd: Option<VtdUnit>,
    /// With `--personality tdx-connect`: the TDX-module stand-in, whose ownership check replaces
    /// the RMP's and whose trusted table alone translates T=1 requests.
    tdx: Option<TdxModule>,
    /// Created when SNP is enabled, covering guest RAM.
    rmp: Option<Rmp>,
    rmp_base: u64,
    rmp_end: u64,
    tio: Tio,
    /// The TDISP responder of each endpoint (the "DOE" the firmware reaches).
    tdis: Tdis,
    events: Arc<dyn EventSink>,
    irq: Arc<dyn Irq>,
    /// Pages of guest RAM (the RMP covers them).
    ram_pages: u64,
    /// The RMP state file the TCG plugin reads, when the daemon publishes one.
    publisher: Option<rmp_state::RmpPublisher>,
    /// The virtio-iommu: an endpoint attached to one of its domains is translated by that
    /// domain's tables instead of the IOMMU unit's (the RMP check is the same).
    viommu: Option<Viommu>,
    /// Faults armed outside the AMD-Vi unit, and the devices that take them (inject.rs).
    inject: inject::State,
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
            tdis: Tdis::new(events.clone()),
            events,
            irq,
            ram_pages: 0,
            publisher: None,
            viommu: None,
            inject: Default::default(),
        }
    }

    // ---- Set-up (the daemon's session, tests, fuzz targets) ----

    /// The VT-d unit is the IOMMU (`--iommu vtd`, and TDX Connect): BAR0 and translation.
    pub fn use_vtd(&mut self, unit: VtdUnit) {
        self.vtd = Some(unit);
    }

    /// TDX Connect: the TDX module stand-in owns the mailbox and the ownership check.
    pub fn use_tdx_module(&mut self, module: TdxModule) {
        self.tdx = Some(module);
    }

    /// Publish the RMP's entries to a file the TCG plugin maps.
    pub fn publish_rmp(&mut self, publisher: rmp_state::RmpPublisher) {
        self.publisher = Some(publisher);
    }

    /// The virtio-iommu's domains translate the endpoints attached to them; their faults go to
    /// `queue` (none: not reported).
    pub fn attach_virtio_iommu(&mut self, domains: Arc<Mutex<Domains>>, queue: Option<Arc<dyn FaultQueue>>) {
        self.viommu = Some(Viommu { domains, queue });
    }

    /// The event stream.
    pub fn events(&self) -> Arc<dyn EventSink> {
        self.events.clone()
    }

    /// The owner of the devices' TDISP responders.
    pub fn tdis(&self) -> Tdis {
        self.tdis.clone()
    }

    // ---- The DMA path ----

    /// Translate and check one page-bounded access: its SPA, or why it was refused (recorded
    /// where the hardware records it, and on the event stream). `dma::plan` runs it for every
    /// page of a transfer; the platform faults armed for a DMA request fire around it.
    pub fn page<M: PhysMem + ?Sized>(&mut self, mem: &mut M, rid: u16, t: bool, iova: u64, access: Access) -> Result<u64, Refusal> {
        self.before_request(mem, rid, iova);
        let r = self.stages(mem, Req { rid, t, iova, access });
        self.after_request(rid, iova);
        r
    }

    /// The stages of one request (the module's documentation says what each one holds).
    fn stages<M: PhysMem + ?Sized>(&mut self, mem: &mut M, req: Req) -> Result<u64, Refusal> {
        if let Some(trusted) = self.trusted_tdx(req) {
            return trusted;
        }
        let answer = self.translate(mem, req);
        // What injected AMD-Vi faults did at this request, whatever its answer (fault-injection.md).
        let injected = self.collect_amdvi();
        self.collect_vtd();
        let translated = answer.map_err(|fault| self.translation_refused(req, fault, &injected))?;
        let spa = self.check(mem, req, &translated)?;
        self.note_live(req, &translated);
        Ok(spa)
    }

    /// TDX Connect: a T=1 request for a private GPA is translated by the TD's trusted table
    /// alone; the host's tables are never consulted for it. None for every other request.
    fn trusted_tdx(&self, req: Req) -> Option<Result<u64, Refusal>> {
        let m = self.tdx.as_ref().filter(|m| req.t && !m.tdx.is_shared_gpa(req.iova))?;
        Some(m.trusted_dma(req.rid, self.tdis.state(req.rid), req.iova).map_err(|f| self.tdx_refused(req, None, f)))
    }

    /// Stage 1: the device's front translates the request.
    fn translate<M: PhysMem + ?Sized>(&mut self, mem: &mut M, req: Req) -> Answer {
        let Req { rid, iova, access, .. } = req;
        if let Some(v) = &self.viommu {
            let mut domains = lock(&v.domains);
            if domains.translates(rid) {
                return domains.request(mem, rid, iova, access);
            }
        }
        match &mut self.vtd {
            Some(v) => v.request(mem, rid, iova, access),
            None => self.amdvi.request(mem, rid, iova, access),
        }
    }

    /// A front's fault: on the stream as a `translation_fault`, fencing a running TDI's ASID.
    fn translation_refused(&mut self, req: Req, fault: FrontFault, injected: &[Fired]) -> Refusal {
        let (record, refusal) = match fault {
            FrontFault::AmdVi { event, level, logged } => {
                let injected = injected.iter().any(|f| f.event == Some(event)).then_some(true);
                (fault_record(req, event, level, logged, front::Which::AmdVi, injected), Refusal::Translation(event))
            }
            FrontFault::VirtioIommu { event, level, report } => {
                (fault_record(req, event, level, false, front::Which::VirtioIommu, None), Refusal::Viommu { event, fault: report })
            }
            FrontFault::Vtd { record, level, recorded } => (
                ev::TranslationFault {
                    event: "DMA_REMAP_FAULT".into(),
                    devid: Bdf(req.rid),
                    iova: req.iova,
                    access: direction(req.write()),
                    level,
                    flags: record.reason.code().into(),
                    logged: recorded,
                    via: front::Which::Vtd.via(),
                    reason: Some(format!("{:#04x}", record.reason.code())),
                    description: Some(record.reason.description().into()),
                    injected: None,
                },
                Refusal::Vtd(record),
            ),
        };
        self.events.emit(ev::Event::TranslationFault(record));
        self.fence_if_running(req);
        refusal
    }

    /// Stage 2: the ownership check of the translated page, the PAMT's (TDX Connect) or the
    /// RMP's (SEV-SNP / SEV-TIO).
    fn check<M: PhysMem + ?Sized>(&mut self, mem: &mut M, req: Req, tr: &Translated) -> Result<u64, Refusal> {
        let Req { rid, t, iova, .. } = req;
        let spa = tr.translation.spa;
        if let Some(m) = &self.tdx {
            return m.tdx.check_dma(rid, t, self.tdis.state(rid), iova, spa).map_err(|f| self.tdx_refused(req, Some(spa), f));
        }
        if let Some(ev) = self.rmp_read_fails(mem, rid, iova, spa, req.write()) {
            return Err(Refusal::HwError(ev));
        }
        let Some(rmp) = &self.rmp else {
            // Without SNP there is no TIO: T=1 requests have nothing to be checked against.
            return if t { Err(Refusal::Rmp(DmaRefusal::TdiNotRun)) } else { Ok(spa) };
        };
        let tdi = if t { self.tio.binding_for(rid, u32::from(rid), self.tdis.state(rid)) } else { None };
        let dreq = DmaRequest { requester: rid, t, tdi, iova, spa, write: req.write(), mapping_size_log2: tr.translation.size_log2 };
        match rmp.check_dma(&dreq) {
            Ok(()) => Ok(spa),
            Err(f) => Err(self.rmp_refused(mem, req, spa, f)),
        }
    }

    /// Stage 3: an allowed T=0 access through a front's tables (not an untranslated one) whose
    /// translation was read from the tables now (`fresh_walk`, from the front's answer) registers
    /// the mapping for the hazard check; an IOTLB hit was registered by the walk that filled the
    /// IOTLB. Whether it is still live is decided at RMPUPDATE from the tables (`live_mapping`).
    fn note_live(&mut self, req: Req, tr: &Translated) {
        let Some(rmp) = self.rmp.as_mut().filter(|_| !req.t && tr.fresh_walk && tr.translation.level > 0) else { return };
        let t = tr.translation;
        let m = LiveMapping { requester: req.rid, iova: req.iova & !0xfff, spa: t.spa & !0xfff, size: 0x1000, write: t.perm.write };
        let _ = rmp.hazards.register(m);
    }

    /// An RMP refusal: RMP_PAGE_FAULT in the AMD-Vi event log and on the stream; a host-caused
    /// fault on a request of a TDI in RUN fences its guest's ASID from all further I/O until
    /// TIO_ASID_FENCE_CLEAR (SEV-TIO FW spec §2.11).
    fn rmp_refused<M: PhysMem + ?Sized>(&mut self, mem: &mut M, req: Req, spa: u64, f: RmpFault) -> Refusal {
        let ev = Event::rmp_page_fault(f.devid, f.flags_rmp, f.vmg_tag, f.flags, f.gpa);
        let logged = self.amdvi.log_event(mem, &ev);
        self.events.emit(ev::Event::RmpViolation(ev::RmpViolation {
            event: "RMP_PAGE_FAULT".into(),
            devid: Bdf(req.rid),
            t: req.t,
            iova: req.iova,
            spa,
            access: direction(req.write()),
            reason: f.reason.name().into(),
            flags_rmp: f.flags_rmp,
            vmg_tag: f.vmg_tag,
            logged,
        }));
        if let Some(asid) = f.fence_asid {
            self.tio.fence(asid);
            self.events.emit(ev::Event::AsidFence(ev::AsidFence { asid, devid: Bdf(req.rid), iova: req.iova }));
        }
        Refusal::Rmp(f.reason)
    }

    /// A refusal of the TDX Connect ownership check, on the stream with the fields of an
    /// `rmp_violation` (there is no IOMMU log record for it: on hardware an untrusted access to
    /// TD-private memory ends in a machine check, not a fault record).
    fn tdx_refused(&self, req: Req, spa: Option<u64>, f: TdxRefusal) -> Refusal {
        self.events.emit(ev::Event::TdxViolation(ev::TdxViolation {
            event: "TDX_DMA_REFUSED".into(),
            devid: Bdf(req.rid),
            t: req.t,
            iova: req.iova,
            spa,
            access: direction(req.write()),
            reason: f.name().into(),
            logged: false,
        }));
        Refusal::Tdx(f)
    }

    /// A host page-table fault on a request of a TDI in RUN fences its ASID too (SEV-TIO FW spec
    /// §2.11: "a host page table fault or an RMP check violation").
    fn fence_if_running(&mut self, req: Req) {
        if !req.t {
            return;
        }
        let state = self.tdis.state(req.rid);
        if let Some(b) = self.tio.binding_for(req.rid, u32::from(req.rid), state).filter(|b| b.state == rmp_model::tdisp::TdiState::Run) {
            self.tio.fence(b.asid);
            self.events.emit(ev::Event::AsidFence(ev::AsidFence { asid: b.asid, devid: Bdf(req.rid), iova: req.iova }));
        }
    }

    /// Where the virtio-iommu's faults are posted (`dma::PerPage` posts them).
    pub(crate) fn fault_queue(&self) -> Option<Arc<dyn FaultQueue>> {
        self.viommu.as_ref().and_then(|v| v.queue.clone())
    }

    /// What the device's front maps `iova` to now, if the mapping is live (front.rs, `live`).
    fn live_mapping<M: PhysMem + ?Sized>(&self, mem: &M, rid: u16, iova: u64) -> Option<Translation> {
        if let Some(v) = &self.viommu {
            let domains = lock(&v.domains);
            if domains.translates(rid) {
                return domains.live(mem, rid, iova);
            }
        }
        match &self.vtd {
            Some(v) => v.live(mem, rid, iova),
            None => self.amdvi.live(mem, rid, iova),
        }
    }

    /// The device was reset: none of its mappings are live for the hazard check any more.
    pub fn forget_mappings_of(&mut self, rid: u16) {
        if let Some(r) = self.rmp.as_mut() {
            r.hazards.unregister_requester(rid);
        }
    }

    // ---- The secure IOMMU function's registers and mailbox (devices/iommu.rs) ----

    /// Whether BAR0 is the VT-d unit's (else the AMD-Vi unit's).
    pub fn is_vtd(&self) -> bool {
        self.vtd.is_some()
    }

    /// Whether the TDX module stand-in owns the mailbox (TDX Connect).
    pub fn is_tdx(&self) -> bool {
        self.tdx.is_some()
    }

    /// A BAR0 register read: the VT-d unit's or the AMD-Vi unit's.
    pub fn bar0_read(&self, offset: u64, size: usize) -> u64 {
        match &self.vtd {
            Some(v) => v.mmio_read(offset, size),
            None => self.amdvi.mmio_read(offset, size),
        }
    }

    /// A BAR0 register write, with what follows it: commands run count for the platform
    /// faults, injected AMD-Vi faults are reported, a pending interrupt is raised.
    pub fn bar0_write<M: PhysMem + ?Sized>(&mut self, mem: &mut M, offset: u64, size: usize, value: u64) {
        match &mut self.vtd {
            Some(v) => v.mmio_write(mem, offset, size, value),
            None => self.amdvi.mmio_write(mem, offset, size, value),
        }
        self.after_register_write(mem);
        self.irq_if_pending();
    }

    /// An AMD-Vi register, whatever BAR0 is (the control socket's status).
    pub fn amdvi_register(&self, offset: u64) -> u64 {
        self.amdvi.mmio_read(offset, 8)
    }

    /// The VT-d unit's fault event message: (FEUADDR:FEADDR, FEDATA); zeroes without one.
    pub fn vtd_fault_message(&self) -> (u64, u64) {
        use iommu_model::vtd::regs;
        self.vtd.as_ref().map_or((0, 0), |v| (v.mmio_read(regs::FEADDR, 8), v.mmio_read(regs::FEDATA, 4)))
    }

    /// The function's reset: the IOMMU unit and the TDX module to their power-on state.
    pub fn reset_units(&mut self) {
        self.amdvi.reset();
        if let Some(v) = &mut self.vtd {
            v.reset();
        }
        if let Some(m) = &mut self.tdx {
            m.reset();
        }
    }

    /// RMP_BASE and RMP_END.
    pub fn rmp_window(&self) -> (u64, u64) {
        (self.rmp_base, self.rmp_end)
    }

    /// RMP_BASE: locked once SNP is on, as the MSR is once SYSCFG.SNPEn is set.
    pub fn set_rmp_base(&mut self, value: u64) {
        if self.rmp.is_none() {
            self.rmp_base = value & RMP_ADDR_MASK;
        }
    }

    /// RMP_END (bits 12:0 read as ones): locked once SNP is on.
    pub fn set_rmp_end(&mut self, value: u64) {
        if self.rmp.is_none() {
            self.rmp_end = (value & RMP_ADDR_MASK) | 0x1fff;
        }
    }

    pub fn snp_enabled(&self) -> bool {
        self.rmp.is_some()
    }

    /// Pages of guest RAM the RMP covers (0 before SNP).
    pub fn ram_pages(&self) -> u64 {
        self.ram_pages
    }

    /// The RMP, once SNP is on.
    pub fn rmp(&self) -> Option<&Rmp> {
        self.rmp.as_ref()
    }

    /// SNP on with an RMP set up beforehand, no mirror (tests and fuzz targets build one page by
    /// page).
    pub fn enable_snp_with(&mut self, rmp: Rmp) {
        self.ram_pages = rmp.pages();
        self.rmp = Some(rmp);
    }

    /// An RMP instruction on the page at `spa` (PSMASH, PVALIDATE, RMPADJUST), then the 2 MiB
    /// of entries around it written where the guest and the TCG plugin read them. None before SNP.
    pub fn rmp_op<R>(&mut self, mem: &mut GuestMem, spa: u64, op: impl FnOnce(&mut Rmp) -> R) -> Option<R> {
        let r = op(self.rmp.as_mut()?);
        self.mirror(mem, spa >> 12, 512);
        Some(r)
    }

    /// The SEV firmware's TIO state, with the transport its commands reach the devices' TDISP
    /// responders over.
    pub fn with_tio<R>(&mut self, f: impl FnOnce(&mut Tio, Transport) -> R) -> R {
        let tdis = self.tdis.clone();
        let mut transport = |rid: u16, m: &[u8]| tdis.request(rid, m, Via::Firmware);
        f(&mut self.tio, &mut transport)
    }

    /// The TIO state, read-only.
    pub fn tio(&self) -> &Tio {
        &self.tio
    }

    /// The TDX module stand-in (TDX Connect).
    pub fn tdx_module(&self) -> Option<&TdxModule> {
        self.tdx.as_ref()
    }

    pub fn tdx_module_mut(&mut self) -> Option<&mut TdxModule> {
        self.tdx.as_mut()
    }

    /// What the guest's IOMMU driver asked of the AMD-Vi (or VT-d) unit: the session's last
    /// record.
    pub fn usage_record(&self) -> ev::Event {
        match &self.vtd {
            Some(v) => {
                let counts = iommu_model::vtd::unit::INVALIDATION_KINDS
                    .iter()
                    .zip(v.invalidations)
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| (k.to_string(), n))
                    .collect();
                ev::Event::VtdInvalidations(ev::VtdInvalidations { counts })
            }
            None => {
                let counts = (0u8..16)
                    .filter(|&op| self.amdvi.commands[usize::from(op)] > 0)
                    .map(|op| (iommu_model::amdvi::command::name(op).to_string(), self.amdvi.commands[usize::from(op)]))
                    .collect();
                ev::Event::AmdviCommands(ev::AmdviCommands { counts })
            }
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
    pub fn enable_snp(&mut self, mem: &mut GuestMem, ram_pages: u64) -> Result<(), RmpWindowError> {
        if self.rmp.is_some() {
            return Ok(());
        }
        let ram_pages = ram_pages.min(rmp_model::rmp::MAX_PAGES);
        if let Err(e) = check_rmp_window(self.rmp_base, self.rmp_end, ram_pages, |a, n| mem.backed(a, n)) {
            crate::warn_limited!("SNP_CTL.SNP_EN refused: {e}");
            self.events.emit(ev::Event::Snp(ev::Snp {
                enabled: false,
                pages: None,
                error: Some(e.to_string()),
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
    fn mirror(&self, mem: &mut GuestMem, first: u64, n: u64) {
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
}

/// A front's fault on the event stream.
fn fault_record(
    req: Req,
    event: Event,
    level: Option<u8>,
    logged: bool,
    via: front::Which,
    injected: Option<bool>,
) -> ev::TranslationFault {
    ev::TranslationFault {
        event: event.name().into(),
        devid: Bdf(req.rid),
        iova: req.iova,
        access: direction(req.write()),
        level,
        flags: event.flags.into(),
        logged,
        via: via.via(),
        reason: None,
        description: None,
        injected,
    }
}

#[cfg(test)]
pub(crate) fn bind_running_tdi(s: &mut SecureIommu, rid: u16, asid: u16, vtom: u64) {
    s.tdis.add(rid, Vec::new());
    s.with_tio(|tio, tr| {
        tio.init();
        tio.dev_create(rid, 0);
        tio.dev_connect(rid, [0; 8], tr);
        let tdi = tio.tdi_create(rid, u32::from(rid)).expect("a TDI for the device");
        tio.tdi_bind(tdi, asid, 0x100, 0, true, tr);
        tio.sdte_write(tdi, vtom);
    });
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
    use rmp_model::ops::{GuestCtx, RmpState};
    use rmp_model::tdisp::TdiState;
    use rmp_model::tdx::TdxRefusal;
    use rmp_model::PageSize;
    use rmp_model::RmpStatus;

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
        s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
        let mut rmp = Rmp::new(1024);
        assert_eq!(rmp.rmpupdate(0x30_0000, &RmpState::private(0x5000, 2, PageSize::Size4K)).status, RmpStatus::Success);
        rmp.pvalidate(GuestCtx { asid: 2, vmpl: 0 }, 0x30_0000, 0x5000, PageSize::Size4K, true);
        s.enable_snp_with(rmp);
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
        s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
        s.enable_snp(&mut mem, 1024).unwrap();
        assert!(s.rmp().unwrap().hazards.is_empty(), "nothing walked, nothing registered");
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

    /// Liveness comes from the state, not a counter: a mapping is registered when the front's
    /// answer says the tables were walked for it (not on an IOTLB hit), and at RMPUPDATE it is a
    /// hazard only while the unit still translates the device through it: once the unit is off
    /// (requests untranslated, whatever the tables say) it is dropped, not reported.
    #[test]
    fn a_used_mapping_is_live_while_the_unit_translates_through_it() {
        let (mut s, mut mem, events) = bound();
        let live = LiveMapping { requester: RID, iova: 0x5000, spa: 0x30_0000, size: 0x1000, write: true };
        s.rmp.as_mut().unwrap().rmpupdate(0x30_0000, &RmpState::shared(PageSize::Size4K));
        assert_eq!(s.page(&mut mem, RID, false, 0x5010, Access::Write), Ok(0x30_0010));
        assert!(s.rmp().unwrap().hazards.holds(&live), "walked: registered");
        // A device reset forgets it; an IOTLB hit is no fresh walk and registers nothing.
        s.forget_mappings_of(RID);
        let hit = s.amdvi.request(&mut mem, RID, 0x5000, Access::Write).unwrap();
        assert!(!hit.fresh_walk && hit.front == front::Which::AmdVi, "{hit:?}");
        assert_eq!(s.page(&mut mem, RID, false, 0x5020, Access::Write), Ok(0x30_0020));
        assert!(s.rmp().unwrap().hazards.is_empty());
        s.amdvi.flush_caches();
        assert_eq!(s.page(&mut mem, RID, false, 0x5020, Access::Write), Ok(0x30_0020));
        assert!(s.rmp().unwrap().hazards.holds(&live), "walked again: registered again");
        assert!(s.live_mapping(&mem, RID, 0x5000).is_some_and(|t| t.spa == 0x30_0000));
        // The unit off: untranslated, so not live; the registered mapping is dropped, not reported.
        s.bar0_write(&mut mem, mmio::CONTROL, 8, 0);
        assert_eq!(s.live_mapping(&mem, RID, 0x5000), None);
        let ram = crate::testing::guest_ram("secure-live", 4 << 20).0;
        let mut gm = ram.snapshot();
        assert_eq!(s.rmpupdate(&mut gm, 0x30_0000, &RmpState::private(0x5000, 2, PageSize::Size4K)), RmpStatus::Success);
        assert!(!s.rmp().unwrap().hazards.holds(&live));
        assert!(!events.0.lock().unwrap().iter().any(|e| e["type"] == "hazard"));
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
        s.use_vtd(v);
        (s, mem, events)
    }

    fn last(events: &Collect, ty: &str) -> serde_json::Value {
        events.0.lock().unwrap().iter().rev().find(|e| e["type"] == ty).cloned().unwrap_or_default()
    }

    /// VT-d faults arm on the VT-d unit only; what they did is an `injected` record, reported
    /// when the register write or request that made them fire returns.
    #[test]
    fn vtd_faults_fire_in_the_unit_and_are_reported() {
        use iommu_model::vtd::regs;
        let (mut s, mut mem, events) = vtd();
        let arm = |s: &mut SecureIommu, mem: &mut ByteMem, id, req: &str| {
            let (f, w) = inject::parse(&serde_json::from_str(req).unwrap()).unwrap();
            s.arm(mem, id, f, w)
        };
        let e = arm(&mut s, &mut mem, 1, r#"{"fault":"io-page-fault","device":"00:04.0","iova":"0x1000"}"#).unwrap_err();
        assert!(e.contains("AMD-Vi unit") && e.contains("VT-d"), "{e}");
        let fired = arm(&mut s, &mut mem, 2, r#"{"fault":"primary-fault","device":"00:04.0","iova":"0xdead0123","count":20}"#).unwrap();
        let r = serde_json::to_value(&fired[0]).unwrap();
        assert_eq!(
            (r["fault"].as_str(), r["logged"].as_u64(), r["event"].as_str(), r["devid"].as_str(), r["address"].as_str()),
            (Some("primary-fault"), Some(8), Some("DMA_REMAP_FAULT"), Some("00:04.0"), Some("0xdead0000"))
        );
        assert_eq!(last(&events, "vtd_interrupt")["event"], "fault");
        assert_ne!(s.bar0_read(regs::FSTS, 4) & u64::from(regs::fsts::PFO), 0);
        // IQE at the next descriptor, which the driver's register write makes the unit fetch.
        assert!(arm(&mut s, &mut mem, 3, r#"{"fault":"inv-queue-error"}"#).unwrap().is_empty(), "pending");
        assert_eq!(s.pending_faults()[0].fault, "inv-queue-error");
        mem.write_u64(0x20_0000, 0x12).unwrap();
        mem.write_u64(0x20_0008, 0).unwrap();
        s.bar0_write(&mut mem, regs::IQA, 8, 0x20_0000);
        s.bar0_write(&mut mem, regs::GCMD, 4, u64::from(regs::gcmd::TE | regs::gcmd::QIE));
        s.bar0_write(&mut mem, regs::IQT, 4, 0x10);
        let r = last(&events, "injected");
        assert_eq!((r["id"].as_u64(), r["event"].as_str(), r["address"].as_str()), (Some(3), Some("IQE"), Some("0x200000")));
        assert_ne!(s.bar0_read(regs::FSTS, 4) & u64::from(regs::fsts::IQE), 0);
        assert!(s.pending_faults().is_empty());
        // And the AMD-Vi unit refuses VT-d faults.
        let mut amd = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
        let (f, w) = inject::parse(&serde_json::json!({"fault": "inv-wait-lost"})).unwrap();
        assert!(amd.arm(&mut mem, 4, f, w).unwrap_err().contains("VT-d unit"));
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
        s.enable_snp_with(rmp);
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
        s.use_tdx_module(TdxModule::default());
        s.tdis().add(RID, Vec::new());
        let call = |s: &mut SecureIommu, c: Call, td: u32, gpa: u64, spa: u64| {
            command(s, c.code(), &abi::mailbox::buffer(&TdxCall::new(td, RID, gpa, spa)))
        };
        let state = |s: &SecureIommu| s.tdis().state(RID);
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
