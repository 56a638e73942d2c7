//! A hostile driver: for a fixed time, random values into every register of every function,
//! random ring indexes and sizes, device tables and page tables full of random entries (loops and
//! self-references included), descriptors with huge and overlapping lengths, random mailbox
//! commands and DOE objects, and, when the virtio-iommu is attached with no driver
//! (`tiommu.viommu=raw`), random virtio-pci registers, queue addresses, descriptor chains and
//! notifications; with `run-vm --ioat`, the IOAT DMA engine taken from ioatdma and attacked
//! (hostile/ioat.rs). Addresses the device could write through are kept inside this program's own
//! huge pages, so the guest survives to check that the daemon still works.
//!
//! The sequence is a function of the seed (printed, and replayed with `run-vm --hostile-seed`);
//! how far it gets depends on time. Alongside the scenarios (on its own vCPU, `--smp 2` and
//! more) it runs a subset that cannot change what they rely on: reads of every register and of
//! config space, writes to its own memory and descriptors, and the raw virtio-iommu without ever
//! attaching the endpoint to a domain (and nothing of the IOAT engine, which ioatdma owns then).

mod ioat;

use crate::rig::find_function;
use crate::sys::{find, Bar, Config, DmaMem, HUGE};
use abi::endpoint::{self as ep_abi, reg as ep_reg, Ctrl};
use abi::mailbox::{self as mb, CmdResp};
use abi::virtio_iommu::{self as vio, req, TAIL_LEN};
use abi::virtio_pci::{common, layout, status as vstatus};
use iommu_model::amdvi::command::COMPLETION_WAIT;
use iommu_model::amdvi::mmio;
use iommu_model::vtd::regs as vtd;
use std::time::{Duration, Instant};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs for `secs` seconds, or alongside the scenarios until `alongside` is set; returns the
/// number of actions taken.
pub fn run(secs: u64, seed: u64, alongside: Option<&std::sync::atomic::AtomicBool>) -> Result<u64, String> {
    let quiet = alongside.is_some();
    let done = || alongside.is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed));
    let iommu_dev = find_function(abi::pci::SECURE_IOMMU)?;
    let ep_dev = find_function(abi::pci::ENDPOINT)?;
    let (iommu, ctl, ep) = (Bar::map(&iommu_dev, 0)?, Bar::map(&iommu_dev, 2)?, Bar::map(&ep_dev, 0)?);
    // BAR0 is 16 KiB of AMD-Vi registers or a VT-d unit's 4 KiB.
    let vtd = iommu.len() < mmio::MMIO_SIZE as usize;
    // Dwords of BAR2 and of the endpoint's BAR0 (both 4 KiB), and of config space.
    let (ctl_dwords, ep_dwords, cfg_dwords) = (mb::BAR2_SIZE / 4, ep_abi::BAR0_SIZE / 4, 4096 / 4);
    let cfg = Config::open(&ep_dev)?;
    let mut mem = DmaMem::default();
    let pages: Vec<u64> = (0..4).map(|_| mem.page()).collect::<Result<_, _>>()?;
    let vio = virtio_iommu()?;
    // The virtio-iommu's rings, with no IOMMU between them and guest RAM: a page of its own, which
    // only the virtio actions write, so every address in it stays inside it (an 8 KiB margin for a
    // 256-entry descriptor table, the used ring and the longest answer, a 512-byte PROBE).
    let vring = if vio.is_some() { Some(mem.page()?) } else { None };
    let in_vring = |rng: &mut Rng, base: u64| base + (rng.below(HUGE - 8192) & !7);
    // Each queue's (descriptor table, available ring, used ring, size) as last brought up.
    let mut vqs = [(0u64, 0u64, 0u64, 0u16); 2];
    let (mut bringups, mut notifications) = (0u64, 0u64);
    let mut rng = Rng(seed | 1);
    // The IOAT engine, taken from its driver: not alongside the scenarios, which use it.
    let mut ioat = if quiet { None } else { ioat::Attack::take(&pages, &mut rng)? };
    // An address inside our pages, so whatever the device writes lands there.
    let ours = |rng: &mut Rng| pages[rng.below(pages.len() as u64) as usize] + (rng.below(HUGE) & !7);
    let start = Instant::now();
    let mut n = 0u64;
    while if quiet { !done() } else { start.elapsed() < Duration::from_secs(secs) } {
        n += 1;
        // One action in eight at the IOAT engine, when it is there: each is several register
        // accesses, so about half the time goes to it.
        if let Some(engine) = &mut ioat {
            if rng.below(8) == 0 {
                engine.act(&mut rng, &mem, &pages, (!vtd).then_some(&iommu));
                continue;
            }
        }
        match rng.below(if vio.is_some() { 14 } else { 12 }) {
            // Memory the IOMMU reads: random entries whose addresses stay in our pages (PDEs
            // pointing at their own table, at wrong levels, NextLevel 7 with any size).
            0..=2 => {
                let at = ours(&mut rng);
                let mut v = rng.next();
                if rng.below(4) != 0 {
                    v = (v & !0x000f_ffff_ffff_f000) | (ours(&mut rng) & 0x000f_ffff_ffff_f000);
                }
                mem.w64(at, v);
            }
            3..=4 if quiet => {
                let _ = iommu.r64(rng.below(iommu.len() as u64 / 8) as usize * 8);
                let _ = ctl.r32(rng.below(ctl_dwords) as usize * 4);
            }
            // IOMMU registers: bases and the COMPLETION_WAIT/event stores point into our pages;
            // any other register, head and tail take anything. BAR0 is 16 KiB of AMD-Vi registers
            // or a VT-d unit's 4 KiB (root table and queue bases at RTADDR and IQA).
            3..=4 => {
                let off = (rng.below(iommu.len() as u64) & !7) as usize;
                let base_regs: &[usize] = if vtd {
                    &[vtd::RTADDR as usize, vtd::IQA as usize]
                } else {
                    &[mmio::DEV_TABLE_BASE as usize, mmio::CMD_BUF_BASE as usize, mmio::EVENT_LOG_BASE as usize]
                };
                let v =
                    if base_regs.contains(&off) { (ours(&mut rng) & !0xfff) | (rng.next() & 0x0f00_0000_0000_01ff) } else { rng.next() };
                if rng.below(2) == 0 {
                    iommu.w64(off, v)
                } else {
                    iommu.w32(off & !3, v as u32)
                }
                let _ = iommu.r32(rng.below(iommu.len() as u64 / 4) as usize * 4);
            }
            5 | 9 if quiet => {
                let _ = ctl.r32(mb::reg::CMDRESP as usize);
            }
            // VT-d: queued invalidation descriptors of any type; wait descriptors store only into
            // our pages.
            5 if vtd => {
                let base = iommu.r64(vtd::IQA as usize) & 0x000f_ffff_ffff_f000;
                if pages.iter().any(|&p| base >= p && base + 4096 <= p + HUGE) {
                    let slot = base + rng.below(256) * 16;
                    let ty = rng.below(16);
                    // Type 5, the invalidation wait descriptor (VT-d §6.5.2.8), stores at q1.
                    let q1 = if ty == 5 { ours(&mut rng) & !3 } else { rng.next() };
                    mem.w64(slot, (rng.next() & !0xf) | ty);
                    mem.w64(slot + 8, q1);
                }
                iommu.w32(vtd::IQT as usize, (rng.below(256) << 4) as u32);
            }
            // Commands with any opcode; COMPLETION_WAIT stores only into our pages.
            5 => {
                let base = iommu.r64(mmio::CMD_BUF_BASE as usize) & 0x000f_ffff_ffff_f000;
                if pages.iter().any(|&p| base >= p && base < p + HUGE) {
                    let slot = base + (rng.below(256) * 16);
                    if slot + 16 <= base + HUGE.min(4096) {
                        let op = rng.below(16) << 60;
                        let q0 = if op == u64::from(COMPLETION_WAIT) << 60 {
                            op | (ours(&mut rng) & 0x000f_ffff_ffff_fff8) | rng.below(4)
                        } else {
                            op | (rng.next() >> 4)
                        };
                        mem.w64(slot, q0);
                        mem.w64(slot + 8, rng.next());
                    }
                }
                iommu.w64(mmio::CMD_BUF_TAIL as usize, rng.next() & 0x7fff0);
            }
            // Endpoint registers: ring base anywhere, sizes and indexes out of range, resets.
            6..=7 if quiet => {
                let _ = ep.r32(rng.below(ep_dwords) as usize * 4);
            }
            6..=7 => {
                // Any register (all lie below 0x40).
                let off = (rng.below(ep_reg::COMPLETED + 0x10) & !3) as usize;
                let v = if off == ep_reg::RING_BASE as usize { rng.next() } else { rng.below(1 << 14) };
                ep.w32(off, v as u32);
                if rng.below(3) == 0 {
                    ep.w32(ep_reg::TAIL as usize, rng.below(1 << 13) as u32);
                }
                let _ = ep.r32(rng.below(ep_dwords) as usize * 4);
            }
            // Descriptors: huge and overlapping lengths, any op and flag.
            8 => {
                let ring = ours(&mut rng) & !0xfff;
                for i in 0..rng.below(64) {
                    let d = ring + i * ep_abi::DESC_SIZE;
                    mem.w64(d, rng.next());
                    mem.w64(d + 8, rng.next());
                    mem.w64(d + 16, rng.next());
                    mem.w64(d + 24, rng.next());
                }
            }
            // Mailbox: any command id with a random buffer in our pages.
            9 => {
                let buf = ours(&mut rng) & !0x3f;
                for i in 0..8 {
                    mem.w64(buf + i * 8, rng.next());
                }
                ctl.w64(mb::reg::CMDBUF_LO as usize, if rng.below(8) == 0 { rng.next() } else { buf });
                ctl.w32(mb::reg::CMDRESP as usize, CmdResp::request(rng.below(u64::from(CmdResp::ID_MASK) + 1) as u32).0);
                let _ = ctl.r32(mb::reg::CMDRESP as usize);
                if rng.below(8) == 0 {
                    // Any register (all lie below 0x200).
                    ctl.w64(rng.below(2 * mb::reg::CMDRESP) as usize & !7, rng.next());
                }
            }
            // virtio-iommu registers (virtio 1.2 §4.1.4.3 common configuration at 0): one time in
            // eight the transport brought up as a driver would (random feature subset, both
            // queues at random sizes inside the ring page, DRIVER_OK), otherwise any register but
            // queue_enable, queue addresses still inside the ring page; any read (the ISR is
            // read-to-clear).
            12 => {
                let (Some(bar), Some(base)) = (&vio, vring) else { continue };
                if rng.below(8) == 0 {
                    let at = |r: u64| layout::COMMON as usize + r as usize;
                    bar.w8(at(common::DEVICE_STATUS), 0);
                    bar.w8(at(common::DEVICE_STATUS), vstatus::ACKNOWLEDGE | vstatus::DRIVER);
                    bar.w32(at(common::DRIVER_FEATURE_SELECT), 0);
                    // A random subset of INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP and PROBE.
                    bar.w32(at(common::DRIVER_FEATURE), (rng.next() & 0x17) as u32);
                    // VIRTIO_F_VERSION_1, bit 32.
                    bar.w32(at(common::DRIVER_FEATURE_SELECT), 1);
                    bar.w32(at(common::DRIVER_FEATURE), 1);
                    bar.w8(at(common::DEVICE_STATUS), vstatus::ACKNOWLEDGE | vstatus::DRIVER | vstatus::FEATURES_OK);
                    for (q, vq) in vqs.iter_mut().enumerate() {
                        let size = 1u16 << rng.below(9);
                        *vq = (in_vring(&mut rng, base) & !15, in_vring(&mut rng, base) & !7, in_vring(&mut rng, base) & !7, size);
                        bar.w16(at(common::QUEUE_SELECT), q as u16);
                        bar.w16(at(common::QUEUE_SIZE), size);
                        bar.w16(at(common::QUEUE_MSIX_VECTOR), rng.below(4) as u16);
                        bar.w64(at(common::QUEUE_DESC), vq.0);
                        bar.w64(at(common::QUEUE_DRIVER), vq.1);
                        bar.w64(at(common::QUEUE_DEVICE), vq.2);
                        bar.w16(at(common::QUEUE_ENABLE), 1);
                    }
                    bar.w8(at(common::DEVICE_STATUS), vstatus::ACKNOWLEDGE | vstatus::DRIVER | vstatus::FEATURES_OK | vstatus::DRIVER_OK);
                    bringups += 1;
                } else {
                    // Up to queue_notify_data.
                    let off = (rng.below(common::QUEUE_NOTIFY_DATA) & !3) as usize;
                    if off == common::QUEUE_ENABLE as usize || off == common::DEVICE_STATUS as usize && rng.below(2) == 0 {
                        // queue_enable only in a bring-up: a queue enabled at its reset address
                        // (0) would take descriptors from low guest RAM and write through them.
                        continue;
                    }
                    if (common::QUEUE_DESC as usize..common::QUEUE_NOTIFY_DATA as usize).contains(&off) {
                        bar.w64(off & !7, in_vring(&mut rng, base));
                    } else {
                        // Any width at any offset of the word: the natural one hits a field.
                        let v = if rng.below(2) == 0 { rng.below(0x100) } else { rng.next() };
                        match rng.below(3) {
                            0 => bar.w8(off + rng.below(4) as usize, v as u8),
                            1 => bar.w16(off + 2 * rng.below(2) as usize, v as u16),
                            _ => bar.w32(off, v as u32),
                        }
                    }
                }
                let _ = bar.r32(rng.below(layout::BAR_SIZE / 4) as usize * 4);
            }
            // virtio-iommu queues. Half the time a well-formed request (virtio 1.2 §5.13.6: any
            // type, domain and endpoint; MAP only onto this program's pages, so DMA through the
            // domain stays in them) made available; otherwise descriptors whose buffers are inside
            // the ring page with any length, flags and next, and the available index moved on by
            // any amount over random heads. Then a notification.
            13 => {
                let (Some(bar), Some(base)) = (&vio, vring) else { continue };
                let q = rng.below(2) as usize;
                let (desc, avail, _, size) = vqs[q];
                if desc == 0 {
                    continue;
                }
                let size = u64::from(size);
                if rng.below(2) == 0 {
                    let (req, resp) = (in_vring(&mut rng, base), in_vring(&mut rng, base));
                    let ty = 1 + rng.below(5) as u8;
                    // Alongside the scenarios the endpoint stays out of every domain (its virtio-iommu
                    // endpoint id is its requester id).
                    let ep_id = u32::from(abi::pci::ENDPOINT.bdf.0);
                    let endpoint = if rng.below(2) == 0 && !quiet { ep_id } else { ep_id + 1 + rng.below(0xdf) as u32 };
                    let domain = if rng.below(4) == 0 { rng.next() as u32 } else { 1 + rng.below(3) as u32 };
                    let head = vio::ReqHead::new(ty);
                    let body: Vec<u8> = match ty {
                        req::ATTACH | req::DETACH => {
                            let flags = if rng.below(4) == 0 { rng.next() as u32 } else { 0 };
                            let a = vio::Attach {
                                head,
                                domain: U32::new(domain),
                                endpoint: U32::new(endpoint),
                                flags: U32::new(flags),
                                reserved: [0; 4],
                            };
                            a.as_bytes().to_vec()
                        }
                        req::MAP => {
                            let off = rng.below(HUGE / 4096) * 4096;
                            let len = (1 + rng.below((HUGE - off) / 4096)) * 4096;
                            let virt = rng.below(1 << 40) & !0xfff;
                            let phys = pages[rng.below(pages.len() as u64) as usize] + off;
                            let flags = rng.below(8) as u32;
                            let m = vio::Map {
                                head,
                                domain: U32::new(domain),
                                virt_start: U64::new(virt),
                                virt_end: U64::new(virt + len - 1),
                                phys_start: U64::new(phys),
                                flags: U32::new(flags),
                            };
                            m.as_bytes().to_vec()
                        }
                        req::UNMAP => {
                            let virt = rng.below(1 << 40) & !0xfff;
                            let end = virt + (rng.below(1 << 30) | 0xfff);
                            let u = vio::Unmap {
                                head,
                                domain: U32::new(domain),
                                virt_start: U64::new(virt),
                                virt_end: U64::new(end),
                                reserved: [0; 4],
                            };
                            u.as_bytes().to_vec()
                        }
                        _ => vio::Probe { head, endpoint: U32::new(endpoint), reserved: [0; 64] }.as_bytes().to_vec(),
                    };
                    mem.wr(req, &body);
                    let h = rng.below(size);
                    let next = (h + 1) % size;
                    let writable: u32 = if ty == req::PROBE { 512 + TAIL_LEN as u32 } else { TAIL_LEN as u32 };
                    mem.w64(desc + 16 * h, req);
                    mem.w64(desc + 16 * h + 8, u64::from(body.len() as u32) | 1 << 32 | next << 48);
                    mem.w64(desc + 16 * next, resp);
                    mem.w64(desc + 16 * next + 8, u64::from(writable) | 2 << 32);
                    let mut idx = [0u8; 2];
                    mem.rd(avail + 2, &mut idx);
                    let idx = u16::from_le_bytes(idx);
                    mem.wr(avail + 4 + 2 * (u64::from(idx) % size), &(h as u16).to_le_bytes());
                    mem.wr(avail + 2, &idx.wrapping_add(1).to_le_bytes());
                } else {
                    for i in 0..size.min(rng.below(16) + 1) {
                        let d = desc + 16 * rng.below(size).max(i);
                        mem.w64(d, in_vring(&mut rng, base));
                        mem.w64(d + 8, rng.next());
                    }
                    for _ in 0..rng.below(8) {
                        let slot = avail + 4 + 2 * rng.below(size);
                        mem.wr(slot, &(rng.next() as u16).to_le_bytes());
                    }
                    let idx = if rng.below(4) == 0 { rng.next() as u16 } else { rng.below(8) as u16 };
                    mem.wr(avail + 2, &idx.to_le_bytes());
                }
                bar.w32(layout::NOTIFY as usize + layout::NOTIFY_MULTIPLIER as usize * q, q as u32);
                notifications += 1;
            }
            _ if quiet => {
                let _ = cfg.r32(rng.below(cfg_dwords) * 4);
            }
            // Extended config space from the DOE mailbox on.
            _ => {
                let off = u64::from(ep_abi::DOE_OFFSET) + rng.below(0x40) * 4;
                cfg.w32(off, rng.next() as u32);
                let _ = cfg.r32(off);
            }
        }
    }
    // Leave the devices stopped: the next driver starts from a reset (a virtio-iommu reset also
    // forgets its domains, so the endpoint is back behind the AMD-Vi tables).
    if !quiet {
        ep.w32(ep_reg::CTRL as usize, Ctrl::RESET.bits());
    }
    if let Some(engine) = &ioat {
        engine.stop();
    }
    if let Some(bar) = &vio {
        println!(
            "# hostile driver: virtio-iommu: {bringups} bring-ups, {notifications} notifications, device status {:#x} at the end",
            bar.r32(common::DEVICE_STATUS as usize) & 0xff
        );
        bar.w8(common::DEVICE_STATUS as usize, 0);
    }
    Ok(n)
}

/// The virtio-iommu function when it is attached with no driver for it (`tiommu.viommu=raw`):
/// released from virtio-pci so the kernel never touches it, and its BAR0 mapped.
fn virtio_iommu() -> Result<Option<Bar>, String> {
    let raw = std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|a| a == "tiommu.viommu=raw");
    let Some(dev) = find(abi::pci::VIRTIO_IOMMU.vendor, abi::pci::VIRTIO_IOMMU.device).filter(|_| raw) else { return Ok(None) };
    let unbind = format!("{}/driver/unbind", dev.path);
    if std::path::Path::new(&unbind).exists() {
        std::fs::write(&unbind, &dev.bdf).map_err(|e| format!("unbinding {} from its driver: {e}", dev.bdf))?;
    }
    Bar::map(&dev, 0).map(Some)
}
