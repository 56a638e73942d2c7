//! Linux 7.3's intel_iommu as the VT-d unit tests play it: its bring-up, qi_submit_sync and
//! dmar_fault, with register offsets and bits written out from the spec rather than taken from
//! the model. Shared by vtd_unit.rs and vtd_inject.rs.
#![allow(dead_code)]

pub use iommu_model::mem::{ByteMem, PhysMem};
pub use iommu_model::vtd::event::Msi;
pub use iommu_model::vtd::unit::{Interrupt, VtdUnit};
pub use iommu_model::vtd::{FaultReason, VtdOutcome};
pub use iommu_model::walk::Access;

pub const CAP: u64 = 0x08;
pub const ECAP: u64 = 0x10;
pub const GCMD: u64 = 0x18;
pub const GSTS: u64 = 0x1c;
pub const RTADDR: u64 = 0x20;
pub const CCMD: u64 = 0x28;
pub const FSTS: u64 = 0x34;
pub const FECTL: u64 = 0x38;
pub const FEDATA: u64 = 0x3c;
pub const FEADDR: u64 = 0x40;
pub const IQH: u64 = 0x80;
pub const IQT: u64 = 0x88;
pub const IQA: u64 = 0x90;
pub const ICS: u64 = 0x9c;
pub const IECTL: u64 = 0xa0;
pub const IQER: u64 = 0xb0;

pub const TE: u64 = 1 << 31;
pub const SRTP: u64 = 1 << 30;
pub const QIE: u64 = 1 << 26;
pub const PPF: u64 = 1 << 1;
pub const PFO: u64 = 1 << 0;
pub const IQE: u64 = 1 << 4;

// Memory: root table, context table for bus 0, second-stage tables for domain 1, the queue.
pub const ROOT: u64 = 0x1000;
pub const CTX: u64 = 0x2000;
pub const PT: u64 = 0x10_0000; // 4-level: L4 here, L3 +0x1000, L2 +0x2000, L1 +0x3000
pub const QUEUE: u64 = 0x20_0000;
pub const STATUS: u64 = 0x21_0000;
pub const SID: u16 = 0x20; // 00:04.0
pub const DID: u64 = 1;

pub struct Driver {
    pub unit: VtdUnit,
    pub mem: ByteMem,
    /// The next free slot of the queue, as Linux's qi->free_head.
    pub head: u64,
    pub qi: bool,
}

impl Driver {
    pub fn r32(&self, off: u64) -> u64 {
        self.unit.mmio_read(off, 4)
    }
    pub fn r64(&self, off: u64) -> u64 {
        self.unit.mmio_read(off, 8)
    }
    pub fn w32(&mut self, off: u64, v: u64) {
        self.unit.mmio_write(&mut self.mem, off, 4, v);
    }
    pub fn w64(&mut self, off: u64, v: u64) {
        self.unit.mmio_write(&mut self.mem, off, 8, v);
    }

    pub fn cap(&self) -> u64 {
        self.r64(CAP)
    }
    pub fn fault_reg(&self, i: u64) -> u64 {
        ((self.cap() >> 24) & 0x3ff) * 16 + i * 16
    }
    pub fn num_fault_regs(&self) -> u64 {
        ((self.cap() >> 40) & 0xff) + 1
    }
    pub fn iotlb_reg(&self) -> u64 {
        ((self.r64(ECAP) >> 8) & 0x3ff) * 16
    }

    /// A unit and memory with domain 1's 4-level tables for 00:04.0 (IOVA 0x5000 -> 0x30_0000
    /// read-write, 0x6000 -> 0x31_0000 read-only), not yet enabled.
    pub fn new() -> Driver {
        let mut mem = ByteMem::new(0, 0x40_0000);
        mem.write_u64(ROOT, CTX | 1).unwrap();
        mem.write_u64(CTX + u64::from(SID) * 16, PT | 1).unwrap();
        mem.write_u64(CTX + u64::from(SID) * 16 + 8, 2 | DID << 8).unwrap();
        for l in 0..3 {
            mem.write_u64(PT + l * 0x1000, (PT + (l + 1) * 0x1000) | 3).unwrap();
        }
        mem.write_u64(PT + 0x3000 + 5 * 8, 0x30_0000 | 3).unwrap();
        mem.write_u64(PT + 0x3000 + 6 * 8, 0x31_0000 | 1).unwrap();
        Driver { unit: VtdUnit::default(), mem, head: 0, qi: false }
    }

