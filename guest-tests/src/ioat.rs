//! Scenarios with the daemon's IOAT DMA engine (8086:2021 at 00:06.0, scripts/run-vm --ioat):
//! Linux's ioatdma bound to it (its probe's self-test copied through the secure IOMMU), dmatest
//! moving data on its channels through the DMA API, then the engine from user space through VFIO
//! (type1 and iommufd): copies through mapped IOVAs, a refused access halting the channel, a
//! reset, MSI-X, and a page under a live mapping turned private. The register layout is Linux's
//! drivers/dma/ioat/registers.h (docs/device-abi.md, "IOAT DMA engine").

use crate::kernel_paths::{expect_map, need_kernel_iommu, snp_on, via};
use crate::modes::{amdvi_mode, viommu_mode};
use crate::report::{expect_dmesg, expect_event, poll, R, SKIP};
use crate::rig::Rig;
use crate::sys::iommufd::Iommufd;
use crate::sys::vfio::{bind_vfio_pci, eventfd_count, open_cdev, Device, UserMem, Vfio, DEVICE_FLAGS_RESET};
use crate::sys::{find, PciDev};
use abi::event::Access;
use abi::ioat::{self as regs, chan, chancmd, chanctrl, chanerr, chansts, ctl, global, intrctrl, Descriptor};
use abi::virtio_iommu::ReqStatus;
use abi::{expect, Bdf};
use std::fs;
use std::time::Instant;
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

/// Where run-vm places it; its requester ID 0x30 is endpoint 48 for the virtio-iommu.
const BDF: &str = "0000:00:06.0";
/// The engine, as the event records name it.
const IOAT: Bdf = Bdf::new(0, 6, 0);
const CHANNELS: usize = 2;

// Channel 0's registers (its block at 0x80, init.c) and the bits used here: abi::ioat, as
// Linux's registers.h and hw.h define them.
const CH: u64 = regs::CHANNEL_MMIO_SIZE;
const CHANCTRL: u64 = CH + chan::CHANCTRL;
const CHANCMD: u64 = CH + chan::CHANCMD;
const DMACOUNT: u64 = CH + chan::DMACOUNT;
const CHANSTS: u64 = CH + chan::CHANSTS;
const CHAINADDR: u64 = CH + chan::CHAINADDR;
const CHANCMP: u64 = CH + chan::CHANCMP;
const CHANERR: u64 = CH + chan::CHANERR;
const STS_DONE: u64 = chansts::DONE;
const STS_HALTED: u64 = chansts::HALTED;
const READ_DATA_ERR: u32 = chanerr::READ_DATA_ERR;
const WRITE_DATA_ERR: u32 = chanerr::WRITE_DATA_ERR;

/// The user-space driver's IOVAs: one page of descriptors with the completion word at its end,
/// a source page and a destination page; the page after the destination is never mapped.
const RING_IOVA: u64 = 0x80_0000;
const SRC_IOVA: u64 = 0x81_0000;
const DST_IOVA: u64 = 0x82_0000;
const UNMAPPED_IOVA: u64 = DST_IOVA + 0x1000;
const COMPLETION_OFF: usize = 0xfc0;

fn engine() -> Result<PciDev, String> {
    find(abi::pci::IOAT.vendor, abi::pci::IOAT.device).ok_or_else(|| format!("{SKIP}no IOAT engine (8086:2021; scripts/run-vm --ioat)"))
}

