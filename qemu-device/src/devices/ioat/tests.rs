//! The engine driven as Linux's ioatdma drives it (the register sequences of init.c and dma.c),
//! over guest memory in a `ByteMem` and the real secure IOMMU translating through AMD-Vi tables.

use super::regs::{chan, chancmd, chanctrl, chanerr, chansts, ctl, global, intrctrl, Descriptor};
use super::*;
use crate::testing::Collect;
use crate::testing::Irqs;
use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::Dte;
use iommu_model::amdvi::mmio::{self, control};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::Perm;
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

const RID: u16 = 0x30;
const RAM: u64 = 16 << 20;
const EVENT_LOG: u64 = 0x4000;
/// The ring (16 descriptors) and the completion word, as dma_alloc_coherent would place them.
const RING: u64 = 0x1000_0000;
const RING_SPA: u64 = 0x20_0000;
const COMPLETION: u64 = 0x1100_0000;
const COMPLETION_SPA: u64 = 0x21_0000;
const RING_LEN: u64 = 16;
const SRC: u64 = 0x5000_0000;
const SRC_SPA: u64 = 0x30_0000;
const DST: u64 = 0x6000_0000;
const DST_SPA: u64 = 0x40_0000;

struct Shared {
    mem: ByteMem,
    secure: Mutex<SecureIommu>,
    pt: V1Builder,
}

struct Rig {
    dev: Ioat,
    shared: Arc<Mutex<Shared>>,
    jobs: crossbeam_channel::Receiver<Job>,
    events: Arc<Collect>,
    irqs: Arc<Irqs>,
    /// The driver's ring indices (dma.h: head, issued) and its DMACOUNT.
    head: u64,
    dmacount: u16,
}

fn rig() -> Rig {
    let mut mem = ByteMem::new(0, RAM as usize);
    let events = Arc::new(Collect::default());
    let pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).unwrap();
    mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
    let mut s = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
    s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
    s.bar0_write(&mut mem, mmio::EVENT_LOG_BASE, 8, EVENT_LOG | 8 << 56);
    s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN | control::EVENT_LOG_EN);
    let shared = Arc::new(Mutex::new(Shared { mem, secure: Mutex::new(s), pt }));
    let irqs = Arc::new(Irqs::default());
    let (sh, ev, ir) = (shared.clone(), events.clone(), irqs.clone());
    let runner: ChannelRunner = Arc::new(move |engine: &Mutex<Engine>, ch: usize| {
        let mut g = lock(&sh);
        let g = &mut *g;
        run_channel(RID, engine, ch, &g.secure, &mut g.mem, ev.as_ref(), ir.as_ref())
    });
    let (tx, rx) = crossbeam_channel::bounded(8);
    let dev = Ioat::with_runner(RID, runner, irqs.clone(), events.clone(), tx);
    let mut r = Rig { dev, shared, jobs: rx, events, irqs, head: 0, dmacount: 0 };
    r.map(RING, RING_SPA, Perm::RW);
    r.map(COMPLETION, COMPLETION_SPA, Perm::RW);
    for i in 0..4 {
        r.map(SRC + i * 0x1000, SRC_SPA + i * 0x1000, Perm::RW);
        r.map(DST + i * 0x1000, DST_SPA + i * 0x1000, Perm::RW);
    }
    r
}

fn base(ch: usize) -> u64 {
    0x80 * (ch as u64 + 1)
}

