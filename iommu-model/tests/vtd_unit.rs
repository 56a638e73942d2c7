//! The VT-d register file driven as Linux 7.3's intel_iommu drives it (dmar.c, iommu.c, cache.c):
//! bring-up (SRTP, queued invalidation, TE), register-based and queued invalidation of the
//! context cache and IOTLB, fault recording read back as dmar_fault reads it, the fault event
//! interrupt, and the invalidation queue's errors. Register offsets and bits are written out
//! here from the spec rather than taken from the model.

mod vtd_driver;

use iommu_model::vtd::{translate, Caps};
use proptest::prelude::*;
use vtd_driver::*;

#[test]
fn linux_reads_what_it_checks() {
    let d = Driver::new();
    let cap = d.cap();
    let ecap = d.r64(ECAP);
    // dmar_validate_one_drhd: not all ones.
    assert!(cap != u64::MAX && ecap != u64::MAX);
    // alloc_iommu: SAGAW non-zero; iommu_calculate_agaw finds 48-bit (bit 2) below 57.
    assert_eq!((cap >> 8) & 0x1f, 0b0110);
    assert_eq!(((cap >> 16) & 0x3f) + 1, 48, "MGAW");
    // map_iommu: the IOTLB and fault registers fit in the one page the DRHD gives.
    assert!(d.iotlb_reg() + 16 <= 0x1000 && d.fault_reg(d.num_fault_regs()) <= 0x1000);
    // Legacy mode, queued invalidation, coherent walks, pass-through; no CM, RWBF, PLMR/PHMR.
    assert_eq!(ecap & (1 << 43), 0, "SMTS");
    assert_eq!(ecap & 0b11, 0b11, "C and QI");
    assert_ne!(ecap & (1 << 6), 0, "PT");
    assert_eq!(cap & 0xf0, 0, "RWBF, PLMR, PHMR, CM");
    assert_eq!(1u64 << (4 + 2 * (cap & 7)), 65536, "cap_ndoms");
    assert_ne!(cap & (1 << 39), 0, "PSI");
    // Reset: fault event masked, nothing enabled.
    assert_eq!(d.r32(FECTL), 1 << 31);
    assert_eq!(d.r32(GSTS), 0);
    assert_eq!(d.r32(0x00), 0x10, "VER 1.0");
    // Unaligned or odd-sized accesses read as all ones; outside the page too.
    assert_eq!(d.unit.mmio_read(0x0a, 4), u64::MAX);
    assert_eq!(d.unit.mmio_read(0x08, 2), u64::MAX);
    assert_eq!(d.unit.mmio_read(0x1000, 4), u64::MAX);
    // 32-bit halves of 64-bit registers.
    assert_eq!(d.r32(CAP) | d.r32(CAP + 4) << 32, cap);
}

#[test]
fn translation_is_off_until_te() {
    let mut d = Driver::new();
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x5000), "TE = 0: untranslated");
    d.w64(RTADDR, ROOT);
    d.w32(GCMD, TE);
    // The root table is only used once SRTP latched it: the latched one is 0, where nothing is
    // present.
    assert_eq!(d.dma(0x5000, Access::Write).reason(), Some(FaultReason::RootNotPresent));
    d.w32(GCMD, TE | SRTP);
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000));
    d.w32(GCMD, 0);
    assert_eq!(d.r32(GSTS) & TE, 0);
    assert_eq!(d.spa(0x5123, Access::Read), Some(0x5123));
}