fn dmesg() -> String {
    std::process::Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn driver(bdf: &str) -> Option<String> {
    fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver")).ok().and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The DMA channels ioatdma registered for the engine (dmaXchanY under the device).
fn channels(dev: &PciDev) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("{}/dma", dev.path))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains("chan")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Linux's ioatdma bound to the engine: its probe read the registers, reset and started each
/// channel (a NULL descriptor), and copied 2000 bytes on channel 0 through the DMA API and the
/// secure IOMMU, comparing them (init.c, ioat_dma_self_test); a failure would have left the
/// device without a driver. Both channels are registered with the DMA engine core.
pub fn ioatdma_bound(_r: &mut Rig) -> R {
    let dev = engine()?;
    let log = dmesg();
    for l in log.lines().filter(|l| l.contains("ioat")) {
        println!("# dmesg: {}", l.trim());
    }
    let drv = driver(&dev.bdf);
    if drv.is_none() && !std::path::Path::new("/sys/module/ioatdma").exists() {
        return Err(format!("{SKIP}this kernel has no ioatdma (not built in, module not loaded)"));
    }
    check!(drv.as_deref() == Some("ioatdma"), "{} is bound to {drv:?}, not ioatdma", dev.bdf);
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("Self-test") || l.contains("I/OAT DMA Engine init failed")).collect();
    check!(failed.is_empty(), "ioatdma's probe reported {failed:?}");
    let ch = channels(&dev);
    check!(ch.len() == CHANNELS, "ioatdma registered {ch:?}, not {CHANNELS} channels");
    println!("# ioatdma channels: {}", ch.join(" "));
    if viommu_mode() {
        // Behind the virtio-iommu: the kernel attached it to a DMA domain, which its self-test's
        // buffers were mapped in.
        expect_event(expect!(Viommu { req: "attach".into(), devid: Some(IOAT), status: ReqStatus::Ok.into() }));
        expect_event(expect!(Viommu { req: "map".into(), status: ReqStatus::Ok.into() }));
    }
    if amdvi_mode() {
        // Behind Linux's amd_iommu (the IVRS names it): in an IOMMU group of its own.
        let group =
            fs::read_link(format!("{}/iommu_group", dev.path)).map_err(|_| format!("{} has no IOMMU group under amd_iommu", dev.bdf))?;
        println!("# {} in IOMMU group {}", dev.bdf, group.display());
    }
    Ok(())
}

/// One dmatest run on the engine's channels (one thread each): `params` set, run, waited for;
/// the dmatest lines it logged, and its wall time.
fn dmatest(dev: &PciDev, params: &[(&str, &str)]) -> Result<(Vec<String>, f64), String> {
    let dir = "/sys/module/dmatest/parameters";
    let set = |p: &str, v: &str| fs::write(format!("{dir}/{p}"), v).map_err(|e| format!("dmatest {p}={v}: {e}"));
    let before = dmesg().lines().count();
    for (p, v) in [("timeout", "5000"), ("threads_per_chan", "1"), ("max_channels", "0"), ("device", dev.bdf.as_str())].iter().chain(params)
    {
        set(p, v)?;
    }
    let t = Instant::now();
    set("run", "1")?;
    // Reading `wait` returns once no thread is running, but a thread not yet scheduled counts
    // as pending, not running (dmatest.c, is_threaded_test_run), so it can return before the
    // threads start: wait until every channel's thread has logged its summary.
    let new = || -> Vec<String> {
        dmesg()
            .lines()
            .skip(before)
            .filter(|l| l.contains("dmatest"))
            .map(|l| l.split_once("dmatest: ").map_or(l, |(_, r)| r).trim().to_string())
            .collect()
    };
    let mut lines = new();
    while lines.iter().filter(|l| l.contains("summary")).count() < CHANNELS && t.elapsed().as_secs() < 60 {
        fs::read_to_string(format!("{dir}/wait")).map_err(|e| format!("dmatest wait: {e}"))?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        lines = new();
    }
    let secs = t.elapsed().as_secs_f64();
    // Reading `run` once the tests are done releases the channels (dmatest_run_get).
    let _ = fs::read_to_string(format!("{dir}/run"));
    Ok((lines, secs))
}

/// dmatest (built into the test kernel) on the engine's channels: one thread per channel, each
/// `ITERATIONS` memcpy transfers of random lengths and offsets in 16 KiB buffers, every result
/// verified by the CPU; each thread's summary must report 0 failures. Then, for
/// docs/performance.md, 1 MiB copies without verification, and a plain copy in the guest.
pub fn dmatest_memcpy(_r: &mut Rig) -> R {
    const ITERATIONS: u32 = 200;
    let dev = engine()?;
    if !std::path::Path::new("/sys/module/dmatest/parameters").exists() {
        return Err(format!("{SKIP}this kernel has no dmatest (the distribution's 7.3 does not build it; run-vm --test-kernel)"));
    }
    check!(driver(&dev.bdf).as_deref() == Some("ioatdma"), "ioatdma is not bound to {}", dev.bdf);
    let n = ITERATIONS.to_string();
    let (lines, secs) = dmatest(&dev, &[("iterations", &n), ("test_buf_size", "16384"), ("noverify", "N"), ("norandom", "N")])?;
    for l in &lines {
        // run-vm checks the summaries too.
        println!("# dmatest: {l}");
    }
    let summaries: Vec<&String> = lines.iter().filter(|l| l.contains("summary")).collect();
    check!(summaries.len() == CHANNELS, "{} dmatest summaries, not one per channel: {lines:?}", summaries.len());
    for s in &summaries {
        check!(s.contains(&format!("summary {ITERATIONS} tests, 0 failures")), "dmatest: {s}");
    }
    println!("# perf: dmatest {CHANNELS} x {ITERATIONS} verified memcpy (random lengths in 16 KiB) in {secs:.2} s");
    let (lines, secs) = dmatest(&dev, &[("iterations", "20"), ("test_buf_size", "1048576"), ("noverify", "Y"), ("norandom", "Y")])?;
    for l in lines.iter().filter(|l| l.contains("summary")) {
        println!("# perf: dmatest 1 MiB memcpy, not verified: {l}");
    }
    println!("# perf: dmatest {CHANNELS} x 20 x 1 MiB in {secs:.2} s");
    plain_copy_speed();
    Ok(())
}

