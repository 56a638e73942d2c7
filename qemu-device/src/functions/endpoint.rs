//! The DMA endpoint: a descriptor ring in guest RAM, a doorbell, completion statuses and MSI-X.
//! Every access it makes, the ring included, goes through the secure IOMMU (translate, check) as
//! requests with its requester ID; a refused access moves nothing. The ring is processed on a
//! worker thread, never on the socket thread. Layouts: docs/device-abi.md.

use crate::function::{Bar, Irq, PciFunction, PciIds};
use crate::function::EventSink;
use crate::guest_mem::{GuestMem, GuestRam};
use crate::pci::doe::{self, Doe, DoeProtocol};
use crate::secure::{bdf, Refusal, SecureIommu};
use crossbeam_channel::Sender;
use iommu_model::mem::PhysMem;
use rmp_model::dma_check::DmaRefusal;
use rmp_model::tdisp::TdispResponder;
use serde_json::json;
use std::sync::{Arc, Mutex};

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x7102;
pub const ID_MAGIC: u32 = 0x414d_4454; // "TDMA"

pub mod reg {
    pub const ID: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const REQUESTER_ID: u64 = 0x08;
    pub const RING_BASE: u64 = 0x10;
    pub const RING_SIZE: u64 = 0x18;
    pub const TAIL: u64 = 0x20;
    pub const HEAD: u64 = 0x24;
    pub const STATUS: u64 = 0x28;
    pub const CTRL: u64 = 0x2c;
    pub const COMPLETED: u64 = 0x30;
}

pub mod op {
    pub const COPY: u8 = 1;
    pub const FILL: u8 = 2;
    /// Read the source and store its FNV-1a 64 hash in the descriptor's value field.
    pub const READ_HASH: u8 = 3;
}

pub mod flag {
    /// Issue the data accesses with the TLP T bit set (TDISP: only in RUN).
    pub const T: u8 = 1 << 0;
    pub const IRQ: u8 = 1 << 1;
}

/// Descriptor status codes written back at offset 2.
pub mod status {
    /// What the driver writes; the device never leaves it there.
    #[allow(dead_code)]
    pub const PENDING: u16 = 0;
    pub const OK: u16 = 1;
    pub const IO_PAGE_FAULT: u16 = 2;
    pub const RMP_PAGE_FAULT: u16 = 3;
    pub const T1_REFUSED: u16 = 4;
    pub const BAD_DESCRIPTOR: u16 = 5;
}

pub const STATUS_BUSY: u32 = 1 << 0;
pub const STATUS_HALTED: u32 = 1 << 1;
pub const CTRL_RESET: u32 = 1 << 0;
pub const CTRL_IRQ_EN: u32 = 1 << 1;
pub const DESC_SIZE: u64 = 32;
/// Largest transfer of one descriptor.
pub const MAX_LEN: u64 = 16 << 20;

/// The engine state shared between the socket thread (registers) and the worker (ring).
#[derive(Default)]
pub struct Engine {
    pub ring_base: u64,
    pub ring_size_log2: u32,
    pub tail: u32,
    pub head: u32,
    pub status: u32,
    pub ctrl: u32,
    pub completed: u32,
}

pub type Job = Box<dyn FnOnce() + Send>;

/// TDISP over DOE: a vendor-defined data object (vendor 0x1234, type 0x01) whose payload is the
/// TDISP message itself, in the clear. The real stack carries TDISP inside SPDM secured messages
/// (CMA/SPDM object types); without SPDM's cryptography the model skips that layer
/// (docs/device-abi.md).
pub const DOE_VENDOR: u16 = 0x1234;
pub const DOE_TYPE_TDISP: u8 = 0x01;
/// Offset of the DOE capability in extended config space.
pub const DOE_OFFSET: u16 = 0x100;

struct TdispOverDoe {
    rid: u16,
    responder: Arc<Mutex<TdispResponder>>,
    events: Arc<dyn EventSink>,
}

