//! The DMA endpoint: a descriptor ring in guest RAM, a doorbell, completion statuses, MSI-X, and
//! a DOE mailbox carrying TDISP. Every access it makes, the ring included, goes through
//! `dma` (translate, check, then move bytes) with its requester ID. A doorbell queues one job
//! for the DMA worker; the ring is never processed on the socket thread. Layouts and codes:
//! docs/device-abi.md, "DMA endpoint".

use crate::pci::doe::{self, Doe, DoeFault, DoeProtocol};
use crate::secure::dma::{self, DmaError, DmaMem, TranslateCheck};
use crate::secure::inject::{FaultyDevice, RogueDma};
use crate::secure::tdi::{Tdis, Via};
use crate::secure::{Refusal, SecureIommu};
use crate::vfio::function::{Bar, EventSink, Irq, PciFunction, PciIds};
use crate::vfio::guest_mem::GuestRam;
use abi::event::{self as ev, Event};
use abi::Bdf;
use crossbeam_channel::{Sender, TrySendError};
use rmp_model::dma_check::DmaRefusal;
use std::sync::{Arc, Mutex, MutexGuard};
use zerocopy::little_endian::U16;
use zerocopy::{FromZeros, IntoBytes};

pub use abi::endpoint::{reg, Ctrl, DescFlags, Descriptor, DmaStatus, Op, Status, DESC_SIZE, DOE_OFFSET};
use abi::endpoint::{DESC_STATUS, DESC_VALUE, ID_MAGIC, MAX_LEN, RING_LOG2, VERSION};

/// The descriptor and the register layout are the ABI's; a transfer's limit is the DMA path's.
const _: () = assert!(MAX_LEN == dma::MAX_LEN);

/// The engine's registers, shared between the socket thread and the worker.
#[derive(Default, Debug)]
pub struct Engine {
    pub ring_base: u64,
    pub ring_size_log2: u32,
    pub tail: u32,
    pub head: u32,
    pub status: Status,
    pub ctrl: Ctrl,
    pub completed: u32,
    /// A job is queued and has not started: further doorbells need none of their own.
    pub queued: bool,
    /// Counts resets: a job that started before one stops without touching HEAD.
    pub epoch: u32,
    /// An injected hang (docs/fault-injection.md): nothing is processed and BUSY stays set
    /// until CTRL.RESET or a function-level reset.
    pub stalled: bool,
}