/// A plain copy of 1 MiB in the guest (this process, TCG), for docs/performance.md beside
/// dmatest's rate through the engine.
fn plain_copy_speed() {
    let a = vec![0x5au8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    let t = Instant::now();
    for i in 0..16 {
        b.copy_from_slice(&a);
        b[i] ^= 1;
    }
    let s = t.elapsed().as_secs_f64();
    println!("# perf: plain copy in the guest {:.0} MB/s (16 x 1 MiB, {})", 16.0 * 1.048576 / s, b[0]);
}

/// The engine's channel 0 driven from user space through a VFIO device file, as a user-space
/// driver would: descriptors and the completion word in `ring`, data in `src` and `dst`.
struct Chan<'a> {
    dev: &'a Device,
    ring: &'a UserMem,
    /// Descriptors written since the chain started (DMACOUNT).
    count: u16,
}

impl<'a> Chan<'a> {
    fn w8(&self, reg: u64, v: u8) -> R {
        self.dev.write(reg, &[v])
    }
    fn w16(&self, reg: u64, v: u16) -> R {
        self.dev.write(reg, &v.to_le_bytes())
    }
    fn w64(&self, reg: u64, v: u64) -> R {
        self.dev.write(reg, &(v as u32).to_le_bytes())?;
        self.dev.write(reg + 4, &((v >> 32) as u32).to_le_bytes())
    }

    /// As dma.c's ioat_reset_hw and init.c's ioat_alloc_chan_resources: clear CHANERR, reset,
    /// interrupts on (one MSI-X vector per channel), CHANCTRL to run, the completion address, a
    /// new chain at the ring's first descriptor.
    fn start(dev: &'a Device, ring: &'a UserMem) -> Result<Chan<'a>, String> {
        let c = Chan { dev, ring, count: 0 };
        let err = dev.r32(CHANERR)?;
        dev.w32(CHANERR, err)?;
        c.w8(CHANCMD, chancmd::RESET)?;
        let reset_done = || {
            let mut b = [0u8];
            dev.read(CHANCMD, &mut b).is_ok() && b[0] & chancmd::RESET == 0
        };
        check!(poll(reset_done), "the channel reset never completed");
        c.w8(global::INTRCTRL, intrctrl::MASTER_INT_EN | intrctrl::MSIX_VECTOR_CONTROL)?;
        c.w16(CHANCTRL, chanctrl::RUN)?;
        ring.write(0, &[0u8; 0x1000]);
        c.w64(CHANCMP, RING_IOVA + COMPLETION_OFF as u64)?;
        c.w64(CHAINADDR, RING_IOVA)?;
        Ok(c)
    }

    fn completion(&self) -> u64 {
        let mut b = [0u8; 8];
        self.ring.read(COMPLETION_OFF, &mut b);
        u64::from_le_bytes(b)
    }

    /// One COPY of `len` bytes with completion write and interrupt; waits until the channel is
    /// idle or halted and returns CHANSTS.
    fn copy(&mut self, src: u64, dst: u64, len: u32) -> Result<u64, String> {
        let i = u64::from(self.count) % 32;
        let next = RING_IOVA + ((i + 1) % 32) * regs::DESC_SIZE;
        let d = Descriptor { next: U64::new(next), ..Descriptor::new(len, ctl::INT_EN | ctl::COMPL_WRITE, src, dst) };
        self.ring.write((i * regs::DESC_SIZE) as usize, d.as_bytes());
        self.count = self.count.wrapping_add(1);
        self.w16(DMACOUNT, self.count)?;
        let mut sts = 0;
        check!(
            poll(|| {
                sts = self.dev.r64(CHANSTS).unwrap_or(0);
                sts & chansts::STATUS == STS_DONE || sts & chansts::STATUS == STS_HALTED
            }),
            "descriptor {i} never completed (CHANSTS {sts:#x})"
        );
        Ok(sts)
    }
}

