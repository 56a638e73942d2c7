//! The VT-d unit's injected faults (iommu_model::vtd::inject), each seen through the registers
//! as Linux 7.3's intel_iommu reads them (dmar.c qi_check_fault, qi_submit_sync, dmar_fault),
//! and the unit's recovery once software does what the spec asks (VT-d spec §6.5.2.10: clearing
//! IQE or ITE restarts fetching; §7.2.1: clearing F and PFO lets faults be recorded again).

mod vtd_driver;

use iommu_model::inject::When;
use iommu_model::vtd::inject::Fault;
use vtd_driver::*;

const ITE: u64 = 1 << 6;
const WAIT_SW: u64 = 2 << 32 | 1 << 5 | 5;

impl Driver {
    /// qi_submit_sync's writes without its wait: the descriptors and a wait descriptor writing
    /// QI_DONE (2) over 1 at the returned status address; the index of the first descriptor.
    fn post(&mut self, descs: &[(u64, u64)], wait_qw0: u64) -> (u64, u64) {
        let first = self.head;
        let status = STATUS + 0x800 + first;
        self.mem.write(status, &1u32.to_le_bytes()).unwrap();
        for &(a, b) in descs.iter().chain(&[(wait_qw0, status)]) {
            self.mem.write_u64(QUEUE + self.head, a).unwrap();
            self.mem.write_u64(QUEUE + self.head + 8, b).unwrap();
            self.head = (self.head + 16) % 0x1000;
        }
        self.w32(IQT, self.head);
        (first, status)
    }

    fn status(&self, at: u64) -> u32 {
        let mut st = [0u8; 4];
        self.mem.read(at, &mut st).unwrap();
        u32::from_le_bytes(st)
    }

    fn arm(&mut self, id: u32, f: Fault, when: When) {
        self.unit.arm(id, f, when).unwrap();
    }
}

/// IQE at the next descriptor, the first of Linux's next submission: the queue stops with IQH on
/// it and IQEI 2, nothing after it runs, the fault event goes out. qi_check_fault copies the
/// wait descriptor over it and clears IQE; the queue resumes there. The invalidation the bad
/// descriptor carried never happens: the IOTLB keeps the translation.
#[test]
fn queue_error_stops_on_the_descriptor_and_clearing_iqe_resumes() {
    let mut d = Driver::up(true);
    d.unit.take_interrupts();
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000), "cached");
    d.arm(1, Fault::QueueError, When::now());
    assert!(d.unit.take_fired().is_empty(), "not before a descriptor");
    // Unmap 0x5000, then the page-selective invalidation Linux sends.
    d.mem.write_u64(PT + 0x3000 + 5 * 8, 0).unwrap();
    let (first, status) = d.post(&[(0x32 | DID << 16, 0x5000)], WAIT_SW);
    assert_eq!(d.r32(FSTS) & IQE, IQE);
    assert_eq!(d.r64(IQER) & 0xf, 2, "IQEI: descriptor fetch error");
    assert_eq!(d.r32(IQH), first, "IQH on the bad descriptor (qi_check_fault compares it with index)");
    assert_eq!(d.status(status), 1, "the wait behind it did not run");
    assert_eq!(d.unit.take_interrupts(), vec![Interrupt::Fault(Msi { addr: 0xfee0_0000, data: 0x41 })]);
    let fired = d.unit.take_fired();
    assert_eq!((fired.len(), fired[0].id, fired[0].address), (1, 1, Some(QUEUE + first)));
    // More descriptors while IQE is set are not fetched.
    d.w32(IQT, d.head);
    assert_eq!(d.r32(IQH), first);
    // qi_check_fault: memcpy(desc + head, the wait descriptor), writel(DMA_FSTS_IQE).
    d.mem.write_u64(QUEUE + first, WAIT_SW).unwrap();
    d.mem.write_u64(QUEUE + first + 8, status).unwrap();
    d.w32(FSTS, IQE);
    assert_eq!((d.r32(FSTS), d.r64(IQER)), (0, 0));
    assert_eq!(d.r32(IQH), d.head, "resumed and drained");
    assert_eq!(d.status(status), 2);
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000), "the lost invalidation: the IOTLB still maps the unmapped page");
    // Once: the next submission runs, and its invalidation takes.
    d.flush_iotlb_psi(DID, 0x5000, 0);
    assert_eq!(d.dma(0x5000, Access::Write).reason(), Some(FaultReason::WriteDenied));
}

/// The next wait descriptor writes no status and sets no IWC; the queue goes on, and the one
/// after it completes.
#[test]
fn a_lost_wait_completes_silently_and_the_queue_goes_on() {
    let mut d = Driver::up(true);
    d.w32(IECTL, 0);
    d.unit.take_interrupts();
    d.arm(2, Fault::WaitLost, When::now());
    let (_, status) = d.post(&[(0x12, 0)], WAIT_SW | 1 << 4);
    assert_eq!(d.status(status), 1, "no status write");
    assert_eq!(d.r32(ICS), 0, "no IWC");
    assert!(d.unit.take_interrupts().is_empty(), "no completion event");
    assert_eq!(d.r32(IQH), d.head, "the queue went past it");
    assert_eq!(d.r32(FSTS), 0, "and reports nothing: qi_submit_sync polls a status that never comes");
    assert_eq!(d.unit.take_fired().len(), 1);
    d.submit(&[(0x12, 0)]);
}

