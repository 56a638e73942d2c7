//! A standard virtio-iommu device (virtio 1.2 §5.13) on the virtio-pci modern transport, so the
//! guest kernel's own driver (Linux drivers/iommu/virtio-iommu.c) programs the secure IOMMU. Its
//! requests land in domains whose page tables the daemon owns (domains.rs); endpoint DMA
//! through them takes the iommu-model walk and the RMP check (secure/).
//!
//! The request queue is processed on the notification itself: each request is a few table
//! writes in the daemon's memory, and Linux waits for the answer spinning (viommu_sync_req), so
//! a round trip through the DMA worker would only add latency. At most one queue's worth of
//! requests is taken per notification.

pub mod domains;
pub mod proto;
pub mod transport;

use crate::vfio::function::{Bar, EventSink, Irq, PciFunction, PciIds};
use crate::vfio::guest_mem::GuestRam;
use abi::event::{self as ev, Event};
use domains::{reply_len, Domains};
use proto::{config, feature, Fault, Request};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use transport::{layout, Effect, Transport, NO_VECTOR, VIRTIO_F_VERSION_1};
use virtio_queue::{QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

pub const FEATURES: u64 = VIRTIO_F_VERSION_1 | feature::INPUT_RANGE | feature::DOMAIN_RANGE | feature::MAP_UNMAP | feature::PROBE;
pub const REQUEST_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const QUEUE_MAX: u16 = 256;
/// Configuration changes, request queue, event queue: one each, as Linux's vp_find_vqs_msix asks.
pub const VECTORS: u16 = 3;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct VirtioIommu {
    /// Shared with the event queue, which the DMA worker posts faults to.
    transport: Arc<Mutex<Transport>>,
    pub domains: Arc<Mutex<Domains>>,
    ram: GuestRam,
    irq: Arc<dyn Irq>,
    events: Arc<dyn EventSink>,
}

/// The device's event queue, where the DMA path posts the faults the secure IOMMU returned for
/// DMA through a domain.
pub struct EventQueue {
    transport: Arc<Mutex<Transport>>,
    ram: GuestRam,
    irq: Arc<dyn Irq>,
    events: Arc<dyn EventSink>,
}

impl crate::secure::FaultQueue for EventQueue {
    fn post(&self, fault: Fault) {
        post_fault(&self.transport, &self.ram, self.irq.as_ref(), self.events.as_ref(), fault);
    }
}

impl VirtioIommu {
    /// A virtio-iommu translating `endpoints` (their requester IDs, as the VIOT lists them).
    pub fn new(endpoints: &[u16], ram: GuestRam, irq: Arc<dyn Irq>, events: Arc<dyn EventSink>) -> Self {
        let transport = Arc::new(Mutex::new(Transport::new(FEATURES, &[QUEUE_MAX, QUEUE_MAX], VECTORS)));
        let domains = Domains::new(endpoints.iter().map(|&e| u32::from(e)));
        VirtioIommu { transport, domains: Arc::new(Mutex::new(domains)), ram, irq, events }
    }

    /// The event queue, for the secure IOMMU's DMA path.
    pub fn event_queue(&self) -> Arc<EventQueue> {
        Arc::new(EventQueue {
            transport: self.transport.clone(),
            ram: self.ram.clone(),
            irq: self.irq.clone(),
            events: self.events.clone(),
        })
    }

    fn config_bytes() -> [u8; config::LEN] {
        let mut c = [0u8; config::LEN];
        let mut put = |off: u64, b: &[u8]| {
            if let Some(dst) = c.get_mut(off as usize..).and_then(|c| c.get_mut(..b.len())) {
                dst.copy_from_slice(b);
            }
        };
        put(config::PAGE_SIZE_MASK, &domains::PAGE_SIZE_MASK.to_le_bytes());
        put(config::INPUT_START, &0u64.to_le_bytes());
        put(config::INPUT_END, &domains::INPUT_END.to_le_bytes());
        put(config::DOMAIN_START, &domains::DOMAIN_START.to_le_bytes());
        put(config::DOMAIN_END, &domains::DOMAIN_END.to_le_bytes());
        put(config::PROBE_SIZE, &domains::PROBE_SIZE.to_le_bytes());
        c
    }

    fn forget(&mut self) {
        let mut d = lock(&self.domains);
        d.domains.clear();
        d.attached.clear();
    }

    /// Take the request queue's available chains, answer each, and signal the queue's vector.
    fn process_requests(&mut self) {
        let snapshot = self.ram.snapshot();
        let mem: &GuestMemoryMmap = snapshot.memory();
        let mut transport = lock(&self.transport);
        let q = &mut transport.queues[usize::from(REQUEST_QUEUE)];
        if !q.is_valid(mem) {
            crate::warn_limited!("virtio-iommu: request queue notified but not valid in guest RAM");
            return;
        }
        let mut used = 0u32;
        for _ in 0..q.size() {
            let Some(chain) = q.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            let len = answer(mem, chain, &self.domains, self.events.as_ref());
            if q.add_used(mem, head, len).is_err() {
                break;
            }
            used = used.saturating_add(1);
        }
        if used > 0 {
            transport.set_isr_queue();
            let v = transport.queue_msix[usize::from(REQUEST_QUEUE)];
            if v != NO_VECTOR {
                self.irq.raise(v);
            }
        }
    }
}

/// Write a fault record into the next event queue buffer and signal the event queue's vector.
/// Without a buffer (the driver has not replenished them) the fault is dropped, which §5.13.6.9
/// allows; the event stream records it either way.
fn post_fault(transport: &Mutex<Transport>, ram: &GuestRam, irq: &dyn Irq, events: &dyn EventSink, f: Fault) {
    let snapshot = ram.snapshot();
    let mem: &GuestMemoryMmap = snapshot.memory();
    let mut t = lock(transport);
    let posted = t.driver_ok() && {
        let q = &mut t.queues[usize::from(EVENT_QUEUE)];
        q.is_valid(mem)
            && q.pop_descriptor_chain(mem).is_some_and(|chain| {
                let head = chain.head_index();
                let written = match Writer::<()>::new(mem, chain) {
                    Ok(mut w) if w.available_bytes() >= Fault::LEN => w.write_all(&f.to_bytes()).map_or(0, |()| Fault::LEN as u32),
                    _ => 0,
                };
                q.add_used(mem, head, written).is_ok() && written > 0
            })
    };
    if posted {
        t.set_isr_queue();
        let v = t.queue_msix[usize::from(EVENT_QUEUE)];
        drop(t);
        if v != NO_VECTOR {
            irq.raise(v);
        }
    } else {
        drop(t);
    }
    let (devid, endpoint) = endpoint_id(f.endpoint);
    events.emit(Event::ViommuFault(ev::ViommuFault {
        devid,
        endpoint,
        address: f.address,
        reason: ev::Code::from_number(f.reason.into()),
        flags: f.flags,
        posted,
    }));
}

/// An endpoint id as the records name it: the requester id it is (the VIOT's endpoint ids are
/// requester ids), or as it came when it cannot be one.
fn endpoint_id(endpoint: u32) -> (Option<abi::Bdf>, Option<u32>) {
    match u16::try_from(endpoint) {
        Ok(rid) => (Some(abi::Bdf(rid)), None),
        Err(_) => (None, Some(endpoint)),
    }
}

/// Answer one request chain; the bytes written to its device-writable part (0 when it has no
/// room for the tail or cannot be read).
fn answer(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    domains: &Mutex<Domains>,
    events: &dyn EventSink,
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (Reader::<()>::new(mem, chain.clone()), Writer::<()>::new(mem, chain)) else { return 0 };
    let mut buf = [0u8; 72];
    let n = reader.available_bytes().min(buf.len());
    if reader.read_exact(&mut buf[..n]).is_err() {
        return 0;
    }
    let Some(rlen) = reply_len(writer.available_bytes()) else { return 0 };
    let mut reply = vec![0u8; rlen];
    let request = Request::decode(&buf[..n]);
    let st = match request {
        Err(s) => s,
        Ok(r) => {
            let mut d = lock(domains);
            match r {
                Request::Attach { domain, endpoint, flags } => d.attach(domain, endpoint, flags),
                Request::Detach { domain, endpoint } => d.detach(domain, endpoint),
                Request::Map { domain, virt_start, virt_end, phys_start, flags } => d.map(domain, virt_start, virt_end, phys_start, flags),
                Request::Unmap { domain, virt_start, virt_end } => d.unmap(domain, virt_start, virt_end),
                Request::Probe { endpoint } => {
                    // reply_len keeps rlen >= TAIL_LEN.
                    let props = rlen.saturating_sub(proto::TAIL_LEN);
                    d.probe(endpoint, &mut reply[..props])
                }
            }
        }
    };
    reply[rlen.saturating_sub(proto::TAIL_LEN)] = st;
    let status = ev::Code::from_number(st.into());
    let with_endpoint = |req: &str, domain: Option<u32>, endpoint: u32| {
        let (devid, endpoint) = endpoint_id(endpoint);
        ev::Viommu { req: req.into(), domain, devid, endpoint, status, ..Default::default() }
    };
    let record = match request {
        Ok(Request::Attach { domain, endpoint, .. }) => with_endpoint("attach", Some(domain), endpoint),
        Ok(Request::Detach { domain, endpoint }) => with_endpoint("detach", Some(domain), endpoint),
        Ok(Request::Map { domain, virt_start, virt_end, phys_start, flags }) => ev::Viommu {
            req: "map".into(),
            domain: Some(domain),
            virt_start: Some(virt_start),
            virt_end: Some(virt_end),
            phys_start: Some(phys_start),
            flags: Some(flags),
            // Pages the driver asked for (for VFIO type1: the pages the kernel pinned).
            pages: virt_end.checked_sub(virt_start).map(|n| (n >> 12).saturating_add(1)),
            status,
            ..Default::default()
        },
        Ok(Request::Unmap { domain, virt_start, virt_end }) => ev::Viommu {
            req: "unmap".into(),
            domain: Some(domain),
            virt_start: Some(virt_start),
            virt_end: Some(virt_end),
            status,
            ..Default::default()
        },
        Ok(Request::Probe { endpoint }) => with_endpoint("probe", None, endpoint),
        Err(_) => ev::Viommu {
            req: buf.first().copied().filter(|_| n > 0).map_or("short".to_string(), |t| format!("type {t}")),
            status,
            ..Default::default()
        },
    };
    events.emit(Event::Viommu(record));
    if writer.write_all(&reply).is_err() {
        return writer.bytes_written() as u32;
    }
    rlen as u32
}

impl PciFunction for VirtioIommu {
    fn ids(&self) -> PciIds {
        let id = abi::pci::VIRTIO_IOMMU;
        // Modern-only devices have revision 1 (§4.1.2.1); class "other system peripheral", as QEMU's.
        PciIds { vendor: id.vendor, device: id.device, subsystem_vendor: id.vendor, subsystem: 0x1100, class: id.class, revision: 1 }
    }

    fn bars(&self) -> Vec<Bar> {
        vec![Bar { index: layout::BAR, size: layout::BAR_SIZE }]
    }

    fn msix_vectors(&self) -> u16 {
        VECTORS
    }

    fn std_caps(&self) -> Vec<Vec<u8>> {
        Transport::caps()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != layout::BAR {
            data.fill(0);
            return;
        }
        if lock(&self.transport).read(offset, data) {
            return;
        }
        data.fill(0);
        if let Some(rel) = offset.checked_sub(layout::DEVICE).filter(|&r| r < layout::DEVICE_LEN) {
            let c = Self::config_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = c.get((rel as usize).saturating_add(i)).copied().unwrap_or(0);
            }
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        // The configuration is read-only (bypass needs VIRTIO_IOMMU_F_BYPASS_CONFIG, not offered).
        if bar != layout::BAR {
            return;
        }
        let effect = lock(&self.transport).write(offset, data);
        match effect {
            Effect::Reset => self.forget(),
            Effect::Notify(REQUEST_QUEUE) => self.process_requests(),
            // Event buffers stay with the device until there is a fault to report.
            Effect::Notify(_) | Effect::None => {}
        }
    }

    fn reset(&mut self) {
        lock(&self.transport).reset();
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Collect;
    use crate::testing::Irqs;
    use iommu_model::mem::PhysMem;
    use proto::{req, status};
    use transport::common;

    const RAM: u64 = 4 << 20;
    const EP: u16 = 0x20;
    // Queue layout in guest RAM (split virtqueue, §2.7): 256 entries.
    const DESC: u64 = 0x10_0000;
    const AVAIL: u64 = 0x11_0000;
    const USED: u64 = 0x12_0000;
    const BUFS: u64 = 0x20_0000;
    const EDESC: u64 = 0x13_0000;
    const EAVAIL: u64 = 0x14_0000;
    const EUSED: u64 = 0x15_0000;
    const EBUFS: u64 = 0x30_0000;

    struct Rig {
        dev: VirtioIommu,
        ram: GuestRam,
        irqs: Arc<Irqs>,
        events: Arc<Collect>,
        avail: u16,
    }

    fn file_ram() -> GuestRam {
        let path = std::env::temp_dir().join(format!("tiommu-viommu-{}-{:?}", std::process::id(), std::thread::current().id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(&vec![0u8; RAM as usize]).unwrap();
        let ram = GuestRam::default();
        ram.map(0, RAM, f, 0).unwrap();
        ram
    }

    impl Rig {
        fn w(&mut self, off: u64, v: u64, len: usize) {
            self.dev.bar_write(0, off, &v.to_le_bytes()[..len]);
        }
        fn r(&mut self, off: u64, len: usize) -> u64 {
            let mut b = [0u8; 8];
            self.dev.bar_read(0, off, &mut b[..len]);
            u64::from_le_bytes(b)
        }
        /// Linux's virtio_pci_modern probe and virtio-iommu setup, register by register.
        fn new() -> Rig {
            let ram = file_ram();
            let irqs = Arc::new(Irqs::default());
            let events = Arc::new(Collect::default());
            let dev = VirtioIommu::new(&[EP], ram.clone(), irqs.clone(), events.clone());
            let mut r = Rig { dev, ram, irqs, events, avail: 0 };
            r.setup();
            r
        }

        fn setup(&mut self) {
            let r = self;
            r.avail = 0;
            let mut m = r.ram.snapshot();
            m.write(AVAIL, &[0; 4]).unwrap();
            m.write(USED, &[0; 4]).unwrap();
            r.w(common::DEVICE_STATUS, 3, 1);
            r.w(common::DEVICE_FEATURE_SELECT, 0, 4);
            let lo = r.r(common::DEVICE_FEATURE, 4);
            r.w(common::DEVICE_FEATURE_SELECT, 1, 4);
            let hi = r.r(common::DEVICE_FEATURE, 4);
            assert_eq!(lo | hi << 32, FEATURES);
            r.w(common::DRIVER_FEATURE_SELECT, 0, 4);
            r.w(common::DRIVER_FEATURE, lo, 4);
            r.w(common::DRIVER_FEATURE_SELECT, 1, 4);
            r.w(common::DRIVER_FEATURE, hi, 4);
            r.w(common::DEVICE_STATUS, 0xb, 1);
            assert_eq!(r.r(common::DEVICE_STATUS, 1), 0xb);
            r.w(common::CONFIG_MSIX_VECTOR, 0, 2);
            r.w(common::QUEUE_SELECT, 0, 2);
            r.w(common::QUEUE_MSIX_VECTOR, 1, 2);
            r.w(common::QUEUE_DESC, DESC, 4);
            r.w(common::QUEUE_DESC + 4, 0, 4);
            r.w(common::QUEUE_DRIVER, AVAIL, 4);
            r.w(common::QUEUE_DRIVER + 4, 0, 4);
            r.w(common::QUEUE_DEVICE, USED, 4);
            r.w(common::QUEUE_DEVICE + 4, 0, 4);
            r.w(common::QUEUE_ENABLE, 1, 2);
            r.w(common::QUEUE_SELECT, 1, 2);
            r.w(common::QUEUE_MSIX_VECTOR, 2, 2);
            r.w(common::QUEUE_DESC, EDESC, 8);
            r.w(common::QUEUE_DRIVER, EAVAIL, 8);
            r.w(common::QUEUE_DEVICE, EUSED, 8);
            r.w(common::QUEUE_ENABLE, 1, 2);
            r.w(common::DEVICE_STATUS, 0xf, 1);
        }

        /// Offer `n` event buffers of `len` bytes, as viommu_fill_evtq does.
        fn fill_events(&mut self, n: u16, len: u32) {
            let mut m = self.ram.snapshot();
            for i in 0..n {
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&(EBUFS + u64::from(i) * 0x100).to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&2u16.to_le_bytes());
                m.write(EDESC + u64::from(i) * 16, &d).unwrap();
                m.write(EAVAIL + 4 + u64::from(i) * 2, &i.to_le_bytes()).unwrap();
            }
            m.write(EAVAIL + 2, &n.to_le_bytes()).unwrap();
        }

        /// The event queue's used index and its first record.
        fn first_event(&self) -> (u16, u32, Vec<u8>) {
            let m = self.ram.snapshot();
            let mut b = [0u8; 2];
            m.read(EUSED + 2, &mut b).unwrap();
            let mut e = [0u8; 8];
            m.read(EUSED + 4, &mut e).unwrap();
            let mut rec = vec![0u8; 24];
            m.read(EBUFS, &mut rec).unwrap();
            (u16::from_le_bytes(b), u32::from_le_bytes(e[4..8].try_into().unwrap()), rec)
        }

        /// Send one request as Linux does (readable part, then writable part of `wlen` bytes),
        /// notify, and return the writable part as the device left it and the used length.
        fn send(&mut self, readable: &[u8], wlen: u32) -> (Vec<u8>, u32) {
            let mut m = self.ram.snapshot();
            let slot = u64::from(self.avail % QUEUE_MAX);
            let (d0, d1) = (slot * 2 % u64::from(QUEUE_MAX), (slot * 2 + 1) % u64::from(QUEUE_MAX));
            let (rbuf, wbuf) = (BUFS + slot * 0x1000, BUFS + slot * 0x1000 + 0x800);
            m.write(rbuf, readable).unwrap();
            m.write(wbuf, &vec![0xee; wlen as usize]).unwrap();
            let desc = |addr: u64, len: u32, flags: u16, next: u16| {
                let mut b = [0u8; 16];
                b[0..8].copy_from_slice(&addr.to_le_bytes());
                b[8..12].copy_from_slice(&len.to_le_bytes());
                b[12..14].copy_from_slice(&flags.to_le_bytes());
                b[14..16].copy_from_slice(&next.to_le_bytes());
                b
            };
            m.write(DESC + d0 * 16, &desc(rbuf, readable.len() as u32, 1, d1 as u16)).unwrap();
            m.write(DESC + d1 * 16, &desc(wbuf, wlen, 2, 0)).unwrap();
            m.write(AVAIL + 4 + slot * 2, &(d0 as u16).to_le_bytes()).unwrap();
            self.avail = self.avail.wrapping_add(1);
            m.write(AVAIL + 2, &self.avail.to_le_bytes()).unwrap();
            self.w(layout::NOTIFY, 0, 2);
            let mut used_idx = [0u8; 2];
            m.read(USED + 2, &mut used_idx).unwrap();
            assert_eq!(u16::from_le_bytes(used_idx), self.avail, "answered");
            let mut elem = [0u8; 8];
            m.read(USED + 4 + slot * 8, &mut elem).unwrap();
            assert_eq!(u32::from_le_bytes(elem[0..4].try_into().unwrap()), d0 as u32);
            let mut out = vec![0u8; wlen as usize];
            m.read(wbuf, &mut out).unwrap();
            (out, u32::from_le_bytes(elem[4..8].try_into().unwrap()))
        }

        fn status(&mut self, readable: &[u8]) -> u8 {
            let (out, len) = self.send(readable, 4);
            assert_eq!(len, 4);
            out[0]
        }
    }

    fn attach(domain: u32, ep: u32) -> Vec<u8> {
        let mut b = vec![req::ATTACH, 0, 0, 0];
        b.extend_from_slice(&domain.to_le_bytes());
        b.extend_from_slice(&ep.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    }
    fn map(domain: u32, vs: u64, ve: u64, ps: u64, flags: u32) -> Vec<u8> {
        let mut b = vec![req::MAP, 0, 0, 0];
        b.extend_from_slice(&domain.to_le_bytes());
        for v in [vs, ve, ps] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&flags.to_le_bytes());
        b
    }
    fn unmap(domain: u32, vs: u64, ve: u64) -> Vec<u8> {
        let mut b = vec![req::UNMAP, 0, 0, 0];
        b.extend_from_slice(&domain.to_le_bytes());
        b.extend_from_slice(&vs.to_le_bytes());
        b.extend_from_slice(&ve.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    #[test]
    fn config_and_ids_are_the_virtio_iommu_s() {
        let mut r = Rig::new();
        assert_eq!((r.dev.ids().vendor, r.dev.ids().device, r.dev.ids().revision), (0x1af4, 0x1057, 1));
        assert_eq!(r.r(layout::DEVICE + config::PAGE_SIZE_MASK, 8), 0x4020_1000);
        assert_eq!(r.r(layout::DEVICE + config::INPUT_END, 8), (1 << 48) - 1);
        assert_eq!(r.r(layout::DEVICE + config::DOMAIN_START, 4), 1);
        assert_eq!(r.r(layout::DEVICE + config::DOMAIN_END, 4), 0xffff);
        assert_eq!(r.r(layout::DEVICE + config::PROBE_SIZE, 4), u64::from(domains::PROBE_SIZE));
        r.w(layout::DEVICE + config::PAGE_SIZE_MASK, 0, 8);
        assert_eq!(r.r(layout::DEVICE + config::PAGE_SIZE_MASK, 8), 0x4020_1000, "read-only");
        assert_eq!(r.dev.std_caps().len(), 4);
    }

    #[test]
    fn requests_through_the_queue() {
        let mut r = Rig::new();
        assert_eq!(r.status(&map(1, 0, 0xfff, 0x3000, 3)), status::NOENT);
        assert_eq!(r.status(&attach(1, u32::from(EP))), status::OK);
        assert_eq!(lock(&r.irqs.0).last(), Some(&1), "the request queue's vector");
        assert_eq!(r.status(&map(1, 0x8000_0000, 0x8000_1fff, 0x3000, 3)), status::OK);
        let spa = |r: &Rig, iova| match lock(&r.dev.domains).translate(u32::from(EP), iova, iommu_model::walk::Access::Write) {
            Some(iommu_model::amdvi::Outcome::Ok(t)) => Some(t.spa),
            _ => None,
        };
        assert_eq!(spa(&r, 0x8000_1004), Some(0x4004));
        assert_eq!(r.status(&unmap(1, 0x8000_0000, 0x8000_1fff)), status::OK);
        assert_eq!(spa(&r, 0x8000_1004), None);
        // PROBE: properties then the tail, in a writable part of probe_size + 4 bytes.
        let mut probe = vec![req::PROBE, 0, 0, 0];
        probe.extend_from_slice(&u32::from(EP).to_le_bytes());
        probe.resize(72, 0);
        let (out, len) = r.send(&probe, domains::PROBE_SIZE + 4);
        assert_eq!(len, domains::PROBE_SIZE + 4);
        assert_eq!(&out[..4], &[1, 0, 20, 0], "RESV_MEM");
        assert_eq!(out[4], 1, "MSI");
        assert_eq!(out[domains::PROBE_SIZE as usize], status::OK);
        // Hostile shapes: short, unknown type, no room for the tail.
        assert_eq!(r.status(&map(1, 0, 0xfff, 0, 3)[..20]), status::INVAL);
        assert_eq!(r.status(&[0x77, 0, 0, 0]), status::UNSUPP);
        let (out, len) = r.send(&attach(1, u32::from(EP)), 2);
        assert_eq!((len, out), (0, vec![0xee, 0xee]), "nothing written");
        let ev: Vec<_> = lock(&r.events.0).iter().filter(|e| e["type"] == "viommu").cloned().collect();
        assert_eq!(ev[0]["status"], "NOENT");
        assert_eq!((ev[2]["req"].as_str(), ev[2]["pages"].as_u64()), (Some("map"), Some(2)));
        // A device reset forgets the domains.
        r.w(common::DEVICE_STATUS, 0, 1);
        assert!(lock(&r.dev.domains).domains.is_empty());
        assert_eq!(r.r(common::DEVICE_STATUS, 1), 0);
    }

    /// Step by step as a kernel would: the endpoint's DMA follows the domain the virtio-iommu
    /// requests built (not the AMD-Vi unit), UNMAP takes effect at once, and the RMP check and
    /// hazard report apply to those mappings as to any other.
    #[test]
    fn endpoint_dma_takes_the_domain_tables_and_the_rmp_check() {
        use crate::secure::dma;
        use crate::secure::{Refusal, SecureIommu};
        use iommu_model::walk::Access;
        use rmp_model::ops::RmpState;
        let mut r = Rig::new();
        let mut sec = SecureIommu::new(r.events.clone(), Arc::new(Irqs::default()));
        sec.attach_virtio_iommu(r.dev.domains.clone(), Some(r.dev.event_queue()));
        let mut mem = r.ram.snapshot();
        let (iova, spa) = (0x9000_0000u64, 0x30_0000u64);
        // Not attached: the AMD-Vi unit decides, and it is off (untranslated).
        assert_eq!(sec.page(&mut mem, EP, false, 0x1000, Access::Write), Ok(0x1000));
        assert_eq!(r.status(&attach(1, u32::from(EP))), status::OK);
        assert!(matches!(sec.page(&mut mem, EP, false, 0x1000, Access::Write), Err(Refusal::Viommu { .. })), "attached, nothing mapped");
        assert_eq!(r.status(&map(1, iova, iova + 0xfff, spa, 3)), status::OK);
        dma::write(&mut sec, &mut mem, EP, false, iova + 0x10, b"through the domain").unwrap();
        let mut b = [0u8; 18];
        mem.read(spa + 0x10, &mut b).unwrap();
        assert_eq!(&b, b"through the domain");
        assert!(dma::write(&mut sec, &mut mem, EP, false, iova + 0xff8, &[0; 16]).is_err(), "the next page is not mapped: nothing moves");
        // SNP on: the mapping is walked (live), then its page turns private.
        sec.enable_snp(&mut mem, RAM >> 12).unwrap();
        assert_eq!(sec.page(&mut mem, EP, false, iova, Access::Write), Ok(spa));
        let st = sec.rmpupdate(&mut mem, spa, &RmpState::private(0x1000, 1, rmp_model::PageSize::Size4K));
        assert_eq!(st, rmp_model::RmpStatus::Success);
        let evs = lock(&r.events.0).clone();
        assert!(evs.iter().any(|e| e["type"] == "hazard" && e["iova"] == format!("{iova:#x}")), "live virtio-iommu mapping reported");
        assert!(matches!(sec.page(&mut mem, EP, false, iova, Access::Write), Err(Refusal::Rmp(_))));
        // UNMAP: refused by translation from the next access on. The fault comes back to the
        // caller, which posts it on the event queue once the secure IOMMU is released.
        assert_eq!(r.status(&unmap(1, iova, iova + 0xfff)), status::OK);
        r.fill_events(1, 24);
        let fault = match sec.page(&mut mem, EP, false, iova + 8, Access::Read) {
            Err(Refusal::Viommu { fault, .. }) => fault,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.first_event().0, 0, "nothing posted from inside the secure IOMMU");
        let sec = Mutex::new(sec);
        let mut per_page = dma::PerPage(&sec);
        let mut b = [0u8; 8];
        assert!(matches!(dma::read(&mut per_page, &mut mem, EP, false, iova + 8, &mut b), Err(dma::DmaError::Refused { .. })));
        let (used, len, rec) = r.first_event();
        assert_eq!((used, len), (1, 24));
        assert_eq!(rec[0], proto::fault::R_MAPPING);
        assert_eq!(u32::from_le_bytes(rec[4..8].try_into().unwrap()), 0x101, "read, address valid");
        assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), u32::from(EP));
        assert_eq!(u64::from_le_bytes(rec[16..24].try_into().unwrap()), iova + 8);
        assert_eq!(fault.to_bytes()[..], rec[..], "the record is the fault the secure IOMMU returned");
        assert_eq!(lock(&r.irqs.0).last(), Some(&2), "the event queue's vector");
        // No buffer left: the next fault is dropped, and says so on the event stream.
        assert!(dma::write(&mut per_page, &mut mem, EP, false, iova, &[0; 8]).is_err());
        assert_eq!(r.first_event().0, 1);
        let evs = lock(&r.events.0).clone();
        let posted: Vec<_> = evs.iter().filter(|e| e["type"] == "viommu_fault").map(|e| e["posted"].as_bool()).collect();
        assert_eq!(posted.last(), Some(&Some(false)));
        let evs = lock(&r.events.0).clone();
        let f = evs.iter().rev().find(|e| e["type"] == "translation_fault").unwrap();
        assert_eq!((f["via"].as_str(), f["logged"].as_bool()), (Some("virtio-iommu"), Some(false)));
    }

    /// The daemon owns the domains' tables, so a page turned private while any attached domain
    /// maps it is a hazard even if no device has used the mapping yet; once UNMAPped it is not.
    #[test]
    fn a_mapped_page_turned_private_is_a_hazard_before_any_dma() {
        use crate::secure::SecureIommu;
        use rmp_model::ops::RmpState;
        use rmp_model::PageSize;
        let mut r = Rig::new();
        let mut sec = SecureIommu::new(r.events.clone(), Arc::new(Irqs::default()));
        sec.attach_virtio_iommu(r.dev.domains.clone(), Some(r.dev.event_queue()));
        let mut mem = r.ram.snapshot();
        sec.enable_snp(&mut mem, RAM >> 12).unwrap();
        let events = r.events.clone();
        let hazards = || lock(&events.0).iter().filter(|e| e["type"] == "hazard").cloned().collect::<Vec<_>>();
        let (iova, spa) = (0x9000_0000u64, 0x30_0000u64);
        assert_eq!(r.status(&attach(1, u32::from(EP))), status::OK);
        // Two pages, read-write, the second at SPA 0x30_1000; nothing walks them.
        assert_eq!(r.status(&map(1, iova, iova + 0x1fff, spa, 3)), status::OK);
        let private = |gpa| RmpState::private(gpa, 1, PageSize::Size4K);
        assert_eq!(sec.rmpupdate(&mut mem, spa + 0x1000, &private(0x1000)), rmp_model::RmpStatus::Success);
        let h = hazards();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(
            (h[0]["iova"].as_str(), h[0]["spa"].as_str(), h[0]["write"].as_bool()),
            (Some("0x90001000"), Some("0x301000"), Some(true))
        );
        assert_eq!((h[0]["devid"].as_str(), h[0]["via"].as_str()), (Some("00:04.0"), Some("virtio-iommu")));
        // Back to shared is no hazard; a page nobody maps is none either.
        assert_eq!(sec.rmpupdate(&mut mem, spa + 0x1000, &RmpState::shared(PageSize::Size4K)), rmp_model::RmpStatus::Success);
        assert_eq!(sec.rmpupdate(&mut mem, 0x3f_0000, &private(0x2000)), rmp_model::RmpStatus::Success);
        assert_eq!(hazards().len(), 1);
        // UNMAPped: no longer reachable, no hazard.
        assert_eq!(r.status(&unmap(1, iova, iova + 0x1fff)), status::OK);
        assert_eq!(sec.rmpupdate(&mut mem, spa, &private(0x3000)), rmp_model::RmpStatus::Success);
        assert_eq!(hazards().len(), 1);
    }

    /// A hostile driver: chains that loop, point outside guest RAM, or are absurdly long, and an
    /// available index far ahead of what was offered. Each notification takes at most one
    /// queue's worth, answers what it can, and never panics.
    #[test]
    fn hostile_request_queues_are_bounded() {
        let mut r = Rig::new();
        let mut m = r.ram.snapshot();
        let desc = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..14].copy_from_slice(&flags.to_le_bytes());
            b[14..16].copy_from_slice(&next.to_le_bytes());
            b
        };
        // 0 -> 1 -> 0: a loop. 2: outside RAM. 3: 4 GiB long. 4 -> 300: next past the queue.
        m.write(DESC, &desc(BUFS, 20, 1, 1)).unwrap();
        m.write(DESC + 16, &desc(BUFS + 0x800, 4, 3, 0)).unwrap();
        m.write(DESC + 32, &desc(RAM + 0x1000, 20, 1, 0)).unwrap();
        m.write(DESC + 48, &desc(BUFS, u32::MAX, 2, 0)).unwrap();
        m.write(DESC + 64, &desc(BUFS, 20, 1, 300)).unwrap();
        for (i, head) in [0u16, 2, 3, 4].into_iter().enumerate() {
            m.write(AVAIL + 4 + i as u64 * 2, &head.to_le_bytes()).unwrap();
        }
        // The driver claims 60000 new entries; the ring has 256 slots of garbage beyond the four.
        m.write(AVAIL + 2, &60000u16.to_le_bytes()).unwrap();
        let t = std::time::Instant::now();
        r.w(layout::NOTIFY, 0, 2);
        let mut b = [0u8; 2];
        m.read(USED + 2, &mut b).unwrap();
        let used = u16::from_le_bytes(b);
        assert!(used <= QUEUE_MAX, "at most one queue's worth per notification, {used}");
        r.w(layout::NOTIFY, 0, 2);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // After the reset a driver does, the same device serves a well-formed request.
        r.w(common::DEVICE_STATUS, 0, 1);
        r.setup();
        assert_eq!(r.status(&attach(1, u32::from(EP))), status::OK);
    }

    #[test]
    fn a_queue_outside_guest_ram_is_not_processed() {
        let mut r = Rig::new();
        r.w(common::DEVICE_STATUS, 0, 1);
        r.w(common::DEVICE_STATUS, 3, 1);
        r.w(common::DRIVER_FEATURE_SELECT, 1, 4);
        r.w(common::DRIVER_FEATURE, 1, 4);
        r.w(common::DEVICE_STATUS, 0xb, 1);
        r.w(common::QUEUE_SELECT, 0, 2);
        r.w(common::QUEUE_DESC, RAM - 0x100, 8);
        r.w(common::QUEUE_DRIVER, AVAIL, 8);
        r.w(common::QUEUE_DEVICE, USED, 8);
        r.w(common::QUEUE_ENABLE, 1, 2);
        r.w(common::DEVICE_STATUS, 0xf, 1);
        r.w(layout::NOTIFY, 0, 2);
        assert!(lock(&r.irqs.0).is_empty());
    }
}