impl Engine {
    fn entries(&self) -> Option<u32> {
        RING_LOG2.contains(&self.ring_size_log2).then(|| 1 << self.ring_size_log2)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub type Job = Box<dyn FnOnce() + Send>;
/// What a doorbell's job does with the engine: `run_ring` over the daemon's guest RAM and
/// secure IOMMU, or over a test's memory.
pub type RingRunner = Arc<RingFn>;
pub type RingFn = dyn Fn(&Mutex<Engine>) + Send + Sync;

fn status_of(e: DmaError) -> DmaStatus {
    match e {
        DmaError::Length => DmaStatus::BadDescriptor,
        DmaError::Refused { refusal: Refusal::Translation(_) | Refusal::Viommu { .. } | Refusal::Vtd(_), .. } => DmaStatus::IoPageFault,
        DmaError::Refused { refusal: Refusal::Rmp(DmaRefusal::TdiNotRun), .. } => DmaStatus::T1Refused,
        DmaError::Refused { refusal: Refusal::Tdx(rmp_model::tdx::TdxRefusal::NotRun), .. } => DmaStatus::T1Refused,
        DmaError::Refused { refusal: Refusal::Tdx(_), .. } => DmaStatus::RmpPageFault,
        DmaError::Refused { refusal: Refusal::Rmp(_), .. } => DmaStatus::RmpPageFault,
        DmaError::Refused { refusal: Refusal::HwError(_), .. } => DmaStatus::HwError,
        DmaError::NoMemory { .. } => DmaStatus::NoMemory,
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// What one descriptor did: its status, and the value to write back.
struct Outcome {
    status: DmaStatus,
    value: Option<u64>,
}

fn execute<M: DmaMem + ?Sized, S: TranslateCheck<M> + ?Sized>(iommu: &mut S, mem: &mut M, rid: u16, d: &Descriptor) -> Outcome {
    let fail = |status| Outcome { status, value: None };
    let len = u64::from(d.len.get());
    let Some(flags) = DescFlags::from_bits(d.flags).filter(|_| len != 0 && len <= MAX_LEN) else {
        return fail(DmaStatus::BadDescriptor);
    };
    let (t, src, dst) = (flags.contains(DescFlags::T), d.src.get(), d.dst.get());
    match Op::from_code(d.op) {
        Some(Op::Copy) => {
            let plan = match dma::plan_copy(iommu, mem, rid, t, src, dst, len) {
                Ok(p) => p,
                Err(e) => return fail(status_of(e)),
            };
            if dma::move_copy(mem, &plan).is_err() {
                return fail(DmaStatus::NoMemory);
            }
            Outcome { status: DmaStatus::Ok, value: None }
        }
        Some(Op::Fill) => {
            let pattern = d.value.to_bytes();
            let data: Vec<u8> = (0..len as usize).map(|i| pattern[i % 8]).collect();
            match dma::write(iommu, mem, rid, t, dst, &data) {
                Ok(()) => Outcome { status: DmaStatus::Ok, value: None },
                Err(e) => fail(status_of(e)),
            }
        }
        Some(Op::ReadHash) => {
            let mut data = vec![0u8; len as usize];
            match dma::read(iommu, mem, rid, t, src, &mut data) {
                Ok(()) => Outcome { status: DmaStatus::Ok, value: Some(fnv1a(&data)) },
                Err(e) => fail(status_of(e)),
            }
        }
        None => fail(DmaStatus::BadDescriptor),
    }
}

/// Process descriptors HEAD..TAIL: at most one ring's worth per call, whatever the guest does
/// meanwhile. The descriptor fetch and the write-back are DMA like any other, T=0 unless
/// CTRL.RING_T; when either is refused the engine halts (the driver could not see a status anyway).
pub fn run_ring<M: DmaMem + ?Sized>(
    rid: u16,
    engine: &Mutex<Engine>,
    iommu: &Mutex<SecureIommu>,
    mem: &mut M,
    events: &dyn EventSink,
    irq: &dyn Irq,
) {
    let (base, entries, epoch) = {
        let mut e = lock(engine);
        e.queued = false;
        let Some(n) = e.entries() else { return };
        if e.status.contains(Status::HALTED) {
            return;
        }
        if e.stalled {
            e.status |= Status::BUSY;
            return;
        }
        e.status |= Status::BUSY;
        (e.ring_base, n, e.epoch)
    };
    let halt = |index: u32, iova: u64, what: &str, e: DmaError| {
        let mut g = lock(engine);
        if g.epoch == epoch {
            g.status = g.status.difference(Status::BUSY).union(Status::HALTED);
        }
        drop(g);
        // A guest can halt the engine at will: the dma_halted record says so, the log only at debug.
        tracing::debug!("endpoint {}: {what} of descriptor {index} at {iova:#x} failed ({e:?}); halted", abi::Bdf(rid));
        events.emit(Event::DmaHalted(ev::DmaHalted { devid: Bdf(rid), index, iova, what: what.into(), status: status_of(e).into() }));
    };
    let mut raise = false;
    for _ in 0..entries {
        let (head, irq_en, ring_t) = {
            let e = lock(engine);
            // TAIL is only ever set below the ring size; a RING_SIZE change since is caught here.
            if e.epoch != epoch || e.head == e.tail || e.tail >= entries || e.head >= entries {
                break;
            }
            (e.head, e.ctrl.contains(Ctrl::IRQ_EN), e.ctrl.contains(Ctrl::RING_T))
        };
        let at = base.wrapping_add(u64::from(head).wrapping_mul(DESC_SIZE));
        // The IOMMU's lock is taken page by page, never for a whole descriptor.
        let mut s = dma::PerPage(iommu);
        let mut d = Descriptor::new_zeroed();
        if let Err(e) = dma::read(&mut s, mem, rid, ring_t, at, d.as_mut_bytes()) {
            return halt(head, at, "fetch", e);
        }
        let out = execute(&mut s, mem, rid, &d);
        d.status = U16::new(out.status.code());
        // Only value and status are the device's to write; the status last, since the driver
        // polls it and then reads the value.
        let wrote = match out.value {
            Some(v) => dma::write(&mut s, mem, rid, ring_t, at.wrapping_add(DESC_VALUE), &v.to_le_bytes()),
            None => Ok(()),
        }
        .and_then(|()| dma::write(&mut s, mem, rid, ring_t, at.wrapping_add(DESC_STATUS), d.status.as_bytes()));
        let irq_flag = d.flags & DescFlags::IRQ.bits() != 0;
        events.emit(Event::Dma(ev::Dma {
            devid: Bdf(rid),
            index: Some(head),
            op: Some(ev::Code::from_number(d.op.into())),
            t: d.flags & DescFlags::T.bits() != 0,
            len: d.len.get(),
            status: ev::Code::from_number(d.status.get().into()),
            status_written: Some(wrote.is_ok()),
            src: Some(d.src.get()),
            dst: Some(d.dst.get()),
            ..Default::default()
        }));
        {
            let mut e = lock(engine);
            if e.epoch != epoch {
                return;
            }
            // entries is a power of two.
            e.head = head.wrapping_add(1) & entries.wrapping_sub(1);
            e.completed = e.completed.wrapping_add(1);
        }
        raise |= irq_flag && irq_en;
        if let Err(e) = wrote {
            if raise {
                irq.raise(0);
            }
            return halt(head, at, "status write-back", e);
        }
    }
    lock(engine).status.remove(Status::BUSY);
    if raise {
        irq.raise(0);
    }
}

/// A DMA the device makes on its own (an injected fault: a misbehaving device), through the
/// same path as its descriptors' DMA; written bytes are 0x5a. Reported as a `dma` record with
/// `"injected": true` and the status a descriptor would have had.
pub fn rogue_dma<M: DmaMem + ?Sized>(d: RogueDma, iommu: &Mutex<SecureIommu>, mem: &mut M, events: &dyn EventSink) {
    let mut s = dma::PerPage(iommu);
    let r = if d.write {
        dma::write(&mut s, mem, d.devid, d.t, d.iova, &vec![0x5a; d.len as usize])
    } else {
        dma::read(&mut s, mem, d.devid, d.t, d.iova, &mut vec![0; d.len as usize])
    };
    let status = r.map_or_else(status_of, |()| DmaStatus::Ok);
    events.emit(Event::Dma(ev::Dma {
        devid: Bdf(d.devid),
        access: Some(crate::secure::direction(d.write)),
        t: d.t,
        len: d.len,
        iova: Some(d.iova),
        status: status.into(),
        injected: Some(true),
        ..Default::default()
    }));
}

/// The endpoint's side of injected faults: a DOE fault waiting for the mailbox's next access,
/// the engine to stall, and the worker a rogue DMA is queued on (gone with the endpoint). The
/// secure IOMMU holds this, and the runner holds the secure IOMMU: a weak reference, or neither
/// would ever be freed.
struct EndpointFaults {
    doe: Mutex<Option<DoeFault>>,
    doe_clear: Mutex<bool>,
    engine: Arc<Mutex<Engine>>,
    runner: std::sync::Weak<RingFn>,
    rogue: Option<Arc<dyn Fn(RogueDma) + Send + Sync>>,
    jobs: Mutex<Option<Sender<Job>>>,
}

impl FaultyDevice for EndpointFaults {
    fn doe(&self, f: DoeFault) {
        *lock(&self.doe) = Some(f);
    }

    fn stall_ring(&self) {
        lock(&self.engine).stalled = true;
    }

    fn rogue_dma(&self, d: RogueDma) -> bool {
        let (Some(run), Some(jobs)) = (self.rogue.clone(), lock(&self.jobs).clone()) else { return false };
        jobs.try_send(Box::new(move || run(d))).is_ok()
    }

    fn clear(&self) {
        *lock(&self.doe) = None;
        *lock(&self.doe_clear) = true;
        let resume = {
            let mut e = lock(&self.engine);
            let was = std::mem::take(&mut e.stalled);
            e.status.remove(Status::BUSY);
            was && e.head != e.tail
        };
        if let (true, Some(jobs), Some(runner)) = (resume, lock(&self.jobs).clone(), self.runner.upgrade()) {
            queue(&self.engine, &runner, &jobs);
        }
    }
}

/// Queue one job running the ring unless one is queued and not yet started (it will see the
/// current TAIL). Never blocks.
fn queue(engine: &Arc<Mutex<Engine>>, runner: &RingRunner, jobs: &Sender<Job>) {
    {
        let mut e = lock(engine);
        if e.queued {
            return;
        }
        e.queued = true;
    }
    let (e2, runner) = (engine.clone(), runner.clone());
    let job: Job = Box::new(move || runner(&e2));
    if let Err(e) = jobs.try_send(job) {
        lock(engine).queued = false;
        match e {
            TrySendError::Full(_) => crate::warn_limited!("endpoint: DMA worker queue full; doorbell dropped"),
            TrySendError::Disconnected(_) => tracing::error!("endpoint: DMA worker is gone"),
        }
    }
}

struct TdispOverDoe {
    rid: u16,
    tdis: Tdis,
}

impl DoeProtocol for TdispOverDoe {
    fn vendor(&self) -> u16 {
        abi::doe::TDISP_VENDOR
    }
    fn object_type(&self) -> u8 {
        abi::doe::TDISP_TYPE
    }
    fn respond(&mut self, payload: &[u8]) -> Vec<u8> {
        self.tdis.request(self.rid, payload, Via::Doe).unwrap_or_default()
    }
}

pub struct Endpoint {
    rid: u16,
    doe: Doe,
    tdis: Tdis,
    engine: Arc<Mutex<Engine>>,
    secure: Arc<Mutex<SecureIommu>>,
    runner: RingRunner,
    jobs: Sender<Job>,
    faults: Arc<EndpointFaults>,
}

impl Endpoint {
    /// The daemon's endpoint: its ring is processed over guest RAM through `secure`.
    pub fn new(rid: u16, secure: Arc<Mutex<SecureIommu>>, ram: GuestRam, irq: Arc<dyn Irq>, jobs: Sender<Job>) -> Self {
        let (iommu, events) = (secure.clone(), lock(&secure).events());
        let ev = events.clone();
        let (ev2, ram2, weak) = (events.clone(), ram.clone(), Arc::downgrade(&secure));
        let runner: RingRunner = Arc::new(move |engine: &Mutex<Engine>| {
            let mut mem = ram.snapshot();
            run_ring(rid, engine, &iommu, &mut mem, ev.as_ref(), irq.as_ref());
        });
        // Held by the secure IOMMU's injection state: a weak reference, so the two do not keep
        // each other alive.
        let rogue: Arc<dyn Fn(RogueDma) + Send + Sync> = Arc::new(move |d| {
            if let Some(secure) = weak.upgrade() {
                rogue_dma(d, &secure, &mut ram2.snapshot(), ev2.as_ref());
            }
        });
        Self::build(rid, secure, runner, Some(rogue), jobs)
    }

    /// An endpoint whose doorbell jobs run `runner`; its TDISP responder is registered with
    /// `secure` (the firmware's TIO commands reach the device through it).
    pub fn with_runner(rid: u16, secure: Arc<Mutex<SecureIommu>>, runner: RingRunner, jobs: Sender<Job>) -> Self {
        Self::build(rid, secure, runner, None, jobs)
    }

    fn build(
        rid: u16,
        secure: Arc<Mutex<SecureIommu>>,
        runner: RingRunner,
        rogue: Option<Arc<dyn Fn(RogueDma) + Send + Sync>>,
        jobs: Sender<Job>,
    ) -> Self {
        // The interface report lists BAR0 (range 0) as the TDI's MMIO.
        let ranges = vec![rmp_model::tdisp::MmioRange { first_page: 0, pages: 1, attributes: 0, range_id: 0 }];
        let tdis = lock(&secure).tdis();
        tdis.add(rid, ranges);
        let doe = Doe::new(vec![Box::new(TdispOverDoe { rid, tdis: tdis.clone() })]);
        let engine: Arc<Mutex<Engine>> = Arc::default();
        let faults = Arc::new(EndpointFaults {
            doe: Mutex::new(None),
            doe_clear: Mutex::new(false),
            engine: engine.clone(),
            runner: Arc::downgrade(&runner),
            rogue,
            jobs: Mutex::new(Some(jobs.clone())),
        });
        lock(&secure).add_faulty_device(rid, faults.clone());
        Endpoint { rid, doe, tdis, engine, secure, runner, jobs, faults }
    }

    /// Queue one job unless one is queued and not yet started (it will see this TAIL). Never
    /// blocks the socket thread.
    fn doorbell(&self) {
        queue(&self.engine, &self.runner, &self.jobs);
    }

    /// An injected DOE fault takes effect at the mailbox's next access.
    fn doe_faults(&mut self) {
        if let Some(f) = lock(&self.faults.doe).take() {
            self.doe.inject(f);
        }
        if std::mem::take(&mut *lock(&self.faults.doe_clear)) {
            self.doe.clear_injected();
        }
    }
}

impl Drop for Endpoint {
    /// The worker's channel closes with the endpoint (the daemon waits for it), so the copy
    /// the injection state holds goes too.
    fn drop(&mut self) {
        lock(&self.faults.jobs).take();
    }
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciFunction for Endpoint {
    fn ids(&self) -> PciIds {
        let id = abi::pci::ENDPOINT;
        PciIds { vendor: id.vendor, device: id.device, subsystem_vendor: id.vendor, subsystem: id.device, class: id.class, revision: 1 }
    }

    fn bars(&self) -> Vec<Bar> {
        vec![Bar { index: 0, size: abi::endpoint::BAR0_SIZE }]
    }

    fn msix_vectors(&self) -> u16 {
        1
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let e = lock(&self.engine);
        let v: u64 = match (bar, offset) {
            (0, reg::ID) => u64::from(ID_MAGIC),
            (0, reg::VERSION) => u64::from(VERSION),
            (0, reg::REQUESTER_ID) => u64::from(self.rid),
            (0, reg::RING_BASE) if data.len() == 8 => e.ring_base,
            (0, reg::RING_BASE) => e.ring_base & 0xffff_ffff,
            (0, reg::RING_BASE_HI) => e.ring_base >> 32,
            (0, reg::RING_SIZE) => u64::from(e.ring_size_log2),
            (0, reg::TAIL) => u64::from(e.tail),
            (0, reg::HEAD) => u64::from(e.head),
            (0, reg::STATUS) => u64::from(e.status.bits()),
            (0, reg::CTRL) => u64::from(e.ctrl.bits()),
            (0, reg::COMPLETED) => u64::from(e.completed),
            _ => 0,
        };
        let b = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&b[..n]);
        data[n..].fill(0);
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let v = le(data);
        let doorbell = {
            let mut e = lock(&self.engine);
            match offset {
                // Descriptors are 32-byte aligned: the low five bits of RING_BASE read as zero.
                reg::RING_BASE if data.len() == 8 => e.ring_base = v & !0x1f,
                reg::RING_BASE => e.ring_base = (e.ring_base & !0xffff_ffff) | (v & 0xffff_ffe0),
                reg::RING_BASE_HI => e.ring_base = (e.ring_base & 0xffff_ffff) | (v << 32),
                reg::RING_SIZE => e.ring_size_log2 = v as u32 & 0x1f,
                reg::TAIL => match e.entries() {
                    Some(n) if v < u64::from(n) => {
                        e.tail = v as u32;
                        e.status.remove(Status::BAD_TAIL);
                    }
                    _ => e.status |= Status::BAD_TAIL,
                },
                reg::CTRL => {
                    let v = Ctrl::from_bits_truncate(v as u32);
                    e.ctrl = v.difference(Ctrl::RESET);
                    if v.contains(Ctrl::RESET) {
                        e.head = 0;
                        e.tail = 0;
                        e.status = Status::empty();
                        e.stalled = false;
                        e.epoch = e.epoch.wrapping_add(1);
                    }
                }
                _ => {}
            }
            offset == reg::TAIL && !e.status.contains(Status::BAD_TAIL)
        };
        if doorbell {
            self.doorbell();
        }
    }

    fn ext_caps(&self) -> Vec<(u16, u32)> {
        vec![(DOE_OFFSET, doe::CAP_ID | doe::CAP_VERSION << 16)]
    }

    fn ext_config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.doe_faults();
        let reg = offset.wrapping_sub(DOE_OFFSET);
        // The mailboxes are dword registers (PCIe 6.x §7.9.24); narrower reads see zeroes.
        let v = if reg.is_multiple_of(4) && data.len() == 4 { self.doe.read(reg) } else { 0 };
        let b = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&b[..n]);
        data[n..].fill(0);
    }

    fn ext_config_write(&mut self, offset: u16, data: &[u8]) {
        self.doe_faults();
        let reg = offset.wrapping_sub(DOE_OFFSET);
        if reg.is_multiple_of(4) && data.len() == 4 {
            self.doe.write(reg, le(data) as u32);
        }
    }

    fn config_written(&mut self, offset: u64) {
        // TDISP: a configuration change while locked moves the TDI to ERROR.
        self.tdis.config_written(self.rid, offset);
    }

    fn reset(&mut self) {
        {
            let mut e = lock(&self.engine);
            let epoch = e.epoch.wrapping_add(1);
            *e = Engine { epoch, ..Engine::default() };
        }
        self.doe.write(doe::CTRL, doe::CTRL_ABORT);
        lock(&self.secure).forget_mappings_of(self.rid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Collect;
    use crate::testing::Irqs;
    use iommu_model::amdvi::builder::V1Builder;
    use iommu_model::amdvi::dte::Dte;
    use iommu_model::amdvi::event::{self, Event};
    use iommu_model::amdvi::mmio::{self, control};
    use iommu_model::mem::{ByteMem, PhysMem};
    use iommu_model::walk::Perm;
    use rmp_model::tdisp::{self, Response, TdiState};
    use zerocopy::FromBytes;

    const RID: u16 = 0x20;
    const RAM: u64 = 16 << 20;
    const RING: u64 = 0x1000_0000;
    const RING_SPA: u64 = 0x20_0000;
    const EVENT_LOG: u64 = 0x4000;

    /// Guest RAM as a `ByteMem`, the real AMD-Vi unit translating for RID through v1 tables.
    struct Rig {
        mem: ByteMem,
        secure: Mutex<SecureIommu>,
        events: Arc<Collect>,
        irqs: Arc<Irqs>,
        engine: Mutex<Engine>,
        pt: V1Builder,
    }

    fn secure_on<M: PhysMem>(mem: &mut M, events: Arc<Collect>, pt_pool: (u64, u64)) -> (SecureIommu, V1Builder) {
        let pt = V1Builder::new(mem, pt_pool.0, pt_pool.1, 4).unwrap();
        mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
        let mut s = SecureIommu::new(events, Arc::new(Irqs::default()));
        s.bar0_write(mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
        // 256 entries (EventLen 8).
        s.bar0_write(mem, mmio::EVENT_LOG_BASE, 8, EVENT_LOG | 8 << 56);
        s.bar0_write(mem, mmio::CONTROL, 8, control::IOMMU_EN | control::EVENT_LOG_EN);
        (s, pt)
    }

    fn rig() -> Rig {
        let mut mem = ByteMem::new(0, RAM as usize);
        let events = Arc::new(Collect::default());
        let (s, pt) = secure_on(&mut mem, events.clone(), (0x10_0000, 0x20_0000));
        let engine = Mutex::new(Engine { ring_base: RING, ring_size_log2: 4, ..Default::default() });
        let mut r = Rig { mem, secure: Mutex::new(s), events, irqs: Arc::default(), engine, pt };
        r.map(RING, RING_SPA, 12, Perm::RW);
        r
    }

    impl Rig {
        fn map(&mut self, iova: u64, spa: u64, size_log2: u8, perm: Perm) {
            self.pt.map(&mut self.mem, iova, spa, size_log2, perm).unwrap();
        }
        fn ring(&mut self) {
            run_ring(RID, &self.engine, &self.secure, &mut self.mem, self.events.as_ref(), self.irqs.as_ref());
        }
        /// Write descriptor `i`, move TAIL past it, run the worker inline; the status written back.
        fn run(&mut self, i: u32, d: Descriptor) -> DmaStatus {
            self.mem.write(RING_SPA + u64::from(i) * 32, d.as_bytes()).unwrap();
            lock(&self.engine).tail = i + 1;
            self.ring();
            self.desc(i).status().expect("a status the device writes")
        }
        fn desc(&self, i: u32) -> Descriptor {
            let mut b = [0u8; 32];
            self.mem.read(RING_SPA + u64::from(i) * 32, &mut b).unwrap();
            Descriptor::read_from_bytes(&b).unwrap()
        }
        fn u64_at(&self, spa: u64) -> u64 {
            self.mem.read_u64(spa).unwrap()
        }
        fn events_of(&self, ty: &str) -> Vec<serde_json::Value> {
            lock(&self.events.0).iter().filter(|e| e["type"] == ty).cloned().collect()
        }
    }

    fn desc(op: Op, flags: DescFlags, len: u32, src: u64, dst: u64, value: u64) -> Descriptor {
        Descriptor::new(op, flags, len, src, dst, value)
    }

    fn pattern(mem: &mut ByteMem, spa: u64, len: usize, seed: u8) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect();
        mem.write(spa, &data).unwrap();
        data
    }

    #[test]
    fn copy_fill_and_hash_through_4k_mappings() {
        let mut r = rig();
        // Two IOVA pages over two SPA pages in reverse order: a copy must follow the tables.
        r.map(0x5000_0000, 0x31_0000, 12, Perm::RW);
        r.map(0x5000_1000, 0x30_0000, 12, Perm::RW);
        r.map(0x6000_0000, 0x40_0000, 12, Perm::RW);
        r.map(0x6000_1000, 0x40_1000, 12, Perm::RW);
        assert_eq!(r.run(0, desc(Op::Fill, DescFlags::empty(), 0x2000, 0, 0x5000_0000, 0x0102_0304_0506_0708)), DmaStatus::Ok);
        assert_eq!((r.u64_at(0x31_0ff8), r.u64_at(0x30_0000)), (0x0102_0304_0506_0708, 0x0102_0304_0506_0708), "fill crossed the page");
        let src = pattern(&mut r.mem, 0x31_0000, 0x1000, 7);
        assert_eq!(r.run(1, desc(Op::Copy, DescFlags::empty(), 0x1800, 0x5000_0800, 0x6000_0000, 0)), DmaStatus::Ok);
        let mut got = vec![0u8; 0x1800];
        r.mem.read(0x40_0000, &mut got).unwrap();
        assert_eq!(got[..0x800], src[0x800..], "first source page");
        assert!(got[0x800..].chunks(8).all(|c| c == 0x0102_0304_0506_0708u64.to_le_bytes()), "second source page");
        assert_eq!(r.u64_at(0x40_1800), 0, "no byte past the length");
        assert_eq!(r.run(2, desc(Op::ReadHash, DescFlags::empty(), 0x1800, 0x6000_0000, 0, 0)), DmaStatus::Ok);
        assert_eq!(r.desc(2).value, fnv1a(&got));
        let dma = r.events_of("dma");
        assert_eq!(dma.len(), 3);
        assert_eq!(
            (dma[1]["op"].as_str(), dma[1]["len"].as_u64(), dma[1]["status"].as_str()),
            (Some("COPY"), Some(0x1800), Some("OK")),
            "{:?}",
            dma[1]
        );
    }

    #[test]
    fn copies_through_2m_mappings() {
        let mut r = rig();
        r.map(0x4000_0000, 0x40_0000, 21, Perm::RW);
        r.map(0x4020_0000, 0x60_0000, 21, Perm::RW); // the next IOVA 2 MiB page, elsewhere in SPA
        r.map(0x7000_0000, 0x80_0000, 21, Perm::RW);
        let src = pattern(&mut r.mem, 0x40_0000, 0x20_0000, 3);
        let src2 = pattern(&mut r.mem, 0x60_0000, 0x8000, 9);
        // 1 MiB from the middle of the first 2 MiB page.
        assert_eq!(r.run(0, desc(Op::Copy, DescFlags::empty(), 1 << 20, 0x4008_0000, 0x7000_0000, 0)), DmaStatus::Ok);
        let mut got = vec![0u8; 1 << 20];
        r.mem.read(0x80_0000, &mut got).unwrap();
        assert!(got == src[0x8_0000..0x18_0000], "1 MiB through a 2 MiB mapping");
        // Across the 2 MiB boundary: the second half comes from the other large page.
        assert_eq!(r.run(1, desc(Op::Copy, DescFlags::empty(), 0x1_0000, 0x401f_8000, 0x7010_0000, 0)), DmaStatus::Ok);
        let mut got = vec![0u8; 0x1_0000];
        r.mem.read(0x90_0000, &mut got).unwrap();
        assert!(got[..0x8000] == src[0x1f_8000..] && got[0x8000..] == src2[..], "across two 2 MiB mappings");
    }

    #[test]
    fn a_blocked_page_moves_nothing_and_each_refused_page_is_logged() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        r.map(0x5000_2000, 0x30_2000, 12, Perm::new(true, false));
        r.map(0x5000_4000, 0x30_4000, 12, Perm::RW);
        r.map(0x7000_0000, 0x4000_0000, 12, Perm::RW); // an IOVA mapped past guest RAM
                                                       // 0x5000_1000 unmapped, 0x5000_2000 read-only, 0x5000_3000 unmapped: three refused pages.
        assert_eq!(r.run(0, desc(Op::Fill, DescFlags::empty(), 0x5000, 0, 0x5000_0000, 7)), DmaStatus::IoPageFault);
        assert_eq!((r.u64_at(0x30_0000), r.u64_at(0x30_4000)), (0, 0), "the allowed pages moved nothing either");
        let faults = r.events_of("translation_fault");
        let iovas: Vec<_> = faults.iter().map(|e| e["iova"].as_str().unwrap().to_string()).collect();
        assert_eq!(iovas, ["0x50001000", "0x50002000", "0x50003000"], "one event per refused page");
        // The guest-visible event log has the same three records.
        let log: Vec<Event> = (0..3)
            .map(|i| {
                let mut b = [0u8; 16];
                r.mem.read(EVENT_LOG + i * 16, &mut b).unwrap();
                Event::from_bytes(&b)
            })
            .collect();
        assert!(log.iter().all(|e| e.code == event::IO_PAGE_FAULT && e.devid == RID), "{log:?}");
        assert_eq!(log.iter().map(|e| e.address).collect::<Vec<_>>(), [0x5000_1000, 0x5000_2000, 0x5000_3000]);
        assert_eq!(lock(&r.secure).amdvi_register(mmio::EVENT_LOG_TAIL), 3 * 16);
        assert_eq!(r.run(1, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x7000_0000, 1)), DmaStatus::NoMemory, "past guest RAM");
        assert_eq!(r.events_of("translation_fault").len(), 3, "past RAM is no IOMMU event");
        // A refused source: the destination is not even asked for.
        assert_eq!(r.run(2, desc(Op::Copy, DescFlags::empty(), 0x1000, 0x9000_0000, 0x5000_0000, 0)), DmaStatus::IoPageFault);
        assert_eq!(r.events_of("translation_fault").len(), 4);
        // A refused destination page after an allowed one: nothing copied.
        pattern(&mut r.mem, 0x30_4000, 0x1000, 1);
        assert_eq!(r.run(3, desc(Op::Copy, DescFlags::empty(), 0x2000, 0x5000_4000, 0x5000_0000, 0)), DmaStatus::IoPageFault);
        assert_eq!(r.u64_at(0x30_0000), 0);
        assert_eq!(r.run(4, desc(Op::Fill, DescFlags::T, 8, 0, 0x5000_0000, 1)), DmaStatus::T1Refused, "T=1 without TIO");
        assert_eq!(r.u64_at(0x30_0000), 0);
        assert_eq!(lock(&r.engine).head, 5);
    }

    #[test]
    fn bad_descriptors_get_a_status_and_do_nothing() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        let cases = [
            desc(Op::Fill, DescFlags::empty(), 0, 0, 0x5000_0000, 1),
            desc(Op::Fill, DescFlags::empty(), (MAX_LEN + 1) as u32, 0, 0x5000_0000, 1),
            desc(Op::Fill, DescFlags::empty(), u32::MAX, 0, 0x5000_0000, 1),
            Descriptor { flags: 0x80, ..desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 1) },
            Descriptor { op: 0, ..desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 1) },
            Descriptor { op: 9, ..desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 1) },
            desc(Op::Copy, DescFlags::empty(), 0x1000, 0x5000_0000, u64::MAX - 0xfff, 0),
            desc(Op::ReadHash, DescFlags::empty(), 0x2000, u64::MAX - 0xfff, 0, 0),
        ];
        for (i, d) in cases.into_iter().enumerate() {
            assert_eq!(r.run(i as u32, d), DmaStatus::BadDescriptor, "{d:?}");
        }
        assert_eq!(r.u64_at(0x30_0000), 0);
        assert!(r.events_of("translation_fault").is_empty(), "nothing was translated");
    }

    /// The endpoint's TDI bound to ASID 2 and in RUN (SNP on, vTOM 1 TiB), with the ring's page
    /// and the page at IOVA 0x5000_0000 (SPA 0x30_0000) private to ASID 2 and validated, at
    /// GPA = IOVA: where a CVM's driver keeps them.
    fn bind_with_private_ring(r: &mut Rig) {
        use rmp_model::ops::{GuestCtx, RmpState};
        use rmp_model::{PageSize, Rmp, RmpStatus};
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        let mut rmp = Rmp::new(RAM >> 12);
        for (spa, gpa) in [(RING_SPA, RING), (0x30_0000, 0x5000_0000)] {
            assert_eq!(rmp.rmpupdate(spa, &RmpState::private(gpa, 2, PageSize::Size4K)).status, RmpStatus::Success);
            rmp.pvalidate(GuestCtx { asid: 2, vmpl: 0 }, spa, gpa, PageSize::Size4K, true);
        }
        let mut s = lock(&r.secure);
        s.enable_snp_with(rmp);
        crate::secure::bind_running_tdi(&mut s, RID, 2, 1 << 40);
    }

    #[test]
    fn ring_t_lets_a_running_tdi_keep_its_ring_in_private_memory() {
        let mut r = rig();
        bind_with_private_ring(&mut r);
        // T=0 (the default): reading the private ring is allowed (a T=0 read of an assigned page
        // sees ciphertext on hardware; docs/rmp.md), but writing its status back is not: the
        // driver never sees a completion and the engine halts.
        let fill = desc(Op::Fill, DescFlags::T, 8, 0, 0x5000_0000, 0x77);
        r.mem.write(RING_SPA, fill.as_bytes()).unwrap();
        lock(&r.engine).tail = 1;
        r.ring();
        assert_eq!(lock(&r.engine).status, Status::HALTED);
        let h = r.events_of("dma_halted");
        assert_eq!((h.len(), h[0]["what"].as_str(), h[0]["status"].as_str()), (1, Some("status write-back"), Some("RMP_PAGE_FAULT")));
        assert_eq!(r.desc(0).status(), Some(DmaStatus::Pending));
        r.mem.write(0x30_0000, &[0; 8]).unwrap();
        // CTRL.RING_T (after a reset): fetch and write-back are T=1, the T=1 FILL lands.
        {
            let mut e = lock(&r.engine);
            (e.head, e.tail, e.status, e.ctrl) = (0, 0, Status::empty(), Ctrl::RING_T);
            e.epoch += 1;
        }
        assert_eq!(r.run(0, fill), DmaStatus::Ok);
        assert_eq!(r.u64_at(0x30_0000), 0x77);
        assert_eq!(lock(&r.engine).status, Status::empty());
    }

    #[test]
    fn an_unreachable_ring_halts_until_reset() {
        let mut r = rig();
        lock(&r.engine).ring_base = 0xdead_0000;
        lock(&r.engine).tail = 3;
        r.ring();
        {
            let e = lock(&r.engine);
            assert_eq!((e.status, e.head, e.completed), (Status::HALTED, 0, 0));
        }
        let h = r.events_of("dma_halted");
        assert_eq!((h.len(), h[0]["what"].as_str(), h[0]["status"].as_str()), (1, Some("fetch"), Some("IO_PAGE_FAULT")));
        r.ring();
        assert_eq!(r.events_of("translation_fault").len(), 1, "a halted engine fetches nothing");
        // The ring's last descriptor at the top of the address space: the fetch wraps.
        let mut r = rig();
        lock(&r.engine).ring_base = u64::MAX - 0x1f;
        lock(&r.engine).ring_size_log2 = 1;
        lock(&r.engine).tail = 1;
        r.ring();
        assert_eq!(lock(&r.engine).status, Status::HALTED);
    }

    #[test]
    fn a_refused_status_write_halts_after_the_descriptor_ran() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        r.map(0x1100_0000, 0x21_0000, 12, Perm::new(true, false));
        lock(&r.engine).ring_base = 0x1100_0000;
        r.mem.write(0x21_0000, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 5).as_bytes()).unwrap();
        r.mem.write(0x21_0020, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0008, 6).as_bytes()).unwrap();
        lock(&r.engine).tail = 2;
        r.ring();
        assert_eq!((r.u64_at(0x30_0000), r.u64_at(0x30_0008)), (5, 0), "the first ran, the second did not");
        let e = lock(&r.engine);
        assert_eq!((e.status, e.head, e.completed), (Status::HALTED, 1, 1));
        assert_eq!(r.events_of("dma_halted")[0]["what"], "status write-back");
    }

    #[test]
    fn a_ring_that_rewrites_itself_is_still_one_ring_per_job() {
        let mut r = rig();
        lock(&r.engine).ring_size_log2 = 2;
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        // Descriptor 0 fills descriptors 1..=3 with an 8-byte pattern that decodes as a COPY of
        // 4 KiB from an unmapped IOVA: they run and fail, one at a time, and the job ends.
        let fake = u64::from_le_bytes([Op::Copy.code(), 0, 0, 0, 0, 0x10, 0, 0]);
        r.mem.write(RING_SPA, desc(Op::Fill, DescFlags::empty(), 96, 0, RING + 32, fake).as_bytes()).unwrap();
        lock(&r.engine).tail = 3;
        r.ring();
        let e = lock(&r.engine);
        assert_eq!((e.head, e.completed, e.status), (3, 3, Status::empty()));
        drop(e);
        assert_eq!([1, 2].map(|i| r.desc(i).status().unwrap()), [DmaStatus::IoPageFault; 2]);
        // A ring of 4 with every slot pending and TAIL one behind HEAD: three per job, no more.
        lock(&r.engine).tail = 2;
        r.ring();
        assert_eq!(lock(&r.engine).completed, 6);
    }

    #[test]
    fn completions_raise_msix_only_when_asked_and_enabled() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        r.run(0, desc(Op::Fill, DescFlags::IRQ, 8, 0, 0x5000_0000, 1));
        assert!(lock(&r.irqs.0).is_empty(), "IRQ_EN off");
        lock(&r.engine).ctrl = Ctrl::IRQ_EN;
        r.run(1, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 1));
        assert!(lock(&r.irqs.0).is_empty(), "no IRQ flag");
        r.run(2, desc(Op::Fill, DescFlags::IRQ, 8, 0, 0x9000_0000, 1));
        assert_eq!(*lock(&r.irqs.0), [0], "a failed descriptor completes too");
    }

    /// An `Endpoint` whose jobs run a ByteMem rig, with the channel its doorbells queue on.
    fn endpoint() -> (Endpoint, crossbeam_channel::Receiver<Job>, Arc<Mutex<Rig>>) {
        let r = rig();
        let secure = Arc::new(Mutex::new(SecureIommu::new(r.events.clone(), Arc::new(Irqs::default()))));
        let r = Arc::new(Mutex::new(r));
        let rr = r.clone();
        let runner: RingRunner = Arc::new(move |engine: &Mutex<Engine>| {
            let mut g = lock(&rr);
            let rig = &mut *g;
            run_ring(RID, engine, &rig.secure, &mut rig.mem, rig.events.as_ref(), rig.irqs.as_ref());
        });
        let (tx, rx) = crossbeam_channel::bounded(4);
        (Endpoint::with_runner(RID, secure, runner, tx), rx, r)
    }

    fn w32(ep: &mut Endpoint, off: u64, v: u32) {
        ep.bar_write(0, off, &v.to_le_bytes());
    }

    fn r32(ep: &mut Endpoint, off: u64) -> u32 {
        let mut b = [0u8; 4];
        ep.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn registers_and_doorbells_queue_one_job_off_the_calling_thread() {
        let (mut ep, rx, rig) = endpoint();
        assert_eq!((r32(&mut ep, reg::ID), r32(&mut ep, reg::REQUESTER_ID)), (ID_MAGIC, u32::from(RID)));
        ep.bar_write(0, reg::RING_BASE, &(RING | 0x1f).to_le_bytes());
        let mut b = [0u8; 8];
        ep.bar_read(0, reg::RING_BASE, &mut b);
        assert_eq!(u64::from_le_bytes(b), RING, "32-byte aligned");
        w32(&mut ep, reg::RING_SIZE, 13);
        w32(&mut ep, reg::TAIL, 1);
        assert_eq!((r32(&mut ep, reg::STATUS), r32(&mut ep, reg::TAIL)), (Status::BAD_TAIL.bits(), 0), "no ring of 8192");
        w32(&mut ep, reg::RING_SIZE, 3);
        w32(&mut ep, reg::TAIL, 8);
        assert_eq!(r32(&mut ep, reg::STATUS), Status::BAD_TAIL.bits(), "TAIL past the ring");
        assert!(rx.is_empty(), "a refused TAIL rings nothing");
        {
            let mut g = lock(&rig);
            g.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
            for i in 0..3u64 {
                g.mem
                    .write(RING_SPA + i * 32, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000 + 8 * i, 0x11 * (i + 1)).as_bytes())
                    .unwrap();
            }
        }
        for t in 1..=3 {
            w32(&mut ep, reg::TAIL, t);
        }
        assert_eq!(r32(&mut ep, reg::STATUS), 0);
        assert_eq!(rx.len(), 1, "three doorbells, one queued job");
        assert_eq!(r32(&mut ep, reg::HEAD), 0, "nothing ran on the register path");
        rx.try_recv().unwrap()();
        assert_eq!((r32(&mut ep, reg::HEAD), r32(&mut ep, reg::COMPLETED)), (3, 3));
        assert_eq!(lock(&rig).u64_at(0x30_0010), 0x33);
        // Reset while a job is queued: the job finds an empty ring.
        w32(&mut ep, reg::TAIL, 5);
        w32(&mut ep, reg::CTRL, (Ctrl::RESET | Ctrl::IRQ_EN).bits());
        rx.try_recv().unwrap()();
        assert_eq!((r32(&mut ep, reg::HEAD), r32(&mut ep, reg::TAIL), r32(&mut ep, reg::CTRL)), (0, 0, Ctrl::IRQ_EN.bits()));
        assert_eq!(r32(&mut ep, reg::COMPLETED), 3);
    }

    #[test]
    fn a_full_worker_queue_drops_the_doorbell_without_blocking() {
        let (mut ep, rx, _rig) = endpoint();
        w32(&mut ep, reg::RING_SIZE, 3);
        // Fill the channel with other work: the doorbell must not wait for room.
        while ep.jobs.try_send(Box::new(|| {})).is_ok() {}
        w32(&mut ep, reg::TAIL, 1);
        assert!(!lock(&ep.engine).queued, "a dropped doorbell leaves none pending");
        rx.try_recv().unwrap()();
        w32(&mut ep, reg::TAIL, 2);
        assert!(lock(&ep.engine).queued, "the next doorbell queues");
    }

    /// An injected stall: doorbells are taken, nothing moves, BUSY stays; CTRL.RESET recovers
    /// (or the tool's clear, which resumes the ring where it was).
    #[test]
    fn a_stalled_ring_makes_no_progress_until_reset_or_cleared() {
        let (mut ep, rx, rig) = endpoint();
        {
            let mut g = lock(&rig);
            g.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
            for i in 0..4u64 {
                g.mem.write(RING_SPA + i * 32, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000 + 8 * i, i + 1).as_bytes()).unwrap();
            }
        }
        ep.bar_write(0, reg::RING_BASE, &RING.to_le_bytes());
        w32(&mut ep, reg::RING_SIZE, 3);
        let dev = lock(&ep.secure).faulty_device(RID).unwrap();
        dev.stall_ring();
        w32(&mut ep, reg::TAIL, 2);
        rx.try_recv().unwrap()();
        assert_eq!((r32(&mut ep, reg::HEAD), r32(&mut ep, reg::STATUS)), (0, Status::BUSY.bits()), "nothing processed, BUSY");
        assert_eq!(lock(&rig).u64_at(0x30_0000), 0);
        dev.clear();
        rx.try_recv().expect("clear resumes the ring")();
        assert_eq!((r32(&mut ep, reg::HEAD), r32(&mut ep, reg::STATUS)), (2, 0));
        dev.stall_ring();
        w32(&mut ep, reg::TAIL, 3);
        rx.try_recv().unwrap()();
        assert_eq!(r32(&mut ep, reg::HEAD), 2, "stalled again");
        // The driver's recovery: reset and start over.
        w32(&mut ep, reg::CTRL, Ctrl::RESET.bits());
        w32(&mut ep, reg::TAIL, 1);
        rx.try_recv().unwrap()();
        assert_eq!((r32(&mut ep, reg::HEAD), r32(&mut ep, reg::STATUS)), (1, 0), "CTRL.RESET ends the stall");
    }

    /// The secure IOMMU keeps the endpoint's fault hooks, and the endpoint's closures reach
    /// the secure IOMMU: once both owners are gone, nothing keeps either alive.
    #[test]
    fn the_fault_hooks_make_no_reference_cycle() {
        let secure = Arc::new(Mutex::new(SecureIommu::new(Arc::new(Collect::default()), Arc::new(Irqs::default()))));
        let (tx, rx) = crossbeam_channel::bounded(4);
        let ep = Endpoint::new(RID, secure.clone(), GuestRam::default(), Arc::new(Irqs::default()), tx);
        let weak = Arc::downgrade(&secure);
        drop(ep);
        drop(secure);
        assert!(weak.upgrade().is_none(), "the secure IOMMU outlived its owners");
        assert!(rx.recv().is_err(), "the worker's channel closed with the endpoint");
    }

    #[test]
    fn an_injected_doe_fault_lands_at_the_mailboxs_next_access() {
        let (mut ep, _rx, _rig) = endpoint();
        let rd = |ep: &mut Endpoint, reg: u16| {
            let mut b = [0u8; 4];
            ep.ext_config_read(DOE_OFFSET + reg, &mut b);
            u32::from_le_bytes(b)
        };
        let dev = lock(&ep.secure).faulty_device(RID).unwrap();
        dev.doe(DoeFault::Error);
        assert_eq!(rd(&mut ep, doe::STATUS), doe::STATUS_ERROR);
        ep.ext_config_write(DOE_OFFSET + doe::CTRL, &doe::CTRL_ABORT.to_le_bytes());
        dev.doe(DoeFault::Busy { reads: 2 });
        assert_eq!((rd(&mut ep, doe::STATUS), rd(&mut ep, doe::STATUS), rd(&mut ep, doe::STATUS)), (doe::STATUS_BUSY, doe::STATUS_BUSY, 0));
        let fid = u32::from(RID);
        let m = doe_exchange(
            &mut ep,
            abi::doe::TDISP_VENDOR,
            abi::doe::TDISP_TYPE,
            &tdisp::request(tdisp::req::GET_DEVICE_INTERFACE_STATE, fid, &[]),
        );
        assert_eq!(tdisp::parse_response(&m), Some(Response::State(TdiState::ConfigUnlocked)), "works after");
    }

    /// A misbehaving device DMAs where the tool says: through the same checks as any DMA.
    #[test]
    fn a_rogue_dma_goes_through_the_iommu_like_any_other() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, 12, Perm::RW);
        let d = RogueDma { devid: RID, iova: 0x5000_0000, len: 16, write: true, t: false };
        rogue_dma(d, &r.secure, &mut r.mem, r.events.as_ref());
        assert_eq!(r.u64_at(0x30_0008), 0x5a5a_5a5a_5a5a_5a5a);
        rogue_dma(RogueDma { iova: 0x6000_0000, ..d }, &r.secure, &mut r.mem, r.events.as_ref());
        let dma = r.events_of("dma");
        assert_eq!((dma[0]["status"].as_str(), dma[0]["injected"].as_bool()), (Some("OK"), Some(true)));
        assert_eq!(dma[1]["status"].as_str(), Some("IO_PAGE_FAULT"), "unmapped: refused and logged");
        assert_eq!(r.events_of("translation_fault")[0]["iova"], "0x60000000");
        rogue_dma(RogueDma { t: true, ..d }, &r.secure, &mut r.mem, r.events.as_ref());
        assert_eq!(r.events_of("dma")[2]["status"].as_str(), Some("T1_REFUSED"), "T=1 without a TDI");
    }

    /// One DOE exchange through the endpoint's extended config space, as Linux's doe.c does it.
    fn doe_exchange(ep: &mut Endpoint, vendor: u16, ty: u8, payload: &[u8]) -> Vec<u8> {
        let wr = |ep: &mut Endpoint, reg: u16, v: u32| ep.ext_config_write(DOE_OFFSET + reg, &v.to_le_bytes());
        let rd = |ep: &mut Endpoint, reg: u16| {
            let mut b = [0u8; 4];
            ep.ext_config_read(DOE_OFFSET + reg, &mut b);
            u32::from_le_bytes(b)
        };
        let dwords: Vec<u32> = payload.chunks(4).map(|c| le(c) as u32).collect();
        wr(ep, doe::WRITE, u32::from(vendor) | u32::from(ty) << 16);
        wr(ep, doe::WRITE, 2 + dwords.len() as u32);
        for d in dwords {
            wr(ep, doe::WRITE, d);
        }
        wr(ep, doe::CTRL, doe::CTRL_GO);
        assert_eq!(rd(ep, doe::STATUS), doe::STATUS_DATA_OBJECT_READY);
        assert_eq!(rd(ep, doe::READ), u32::from(vendor) | u32::from(ty) << 16);
        wr(ep, doe::READ, 0);
        let len = rd(ep, doe::READ) as usize;
        wr(ep, doe::READ, 0);
        let mut out = Vec::new();
        for _ in 2..len {
            out.extend_from_slice(&rd(ep, doe::READ).to_le_bytes());
            wr(ep, doe::READ, 0);
        }
        assert_eq!(rd(ep, doe::STATUS), 0);
        out
    }

    #[test]
    fn tdisp_lock_start_stop_through_doe() {
        let (mut ep, _rx, rig) = endpoint();
        let fid = u32::from(RID);
        let state = |ep: &mut Endpoint| {
            let m = doe_exchange(
                ep,
                abi::doe::TDISP_VENDOR,
                abi::doe::TDISP_TYPE,
                &tdisp::request(tdisp::req::GET_DEVICE_INTERFACE_STATE, fid, &[]),
            );
            tdisp::parse_response(&m)
        };
        assert_eq!(state(&mut ep), Some(Response::State(TdiState::ConfigUnlocked)));
        let m = doe_exchange(
            &mut ep,
            abi::doe::TDISP_VENDOR,
            abi::doe::TDISP_TYPE,
            &tdisp::lock_interface(fid, tdisp::lock_flags::NO_FW_UPDATE, 0, 0),
        );
        let Some(Response::Locked { nonce }) = tdisp::parse_response(&m) else { panic!("LOCK: {m:x?}") };
        assert_eq!(state(&mut ep), Some(Response::State(TdiState::ConfigLocked)));
        let m = doe_exchange(&mut ep, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &tdisp::start_interface(fid, &nonce));
        assert_eq!(tdisp::parse_response(&m), Some(Response::Started));
        assert_eq!(state(&mut ep), Some(Response::State(TdiState::Run)));
        // The firmware's view (the responder the TIO commands reach) is the same TDI.
        assert_eq!(lock(&ep.secure).tdis().state(RID), TdiState::Run);
        let m = doe_exchange(&mut ep, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &tdisp::request(tdisp::req::STOP_INTERFACE, fid, &[]));
        assert_eq!(tdisp::parse_response(&m), Some(Response::Stopped));
        // START with a nonce other than LOCK's: INVALID_NONCE, and the TDI is in ERROR.
        doe_exchange(&mut ep, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &tdisp::lock_interface(fid, 0, 0, 0));
        let m = doe_exchange(&mut ep, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &tdisp::start_interface(fid, &[0; 32]));
        assert_eq!(tdisp::parse_response(&m), Some(Response::Error { code: tdisp::err::INVALID_NONCE, data: 0 }));
        assert_eq!(state(&mut ep), Some(Response::State(TdiState::Error)));
        // A config write while locked: ERROR too.
        doe_exchange(&mut ep, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &tdisp::request(tdisp::req::STOP_INTERFACE, fid, &[]));
        doe_exchange(&mut ep, abi::doe::TDISP_VENDOR, abi::doe::TDISP_TYPE, &tdisp::lock_interface(fid, 0, 0, 0));
        ep.config_written(0x04);
        assert_eq!(state(&mut ep), Some(Response::State(TdiState::Error)));
        let g = lock(&rig);
        let tr: Vec<_> = g
            .events_of("tdisp")
            .iter()
            .map(|e| format!("{}>{} {}", e["from"].as_str().unwrap(), e["to"].as_str().unwrap(), e["via"].as_str().unwrap()))
            .collect();
        assert_eq!(
            tr,
            [
                "CONFIG_UNLOCKED>CONFIG_LOCKED doe",
                "CONFIG_LOCKED>RUN doe",
                "RUN>CONFIG_UNLOCKED doe",
                "CONFIG_UNLOCKED>CONFIG_LOCKED doe",
                "CONFIG_LOCKED>ERROR doe",
                "ERROR>CONFIG_UNLOCKED doe",
                "CONFIG_UNLOCKED>CONFIG_LOCKED doe",
                "CONFIG_LOCKED>ERROR config write at 0x4",
            ]
        );
    }

    #[test]
    fn the_doe_capability_is_chained_as_version_2() {
        let (ep, _rx, _rig) = endpoint();
        assert_eq!(ep.ext_caps(), [(0x100, 0x0002_002e)]);
    }

    /// RMP checks need the daemon's guest RAM (SNP enable mirrors the RMP into it).
    #[test]
    fn rmp_blocks_t0_writes_to_private_pages_and_reports_hazards() {
        use crate::vfio::guest_mem::GuestRam;
        use rmp_model::ops::RmpState;
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("tiommu-ep-{}-{:?}", std::process::id(), std::thread::current().id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(&vec![0u8; RAM as usize]).unwrap();
        let ram = GuestRam::default();
        ram.map(0, RAM, f, 0).unwrap();
        let mut mem = ram.snapshot();
        let events = Arc::new(Collect::default());
        let (s, mut pt) = secure_on(&mut mem, events.clone(), (0x10_0000, 0x20_0000));
        pt.map(&mut mem, RING, RING_SPA, 12, Perm::RW).unwrap();
        pt.map(&mut mem, 0x5000_0000, 0x30_0000, 12, Perm::RW).unwrap();
        let secure = Mutex::new(s);
        let engine = Mutex::new(Engine { ring_base: RING, ring_size_log2: 4, ..Default::default() });
        let irqs = Irqs::default();
        let run = |i: u32, d: Descriptor| {
            let mut mem = ram.snapshot();
            mem.write(RING_SPA + u64::from(i) * 32, d.as_bytes()).unwrap();
            lock(&engine).tail = i + 1;
            run_ring(RID, &engine, &secure, &mut mem, events.as_ref(), &irqs);
            let mut b = [0u8; 2];
            mem.read(RING_SPA + u64::from(i) * 32 + DESC_STATUS, &mut b).unwrap();
            DmaStatus::from_code(u16::from_le_bytes(b))
        };
        assert_eq!(run(0, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 1)), Some(DmaStatus::Ok));
        lock(&secure).enable_snp(&mut ram.snapshot(), RAM >> 12).unwrap();
        // Enabling SNP drops the caches, so this DMA walks the tables and the mapping is live.
        assert_eq!(run(1, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 2)), Some(DmaStatus::Ok));
        let st = lock(&secure).rmpupdate(&mut ram.snapshot(), 0x30_0000, &RmpState::private(0x5000_0000, 1, rmp_model::PageSize::Size4K));
        assert_eq!(st, rmp_model::RmpStatus::Success);
        assert_eq!(run(2, desc(Op::Fill, DescFlags::empty(), 8, 0, 0x5000_0000, 3)), Some(DmaStatus::RmpPageFault));
        assert_eq!(ram.snapshot().read_u64(0x30_0000).unwrap(), 2, "the private page kept its bytes");
        let ev = lock(&events.0);
        assert!(ev.iter().any(|e| e["type"] == "rmp_violation" && e["iova"] == "0x50000000"));
        let hazards: Vec<_> = ev.iter().filter(|e| e["type"] == "hazard").collect();
        assert_eq!(hazards.len(), 1, "{ev:?}");
        assert_eq!((hazards[0]["iova"].as_str(), hazards[0]["spa"].as_str()), (Some("0x50000000"), Some("0x300000")));
    }
}