/// Both invalidation interfaces: a changed mapping is not seen until the IOTLB is invalidated,
/// a changed context entry until the context cache is.
fn caches_hold_until_invalidated(qi: bool) {
    let mut d = Driver::up(qi);
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000));
    assert_eq!(d.unit.walks, 1);
    assert_eq!(d.spa(0x5800, Access::Read), Some(0x30_0800));
    assert_eq!(d.unit.walks, 1, "IOTLB hit");
    let (o, walked) = d.unit.translate_walked(&d.mem, SID, 0x5800, Access::Read);
    assert_eq!((o.translation().map(|t| t.spa), walked), (Some(0x30_0800), false), "a hit says so");
    // The driver remaps IOVA 0x5000 in memory; the unit still uses the cached translation.
    d.mem.write_u64(PT + 0x3000 + 5 * 8, 0x32_0000 | 3).unwrap();
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000), "stale until invalidated");
    // A PSI of another domain or page leaves it.
    assert_eq!(d.flush_iotlb_psi(DID + 1, 0x5000, 0), 3);
    assert_eq!(d.flush_iotlb_psi(DID, 0x7000, 0), 3);
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000));
    // Four pages from 0x4000 (AM 2 aligns the address down) cover it.
    assert_eq!(d.flush_iotlb_psi(DID, 0x6000, 2), 3);
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x32_0000));
    // A write to a read-only page is a fault, not a cache entry.
    assert_eq!(d.dma(0x6000, Access::Write).reason(), Some(FaultReason::WriteDenied));
    assert_eq!(d.spa(0x6000, Access::Read), Some(0x31_0000));

    // The context entry moves the device to domain 2 with no tables (not present): cached.
    d.mem.write_u64(CTX + u64::from(SID) * 16 + 8, 2 | 2 << 8).unwrap();
    d.mem.write_u64(CTX + u64::from(SID) * 16, 0).unwrap();
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x32_0000), "cached context");
    d.flush_context_global();
    assert_eq!(d.dma(0x5000, Access::Write).reason(), Some(FaultReason::ContextNotPresent));
    // Not-present entries are not cached (CM = 0): present again, seen at once.
    d.mem.write_u64(CTX + u64::from(SID) * 16, PT | 1).unwrap();
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x32_0000), "domain 2 walks the same tables");
    assert_eq!(d.unit.context_cache_len(), 1);
}

#[test]
fn register_based_invalidation() {
    caches_hold_until_invalidated(false);
}

#[test]
fn queued_invalidation() {
    caches_hold_until_invalidated(true);
}

#[test]
fn selective_context_invalidation() {
    let mut d = Driver::up(false);
    d.spa(0x5000, Access::Read);
    d.mem.write_u64(CTX + u64::from(SID) * 16, 0).unwrap();
    // Domain-selective for another domain, device-selective for 00:04.1: kept.
    d.w64(CCMD, 1 << 63 | 2 << 61 | 9);
    d.w64(CCMD, 1 << 63 | 3 << 61 | 0x21 << 16 | DID);
    assert!(d.dma(0x5000, Access::Read).translation().is_some());
    // 00:04.1 with FM 01 (SID bit 0 is function bit 0: not masked), FM 11 masks bits 2:0.
    d.w64(CCMD, 1 << 63 | 3 << 61 | 1 << 32 | 0x21 << 16);
    assert!(d.dma(0x5000, Access::Read).translation().is_some());
    d.w64(CCMD, 1 << 63 | 3 << 61 | 3 << 32 | 0x21 << 16);
    assert_eq!((d.r64(CCMD) >> 59) & 3, 3, "CAIG device");
    assert_eq!(d.dma(0x5000, Access::Read).reason(), Some(FaultReason::ContextNotPresent));
    // Domain-selective of domain 1 drops an entry of domain 1.
    d.mem.write_u64(CTX + u64::from(SID) * 16, PT | 1).unwrap();
    d.spa(0x5000, Access::Read);
    d.mem.write_u64(CTX + u64::from(SID) * 16, 0).unwrap();
    d.w64(CCMD, 1 << 63 | 2 << 61 | DID);
    assert_eq!(d.dma(0x5000, Access::Read).reason(), Some(FaultReason::ContextNotPresent));
}