/// ITE at the next wait: the wait aborted, ITESID set, the fault event; nothing more is fetched
/// until ITE is cleared (qi_check_fault clears it, marks the pending waits QI_ABORT and submits
/// again), then fetching resumes after the aborted wait.
#[test]
fn a_time_out_aborts_the_wait_and_clearing_ite_resumes() {
    let mut d = Driver::up(true);
    d.unit.take_interrupts();
    d.arm(3, Fault::Timeout { sid: SID }, When::now());
    assert_eq!(d.spa(0x5000, Access::Write), Some(0x30_0000));
    d.mem.write_u64(PT + 0x3000 + 5 * 8, 0).unwrap();
    let (_, status) = d.post(&[(0x32 | DID << 16, 0x5000)], WAIT_SW);
    assert_eq!(d.r32(FSTS) & ITE, ITE);
    assert_eq!((d.r64(IQER) >> 32) & 0xffff, u64::from(SID), "ITESID");
    assert_eq!(d.status(status), 1, "the wait was aborted");
    assert_eq!(d.r32(IQH), d.head, "IQH past the aborted wait");
    assert_eq!(d.unit.take_interrupts().len(), 1, "the fault event");
    assert_eq!(d.dma(0x5000, Access::Write).reason(), Some(FaultReason::WriteDenied), "the invalidation before the wait ran");
    // Linux resubmits while ITE may still be set: nothing is fetched until it is cleared.
    let (again, status2) = d.post(&[(0x32 | DID << 16, 0x5000)], WAIT_SW);
    assert_eq!((d.r32(IQH), d.status(status2)), (again, 1));
    d.w32(FSTS, ITE);
    assert_eq!((d.r32(FSTS) & ITE, d.r64(IQER)), (0, 0), "ITE and ITESID cleared");
    assert_eq!((d.r32(IQH), d.status(status2)), (d.head, 2), "fetching resumed");
}

/// A storm of primary faults: the 8 registers fill, PFO drops the rest, one fault event.
/// dmar_fault reads the 8 records from FRI on, clears F and PFO; real faults are recorded
/// again afterwards.
#[test]
fn a_primary_fault_storm_overflows_and_dmar_fault_recovers() {
    let mut d = Driver::up(true);
    d.unit.take_interrupts();
    d.arm(4, Fault::PrimaryFaults { sid: SID, addr: 0xdead_0000, count: 20 }, When::now());
    let fired = d.unit.take_fired();
    assert_eq!((fired.len(), fired[0].recorded), (1, 8), "{fired:?}");
    assert_eq!(d.r32(FSTS) & (PFO | PPF), PFO | PPF);
    assert_eq!(d.unit.take_interrupts().len(), 1, "one fault event: PPF was pending for the rest");
    let records = d.dmar_fault();
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|&r| r == (5, SID, 0xdead_0000, false)), "reason 5, write (T = 0): {records:?}");
    assert_eq!(d.r32(FSTS) & (PFO | PPF), 0);
    assert_eq!(d.dma(0x6000, Access::Write).reason(), Some(FaultReason::WriteDenied));
    assert_eq!(d.dmar_fault(), [(5, SID, 0x6000, false)], "recorded again");
}

/// Triggers: after N descriptors; after N DMA requests of one device; and arming survives a
/// reset of the unit.
#[test]
fn triggers_count_descriptors_and_requests() {
    let mut d = Driver::up(true);
    d.arm(5, Fault::QueueError, When { after_commands: 1, ..When::now() });
    let (first, _) = d.post(&[(0x12, 0)], WAIT_SW);
    assert_eq!(d.r32(IQH), first + 16, "the first descriptor ran, the second (the wait) failed");
    assert_eq!(d.r32(FSTS) & IQE, IQE);
    let mut d = Driver::up(true);
    d.arm(6, Fault::PrimaryFaults { sid: 0x99, addr: 0x1000, count: 1 }, When { after_dma: 2, device: Some(SID), ..When::now() });
    d.unit.reset();
    assert_eq!(d.unit.inject.pending().len(), 1, "kept across a reset");
    // After the reset the unit is off: bring it up again (the tables are still in memory).
    d.w64(RTADDR, ROOT);
    d.w32(GCMD, SRTP);
    d.w32(GCMD, TE);
    for _ in 0..2 {
        d.dma(0x5000, Access::Read);
    }
    d.unit.take_fired();
    d.unit.mmio_read(FSTS, 4);
    assert!(d.unit.inject.pending()[0].dma == 2, "two requests counted");
    d.dma(0x5000, Access::Read);
    assert_eq!(d.unit.take_fired().len(), 1, "the third");
    assert_eq!(d.dmar_fault(), [(5, 0x99, 0x1000, false)]);
}