impl DoeProtocol for TdispOverDoe {
    fn vendor(&self) -> u16 {
        DOE_VENDOR
    }
    fn object_type(&self) -> u8 {
        DOE_TYPE_TDISP
    }
    fn respond(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut r = self.responder.lock().unwrap_or_else(|p| p.into_inner());
        let before = r.state();
        let resp = r.handle_request(payload);
        let after = r.state();
        if before != after {
            self.events.emit(json!({"type": "tdisp", "devid": bdf(self.rid), "from": before.name(), "to": after.name(), "via": "doe"}));
        }
        resp
    }
}

pub struct Endpoint {
    rid: u16,
    doe: Doe,
    tdisp: Arc<Mutex<TdispResponder>>,
    engine: Arc<Mutex<Engine>>,
    secure: Arc<Mutex<SecureIommu>>,
    ram: GuestRam,
    irq: Arc<dyn Irq>,
    jobs: Sender<Job>,
}

impl Endpoint {
    pub fn new(rid: u16, secure: Arc<Mutex<SecureIommu>>, ram: GuestRam, irq: Arc<dyn Irq>, jobs: Sender<Job>) -> Self {
        // The interface report lists BAR0 (range 0) as the TDI's MMIO.
        let ranges = vec![rmp_model::tdisp::MmioRange { first_page: 0, pages: 1, attributes: 0, range_id: 0 }];
        let tdisp = Arc::new(Mutex::new(TdispResponder::new(u32::from(rid), ranges)));
        let events = {
            let mut s = secure.lock().unwrap_or_else(|p| p.into_inner());
            s.tdisp.insert(rid, tdisp.clone());
            s.events.clone()
        };
        let doe = Doe::new(vec![Box::new(TdispOverDoe { rid, responder: tdisp.clone(), events })]);
        Endpoint { rid, doe, tdisp, engine: Arc::default(), secure, ram, irq, jobs }
    }

    fn doorbell(&self) {
        let (engine, secure, ram, irq, rid) = (self.engine.clone(), self.secure.clone(), self.ram.clone(), self.irq.clone(), self.rid);
        let job: Job = Box::new(move || run_ring(rid, &engine, &secure, &ram, irq.as_ref()));
        if self.jobs.send(job).is_err() {
            tracing::error!("endpoint {}: DMA worker is gone", bdf(rid));
        }
    }
}

/// Process descriptors from head to tail: at most one ring's worth per doorbell.
pub fn run_ring(rid: u16, engine: &Mutex<Engine>, secure: &Mutex<SecureIommu>, ram: &GuestRam, irq: &dyn Irq) {
    let mut mem = ram.snapshot();
    let (base, size, tail) = {
        let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
        if e.status & STATUS_HALTED != 0 || !(1..=12).contains(&e.ring_size_log2) {
            return;
        }
        e.status |= STATUS_BUSY;
        (e.ring_base, 1u32 << e.ring_size_log2, e.tail)
    };
    let mut raise = false;
    for _ in 0..size {
        let head = engine.lock().unwrap_or_else(|p| p.into_inner()).head;
        if head == tail % size {
            break;
        }
        let desc_iova = base.wrapping_add(u64::from(head) * DESC_SIZE);
        let mut s = secure.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut d) = dma_read(&mut s, &mut mem, rid, false, desc_iova, 32).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()) else {
            drop(s);
            let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
            e.status = (e.status & !STATUS_BUSY) | STATUS_HALTED;
            tracing::warn!("endpoint {}: ring fetch at {desc_iova:#x} refused; halted", bdf(rid));
            return;
        };
        let (st, value, timing) = execute(&mut s, &mut mem, rid, &d);
        d[2..4].copy_from_slice(&st.to_le_bytes());
        if let Some(v) = value {
            d[24..32].copy_from_slice(&v.to_le_bytes());
        }
        // The status write-back is a DMA write like any other.
        let wrote = dma_write(&mut s, &mut mem, rid, false, desc_iova, &d).is_ok();
        s.events.emit(json!({
            "type": "dma", "devid": bdf(rid), "index": head, "op": d[0], "t": d[1] & flag::T != 0,
            "len": u32::from_le_bytes(d[4..8].try_into().unwrap_or([0; 4])), "status": st, "status_written": wrote,
            "src": format!("{:#x}", u64::from_le_bytes(d[8..16].try_into().unwrap_or([0; 8]))),
            "dst": format!("{:#x}", u64::from_le_bytes(d[16..24].try_into().unwrap_or([0; 8]))),
            "copy_us": timing.map(|t| (t.0 * 10.0).round() / 10.0), "memcpy_us": timing.map(|t| (t.1 * 10.0).round() / 10.0),
        }));
        drop(s);
        let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
        e.head = (head + 1) % size;
        e.completed = e.completed.wrapping_add(1);
        raise |= d[1] & flag::IRQ != 0 && e.ctrl & CTRL_IRQ_EN != 0;
    }
    engine.lock().unwrap_or_else(|p| p.into_inner()).status &= !STATUS_BUSY;
    if raise {
        irq.raise(0);
    }
}

