//! A VT-d DMA-remapping unit as software sees it through its registers (`regs.rs`), in legacy
//! mode (ECAP.SMTS = 0): the root table latched by SRTP, translation enabled by TE, context
//! cache and IOTLB that only invalidations refresh (register-based through CCMD and IVA/IOTLB,
//! or queued), primary fault logging into the fault recording registers, and the fault and
//! invalidation-completion events as interrupt messages. What Linux 7.3's intel_iommu checks
//! and waits for is cited where it is done (drivers/iommu/intel/{dmar.c,iommu.c,cache.c}).

use super::context::{ContextEntry, TranslationType};
use super::event::{EventRegs, Msi};
use super::inject::{Fault, Fired, Site, MAX_FIRED};
use super::inv::{self, Descriptor};
use super::recording::{Recorded, Recording};
use super::regs::{self, cap, ccmd, ecap, fsts, gcmd, granularity, iotlb, iqa, iqei, iva};
use super::FaultReason;
use super::{check_context, fetch_context, translate_with_context, Caps, FaultRecord, VtdOutcome};
use crate::inject::{At, Full, Injector, When};
use crate::iotlb::{DevCache, Iotlb};
use crate::mem::PhysMem;
use crate::walk::{Access, Perm, Translation};

/// Where the fault recording registers start (CAP.FRO; QEMU's 0x220) and how many there are.
pub const FRCD_BASE: u64 = 0x220;
pub const FRCD_COUNT: usize = 8;
/// Where the IVA/IOTLB register pair is (ECAP.IRO; QEMU's 0xf0).
pub const IVA: u64 = 0xf0;
pub const IOTLB_REG: u64 = IVA + 8;
/// CAP.MAMV: the largest page-selective invalidation is 2^18 pages (QEMU VTD_MAMV); beyond it the
/// unit invalidates the whole domain and says so in IAIG.
pub const MAMV: u8 = 18;

/// An interrupt message the unit sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// The fault event (FEADDR/FEDATA): a fault was recorded, the fault log overflowed, or the
    /// invalidation queue stopped.
    Fault(Msi),
    /// The invalidation completion event (IEADDR/IEDATA): a wait descriptor with IF completed.
    InvalidationComplete(Msi),
}

pub struct VtdUnit {
    caps: Caps,
    cap: u64,
    ecap: u64,
    gsts: u32,
    rtaddr: u64,
    /// The root table SRTP latched; translation uses this, not RTADDR.
    root: u64,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    /// FSTS's IQE, ICE and ITE (PFO, PPF and FRI belong to the recording registers).
    fsts_iq: u32,
    recording: Recording,
    fault_event: EventRegs,
    inv_event: EventRegs,
    ics: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    iqer: u64,
    ctx_cache: DevCache<ContextEntry>,
    iotlb: Iotlb,
    interrupts: Vec<Interrupt>,
    /// Second-stage walks done (IOTLB misses), for statistics.
    pub walks: u64,
    /// Invalidation requests software made, by kind (`INVALIDATION_KINDS`), for statistics.
    pub invalidations: [u64; 5],
    /// Faults armed on purpose (docs/fault-injection.md), and what fired ones did until the
    /// daemon collects it.
    pub inject: Injector<Fault>,
    fired: Vec<Fired>,
}

/// The kinds `VtdUnit::invalidations` counts: queued context-cache, IOTLB and wait descriptors,
/// register-based context-cache (CCMD) and IOTLB commands.
pub const INVALIDATION_KINDS: [&str; 5] = ["qi_context_cache", "qi_iotlb", "qi_wait", "ccmd", "iotlb_register"];

impl Default for VtdUnit {
    fn default() -> Self {
        VtdUnit::new(Caps::unit())
    }
}