fn page(mem: &UserMem, off: usize) -> Vec<u8> {
    let mut b = vec![0u8; 0x1000];
    mem.read(off, &mut b);
    b
}

/// Copies through mapped IOVAs land; a copy whose destination runs into an unmapped page halts
/// the channel with a write data error and moves nothing (not even into the mapped part); a
/// source there, a read data error; the channel reset recovers; the completion interrupt arrives
/// on the channel's MSI-X vector.
fn copy_fault_reset(dev: &Device, ring: &UserMem, data: &UserMem) -> R {
    let via = via();
    check!(dev.flags()? & DEVICE_FLAGS_RESET != 0, "VFIO reports no reset for the engine (no FLR?)");
    dev.reset()?;
    // Bus mastering on, as any user-space driver does: QEMU drops the MSI-X message of a
    // function that is not a bus master.
    dev.enable_bus_master()?;
    let irq = dev.msix_eventfd(0)?;
    let mut ch = Chan::start(dev, ring)?;
    let pattern: Vec<u8> = (0..0x1000u32).map(|i| (i * 7 + 3) as u8).collect();
    data.write(0, &pattern);
    data.write(0x1000, &[0u8; 0x1000]);
    let sts = ch.copy(SRC_IOVA, DST_IOVA, 0x1000)?;
    check!(sts & chansts::STATUS == STS_DONE, "copy through the mappings: CHANSTS {sts:#x}, CHANERR {:#x}", dev.r32(CHANERR)?);
    check!(page(data, 0x1000) == pattern, "the destination page did not receive the copy");
    check!(ch.completion() == RING_IOVA | STS_DONE, "completion write-back {:#x}", ch.completion());
    if !poll(|| eventfd_count(&irq) > 0) {
        let irqs = fs::read_to_string("/proc/interrupts").unwrap_or_default();
        let vfio: Vec<&str> = irqs.lines().filter(|l| l.contains("vfio")).collect();
        return Err(format!(
            "no MSI-X interrupt for the completion (INTRCTRL {:#x}, ATTNSTATUS {:#x}, CHANCTRL {:#x}; {vfio:?})",
            dev.r32(global::CHANCNT)? >> (8 * global::INTRCTRL),
            dev.r32(global::ATTNSTATUS)?,
            dev.r32(CHANCTRL)? & 0xffff
        ));
    }

    // The destination's second half is the unmapped page after it: nothing moves.
    data.write(0x1000, &[0xeeu8; 0x1000]);
    let sts = ch.copy(SRC_IOVA, DST_IOVA + 0x800, 0x1000)?;
    let err = dev.r32(CHANERR)?;
    check!(sts & chansts::STATUS == STS_HALTED && err == WRITE_DATA_ERR, "copy into an unmapped page: CHANSTS {sts:#x}, CHANERR {err:#x}");
    check!(page(data, 0x1000) == [0xeeu8; 0x1000], "the refused copy wrote its mapped half");
    check!(ch.completion() == RING_IOVA | STS_HALTED, "halt not written back: {:#x}", ch.completion());
    expect_event(expect!(TranslationFault { devid: IOAT, iova: UNMAPPED_IOVA, access: Access::Write, via }));
    expect_event(expect!(IoatHalted { devid: IOAT, channel: 0, chanerr: WRITE_DATA_ERR, iova: UNMAPPED_IOVA }));
    if amdvi_mode() {
        // Linux's amd_iommu read the record from the model's event log.
        expect_dmesg(&format!(
            r"0000:00:06\.0: AMD-Vi: Event logged \[IO_PAGE_FAULT domain=0x[0-9a-f]+ address={UNMAPPED_IOVA:#x} flags=0x0020\]"
        ));
    }

    // Reset (dma.c's ioat_eh does it the same way), and the channel copies again.
    let mut ch = Chan::start(dev, ring)?;
    check!(dev.r32(CHANERR)? == 0, "CHANERR not cleared");
    let sts = ch.copy(SRC_IOVA, DST_IOVA, 0x1000)?;
    check!(sts & chansts::STATUS == STS_DONE && page(data, 0x1000) == pattern, "after the reset: CHANSTS {sts:#x}");

    // A source in the unmapped page: read data error.
    let sts = ch.copy(UNMAPPED_IOVA, DST_IOVA, 64)?;
    check!(sts & chansts::STATUS == STS_HALTED && dev.r32(CHANERR)? == READ_DATA_ERR, "copy from an unmapped page: CHANSTS {sts:#x}");
    expect_event(expect!(IoatHalted { devid: IOAT, channel: 0, chanerr: READ_DATA_ERR }));
    dev.msix_off()?;
    Ok(())
}