fn refusal_status(r: Refusal) -> u16 {
    match r {
        Refusal::Translation(_) => status::IO_PAGE_FAULT,
        Refusal::Rmp(DmaRefusal::TdiNotRun) => status::T1_REFUSED,
        Refusal::Rmp(_) => status::RMP_PAGE_FAULT,
        Refusal::BadLength => status::BAD_DESCRIPTOR,
    }
}

fn dma_read(s: &mut SecureIommu, mem: &mut GuestMem, rid: u16, t: bool, iova: u64, len: u64) -> Result<Vec<u8>, u16> {
    let chunks = s.dma(mem, rid, t, iova, len, false).map_err(refusal_status)?;
    let mut out = vec![0u8; len as usize];
    let mut at = 0usize;
    for (spa, n) in chunks {
        let n = n as usize;
        // A translated address outside guest RAM (a mapping to nowhere) reads as a failed request.
        mem.read(spa, &mut out[at..at + n]).map_err(|_| status::IO_PAGE_FAULT)?;
        at += n;
    }
    Ok(out)
}

fn dma_write(s: &mut SecureIommu, mem: &mut GuestMem, rid: u16, t: bool, iova: u64, data: &[u8]) -> Result<(), u16> {
    let chunks = s.dma(mem, rid, t, iova, data.len() as u64, true).map_err(refusal_status)?;
    // Every page was allowed; check every target is RAM before the first byte moves.
    let mut probe = [0u8; 1];
    for &(spa, n) in &chunks {
        if mem.read(spa, &mut probe).is_err() || mem.read(spa + n - 1, &mut probe).is_err() {
            return Err(status::IO_PAGE_FAULT);
        }
    }
    let mut at = 0usize;
    for (spa, n) in chunks {
        let n = n as usize;
        mem.write(spa, &data[at..at + n]).map_err(|_| status::IO_PAGE_FAULT)?;
        at += n;
    }
    Ok(())
}

/// Adjacent chunks merged, so a 2 MiB mapping is one run.
fn runs(chunks: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(chunks.len());
    for (spa, n) in chunks {
        match out.last_mut() {
            Some((s, l)) if *s + *l == spa => *l += n,
            _ => out.push((spa, n)),
        }
    }
    out
}

/// COPY: both sides translated and checked page by page before anything moves, then copied guest
/// memory to guest memory. Returns, for docs/performance.md, how long the same copy takes again
/// without the IOMMU path.
fn copy(s: &mut SecureIommu, mem: &mut GuestMem, rid: u16, t: bool, src: u64, dst: u64, len: u64) -> Result<(f64, f64), u16> {
    let start = std::time::Instant::now();
    let from = runs(s.dma(mem, rid, t, src, len, false).map_err(refusal_status)?);
    let to = runs(s.dma(mem, rid, t, dst, len, true).map_err(refusal_status)?);
    // Every target must be RAM before the first byte moves.
    let mut probe = [0u8; 1];
    for &(spa, n) in from.iter().chain(&to) {
        if mem.read(spa, &mut probe).is_err() || mem.read(spa + n - 1, &mut probe).is_err() {
            return Err(status::IO_PAGE_FAULT);
        }
    }
    move_runs(mem, &from, &to)?;
    let dma_us = start.elapsed().as_secs_f64() * 1e6;
    // The same bytes again between the same guest pages, with no translation or check: the
    // baseline docs/performance.md compares the DMA path with.
    let t0 = std::time::Instant::now();
    move_runs(mem, &from, &to)?;
    Ok((dma_us, t0.elapsed().as_secs_f64() * 1e6))
}