    /// Linux's bring-up: dmar_fault + dmar_enable_qi (qi: true), iommu_set_root_entry with the
    /// global flushes, dmar_set_interrupt's MSI, iommu_enable_translation.
    pub fn up(qi: bool) -> Driver {
        let mut d = Driver::new();
        if qi {
            d.w32(IQT, 0);
            d.w64(IQA, QUEUE);
            d.w32(GCMD, QIE);
            assert_ne!(d.r32(GSTS) & QIE, 0, "QIES");
            d.qi = true;
        }
        d.w64(RTADDR, ROOT);
        d.w32(GCMD, d.gcmd() | SRTP);
        assert_ne!(d.r32(GSTS) & SRTP, 0, "RTPS");
        d.flush_context_global();
        d.flush_iotlb_global();
        d.w32(FEDATA, 0x41);
        d.w32(FEADDR, 0xfee0_0000);
        d.w32(FECTL, 0);
        d.w32(GCMD, d.gcmd() | TE);
        assert_ne!(d.r32(GSTS) & TE, 0, "TES");
        d
    }

    /// The command image Linux keeps in iommu->gcmd.
    pub fn gcmd(&self) -> u64 {
        self.r32(GSTS) & (TE | QIE)
    }

    /// qi_submit_sync: the descriptors, a wait descriptor writing QI_DONE (2), the tail; then
    /// the status must be done.
    pub fn submit(&mut self, descs: &[(u64, u64)]) {
        let status = STATUS + self.head;
        self.mem.write(status, &1u32.to_le_bytes()).unwrap();
        for &(a, b) in descs.iter().chain(&[(2 << 32 | 1 << 5 | 5, status)]) {
            self.mem.write_u64(QUEUE + self.head, a).unwrap();
            self.mem.write_u64(QUEUE + self.head + 8, b).unwrap();
            self.head = (self.head + 16) % 0x1000;
        }
        self.w32(IQT, self.head);
        let mut st = [0u8; 4];
        self.mem.read(status, &mut st).unwrap();
        assert_eq!(u32::from_le_bytes(st), 2, "wait descriptor status written");
        assert_eq!(self.r32(IQH), self.head, "queue drained");
    }

    pub fn flush_context_global(&mut self) {
        if self.qi {
            self.submit(&[(0x11, 0)]);
        } else {
            self.w64(CCMD, 1 << 63 | 1 << 61);
            assert_eq!(self.r64(CCMD) >> 63, 0, "ICC cleared");
            assert_eq!((self.r64(CCMD) >> 59) & 3, 1, "CAIG global");
        }
    }

    pub fn flush_iotlb_global(&mut self) {
        if self.qi {
            self.submit(&[(0x12, 0)]);
        } else {
            let r = self.iotlb_reg();
            self.w64(r + 8, 1 << 63 | 1 << 60);
            assert_eq!(self.r64(r + 8) >> 63, 0, "IVT cleared");
            assert_eq!((self.r64(r + 8) >> 57) & 3, 1, "IAIG global");
        }
    }

    /// A page-selective IOTLB invalidation of 2^am pages at addr in domain `did`.
    pub fn flush_iotlb_psi(&mut self, did: u64, addr: u64, am: u64) -> u64 {
        if self.qi {
            self.submit(&[(0x32 | did << 16, addr | am)]);
            3
        } else {
            let r = self.iotlb_reg();
            self.w64(r, addr | am);
            self.w64(r + 8, 1 << 63 | 3 << 60 | did << 32);
            (self.r64(r + 8) >> 57) & 3
        }
    }

    pub fn dma(&mut self, iova: u64, access: Access) -> VtdOutcome {
        self.unit.translate(&self.mem, SID, iova, access)
    }

    pub fn spa(&mut self, iova: u64, access: Access) -> Option<u64> {
        self.dma(iova, access).translation().map(|t| t.spa)
    }

    /// dmar_fault: from FRI, each register with F: read, clear F; then clear PFO/PPF.
    pub fn dmar_fault(&mut self) -> Vec<(u8, u16, u64, bool)> {
        let mut out = Vec::new();
        let fsts = self.r32(FSTS);
        if fsts & PPF == 0 {
            return out;
        }
        let mut i = (fsts >> 8) & 0xff;
        loop {
            let reg = self.fault_reg(i);
            let hi = self.r32(reg + 12);
            if hi & (1 << 31) == 0 {
                break;
            }
            let sid = self.r32(reg + 8) as u16;
            let addr = self.r64(reg) & !0xfff;
            out.push(((hi & 0xff) as u8, sid, addr, hi & (1 << 30) != 0));
            self.w32(reg + 12, 1 << 31);
            i = (i + 1) % self.num_fault_regs();
        }
        self.w32(FSTS, PFO | PPF | 1 << 7);
        out
    }
}