#[test]
fn register_invalidation_reports_its_granularity() {
    let mut d = Driver::up(false);
    // AM above MAMV: the domain is invalidated instead, and IAIG says so.
    let mamv = (d.cap() >> 48) & 0x3f;
    assert_eq!(d.flush_iotlb_psi(DID, 0, mamv), 3);
    assert_eq!(d.flush_iotlb_psi(DID, 0, mamv + 1), 2);
    // With queued invalidation on, the registers are not for invalidating: nothing is done
    // and CAIG / IAIG read 0 ("Flush IOTLB failed").
    let mut q = Driver::up(true);
    q.w64(CCMD, 1 << 63 | 1 << 61);
    assert_eq!((q.r64(CCMD) >> 59) & 3, 0);
    let r = q.iotlb_reg();
    q.w64(r + 8, 1 << 63 | 1 << 60);
    assert_eq!((q.r64(r + 8) >> 57) & 3, 0);
    // A 32-bit write of the low half does not start the command; the high half does.
    let mut d = Driver::up(false);
    d.w32(CCMD, 0);
    d.w32(CCMD + 4, (1 << 31 | 1 << 29) as u64);
    let hi = d.r32(CCMD + 4);
    assert_eq!((hi >> 31, (hi >> 27) & 3), (0, 1), "ICC clear, CAIG 1");
}

#[test]
fn faults_are_recorded_and_read_back_as_dmar_fault_does() {
    let mut d = Driver::up(true);
    assert!(d.unit.take_interrupts().is_empty());
    let o = d.dma(0x6000, Access::Write);
    assert!(matches!(o, VtdOutcome::Fault { recorded: true, level: Some(1), .. }));
    assert_eq!(d.r32(FSTS), PPF, "PPF, FRI 0");
    assert_eq!(d.unit.take_interrupts(), vec![Interrupt::Fault(Msi { addr: 0xfee0_0000, data: 0x41 })]);
    // A second fault while the first is pending: recorded, no second interrupt.
    d.dma(0x9000, Access::Read);
    assert!(d.unit.take_interrupts().is_empty());
    let faults = d.dmar_fault();
    assert_eq!(faults, vec![(0x5, SID, 0x6000, false), (0x6, SID, 0x9000, true)]);
    assert_eq!(d.r32(FSTS), 0, "nothing pending; FRI stays where the pending run began");
    // The next fault interrupts again and starts at register 2.
    d.dma(0x9000, Access::Write);
    assert_eq!(d.r32(FSTS), PPF | 2 << 8);
    assert_eq!(d.unit.take_interrupts().len(), 1);
    assert_eq!(d.dmar_fault(), vec![(0x5, SID, 0x9000, false)]);
}

#[test]
fn fault_records_overflow() {
    let mut d = Driver::up(false);
    let n = d.num_fault_regs();
    for i in 0..n {
        assert!(matches!(d.dma(0x10_0000 + i * 0x1000, Access::Read), VtdOutcome::Fault { recorded: true, .. }));
    }
    // Every register pending: the next fault is dropped and PFO set; later ones too.
    assert!(matches!(d.dma(0x9000, Access::Read), VtdOutcome::Fault { recorded: false, .. }));
    assert_eq!(d.r32(FSTS) & (PFO | PPF), PFO | PPF);
    let faults = d.dmar_fault();
    assert_eq!(faults.len() as u64, n);
    assert_eq!(faults[0].2, 0x10_0000);
    assert_eq!(d.r32(FSTS) & 3, 0, "dmar_fault clears PFO");
    assert!(matches!(d.dma(0x9000, Access::Read), VtdOutcome::Fault { recorded: true, .. }));
}

#[test]
fn fpd_suppresses_recording() {
    let mut d = Driver::up(false);
    d.mem.write_u64(CTX + u64::from(SID) * 16, PT | 1 << 1 | 1).unwrap();
    d.flush_context_global();
    assert!(matches!(d.dma(0x6000, Access::Write), VtdOutcome::Fault { recorded: false, .. }));
    assert_eq!(d.r32(FSTS), 0);
    assert!(d.unit.take_interrupts().is_empty());
}