fn move_runs(mem: &mut GuestMem, from: &[(u64, u64)], to: &[(u64, u64)]) -> Result<(), u16> {
    let (mut i, mut j, mut off_i, mut off_j) = (0, 0, 0u64, 0u64);
    while i < from.len() && j < to.len() {
        let n = (from[i].1 - off_i).min(to[j].1 - off_j);
        // A run may span two guest RAM regions; then copy it through a bounce buffer.
        if mem.copy(from[i].0 + off_i, to[j].0 + off_j, n as usize).is_err() {
            let mut b = vec![0u8; n as usize];
            mem.read(from[i].0 + off_i, &mut b).map_err(|_| status::IO_PAGE_FAULT)?;
            mem.write(to[j].0 + off_j, &b).map_err(|_| status::IO_PAGE_FAULT)?;
        }
        off_i += n;
        off_j += n;
        if off_i == from[i].1 {
            i += 1;
            off_i = 0;
        }
        if off_j == to[j].1 {
            j += 1;
            off_j = 0;
        }
    }
    Ok(())
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// One descriptor: 0 op, 1 flags, 2..4 status, 4..8 length, 8..16 source, 16..24 destination,
/// 24..32 value (fill pattern in, hash out). Returns the status, the value to write back, and for
/// a COPY the time it took through the IOMMU path and the time the same copy took without it
/// (docs/performance.md).
fn execute(s: &mut SecureIommu, mem: &mut GuestMem, rid: u16, d: &[u8; 32]) -> (u16, Option<u64>, Option<(f64, f64)>) {
    let len = u64::from(u32::from_le_bytes(d[4..8].try_into().unwrap_or([0; 4])));
    let src = u64::from_le_bytes(d[8..16].try_into().unwrap_or([0; 8]));
    let dst = u64::from_le_bytes(d[16..24].try_into().unwrap_or([0; 8]));
    let value = u64::from_le_bytes(d[24..32].try_into().unwrap_or([0; 8]));
    let t = d[1] & flag::T != 0;
    if len == 0 || len > MAX_LEN || d[1] & !(flag::T | flag::IRQ) != 0 {
        return (status::BAD_DESCRIPTOR, None, None);
    }
    let mut timing = None;
    let r = match d[0] {
        op::COPY => copy(s, mem, rid, t, src, dst, len).map(|us| {
            timing = Some(us);
            None
        }),
        op::FILL => {
            let pattern = value.to_le_bytes();
            let data: Vec<u8> = (0..len as usize).map(|i| pattern[i % 8]).collect();
            dma_write(s, mem, rid, t, dst, &data).map(|()| None)
        }
        op::READ_HASH => dma_read(s, mem, rid, t, src, len).map(|data| Some(fnv1a(&data))),
        _ => Err(status::BAD_DESCRIPTOR),
    };
    match r {
        Ok(v) => (status::OK, v, timing),
        Err(st) => (st, None, None),
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
        PciIds { vendor: VENDOR, device: DEVICE, subsystem_vendor: VENDOR, subsystem: DEVICE, class: 0xff_00_00, revision: 1 }
    }

    fn bars(&self) -> Vec<Bar> {
        vec![Bar { index: 0, size: 0x1000 }]
    }

    fn msix_vectors(&self) -> u16 {
        1
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let e = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let v: u64 = match (bar, offset & !3) {
            (0, reg::ID) => u64::from(ID_MAGIC),
            (0, reg::VERSION) => 1,
            (0, reg::REQUESTER_ID) => u64::from(self.rid),
            (0, reg::RING_BASE) => e.ring_base,
            (0, 0x14) => e.ring_base >> 32,
            (0, reg::RING_SIZE) => u64::from(e.ring_size_log2),
            (0, reg::TAIL) => u64::from(e.tail),
            (0, reg::HEAD) => u64::from(e.head),
            (0, reg::STATUS) => u64::from(e.status),
            (0, reg::CTRL) => u64::from(e.ctrl),
            (0, reg::COMPLETED) => u64::from(e.completed),
            _ => 0,
        };
        let v = if data.len() == 8 && offset & !3 == reg::RING_BASE { e.ring_base } else { v };
        let b = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&b[..n]);
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let v = le(data);
        let doorbell = {
            let mut e = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            match offset {
                reg::RING_BASE if data.len() == 8 => e.ring_base = v,
                reg::RING_BASE => e.ring_base = (e.ring_base & !0xffff_ffff) | (v & 0xffff_ffff),
                0x14 => e.ring_base = (e.ring_base & 0xffff_ffff) | (v << 32),
                reg::RING_SIZE => e.ring_size_log2 = (v as u32).min(13),
                reg::TAIL => e.tail = v as u32,
                reg::CTRL => {
                    e.ctrl = v as u32 & CTRL_IRQ_EN;
                    if v as u32 & CTRL_RESET != 0 {
                        e.head = 0;
                        e.tail = 0;
                        e.status = 0;
                    }
                }
                _ => {}
            }
            offset == reg::TAIL
        };
        if doorbell {
            self.doorbell();
        }
    }

    fn ext_caps(&self) -> Vec<(u16, u32)> {
        vec![(DOE_OFFSET, doe::CAP_ID | 1 << 16)]
    }

    fn ext_config_read(&mut self, offset: u16, data: &mut [u8]) {
        let reg = offset.wrapping_sub(DOE_OFFSET);
        let v = if reg % 4 == 0 && data.len() == 4 { self.doe.read(reg) } else { 0 };
        let b = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&b[..n]);
    }

    fn ext_config_write(&mut self, offset: u16, data: &[u8]) {
        let reg = offset.wrapping_sub(DOE_OFFSET);
        if reg % 4 == 0 && data.len() == 4 {
            self.doe.write(reg, le(data) as u32);
        }
    }

    fn config_written(&mut self, offset: u64) {
        // TDISP: a configuration change while locked moves the TDI to ERROR.
        let mut r = self.tdisp.lock().unwrap_or_else(|p| p.into_inner());
        let before = r.state();
        r.config_changed();
        if r.state() != before {
            let events = self.secure.lock().unwrap_or_else(|p| p.into_inner()).events.clone();
            events.emit(json!({"type": "tdisp", "devid": bdf(self.rid), "from": before.name(), "to": r.state().name(), "via": format!("config write at {offset:#x}")}));
        }
    }

    fn reset(&mut self) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = Engine::default();
        if let Some(r) = self.secure.lock().unwrap_or_else(|p| p.into_inner()).rmp.as_mut() {
            r.hazards.unregister_requester(self.rid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Collect;
    use iommu_model::amdvi::builder::V1Builder;
    use iommu_model::amdvi::dte::Dte;
    use iommu_model::amdvi::mmio::{self, control};
    use iommu_model::walk::Perm;
    use rmp_model::ops::RmpState;
    use std::io::Write;

    const RID: u16 = 0x20;
    const RAM: u64 = 8 << 20;
    const RING: u64 = 0x1000_0000;

    struct NoIrq;
    impl Irq for NoIrq {
        fn raise(&self, _: u16) {}
    }

    struct Rig {
        ram: GuestRam,
        secure: Arc<Mutex<SecureIommu>>,
        events: Arc<Collect>,
        engine: Mutex<Engine>,
        pt: V1Builder,
    }

    fn rig() -> Rig {
        let path = std::env::temp_dir().join(format!("tiommu-ep-{}-{:?}", std::process::id(), std::thread::current().id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(&vec![0u8; RAM as usize]).unwrap();
        let ram = GuestRam::default();
        ram.map(0, RAM, f, 0).unwrap();
        let mut mem = ram.snapshot();
        let pt = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 4).unwrap();
        mem.write(0x1000 + u64::from(RID) * 32, &Dte::translated(pt.root, 4, 1, Perm::RW).to_bytes()).unwrap();
        let events = Arc::new(Collect::default());
        let secure = Arc::new(Mutex::new(SecureIommu::new(events.clone(), Arc::new(NoIrq))));
        {
            let mut s = secure.lock().unwrap();
            s.amdvi.mmio_write(&mut mem, mmio::DEV_TABLE_BASE, 8, 0x1000);
            s.amdvi.mmio_write(&mut mem, mmio::CONTROL, 8, control::IOMMU_EN);
        }
        let mut r = Rig { ram, secure, events, engine: Mutex::new(Engine { ring_base: RING, ring_size_log2: 4, ..Default::default() }), pt };
        r.map(RING, 0x20_0000, Perm::RW);
        r
    }

    impl Rig {
        fn map(&mut self, iova: u64, spa: u64, perm: Perm) {
            let mut mem = self.ram.snapshot();
            self.pt.map(&mut mem, iova, spa, 12, perm).unwrap();
        }
        /// Write descriptor `i`, ring the doorbell, run the worker inline; the status written back.
        fn run(&self, i: u32, d: [u8; 32]) -> u16 {
            let mut mem = self.ram.snapshot();
            mem.write(0x20_0000 + u64::from(i) * 32, &d).unwrap();
            self.engine.lock().unwrap().tail = i + 1;
            run_ring(RID, &self.engine, &self.secure, &self.ram, &NoIrq);
            let mut st = [0u8; 2];
            mem.read(0x20_0000 + u64::from(i) * 32 + 2, &mut st).unwrap();
            u16::from_le_bytes(st)
        }
        fn u64_at(&self, spa: u64) -> u64 {
            self.ram.snapshot().read_u64(spa).unwrap()
        }
    }

    fn desc(op: u8, flags: u8, len: u32, src: u64, dst: u64, value: u64) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0] = op;
        d[1] = flags;
        d[4..8].copy_from_slice(&len.to_le_bytes());
        d[8..16].copy_from_slice(&src.to_le_bytes());
        d[16..24].copy_from_slice(&dst.to_le_bytes());
        d[24..32].copy_from_slice(&value.to_le_bytes());
        d
    }

    #[test]
    fn copy_fill_and_hash_through_the_iommu() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, Perm::RW);
        r.map(0x5000_1000, 0x30_1000, Perm::RW);
        r.map(0x6000_0000, 0x40_0000, Perm::RW);
        r.map(0x6000_1000, 0x40_1000, Perm::RW);
        assert_eq!(r.run(0, desc(op::FILL, 0, 0x2000, 0, 0x5000_0000, 0x0102_0304_0506_0708)), status::OK);
        assert_eq!(r.u64_at(0x30_1ff8), 0x0102_0304_0506_0708, "fill crossed the page");
        assert_eq!(r.run(1, desc(op::COPY, 0, 0x1800, 0x5000_0800, 0x6000_0000, 0)), status::OK);
        assert_eq!(r.u64_at(0x40_17f8), 0x0102_0304_0506_0708);
        assert_eq!(r.u64_at(0x40_1800), 0, "no byte past the length");
        assert_eq!(r.run(2, desc(op::READ_HASH, 0, 8, 0x6000_0000, 0, 0)), status::OK);
        let mut v = [0u8; 8];
        r.ram.snapshot().read(0x20_0000 + 2 * 32 + 24, &mut v).unwrap();
        assert_eq!(u64::from_le_bytes(v), fnv1a(&0x0102_0304_0506_0708u64.to_le_bytes()));
    }

    #[test]
    fn refused_and_hostile_descriptors_move_nothing() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, Perm::RW);
        r.map(0x5000_2000, 0x30_2000, Perm::new(true, false));
        r.map(0x7000_0000, 0x4000_0000, Perm::RW); // an IOVA mapped past guest RAM
        assert_eq!(r.run(0, desc(op::FILL, 0, 8, 0, 0x7000_0000, 1)), status::IO_PAGE_FAULT, "past guest RAM");
        assert_eq!(r.run(1, desc(op::FILL, 0, 8, 0, 0x9000_0000, 1)), status::IO_PAGE_FAULT, "unmapped");
        // A copy whose destination's second page is read-only: nothing moves, not even page one.
        assert_eq!(r.run(2, desc(op::COPY, 0, 0x2000, 0x5000_0000, 0x5000_1000, 0)), status::IO_PAGE_FAULT);
        assert_eq!(r.run(3, desc(op::FILL, 0, 0x2000, 0, 0x5000_1000, 7)), status::IO_PAGE_FAULT);
        assert_eq!(r.u64_at(0x30_1000), 0, "a blocked transfer moved bytes");
        assert_eq!(r.run(4, desc(op::FILL, 0, (MAX_LEN + 1) as u32, 0, 0x5000_0000, 1)), status::BAD_DESCRIPTOR);
        assert_eq!(r.run(5, desc(op::FILL, 0x80, 8, 0, 0x5000_0000, 1)), status::BAD_DESCRIPTOR);
        assert_eq!(r.run(6, desc(9, 0, 8, 0, 0x5000_0000, 1)), status::BAD_DESCRIPTOR);
        assert_eq!(r.run(7, desc(op::FILL, flag::T, 8, 0, 0x5000_0000, 1)), status::T1_REFUSED, "T=1 without TIO");
        let faults = r.events.0.lock().unwrap().iter().filter(|e| e["type"] == "translation_fault").count();
        assert_eq!(faults, 3, "unmapped, and the read-only page twice; past-RAM is no IOMMU event");
    }

    #[test]
    fn a_ring_outside_guest_ram_halts_the_engine() {
        let r = rig();
        {
            let mut e = r.engine.lock().unwrap();
            e.ring_base = 0xdead_0000;
            e.tail = 3;
        }
        run_ring(RID, &r.engine, &r.secure, &r.ram, &NoIrq);
        let e = r.engine.lock().unwrap();
        assert_eq!((e.status & STATUS_HALTED, e.head), (STATUS_HALTED, 0));
        drop(e);
        // A ring size out of range does no work at all.
        let r = rig();
        r.engine.lock().unwrap().ring_size_log2 = 13;
        r.engine.lock().unwrap().tail = 1;
        run_ring(RID, &r.engine, &r.secure, &r.ram, &NoIrq);
        assert_eq!(r.engine.lock().unwrap().head, 0);
    }

    #[test]
    fn rmp_blocks_t0_writes_to_private_pages_and_reports_hazards() {
        let mut r = rig();
        r.map(0x5000_0000, 0x30_0000, Perm::RW);
        assert_eq!(r.run(0, desc(op::FILL, 0, 8, 0, 0x5000_0000, 1)), status::OK);
        {
            let mut s = r.secure.lock().unwrap();
            let mut mem = r.ram.snapshot();
            s.enable_snp(&mut mem, RAM >> 12);
        }
        // Enabling SNP drops the caches, so this DMA walks the tables and the mapping is live.
        assert_eq!(r.run(1, desc(op::FILL, 0, 8, 0, 0x5000_0000, 2)), status::OK);
        let st = {
            let mut s = r.secure.lock().unwrap();
            let mut mem = r.ram.snapshot();
            s.rmpupdate(&mut mem, 0x30_0000, &RmpState::private(0x5000_0000, 1, rmp_model::PageSize::Size4K))
        };
        assert_eq!(st, rmp_model::RmpStatus::Success);
        assert_eq!(r.run(2, desc(op::FILL, 0, 8, 0, 0x5000_0000, 3)), status::RMP_PAGE_FAULT);
        assert_eq!(r.u64_at(0x30_0000), 2, "the private page kept its bytes");
        let ev = r.events.0.lock().unwrap();
        assert!(ev.iter().any(|e| e["type"] == "rmp_violation" && e["iova"] == "0x50000000"));
        let hazards: Vec<_> = ev.iter().filter(|e| e["type"] == "hazard").collect();
        assert_eq!(hazards.len(), 1, "{ev:?}");
        assert_eq!((hazards[0]["iova"].as_str(), hazards[0]["spa"].as_str()), (Some("0x50000000"), Some("0x300000")));
    }
}