impl Caps {
    /// What the register file advertises: HAW 48, MGAW 48 with 39- and 48-bit tables (QEMU's
    /// intel-iommu defaults, so Linux picks 4-level tables: iommu.c compute_vasz_lg2_ss), 2 MiB
    /// and 1 GiB pages, pass-through, no device-TLB.
    pub fn unit() -> Caps {
        Caps { haw: 48, mgaw: 48, sagaw: 0b0110, sp_2m: true, sp_1g: true, pass_through: true, device_tlb: false }
    }
}

impl VtdUnit {
    pub fn new(caps: Caps) -> Self {
        // CAP.CM = 0: faulting and not-present entries are never cached, so Linux only flushes
        // the write buffer after making an entry present (iommu.c context_present_cache_flush),
        // and RWBF = 0 makes that nothing. ND = 6: every 16-bit DID.
        let mut cap_reg = cap::nd(6)
            | cap::sagaw(caps.sagaw)
            | cap::mgaw(caps.mgaw)
            | cap::fro(FRCD_BASE)
            | cap::PSI
            | cap::nfr(FRCD_COUNT as u64)
            | cap::mamv(u64::from(MAMV));
        if caps.sp_2m {
            cap_reg |= cap::SLLPS_2M;
        }
        if caps.sp_1g {
            cap_reg |= cap::SLLPS_1G;
        }
        let mut ecap_reg = ecap::C | ecap::QI | ecap::iro(IVA);
        if caps.pass_through {
            ecap_reg |= ecap::PT;
        }
        if caps.device_tlb {
            ecap_reg |= ecap::DT;
        }
        VtdUnit {
            caps,
            cap: cap_reg,
            ecap: ecap_reg,
            gsts: 0,
            rtaddr: 0,
            root: 0,
            ccmd: 0,
            iva: 0,
            iotlb_reg: 0,
            fsts_iq: 0,
            recording: Recording::new(FRCD_COUNT),
            fault_event: EventRegs::default(),
            inv_event: EventRegs::default(),
            ics: 0,
            iqa: 0,
            iqh: 0,
            iqt: 0,
            iqer: 0,
            ctx_cache: DevCache::default(),
            iotlb: Iotlb::new(),
            interrupts: Vec::new(),
            walks: 0,
            invalidations: [0; 5],
            inject: Injector::default(),
            fired: Vec::new(),
        }
    }

    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Extra ECAP bits a personality advertises (TDX Connect's TDXCS).
    pub fn set_ecap_bits(&mut self, bits: u64) {
        self.ecap |= bits;
    }

    /// GSTS.TES: requests are translated.
    pub fn enabled(&self) -> bool {
        self.gsts & gcmd::TE != 0
    }

    /// The root table the last SRTP latched.
    pub fn root_table(&self) -> u64 {
        self.root
    }

    pub fn iotlb_len(&self) -> usize {
        self.iotlb.len()
    }

    pub fn context_cache_len(&self) -> usize {
        self.ctx_cache.len()
    }

    /// The interrupt messages sent since the last call, oldest first.
    pub fn take_interrupts(&mut self) -> Vec<Interrupt> {
        std::mem::take(&mut self.interrupts)
    }

    /// Drop every cached context entry and translation (hardware may do it at any time).
    pub fn flush_caches(&mut self) {
        self.ctx_cache.invalidate_all();
        self.iotlb.invalidate_all();
    }

    /// Power-on state: registers cleared, caches and fault records empty. Armed faults are the
    /// tool's, not the unit's: they stay.
    pub fn reset(&mut self) {
        let ecap_extra = self.ecap & ecap::TDXCS;
        let (inject, fired) = (std::mem::take(&mut self.inject), std::mem::take(&mut self.fired));
        *self = VtdUnit { inject, fired, ..VtdUnit::new(self.caps) };
        self.ecap |= ecap_extra;
    }

    /// Arm a fault (docs/fault-injection.md); one due at once fires before this returns.
    pub fn arm(&mut self, id: u32, fault: Fault, when: When) -> Result<(), Full> {
        self.inject.arm(id, fault, when)?;
        self.fire_any(At::Arm);
        Ok(())
    }

    /// What fired faults did since the last call.
    pub fn take_fired(&mut self) -> Vec<Fired> {
        std::mem::take(&mut self.fired)
    }

    fn note(&mut self, id: u32, fault: Fault, recorded: u32, address: Option<u64>, effect: String) {
        if self.fired.len() >= MAX_FIRED {
            self.fired.remove(0);
        }
        self.fired.push(Fired { id, fault, recorded, address, effect });
    }

    /// The faults that need no particular descriptor or request, fired if due here.
    fn fire_any(&mut self, at: At) {
        for (id, fault) in self.inject.fire(at, |f| f.site() == Site::Any) {
            if let Fault::PrimaryFaults { sid, addr, count } = fault {
                let rec = FaultRecord::new(sid, addr, Access::Write, FaultReason::WriteDenied);
                let mut recorded = 0u32;
                for _ in 0..count {
                    if !self.record_fault(rec) {
                        break;
                    }
                    recorded = recorded.saturating_add(1);
                }
                let overflow = if self.recording.fsts() & fsts::PFO != 0 { "; PFO set, the rest dropped" } else { "" };
                let effect = format!("{recorded} of {count} fault records for {sid:#06x} at {addr:#x} written{overflow}");
                self.note(id, fault, recorded, Some(addr), effect);
            }
        }
    }

    fn fsts(&self) -> u32 {
        self.recording.fsts() | self.fsts_iq
    }

    fn frcd_index(&self, slot: u64) -> Option<usize> {
        let i = slot.checked_sub(FRCD_BASE)? / regs::FRCD_LEN;
        (i < self.recording.len() as u64).then_some(i as usize)
    }

    /// The 8 bytes at 8-aligned `slot`: 32-bit registers in pairs, as they sit in the map.
    fn slot(&self, slot: u64) -> u64 {
        let pair = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
        match slot {
            regs::VER => u64::from(regs::VERSION),
            regs::CAP => self.cap,
            regs::ECAP => self.ecap,
            // GCMD is write-only and reads 0.
            regs::GCMD => pair(0, self.gsts),
            regs::RTADDR => self.rtaddr,
            regs::CCMD => self.ccmd,
            0x30 => pair(0, self.fsts()),
            regs::FECTL => pair(self.fault_event.ctl, self.fault_event.data),
            regs::FEADDR => pair(self.fault_event.addr, self.fault_event.uaddr),
            regs::IQH => self.iqh,
            regs::IQT => self.iqt,
            regs::IQA => self.iqa,
            0x98 => pair(0, self.ics),
            regs::IECTL => pair(self.inv_event.ctl, self.inv_event.data),
            regs::IEADDR => pair(self.inv_event.addr, self.inv_event.uaddr),
            regs::IQER => self.iqer,
            IVA => self.iva,
            IOTLB_REG => self.iotlb_reg,
            s => match self.frcd_index(s) {
                Some(i) if s % regs::FRCD_LEN == 0 => self.recording.read(i).0,
                Some(i) => self.recording.read(i).1,
                None => 0,
            },
        }
    }

    /// A 4- or 8-byte read at an aligned offset (spec §10.2: registers are accessed as 32 or
    /// 64 bits); anything else reads as all ones, as an unsupported request does.
    pub fn mmio_read(&self, off: u64, size: usize) -> u64 {
        if off >= regs::MMIO_SIZE || !(size == 4 || size == 8) || !off.is_multiple_of(size as u64) {
            return u64::MAX;
        }
        let v = self.slot(off & !7);
        if size == 4 {
            (v >> ((off & 4) << 3)) & 0xffff_ffff
        } else {
            v
        }
    }

    /// A 4- or 8-byte write at an aligned offset; other sizes and offsets are dropped, as are
    /// writes to read-only and unimplemented registers.
    pub fn mmio_write<M: PhysMem + ?Sized>(&mut self, mem: &mut M, off: u64, size: usize, val: u64) {
        if off >= regs::MMIO_SIZE || !(size == 4 || size == 8) || !off.is_multiple_of(size as u64) {
            return;
        }
        let slot = off & !7;
        // The dwords this access writes.
        let (lo, hi) = match (size, off & 4) {
            (8, _) => (Some(val as u32), Some((val >> 32) as u32)),
            (_, 0) => (Some(val as u32), None),
            _ => (None, Some(val as u32)),
        };
        // A 64-bit register after this access (a 4-byte access leaves the other half as it was).
        let merged = |old: u64| {
            let l = lo.map_or(old & 0xffff_ffff, u64::from);
            let h = hi.map_or(old >> 32, u64::from);
            l | h << 32
        };
        match slot {
            regs::GCMD => {
                if let Some(v) = lo {
                    self.gcmd(mem, v);
                }
            }
            // Only legacy mode: TTM (11:10) other than 00 is not supported and reads back 0.
            regs::RTADDR => self.rtaddr = merged(self.rtaddr) & !0xfff,
            regs::CCMD => {
                self.ccmd = merged(self.ccmd);
                if hi.is_some() && self.ccmd & ccmd::ICC != 0 {
                    self.context_command();
                }
            }
            0x30 => {
                if let Some(v) = hi {
                    self.fsts_write(mem, v);
                }
            }
            regs::FECTL => {
                if let Some(v) = lo {
                    if let Some(m) = self.fault_event.write_ctl(v) {
                        self.interrupts.push(Interrupt::Fault(m));
                    }
                }
                if let Some(v) = hi {
                    self.fault_event.data = v;
                }
            }
            regs::FEADDR => {
                if let Some(v) = lo {
                    self.fault_event.addr = v & !3;
                }
                if let Some(v) = hi {
                    self.fault_event.uaddr = v;
                }
            }
            regs::IQT => {
                self.iqt = merged(self.iqt) & regs::IQ_PTR_MASK;
                self.run_queue(mem);
            }
            // DW (256-bit descriptors) only exists in scalable mode.
            regs::IQA => self.iqa = merged(self.iqa) & (iqa::BASE_MASK | iqa::QS_MASK),
            0x98 => {
                if hi.is_some_and(|v| v & regs::ICS_IWC != 0) {
                    self.ics &= !regs::ICS_IWC;
                    self.inv_event.serviced();
                }
            }
            regs::IECTL => {
                if let Some(v) = lo {
                    if let Some(m) = self.inv_event.write_ctl(v) {
                        self.interrupts.push(Interrupt::InvalidationComplete(m));
                    }
                }
                if let Some(v) = hi {
                    self.inv_event.data = v;
                }
            }
            regs::IEADDR => {
                if let Some(v) = lo {
                    self.inv_event.addr = v & !3;
                }
                if let Some(v) = hi {
                    self.inv_event.uaddr = v;
                }
            }
            IVA => self.iva = merged(self.iva) & (!0xfff | iva::IH | iva::AM_MASK),
            IOTLB_REG => {
                self.iotlb_reg = merged(self.iotlb_reg);
                if hi.is_some() && self.iotlb_reg & iotlb::IVT != 0 {
                    self.iotlb_command();
                }
            }
            s => {
                if let (Some(i), Some(v)) = (self.frcd_index(s), hi) {
                    if s % regs::FRCD_LEN == 8 {
                        self.recording.write_hi(i, u64::from(v) << 32);
                        self.maybe_serviced();
                    }
                }
            }
        }
    }

    /// GCMD (spec §11.4.4): TE and QIE hold the written value; SRTP and WBF act when written 1.
    /// Linux writes its whole command image with one one-shot bit added (iommu.c
    /// iommu_set_root_entry: `gcmd | DMA_GCMD_SRTP`) and waits in IOMMU_WAIT_OP for the GSTS bit,
    /// which every command here reaches before the write returns. IRE, SIRTP, CFI, SFL and EAFL
    /// belong to interrupt remapping and advanced fault logging, which the unit lacks (ECAP.IR
    /// and CAP.AFL 0): their status bits stay 0.
    fn gcmd<M: PhysMem + ?Sized>(&mut self, mem: &mut M, v: u32) {
        if v & gcmd::SRTP != 0 {
            // CAP.ESRTPS = 0: latching a root table invalidates no cache, so Linux follows it
            // with global context-cache and IOTLB invalidations (iommu_set_root_entry).
            self.root = self.rtaddr;
            self.gsts |= gcmd::SRTP;
        }
        // WBF: nothing is buffered (CAP.RWBF = 0), WBFS never reads 1.
        if v & gcmd::TE != 0 {
            self.gsts |= gcmd::TE;
        } else {
            self.gsts &= !gcmd::TE;
        }
        let qie = v & gcmd::QIE != 0;
        if qie && self.gsts & gcmd::QIE == 0 {
            self.gsts |= gcmd::QIE;
            // Linux writes IQT = 0 first (dmar.c __dmar_enable_qi); a tail already past the head
            // is fetched at once.
            self.run_queue(mem);
        } else if !qie && self.gsts & gcmd::QIE != 0 {
            // Disabling stops the queue where it is and resets the head (QEMU
            // vtd_handle_gcmd_qie); Linux waits for IQH == IQT first (dmar_disable_qi).
            self.gsts &= !gcmd::QIE;
            self.iqh = 0;
        }
    }

    fn fsts_write<M: PhysMem + ?Sized>(&mut self, mem: &mut M, v: u32) {
        if v & fsts::PFO != 0 {
            self.recording.clear_pfo();
        }
        let stopped = self.fsts_iq & (fsts::IQE | fsts::ITE);
        self.fsts_iq &= !(v & fsts::RW1C);
        // IQER's IQEI and ITESID are valid while IQE and ITE are set (spec §11.4.9.9).
        if stopped & fsts::IQE != 0 && self.fsts_iq & fsts::IQE == 0 {
            self.iqer &= !regs::IQER_IQEI;
        }
        if stopped & fsts::ITE != 0 && self.fsts_iq & fsts::ITE == 0 {
            self.iqer &= !regs::IQER_ITESID;
        }
        self.maybe_serviced();
        // Clearing IQE restarts the queue at the descriptor it stopped at, which Linux has
        // overwritten with its wait descriptor (dmar.c qi_check_fault); clearing ITE restarts it
        // after the aborted wait (spec §6.5.2.10).
        if stopped != 0 && self.fsts_iq & (fsts::IQE | fsts::ITE) == 0 {
            self.run_queue(mem);
        }
    }

    /// Every fault-event condition cleared: nothing is pending (spec §11.4.9.2, IP).
    fn maybe_serviced(&mut self) {
        if self.fsts() & fsts::EVENT == 0 {
            self.fault_event.serviced();
        }
    }

    /// A fault-event condition arose; `before` is FSTS before it. An event is only generated
    /// when no condition was already pending (QEMU vtd_generate_fault_event).
    fn fault_condition(&mut self, before: u32) {
        if before & fsts::EVENT == 0 {
            if let Some(m) = self.fault_event.signal() {
                self.interrupts.push(Interrupt::Fault(m));
            }
        }
    }

    /// Record a primary fault; true if it was written to a fault recording register.
    fn record_fault(&mut self, rec: FaultRecord) -> bool {
        let before = self.fsts();
        match self.recording.record(rec) {
            Recorded::Yes { .. } => {
                self.fault_condition(before);
                true
            }
            Recorded::Overflow => {
                self.fault_condition(before);
                false
            }
            Recorded::Dropped => false,
        }
    }

    /// CCMD with ICC (spec §11.4.6; Linux iommu.c __iommu_flush_context waits for ICC to clear).
    /// While queued invalidation is on, register-based invalidation is not available (spec
    /// §6.5.2): nothing is done and CAIG reports 0.
    fn context_command(&mut self) {
        self.invalidations[3] = self.invalidations[3].wrapping_add(1);
        let cirg = (self.ccmd >> ccmd::CIRG_SHIFT) & 3;
        let caig = if self.gsts & gcmd::QIE != 0 {
            granularity::NONE
        } else {
            let did = self.ccmd as u16;
            let sid = (self.ccmd >> ccmd::SID_SHIFT) as u16;
            let fm = ((self.ccmd >> ccmd::FM_SHIFT) & 3) as u8;
            self.invalidate_context(cirg, did, sid, fm)
        };
        self.ccmd = (self.ccmd & !(ccmd::ICC | 3 << ccmd::CAIG_SHIFT)) | caig << ccmd::CAIG_SHIFT;
    }

    /// The IOTLB register with IVT (spec §11.4.8.1; Linux __iommu_flush_iotlb waits for IVT to
    /// clear and reports "Flush IOTLB failed" when IAIG is 0).
    fn iotlb_command(&mut self) {
        self.invalidations[4] = self.invalidations[4].wrapping_add(1);
        let iirg = (self.iotlb_reg >> iotlb::IIRG_SHIFT) & 3;
        let iaig = if self.gsts & gcmd::QIE != 0 {
            granularity::NONE
        } else {
            let did = (self.iotlb_reg >> iotlb::DID_SHIFT) as u16;
            self.invalidate_iotlb(iirg, did, self.iva & !0xfff, (self.iva & iva::AM_MASK) as u8)
        };
        self.iotlb_reg = (self.iotlb_reg & !(iotlb::IVT | 3 << iotlb::IAIG_SHIFT)) | iaig << iotlb::IAIG_SHIFT;
    }

    /// Drop context-cache entries: globally, of domain `did`, or of the device `sid` with the
    /// function bits FM masks (00 none, 01 bit 2, 10 bits 2:1, 11 bits 2:0). Returns the
    /// granularity performed (0 for the reserved request 0).
    fn invalidate_context(&mut self, g: u64, did: u16, sid: u16, fm: u8) -> u64 {
        match g {
            granularity::GLOBAL => self.ctx_cache.invalidate_all(),
            granularity::DOMAIN => self.ctx_cache.retain(|_, c| c.did() != did),
            granularity::DEVICE_OR_PAGE => {
                let masked = [0u16, 4, 6, 7][usize::from(fm & 3)];
                self.ctx_cache.retain(|s, _| (s ^ sid) & !masked != 0);
            }
            _ => return granularity::NONE,
        }
        g
    }

    /// Drop IOTLB entries: globally, of domain `did`, or of 2^am pages at `addr` in it. A mask
    /// above MAMV invalidates the domain, reported as such (the actual granularity may be
    /// coarser than the request, spec §6.5.1.2).
    fn invalidate_iotlb(&mut self, g: u64, did: u16, addr: u64, am: u8) -> u64 {
        match g {
            granularity::GLOBAL => self.iotlb.invalidate_all(),
            granularity::DOMAIN => self.iotlb.invalidate_domain(did),
            granularity::DEVICE_OR_PAGE if am > MAMV => {
                self.iotlb.invalidate_domain(did);
                return granularity::DOMAIN;
            }
            granularity::DEVICE_OR_PAGE => {
                let len = 1u64 << (12 + u32::from(am));
                self.iotlb.invalidate_range(did, addr & !len.wrapping_sub(1), len);
            }
            _ => return granularity::NONE,
        }
        g
    }

    /// Fetch and run descriptors from IQH to IQT (spec §6.5.2). It stops at an error with IQE set
    /// and IQH at the descriptor that caused it (IQER says why), and goes no further than one
    /// queue's worth per call, so one register write does bounded work.
    fn run_queue<M: PhysMem + ?Sized>(&mut self, mem: &mut M) {
        if self.gsts & gcmd::QIE == 0 || self.fsts_iq & (fsts::IQE | fsts::ITE) != 0 {
            return;
        }
        let size = 0x1000u64 << (self.iqa & iqa::QS_MASK);
        if self.iqt >= size || self.iqh >= size {
            return self.queue_error(iqei::INVALID_TAIL);
        }
        let base = self.iqa & iqa::BASE_MASK;
        for _ in 0..size / 16 {
            if self.iqh == self.iqt {
                break;
            }
            let addr = base.wrapping_add(self.iqh);
            let fetched = mem.read_u64(addr).and_then(|a| Ok((a, mem.read_u64(addr.wrapping_add(8))?)));
            let Ok((qw0, qw1)) = fetched else {
                return self.queue_error(iqei::FETCH_ERROR);
            };
            let decoded = inv::decode(qw0, qw1);
            let wait = matches!(decoded, Ok(Descriptor::Wait { .. }));
            let injected = self.inject.fire_one(At::Command, |f| f.site() == Site::Descriptor || (f.site() == Site::Wait && wait));
            if let Some((id, fault)) = injected {
                if !self.injected_at_descriptor(id, fault, addr) {
                    return;
                }
            } else {
                match decoded {
                    Ok(d) => self.execute(mem, d),
                    Err(code) => return self.queue_error(code),
                }
            }
            self.iqh = self.iqh.wrapping_add(16).checked_rem(size).unwrap_or(0);
            self.inject.count_command();
            self.fire_any(At::Command);
            if self.fsts_iq & fsts::ITE != 0 {
                return;
            }
        }
    }

    /// An injected fault at the descriptor at `addr`; false if the queue stops on it.
    fn injected_at_descriptor(&mut self, id: u32, fault: Fault, addr: u64) -> bool {
        match fault {
            Fault::QueueError => {
                self.queue_error(iqei::FETCH_ERROR);
                let effect = format!(
                    "Invalidation Queue Error (IQEI 2, fetch error) at the descriptor at {addr:#x}; IQH {:#x}, the queue stopped",
                    self.iqh
                );
                self.note(id, fault, 0, Some(addr), effect);
                false
            }
            Fault::WaitLost => {
                self.invalidations[2] = self.invalidations[2].wrapping_add(1);
                self.note(
                    id,
                    fault,
                    0,
                    Some(addr),
                    format!("the wait descriptor at {addr:#x} completed without its status write or interrupt"),
                );
                true
            }
            Fault::Timeout { sid } => {
                // The wait is aborted and the head moves past it (the caller does); fetching
                // stops until ITE is cleared.
                self.invalidations[2] = self.invalidations[2].wrapping_add(1);
                let before = self.fsts();
                self.iqer = (self.iqer & !regs::IQER_ITESID) | u64::from(sid) << regs::IQER_ITESID_SHIFT;
                self.fsts_iq |= fsts::ITE;
                self.fault_condition(before);
                let effect = format!(
                    "Invalidation Time-out Error (ITESID {sid:#06x}): the wait descriptor at {addr:#x} aborted, the queue stopped after it"
                );
                self.note(id, fault, 0, Some(addr), effect);
                true
            }
            Fault::PrimaryFaults { .. } => true,
        }
    }

    fn queue_error(&mut self, code: u64) {
        let before = self.fsts();
        self.iqer = (self.iqer & !regs::IQER_IQEI) | code;
        self.fsts_iq |= fsts::IQE;
        self.fault_condition(before);
    }

    fn execute<M: PhysMem + ?Sized>(&mut self, mem: &mut M, d: Descriptor) {
        let n = &mut self.invalidations[match d {
            Descriptor::ContextCache { .. } => 0,
            Descriptor::Iotlb { .. } => 1,
            Descriptor::Wait { .. } => 2,
        }];
        *n = n.wrapping_add(1);
        match d {
            Descriptor::ContextCache { g, did, sid, fm } => {
                self.invalidate_context(g, did, sid, fm);
            }
            Descriptor::Iotlb { g, did, addr, am, .. } => {
                self.invalidate_iotlb(g, did, addr, am);
            }
            Descriptor::Wait { interrupt, status_write, data, addr } => {
                // The status write is a 32-bit DMA write; one that finds no memory is lost, as
                // an unclaimed write is (the queue goes on).
                if status_write {
                    let _ = mem.write(addr, &data.to_le_bytes());
                }
                // IWC already set: the event is still pending, none is added (QEMU
                // vtd_generate_completion_event).
                if interrupt && self.ics & regs::ICS_IWC == 0 {
                    self.ics |= regs::ICS_IWC;
                    if let Some(m) = self.inv_event.signal() {
                        self.interrupts.push(Interrupt::InvalidationComplete(m));
                    }
                }
            }
        }
    }

    /// Translate a request from `sid` through the caches, walking on a miss; a fault is written
    /// to a fault recording register unless FPD suppresses it. In the returned fault, `recorded`
    /// says whether it was written (false when suppressed, or dropped on overflow).
    pub fn translate<M: PhysMem + ?Sized>(&mut self, mem: &M, sid: u16, iova: u64, access: Access) -> VtdOutcome {
        self.translate_walked(mem, sid, iova, access).0
    }

    /// [`VtdUnit::translate`], and whether the request walked the second-stage tables (an IOTLB
    /// miss; false for an IOTLB hit, pass-through and a fault before the walk).
    pub fn translate_walked<M: PhysMem + ?Sized>(&mut self, mem: &M, sid: u16, iova: u64, access: Access) -> (VtdOutcome, bool) {
        // TE = 0: requests are not remapped.
        if !self.enabled() {
            return (VtdOutcome::Ok(Translation { spa: iova, size_log2: 12, perm: Perm::RW, level: 0 }), false);
        }
        if !self.inject.is_empty() {
            self.fire_any(At::Dma { devid: sid, iova });
        }
        let (mut outcome, walked) = self.translate_cached(mem, sid, iova, access);
        self.inject.count_dma(sid, iova);
        if let VtdOutcome::Fault { record, recorded, .. } = &mut outcome {
            if *recorded {
                *recorded = self.record_fault(*record);
            }
        }
        (outcome, walked)
    }

    /// What the tables in memory say now, bypassing the caches and recording nothing (for tools
    /// and the daemon's hazard check).
    pub fn lookup<M: PhysMem + ?Sized>(&self, mem: &M, sid: u16, iova: u64, access: Access) -> VtdOutcome {
        if !self.enabled() {
            return VtdOutcome::Ok(Translation { spa: iova, size_log2: 12, perm: Perm::RW, level: 0 });
        }
        super::translate(mem, &self.caps, self.root, sid, iova, access)
    }

    fn translate_cached<M: PhysMem + ?Sized>(&mut self, mem: &M, sid: u16, iova: u64, access: Access) -> (VtdOutcome, bool) {
        let ctx = match self.ctx_cache.get(sid) {
            Some(c) => c,
            None => match fetch_context(mem, &self.caps, self.root, sid) {
                Ok(c) => {
                    // CAP.CM = 0: only entries that translate are cached (spec §6.1).
                    if check_context(&self.caps, &c).is_ok() {
                        self.ctx_cache.insert(sid, c);
                    }
                    c
                }
                Err(reason) => {
                    return (VtdOutcome::Fault { record: FaultRecord::new(sid, iova, access, reason), level: None, recorded: true }, false)
                }
            },
        };
        let walks = check_context(&self.caps, &ctx).is_ok() && ctx.translation_type() != TranslationType::PassThrough;
        if walks {
            // A cached translation lacking the right is looked up again in the tables.
            if let Some(t) = self.iotlb.lookup(ctx.did(), iova).filter(|t| t.perm.allows(access)) {
                return (VtdOutcome::Ok(t), false);
            }
            self.walks = self.walks.wrapping_add(1);
        }
        let outcome = translate_with_context(mem, &self.caps, &ctx, sid, iova, access);
        if let (true, VtdOutcome::Ok(t)) = (walks, &outcome) {
            self.iotlb.insert(ctx.did(), iova, t);
        }
        (outcome, walks)
    }
}