impl Rig {
    fn map(&mut self, iova: u64, spa: u64, perm: Perm) {
        let mut g = lock(&self.shared);
        let g = &mut *g;
        g.pt.map(&mut g.mem, iova, spa, 12, perm).unwrap();
    }
    fn w(&mut self, off: u64, v: u64, n: usize) {
        self.dev.bar_write(0, off, &v.to_le_bytes()[..n]);
    }
    fn r(&mut self, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b[..n]);
        u64::from_le_bytes(b)
    }
    /// Run queued jobs as the DMA worker does.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(job) = self.jobs.try_recv() {
            job();
            n += 1;
        }
        n
    }
    fn mem_u64(&self, spa: u64) -> u64 {
        lock(&self.shared).mem.read_u64(spa).unwrap()
    }
    fn write_mem(&self, spa: u64, data: &[u8]) {
        lock(&self.shared).mem.write(spa, data).unwrap();
    }
    fn read_mem(&self, spa: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        lock(&self.shared).mem.read(spa, &mut b).unwrap();
        b
    }
    fn chansts(&mut self, ch: usize) -> u64 {
        self.r(base(ch) + chan::CHANSTS, 8)
    }
    fn events_of(&self, ty: &str) -> Vec<serde_json::Value> {
        lock(&self.events.0).iter().filter(|e| e["type"] == ty).cloned().collect()
    }

    /// dma.c, ioat_reset_hw: quiesce (suspend an active or idle channel and wait), clear
    /// CHANERR, reset and wait for CHANCMD.RESET to clear.
    fn reset_hw(&mut self, ch: usize) {
        let st = self.chansts(ch) & chansts::STATUS;
        if st == chansts::ACTIVE || st == chansts::DONE {
            self.w(base(ch) + chan::CHANCMD, u64::from(chancmd::SUSPEND), 1);
        }
        self.drain();
        let st = self.chansts(ch) & chansts::STATUS;
        assert!(st != chansts::ACTIVE && st != chansts::DONE, "quiesced: {st}");
        let err = self.r(base(ch) + chan::CHANERR, 4);
        self.w(base(ch) + chan::CHANERR, err, 4);
        self.w(base(ch) + chan::CHANCMD, u64::from(chancmd::RESET), 1);
        assert_eq!(self.r(base(ch) + chan::CHANCMD, 1) as u8 & chancmd::RESET, 0, "reset done");
    }

    /// The ring's descriptor `i`, linked to the next (dma.c, ioat_alloc_ring).
    fn desc_addr(i: u64) -> (u64, u64) {
        let i = i % RING_LEN;
        (RING + i * 64, RING_SPA + i * 64)
    }
    fn put(&mut self, i: u64, mut d: Descriptor) {
        d.next = U64::new(Self::desc_addr(i + 1).0);
        self.write_mem(Self::desc_addr(i).1, d.as_bytes());
    }

    /// init.c, ioat_alloc_chan_resources: CHANCTRL, CHANCMP as two dwords, then
    /// __ioat_start_null_desc: a NULL descriptor with interrupt and completion write, CHAINADDR
    /// as two dwords, DMACOUNT.
    fn alloc(&mut self, ch: usize) {
        self.w(base(ch) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
        self.w(base(ch) + chan::CHANCMP, COMPLETION & 0xffff_ffff, 4);
        self.w(base(ch) + chan::CHANCMP + 4, COMPLETION >> 32, 4);
        self.head = 0;
        self.dmacount = 0;
        self.start_null(ch);
    }
    fn start_null(&mut self, ch: usize) {
        let at = self.head;
        self.put(at, Descriptor::new(1, ctl::NULL | ctl::INT_EN | ctl::COMPL_WRITE, 0, 0));
        let addr = Self::desc_addr(at).0;
        self.w(base(ch) + chan::CHAINADDR, addr & 0xffff_ffff, 4);
        self.w(base(ch) + chan::CHAINADDR + 4, addr >> 32, 4);
        self.head += 1;
        self.issue(ch, 1);
    }
    /// dma.c, __ioat_issue_pending.
    fn issue(&mut self, ch: usize, n: u16) {
        self.dmacount = self.dmacount.wrapping_add(n);
        let v = u64::from(self.dmacount);
        self.w(base(ch) + chan::DMACOUNT, v, 2);
    }
    /// prep.c, ioat_dma_prep_memcpy_lock for one descriptor, with DMA_PREP_INTERRUPT.
    fn memcpy(&mut self, ch: usize, src: u64, dst: u64, len: u32) -> u64 {
        let at = self.head;
        self.put(at, Descriptor::new(len, ctl::INT_EN | ctl::COMPL_WRITE, src, dst));
        self.head += 1;
        self.issue(ch, 1);
        Self::desc_addr(at).0
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

#[test]
fn probe_reads_what_ioatdma_checks() {
    let mut r = rig();
    assert_eq!(r.dev.ids().vendor, 0x8086);
    assert_eq!(r.dev.ids().device, 0x2021, "PCI_DEVICE_ID_INTEL_IOAT_SKX");
    assert_eq!(r.r(global::CBVER, 1), 0x33, "version >= 3.0 or ioat_pci_probe refuses");
    assert_eq!(r.r(global::CHANCNT, 1) & 0x1f, CHANNELS as u64);
    assert_eq!(r.r(global::XFERCAP, 1) & 0x1f, 20, "non-zero or no channel is enumerated");
    assert_eq!(r.r(global::DMACAPABILITY, 4), 0, "no XOR, PQ, DCA, DWBES, DPS: none implemented");
    assert_eq!(r.r(global::DCAOFFSET, 2), 0);
    assert_eq!(r.r(global::PERPORTOFFSET, 2), 0x80);
    assert_eq!(r.dev.msix_vectors(), CHANNELS as u16, "one MSI-X vector per channel");
    // Byte, word and dword views of one register agree.
    r.w(base(1) + chan::CHANCMP, 0x1122_3344_5566_7788, 8);
    assert_eq!(r.r(base(1) + chan::CHANCMP + 4, 4), 0x1122_3344);
    assert_eq!(r.r(base(1) + chan::CHANCMP + 2, 2), 0x5566);
    assert_eq!(r.r(base(0) + chan::CHANCMP, 8), 0, "channels are separate");
    assert_eq!(r.r(0x80 * (CHANNELS as u64 + 1), 8), 0, "past the last channel");
}

#[test]
fn channel_starts_as_alloc_chan_resources_checks() {
    let mut r = rig();
    r.w(global::INTRCTRL, u64::from(intrctrl::MASTER_INT_EN | intrctrl::MSIX_VECTOR_CONTROL), 1);
    for ch in 0..CHANNELS {
        r.reset_hw(ch);
    }
    r.alloc(0);
    // "check that we got off the ground": active or idle right after the DMACOUNT write.
    assert_eq!(r.chansts(0) & chansts::STATUS, chansts::ACTIVE);
    assert_eq!(r.drain(), 1, "one job for the doorbell");
    let null = Rig::desc_addr(0).0;
    assert_eq!(r.chansts(0), null | chansts::DONE);
    assert_eq!(r.mem_u64(COMPLETION_SPA), null | chansts::DONE, "CHANSTS written to CHANCMP");
    assert_eq!(*lock(&r.irqs.0), [0], "channel 0's vector");
    assert_eq!(r.r(base(0) + chan::CHANCTRL, 2) as u16 & chanctrl::INT_REARM, 0, "the arm is used up");
    assert_eq!(r.r(base(0) + chan::CDAR, 8), null);
}

#[test]
fn memcpy_chain_lands_and_completes_in_order() {
    let mut r = rig();
    r.w(global::INTRCTRL, u64::from(intrctrl::MASTER_INT_EN | intrctrl::MSIX_VECTOR_CONTROL), 1);
    r.reset_hw(1);
    r.alloc(1);
    r.drain();
    let data = pattern(0x3000, 5);
    r.write_mem(SRC_SPA, &data);
    // Three descriptors submitted before one doorbell (ioat_pending_level), the middle one
    // without completion write or interrupt, as a split memcpy's first parts are.
    let a = Rig::desc_addr(r.head).0;
    r.put(r.head, Descriptor::new(0x1000, 0, SRC, DST));
    r.put(r.head + 1, Descriptor::new(0x1800, ctl::COMPL_WRITE, SRC + 0x1000, DST + 0x1000));
    r.put(r.head + 2, Descriptor::new(0x800, ctl::COMPL_WRITE | ctl::INT_EN | ctl::FENCE, SRC + 0x2800, DST + 0x2800));
    r.head += 3;
    // Re-armed by the cleanup tasklet of the NULL descriptor's interrupt.
    r.w(base(1) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    r.issue(1, 3);
    r.drain();
    assert_eq!(r.read_mem(DST_SPA, 0x3000), data);
    let last = a + 128;
    assert_eq!(r.chansts(1), last | chansts::DONE);
    assert_eq!(r.mem_u64(COMPLETION_SPA), last | chansts::DONE);
    assert_eq!(*lock(&r.irqs.0), [1, 1], "NULL, then the last copy; on channel 1's vector");
    assert_eq!(r.r(base(1) + chan::DMACOUNT, 2), 4);
    // The ring wraps through `next` (16 descriptors): 20 more single-page copies.
    for i in 0..20u64 {
        r.memcpy(1, SRC + (i % 3) * 0x1000, DST + 0x3000, 0x1000);
    }
    r.drain();
    assert_eq!(r.read_mem(DST_SPA + 0x3000, 0x1000), data[0x1000..0x2000], "the last copy (i = 19) read page 1");
    assert_eq!(r.chansts(1) & chansts::STATUS, chansts::DONE);
    assert_eq!(r.chansts(1) & chansts::COMPLETED_DESCRIPTOR_ADDR, Rig::desc_addr(r.head - 1).0);
    assert!(r.events_of("translation_fault").is_empty());
}

#[test]
fn a_refused_source_halts_with_read_data_error_and_linux_recovers() {
    let mut r = rig();
    r.w(global::INTRCTRL, u64::from(intrctrl::MASTER_INT_EN), 1);
    r.reset_hw(0);
    r.alloc(0);
    r.drain();
    let null = Rig::desc_addr(0).0;
    r.w(base(0) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    r.write_mem(DST_SPA, &[0x5a; 64]);
    // A source page that is not mapped, then a good copy behind it.
    r.memcpy(0, 0x7000_0000, DST, 64);
    r.memcpy(0, SRC, DST + 64, 64);
    r.drain();
    assert_eq!(r.chansts(0), null | chansts::HALTED, "completed address is the last good descriptor");
    assert_eq!(r.r(base(0) + chan::CHANERR, 4) as u32, chanerr::READ_DATA_ERR, "one bit, or ioat_eh would BUG");
    assert_eq!(r.mem_u64(COMPLETION_SPA), null | chansts::HALTED, "error completion (CHANCTRL.ERR_COMPLETION_EN)");
    assert_eq!(*lock(&r.irqs.0), [0, 0], "error interrupt (CHANCTRL.ERR_INT_EN)");
    assert_eq!(r.read_mem(DST_SPA, 64), [0x5a; 64], "nothing moved");
    assert_eq!(r.mem_u64(DST_SPA + 64), 0, "the channel stopped at the error");
    let f = r.events_of("translation_fault");
    assert_eq!((f.len(), f[0]["devid"].as_str(), f[0]["iova"].as_str()), (1, Some("00:06.0"), Some("0x70000000")), "logged by the IOMMU");
    let h = r.events_of("ioat_halted");
    assert_eq!((h[0]["error"].as_str(), h[0]["refusal"].as_str()), (Some("read data error"), Some("IO_PAGE_FAULT")));
    // A halted channel runs nothing, whatever DMACOUNT says.
    r.issue(0, 0);
    assert_eq!(r.drain(), 0);
    // dma.c, ioat_eh with abort: reset the channel, write CHANERR back, restart with a NULL
    // descriptor at the head (ioat_restart_channel: CHANCMP again, quiesce, new chain).
    r.reset_hw(0);
    assert_eq!(r.r(base(0) + chan::CHANERR, 4), 0, "cleared by the write-back");
    r.w(base(0) + chan::CHANCMP, COMPLETION & 0xffff_ffff, 4);
    r.w(base(0) + chan::CHANCMP + 4, COMPLETION >> 32, 4);
    r.dmacount = 0;
    r.w(base(0) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    r.start_null(0);
    r.drain();
    assert_eq!(r.chansts(0), Rig::desc_addr(r.head - 1).0 | chansts::DONE, "running again");
    let data = pattern(64, 9);
    r.write_mem(SRC_SPA, &data);
    r.memcpy(0, SRC, DST, 64);
    r.drain();
    assert_eq!(r.read_mem(DST_SPA, 64), data);
}

#[test]
fn refused_destination_descriptor_and_completion_each_halt_with_their_bit() {
    // A read-only destination: write data error, destination untouched.
    let mut r = rig();
    r.map(0x6100_0000, DST_SPA + 0x3000, Perm::new(true, false));
    r.reset_hw(0);
    r.alloc(0);
    r.drain();
    r.write_mem(SRC_SPA, &pattern(0x2000, 1));
    // Two destination pages: the first writable, the second not. Nothing moves.
    r.map(0x6100_1000 - 0x1000, DST_SPA + 0x2000, Perm::RW);
    r.memcpy(0, SRC, 0x6100_0000 - 0x1000, 0x2000);
    r.drain();
    assert_eq!(r.r(base(0) + chan::CHANERR, 4) as u32, chanerr::WRITE_DATA_ERR);
    assert_eq!(r.read_mem(DST_SPA + 0x2000, 0x2000), vec![0; 0x2000], "no page of the copy moved");
    assert_eq!(r.events_of("translation_fault").len(), 1, "the read-only page, logged once");

    // The descriptor fetch: next descriptor address error. Then a misaligned chain address.
    let mut r = rig();
    r.reset_hw(0);
    r.w(base(0) + chan::CHANCMP, COMPLETION, 8);
    r.w(base(0) + chan::CHAINADDR, 0x7700_0000, 8);
    r.w(base(0) + chan::DMACOUNT, 1, 2);
    r.drain();
    assert_eq!((r.chansts(0) & chansts::STATUS, r.r(base(0) + chan::CHANERR, 4) as u32), (chansts::HALTED, chanerr::NEXT_ADDR_ERR));
    r.reset_hw(0);
    r.w(base(0) + chan::CHAINADDR, RING + 8, 8);
    r.w(base(0) + chan::DMACOUNT, 1, 2);
    r.drain();
    assert_eq!(r.r(base(0) + chan::CHANERR, 4) as u32, chanerr::CHAIN_ADDR_VALUE_ERR);

    // Zero, too long, an XOR, a page break: size and control errors, each after a reset.
    for (d, bit) in [
        (Descriptor::new(0, 0, SRC, DST), chanerr::LENGTH_ERR),
        (Descriptor::new((1 << XFERCAP_LOG) + 1, 0, SRC, DST), chanerr::LENGTH_ERR),
        (Descriptor::new(64, 0x87 << 24, SRC, DST), chanerr::CONTROL_ERR),
        (Descriptor::new(64, ctl::SRC_BRK, SRC, DST), chanerr::CONTROL_ERR),
    ] {
        r.reset_hw(0);
        r.head = 0;
        r.put(0, d);
        r.w(base(0) + chan::CHAINADDR, RING, 8);
        r.w(base(0) + chan::DMACOUNT, 1, 2);
        r.drain();
        assert_eq!(r.r(base(0) + chan::CHANERR, 4) as u32, bit, "{d:?}");
    }

    // The completion write-back refused (CHANCMP unmapped): completion address error.
    let mut r = rig();
    r.reset_hw(0);
    r.w(base(0) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    r.w(base(0) + chan::CHANCMP, 0x7800_0000, 8);
    r.start_null(0);
    r.drain();
    assert_eq!((r.chansts(0) & chansts::STATUS, r.r(base(0) + chan::CHANERR, 4) as u32), (chansts::HALTED, chanerr::COMPLETION_ADDR_ERR));
    assert_eq!(r.events_of("ioat_halted")[0]["error"], "completion address error");
}

#[test]
fn interrupts_wait_for_the_arm_and_the_master_enable() {
    let mut r = rig();
    r.reset_hw(0);
    r.alloc(0);
    r.drain();
    assert!(lock(&r.irqs.0).is_empty(), "INTRCTRL.MASTER_INT_EN off");
    assert_eq!(r.r(global::ATTNSTATUS, 4), 1, "channel 0 wants attention");
    assert_eq!(r.r(global::INTRCTRL, 1) as u8, intrctrl::INT_STATUS);
    r.w(global::INTRCTRL, u64::from(intrctrl::MASTER_INT_EN), 1);
    assert_eq!(*lock(&r.irqs.0), [0], "held until interrupts were on");
    r.memcpy(0, SRC, DST, 8);
    r.drain();
    assert_eq!(lock(&r.irqs.0).len(), 1, "not re-armed: held");
    r.w(base(0) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    assert_eq!(*lock(&r.irqs.0), [0, 0], "fires at the re-arm (dma.c, ioat_cleanup_event)");
    // A copy without DMA_PREP_INTERRUPT completes silently.
    r.w(base(0) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    r.put(r.head, Descriptor::new(8, ctl::COMPL_WRITE, SRC, DST));
    r.head += 1;
    r.issue(0, 1);
    r.drain();
    assert_eq!(lock(&r.irqs.0).len(), 2);
    // Single-vector mode (MSI): channel 1 interrupts on vector 0, and ATTNSTATUS names it until
    // its cleanup re-arms it.
    r.reset_hw(1);
    r.alloc(1);
    r.drain();
    assert_eq!(*lock(&r.irqs.0), [0, 0, 0]);
    assert_eq!(r.r(global::ATTNSTATUS, 4), 0b10);
    assert_eq!(r.r(global::INTRCTRL, 1) as u8, intrctrl::MASTER_INT_EN | intrctrl::INT_STATUS | intrctrl::INT);
    r.w(base(1) + chan::CHANCTRL, u64::from(chanctrl::RUN), 2);
    assert_eq!(r.r(global::ATTNSTATUS, 4), 0);
}

#[test]
fn suspend_stops_at_a_boundary_and_resume_continues() {
    let mut r = rig();
    r.reset_hw(0);
    r.alloc(0);
    r.drain();
    r.write_mem(SRC_SPA, &pattern(0x100, 3));
    r.memcpy(0, SRC, DST, 8);
    // Suspended before the job ran: nothing moves, CHANSTS says so.
    r.w(base(0) + chan::CHANCMD, u64::from(chancmd::SUSPEND), 1);
    r.drain();
    assert_eq!(r.chansts(0) & chansts::STATUS, chansts::SUSPENDED);
    assert_eq!(r.mem_u64(DST_SPA), 0);
    r.issue(0, 0);
    assert_eq!(r.drain(), 0, "DMACOUNT does not wake a suspended channel");
    r.w(base(0) + chan::CHANCMD, u64::from(chancmd::RESUME), 1);
    r.drain();
    assert_eq!(r.chansts(0) & chansts::STATUS, chansts::DONE);
    assert_eq!(r.read_mem(DST_SPA, 8), pattern(8, 3));
}

#[test]
fn one_job_runs_a_budget_then_queues_itself_behind_others() {
    let mut r = rig();
    r.reset_hw(0);
    r.w(base(0) + chan::CHANCMP, COMPLETION, 8);
    // A chain of NULL descriptors longer than the budget, linked to itself at one address.
    let d = Descriptor { next: U64::new(RING), ..Descriptor::new(1, ctl::NULL, 0, 0) };
    r.write_mem(RING_SPA, d.as_bytes());
    r.w(base(0) + chan::CHAINADDR, RING, 8);
    r.w(base(0) + chan::DMACOUNT, (channel::BUDGET + 10) as u64, 2);
    let job = r.jobs.try_recv().unwrap();
    job();
    assert_eq!(r.jobs.len(), 1, "work left: queued again");
    assert_eq!(lock(r.dev.engine()).channels[0].executed as usize, channel::BUDGET);
    r.drain();
    assert_eq!(lock(r.dev.engine()).channels[0].executed as usize, channel::BUDGET + 10);
    assert_eq!(r.chansts(0) & chansts::STATUS, chansts::DONE);
}

#[test]
fn a_reset_during_a_descriptor_drops_its_completion() {
    let mut r = rig();
    r.reset_hw(0);
    r.alloc(0);
    r.drain();
    r.memcpy(0, SRC, DST, 8);
    // The descriptor is taken (in flight) when the reset arrives: RESET reads pending until the
    // job has finished with it, and its completion is never written.
    let job = r.jobs.try_recv().unwrap();
    let before = r.mem_u64(COMPLETION_SPA);
    {
        let mut e = lock(r.dev.engine());
        let c = &mut e.channels[0];
        c.in_flight = Some(c.epoch);
    }
    r.w(base(0) + chan::CHANCMD, u64::from(chancmd::RESET), 1);
    assert_eq!(r.r(base(0) + chan::CHANCMD, 1) as u8, chancmd::RESET, "pending while in flight");
    lock(r.dev.engine()).channels[0].in_flight = None;
    assert_eq!(r.r(base(0) + chan::CHANCMD, 1), 0);
    job();
    assert_eq!(r.mem_u64(COMPLETION_SPA), before, "the reset channel has nothing to run");
    assert_eq!(r.chansts(0), chansts::DONE, "fresh: nothing completed");
    assert_eq!(r.events_of("ioat_reset").len(), 2, "reset_hw's and this one");
}

#[test]
fn flr_and_unimplemented_commands() {
    let mut r = rig();
    r.w(global::INTRCTRL, u64::from(intrctrl::MASTER_INT_EN), 1);
    r.reset_hw(0);
    r.alloc(0);
    r.w(base(0) + chan::CHANCMD, u64::from(chancmd::ABORT), 1);
    r.drain();
    assert_eq!(r.r(base(0) + chan::CHANERR, 4) as u32, chanerr::CHANCMD_ERR);
    assert_eq!(r.chansts(0) & chansts::STATUS, chansts::HALTED);
    r.dev.reset();
    assert_eq!((r.chansts(0), r.r(base(0) + chan::CHANERR, 4), r.r(base(0) + chan::CHANCTRL, 2)), (chansts::DONE, 0, 0));
    assert_eq!((r.r(global::INTRCTRL, 1), r.r(global::ATTNSTATUS, 4)), (0, 0));
}

#[test]
fn config_space_error_registers_through_the_glue() {
    use crate::vfio::server::{FunctionBackend, MsixIrq};
    use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX as CFG;
    use vfio_user::ServerBackend;
    let r = rig();
    let mut b = FunctionBackend::new("ioat", r.dev, crate::vfio::guest_mem::GuestRam::default(), Arc::new(MsixIrq::default()));
    let mut v = [0u8; 4];
    b.region_write(CFG, u64::from(regs::pci::CHANERR_INT), &[0xff; 4]).unwrap();
    b.region_read(CFG, u64::from(regs::pci::CHANERR_INT), &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0, "no internal errors; write 1 to clear keeps it 0");
    b.region_write(CFG, u64::from(regs::pci::CHANERRMASK_INT), &0x0000_0f0fu32.to_le_bytes()).unwrap();
    b.region_read(CFG, u64::from(regs::pci::CHANERRMASK_INT), &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x0f0f);
    b.region_read(CFG, 0, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x2021_8086);
}

/// The RMP check on the engine's writes: SNP on, the destination page turned private while
/// mapped; the copy is refused (write data error), the page keeps its bytes, the RMP violation
/// and the hazard are reported. Needs the daemon's guest RAM (SNP mirrors the RMP into it).
#[test]
fn rmp_refuses_a_write_to_a_page_turned_private() {
    use crate::vfio::guest_mem::GuestRam;
    use rmp_model::ops::RmpState;
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("tiommu-ioat-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(&vec![0u8; RAM as usize]).unwrap();
    let ram = GuestRam::default();
    ram.map(0, RAM, f, 0).unwrap();
    let mut mem = ram.snapshot();
    let events = Arc::new(Collect::default());
    let mut pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).unwrap();
    mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
    let mut s = SecureIommu::new(events.clone(), Arc::new(Irqs::default()));
    s.bar0_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
    s.bar0_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
    for (iova, spa) in [(RING, 0x28_0000), (COMPLETION, 0x29_0000), (SRC, SRC_SPA), (DST, DST_SPA)] {
        pt.map(&mut mem, iova, spa, 12, Perm::RW).unwrap();
    }
    let secure = Arc::new(Mutex::new(s));
    let (tx, rx) = crossbeam_channel::bounded(8);
    let mut dev = Ioat::new(RID, secure.clone(), ram.clone(), Arc::new(Irqs::default()), tx);
    let go = |dev: &mut Ioat, i: u64, d: Descriptor| {
        ram.snapshot().write(0x28_0000 + i * 64, Descriptor { next: U64::new(RING + (i + 1) * 64), ..d }.as_bytes()).unwrap();
        dev.bar_write(0, 0x80 + chan::DMACOUNT, &(i as u16 + 1).to_le_bytes());
        while let Ok(j) = rx.try_recv() {
            j();
        }
    };
    dev.bar_write(0, 0x80 + chan::CHANCMP, &COMPLETION.to_le_bytes());
    dev.bar_write(0, 0x80 + chan::CHAINADDR, &RING.to_le_bytes());
    mem.write(SRC_SPA, &[7; 8]).unwrap();
    let copy = Descriptor::new(8, ctl::COMPL_WRITE, SRC, DST);
    go(&mut dev, 0, copy);
    assert_eq!(ram.snapshot().read_u64(DST_SPA).unwrap(), 0x0707_0707_0707_0707);
    lock(&secure).enable_snp(&mut ram.snapshot(), RAM >> 12).unwrap();
    // SNP drops the caches: this copy walks the tables and the mapping becomes live.
    mem.write(SRC_SPA, &[8; 8]).unwrap();
    go(&mut dev, 1, copy);
    assert_eq!(ram.snapshot().read_u64(DST_SPA).unwrap(), 0x0808_0808_0808_0808);
    let st = lock(&secure).rmpupdate(&mut ram.snapshot(), DST_SPA, &RmpState::private(DST, 1, rmp_model::PageSize::Size4K));
    assert_eq!(st, rmp_model::RmpStatus::Success);
    mem.write(SRC_SPA, &[9; 8]).unwrap();
    go(&mut dev, 2, copy);
    assert_eq!(ram.snapshot().read_u64(DST_SPA).unwrap(), 0x0808_0808_0808_0808, "the private page kept its bytes");
    let e = lock(dev.engine()).channels[0].clone();
    assert_eq!((e.state, e.chanerr), (chansts::HALTED, chanerr::WRITE_DATA_ERR));
    let ev = lock(&events.0);
    assert!(ev.iter().any(|e| e["type"] == "rmp_violation" && e["devid"] == "00:06.0" && e["iova"] == "0x60000000"), "{ev:?}");
    assert!(ev.iter().any(|e| e["type"] == "hazard" && e["iova"] == "0x60000000"), "{ev:?}");
    assert!(ev.iter().any(|e| e["type"] == "ioat_halted" && e["refusal"].as_str().is_some_and(|r| r.starts_with("RMP"))), "{ev:?}");
}

/// The daemon's log as a test reads it: what `tracing` writes on this thread while `f` runs.
fn log_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let sub = tracing_subscriber::fmt().with_writer(move || out.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&lock(&buf.0)).into_owned();
    text
}

/// Found by the hostile driver (`run-vm --ioat --hostile 10`: 3 573 warnings, 590 KB of daemon
/// log in 10 s): a guest halts a channel with one register write after each reset, and each halt
/// was a warning in the daemon's log. Now the log takes the first 8 and one in 1024 (as every
/// guest-triggerable warning), the event stream every one.
#[test]
fn halts_a_guest_makes_at_will_reach_the_log_a_bounded_number_of_times() {
    const HALTS: usize = 3000;
    let mut r = rig();
    let log = log_of(|| {
        for _ in 0..HALTS {
            r.reset_hw(0);
            r.alloc(0);
            // A zero-length copy: descriptor transfer size error.
            r.put(r.head, Descriptor::new(0, ctl::COMPL_WRITE, SRC, DST));
            r.head += 1;
            r.issue(0, 1);
            r.drain();
            assert_eq!(r.chansts(0) & chansts::STATUS, chansts::HALTED);
        }
    });
    assert_eq!(r.events_of("ioat_halted").len(), HALTS, "every halt in the event stream");
    let lines = log.lines().filter(|l| l.contains("halted")).count();
    // The call site's count is shared with tests running beside this one: at most 8 + 3000/1024.
    assert!(lines <= 8 + HALTS / 1024 + 1, "{lines} halt warnings in the log:\n{}", &log[..log.len().min(2000)]);
    // 3000 consecutive counts hold at least two multiples of 1024.
    assert!(lines >= 2, "halts are still logged: {lines}");
}

/// Function-level resets through config space are a guest's to make as often as it writes
/// Device Control; the daemon notes a bounded number of them.
#[test]
fn flrs_a_guest_makes_at_will_reach_the_log_a_bounded_number_of_times() {
    use crate::vfio::server::{FunctionBackend, MsixIrq};
    use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX as CFG;
    use vfio_user::ServerBackend;
    let r = rig();
    let events = r.events.clone();
    let mut b = FunctionBackend::new("ioat", r.dev, crate::vfio::guest_mem::GuestRam::default(), Arc::new(MsixIrq::default()));
    // Device Control's high byte, Initiate Function Level Reset (PCIe 6.x §7.5.3.4).
    let log = log_of(|| {
        for _ in 0..2000 {
            b.region_write(CFG, 0x49, &[0x80]).unwrap();
        }
    });
    let lines = log.lines().filter(|l| l.contains("function-level reset")).count();
    assert!(lines <= 8 + 2, "{lines} FLR notes in the log");
    let resets = lock(&events.0).iter().filter(|e| e["type"] == "ioat_reset").count();
    assert_eq!(resets, 2000, "each FLR resets the engine");
}

/// A chain that loops onto itself runs as long as DMACOUNT asks and no longer: one doorbell asks
/// for at most 65 535 descriptors (DMACOUNT is 16 bits; the engine runs until its count of
/// completed descriptors reaches it, as dma.c's __ioat_issue_pending relies on), each at most
/// 2^XFERCAP bytes, in jobs of `BUDGET` that queue behind other work; a reset ends it at the next
/// descriptor.
#[test]
fn a_loop_runs_what_dmacount_asks_then_stops_and_a_reset_ends_it_early() {
    let mut r = rig();
    r.reset_hw(0);
    r.w(base(0) + chan::CHANCMP, COMPLETION, 8);
    let d = Descriptor { next: U64::new(RING), ..Descriptor::new(1, ctl::NULL | ctl::COMPL_WRITE, 0, 0) };
    r.write_mem(RING_SPA, d.as_bytes());
    r.w(base(0) + chan::CHAINADDR, RING, 8);
    // Far past the chain: 0 - 1 is 65 535 ahead of the fresh count.
    r.w(base(0) + chan::DMACOUNT, 0xffff, 2);
    let mut jobs = 0;
    while let Ok(job) = r.jobs.try_recv() {
        job();
        jobs += 1;
    }
    assert_eq!(lock(r.dev.engine()).channels[0].executed, 0xffff);
    assert_eq!(jobs, 0xffff_usize.div_ceil(channel::BUDGET));
    assert_eq!(r.chansts(0), RING | chansts::DONE);
    assert_eq!(r.mem_u64(COMPLETION_SPA), RING | chansts::DONE);
    // Once more, reset after the first job: the rest never runs.
    r.w(base(0) + chan::CHAINADDR, RING, 8);
    r.w(base(0) + chan::DMACOUNT, 0xffff, 2);
    let job = r.jobs.try_recv().unwrap();
    job();
    r.w(base(0) + chan::CHANCMD, u64::from(chancmd::RESET), 1);
    assert_eq!(r.drain(), 1, "the queued job finds the channel reset and ends");
    assert_eq!(lock(r.dev.engine()).channels[0].executed, 0);
    assert_eq!(r.jobs.len(), 0);
}