#[test]
fn fault_event_waits_while_masked() {
    let mut d = Driver::up(false);
    d.w32(FECTL, 1 << 31);
    d.dma(0x6000, Access::Write);
    assert!(d.unit.take_interrupts().is_empty());
    assert_eq!(d.r32(FECTL), 3 << 30, "IM and IP");
    // dmar_msi_unmask writes 0: the pending message goes out.
    d.w32(FECTL, 0);
    assert_eq!(d.unit.take_interrupts(), vec![Interrupt::Fault(Msi { addr: 0xfee0_0000, data: 0x41 })]);
    assert_eq!(d.r32(FECTL), 0);
    // Masked again; serviced before unmasking: nothing is sent.
    d.w32(FECTL, 1 << 31);
    d.dma(0x9000, Access::Read);
    d.dmar_fault();
    d.dmar_fault();
    d.dma(0x9000, Access::Read);
    assert_eq!(d.r32(FECTL), 3 << 30);
    d.dmar_fault();
    assert_eq!(d.r32(FECTL), 1 << 31, "IP cleared once every condition is serviced");
    d.w32(FECTL, 0);
    assert!(d.unit.take_interrupts().is_empty());
}

#[test]
fn queue_error_and_linux_recovery() {
    let mut d = Driver::up(true);
    let bad = d.head;
    // A device-TLB invalidation (ECAP.DT = 0) stops the queue: IQE, IQER invalid type, IQH at it.
    let status = STATUS + 0x800;
    d.mem.write(status, &1u32.to_le_bytes()).unwrap();
    d.mem.write_u64(QUEUE + bad, 0x3).unwrap();
    d.mem.write_u64(QUEUE + bad + 8, 0).unwrap();
    d.mem.write_u64(QUEUE + bad + 16, 2 << 32 | 1 << 5 | 5).unwrap();
    d.mem.write_u64(QUEUE + bad + 24, status).unwrap();
    d.w32(IQT, bad + 32);
    assert_eq!(d.r32(FSTS) & IQE, IQE);
    assert_eq!(d.r64(IQER) & 0xf, 3);
    assert_eq!(d.r32(IQH), bad);
    assert_eq!(d.unit.take_interrupts().len(), 1, "IQE is a fault event");
    let mut st = [0u8; 4];
    d.mem.read(status, &mut st).unwrap();
    assert_eq!(u32::from_le_bytes(st), 1, "nothing after the bad descriptor ran");
    // qi_check_fault: copy the wait descriptor over the bad one, clear IQE; the queue resumes.
    d.mem.write_u64(QUEUE + bad, 2 << 32 | 1 << 5 | 5).unwrap();
    d.mem.write_u64(QUEUE + bad + 8, status).unwrap();
    d.w32(FSTS, IQE);
    d.mem.read(status, &mut st).unwrap();
    assert_eq!(u32::from_le_bytes(st), 2);
    assert_eq!(d.r32(IQH), bad + 32);
    assert_eq!(d.r32(FSTS), 0);
    // A tail beyond the queue (QS 0: one page) is an invalid tail.
    d.w32(IQT, 0x1000);
    assert_eq!((d.r32(FSTS) & IQE, d.r64(IQER) & 0xf), (IQE, 1));
    // A queue outside memory: fetch error.
    let mut d = Driver::up(true);
    d.w32(GCMD, d.gcmd() & !QIE);
    assert_eq!(d.r32(IQH), 0, "disabling resets the head");
    d.w64(IQA, 0x7000_0000);
    d.w32(IQT, 0);
    d.w32(GCMD, d.gcmd() | QIE);
    d.w32(IQT, 0x10);
    assert_eq!((d.r32(FSTS) & IQE, d.r64(IQER) & 0xf), (IQE, 2));
}