/// The page the engine last wrote turned guest-private in place while still mapped (RMPUPDATE
/// through the IOMMU function's mailbox, as an SNP host would): the daemon reports the hazard,
/// the RMP refuses the engine's next write to it, the channel halts with a write data error and
/// the page keeps its bytes. Then shared again, and a reset channel writes it.
fn private_under_mapping(r: &mut Rig, dev: &Device, ring: &UserMem, data: &UserMem) -> R {
    snp_on(r)?;
    let mut ch = Chan::start(dev, ring)?;
    let sts = ch.copy(SRC_IOVA, DST_IOVA, 0x1000)?;
    check!(sts & chansts::STATUS == STS_DONE, "copy before the conversion: CHANSTS {sts:#x}");
    let before = page(data, 0x1000);
    let pa = data.phys(0x1000)?;
    check!(r.rmpupdate(pa, DST_IOVA, true, 1)? == 0, "RMPUPDATE of the mapped page to private");
    expect_event(expect!(Hazard { iova: DST_IOVA, spa: pa }));
    data.write(0, &[0x77u8; 0x1000]);
    let sts = ch.copy(SRC_IOVA, DST_IOVA, 0x1000)?;
    let err = dev.r32(CHANERR)?;
    check!(
        sts & chansts::STATUS == STS_HALTED && err == WRITE_DATA_ERR,
        "write to the page turned private: CHANSTS {sts:#x}, CHANERR {err:#x}"
    );
    check!(page(data, 0x1000) == before, "the refused write changed the private page");
    expect_event(expect!(RmpViolation { devid: IOAT, iova: DST_IOVA, access: Access::Write }));
    if amdvi_mode() {
        expect_dmesg(&format!(
            r"0000:00:06\.0: AMD-Vi: Event logged \[RMP_PAGE_FAULT vmg_tag=0x0000, gpa={DST_IOVA:#x}, flags_rmp=0x0001, flags=0x0020\]"
        ));
    }
    check!(r.rmpupdate(pa, 0, false, 0)? == 0, "back to shared");
    let mut ch = Chan::start(dev, ring)?;
    let sts = ch.copy(SRC_IOVA, DST_IOVA, 0x1000)?;
    check!(sts & chansts::STATUS == STS_DONE && page(data, 0x1000) == [0x77u8; 0x1000], "after the page is shared again: CHANSTS {sts:#x}");
    Ok(())
}

/// The engine through VFIO type1: ioatdma unbound, the function bound to vfio-pci (whose open
/// resets it by FLR), user memory mapped with VFIO_IOMMU_MAP_DMA (virtio-iommu MAP requests, or
/// amd_iommu's page tables), then `copy_fault_reset` and `private_under_mapping`.
pub fn vfio_type1(r: &mut Rig) -> R {
    engine()?;
    need_kernel_iommu()?;
    bind_vfio_pci(BDF)?;
    let v = Vfio::open(BDF)?;
    let ring = UserMem::new(0x1000)?;
    let data = UserMem::new(0x2000)?;
    v.map(ring.addr(), RING_IOVA, 0x1000)?;
    v.map(data.addr(), SRC_IOVA, 0x1000)?;
    v.map(data.addr() + 0x1000, DST_IOVA, 0x1000)?;
    expect_map(DST_IOVA);
    copy_fault_reset(&v.device, &ring, &data)?;
    private_under_mapping(r, &v.device, &ring, &data)
}

/// The same through iommufd: the engine's VFIO cdev bound to an iommufd, attached to an IOAS,
/// the memory mapped with IOMMU_IOAS_MAP.
pub fn vfio_iommufd(_r: &mut Rig) -> R {
    engine()?;
    need_kernel_iommu()?;
    if !std::path::Path::new("/dev/iommu").exists() {
        return Err(format!("{SKIP}no /dev/iommu: this kernel has no CONFIG_IOMMUFD (run-vm --test-kernel)"));
    }
    let fd = Iommufd::open()?;
    bind_vfio_pci(BDF)?;
    let ioas = fd.ioas_alloc()?;
    let dev = open_cdev(BDF, &fd.fd, ioas)?;
    let ring = UserMem::new(0x1000)?;
    let data = UserMem::new(0x2000)?;
    fd.map(ioas, ring.addr(), RING_IOVA, 0x1000)?;
    fd.map(ioas, data.addr(), SRC_IOVA, 0x1000)?;
    fd.map(ioas, data.addr() + 0x1000, DST_IOVA, 0x1000)?;
    copy_fault_reset(&dev, &ring, &data)
}