#[test]
fn wait_descriptor_interrupt() {
    let mut d = Driver::up(true);
    d.w32(IECTL, 0);
    d.w32(0xa4, 0x42);
    d.w32(0xa8, 0xfee0_1000);
    d.submit(&[(1 << 4 | 5, 0)]);
    assert_eq!(d.r32(ICS), 1, "IWC");
    assert_eq!(d.unit.take_interrupts(), vec![Interrupt::InvalidationComplete(Msi { addr: 0xfee0_1000, data: 0x42 })]);
    // IWC still set: the next IF adds no message.
    d.submit(&[(1 << 4 | 5, 0)]);
    assert!(d.unit.take_interrupts().is_empty());
    d.w32(ICS, 1);
    d.submit(&[(1 << 4 | 5, 0)]);
    assert_eq!(d.unit.take_interrupts().len(), 1);
}

#[test]
fn reset_forgets_everything() {
    let mut d = Driver::up(true);
    d.dma(0x6000, Access::Write);
    d.unit.reset();
    assert_eq!((d.r32(GSTS), d.r32(FSTS), d.r32(FECTL), d.r64(RTADDR)), (0, 0, 1 << 31, 0));
    assert_eq!(d.unit.iotlb_len() + d.unit.context_cache_len(), 0);
}

proptest! {
    /// Whatever the driver does to the tables, after a global invalidation of both caches the
    /// unit translates exactly as an uncached walk of memory does; before it, a translation of
    /// a page the driver changed is either the old or the new one.
    #[test]
    fn cached_agrees_with_memory_after_invalidation(
        qi in any::<bool>(),
        pages in proptest::collection::vec((0u64..16, 0u64..4), 1..24),
        probes in proptest::collection::vec((0u64..16, any::<bool>()), 1..24),
    ) {
        let mut d = Driver::up(qi);
        let caps = Caps::unit();
        for &(page, perm) in &pages {
            let walk = |m: &ByteMem, p: u64, access| translate(m, &caps, ROOT, SID, p << 12, access).translation().map(|t| t.spa);
            let before: Vec<_> = (0..16).map(|p| (walk(&d.mem, p, Access::Read), walk(&d.mem, p, Access::Write))).collect();
            let entry = if perm == 0 { 0 } else { (0x30_0000 + (page << 12)) | perm };
            d.mem.write_u64(PT + 0x3000 + page * 8, entry).unwrap();
            for &(p, write) in &probes {
                let access = if write { Access::Write } else { Access::Read };
                let now = walk(&d.mem, p, access);
                let old = if write { before[p as usize].1 } else { before[p as usize].0 };
                let got = d.spa(p << 12, access);
                if got.is_some() {
                    prop_assert!(got == now || got == old, "page {p}: {got:?}, memory {now:?}, before {old:?}");
                }
            }
            d.flush_context_global();
            d.flush_iotlb_global();
            for &(p, write) in &probes {
                let access = if write { Access::Write } else { Access::Read };
                prop_assert_eq!(d.spa(p << 12, access), walk(&d.mem, p, access));
            }
            d.dmar_fault();
        }
    }
}

proptest! {
    /// Arbitrary register traffic and requests over arbitrary memory (what the `vtd_unit` fuzz
    /// target does at length): no panic, caches bounded, at most two messages per access.
    #[test]
    fn arbitrary_traffic_is_survived(
        memory in proptest::collection::vec(any::<u8>(), 0..0x3000),
        ops in proptest::collection::vec((0u64..0x1000, 0u8..4, any::<u64>(), any::<u16>()), 1..64),
    ) {
        let mut mem = ByteMem::from_bytes(0, memory);
        mem.bytes.resize(0x1_0000, 0);
        let mut unit = VtdUnit::default();
        for (off, kind, val, sid) in ops {
            match kind {
                0 => unit.mmio_write(&mut mem, off & !7, 8, val),
                1 => unit.mmio_write(&mut mem, off & !3, 4, val),
                2 => {
                    let _ = unit.mmio_read(off, 4);
                }
                _ => {
                    let _ = unit.translate(&mem, sid, val, if val & 1 == 0 { Access::Read } else { Access::Write });
                }
            }
            prop_assert!(unit.iotlb_len() <= iommu_model::iotlb::CAPACITY);
            prop_assert!(unit.take_interrupts().len() <= 2);
        }
    }
}