/// After the hostile driver, which took the engine from ioatdma and left it in whatever state:
/// a fresh driver resets each channel as dma.c's ioat_reset_hw does (CHANERR cleared, CHANCMD
/// RESET, waited for) and starts it as init.c's ioat_alloc_chan_resources does (CHANCTRL,
/// completion address, chain address), then copies 4 KiB through it with a completion write,
/// byte-checked. `r` is the fresh rig: its device table leaves the engine untranslated (DTE V=0,
/// AMD-Vi Table 7), so the addresses are physical, in pages `r` makes shared in the RMP. Without
/// the engine, or with a kernel IOMMU driver owning the translation, there is nothing to check.
pub fn copy_after_hostile(r: &mut Rig) -> R {
    let Some(dev) = find(abi::pci::IOAT.vendor, abi::pci::IOAT.device) else { return Ok(()) };
    if r.iommu.is_none() {
        println!("# IOAT after the hostile driver: not checked (a kernel IOMMU driver or the VT-d host owns the translation)");
        return Ok(());
    }
    if let Some(d) = driver(&dev.bdf) {
        fs::write(format!("{}/driver/unbind", dev.path), &dev.bdf).map_err(|e| format!("unbinding {} from {d}: {e}", dev.bdf))?;
        let _ = fs::write(format!("{}/enable", dev.path), "1");
    }
    let bar = crate::sys::Bar::map(&dev, 0)?;
    // Descriptor and completion word in one page, the destination in the next; the source is
    // the endpoint's (its pattern from after_hostile).
    let ((_, src), (_, ring), (_, dst)) = (r.small(0), r.small(2), r.small(3));
    for pa in [ring, dst] {
        check!(r.rmpupdate(pa, 0, false, 0)? == 0, "RMPUPDATE {pa:#x} to shared");
    }
    let data = r.page_bytes(src, 0x1000);
    for ch in 0..CHANNELS as u64 {
        let b = (CH * (ch + 1)) as usize;
        let err = bar.r32(b + chan::CHANERR as usize);
        bar.w32(b + chan::CHANERR as usize, err);
        bar.w8(b + chan::CHANCMD as usize, chancmd::RESET);
        check!(
            poll(|| bar.r8(b + chan::CHANCMD as usize) & chancmd::RESET == 0),
            "channel {ch}: the reset never completed after the hostile driver"
        );
        bar.w8(global::INTRCTRL as usize, 0);
        bar.w16(b + chan::CHANCTRL as usize, chanctrl::RUN);
        r.mem.wr(dst, &[0u8; 0x1000]);
        r.mem.w64(ring + COMPLETION_OFF as u64, 0);
        let d = Descriptor::new(0x1000, ctl::COMPL_WRITE, src, dst);
        r.mem.wr(ring, d.as_bytes());
        bar.w64(b + chan::CHANCMP as usize, ring + COMPLETION_OFF as u64);
        bar.w64(b + chan::CHAINADDR as usize, ring);
        bar.w16(b + chan::DMACOUNT as usize, 1);
        let mut sts = 0;
        check!(
            poll(|| {
                sts = bar.r64(b + chan::CHANSTS as usize);
                sts & chansts::STATUS != chansts::ACTIVE
            }),
            "channel {ch}: the copy after the hostile driver never completed (CHANSTS {sts:#x})"
        );
        let chanerr = bar.r32(b + chan::CHANERR as usize);
        check!(sts == ring | STS_DONE, "channel {ch}: copy after the hostile driver: CHANSTS {sts:#x}, CHANERR {chanerr:#x}");
        check!(r.page_bytes(dst, 0x1000) == data, "channel {ch}: the copy after the hostile driver moved the wrong bytes");
        let done = r.mem.r64(ring + COMPLETION_OFF as u64);
        check!(done == ring | STS_DONE, "channel {ch}: completion write-back {done:#x}");
    }
    println!("# IOAT after the hostile driver: both channels reset and copied 4 KiB, byte-checked");
    Ok(())
}
