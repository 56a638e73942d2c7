//! The IOAT DMA engine (00:06.0, `run-vm --ioat`) under the hostile driver. Taken from Linux's
//! ioatdma (unbound through sysfs; MSI and MSI-X left off, so nothing it raises reaches the
//! guest's interrupt controller), then: random values at every width into its global and channel
//! registers, its config-space error registers, and its MSI-X table and PBA; descriptor chains of
//! random sizes (0, past XFERCAP, up to 4 GiB), controls and operations, with sources and
//! destinations overlapping or wrapping past 2^64, links that loop onto themselves, go back to the
//! chain's start, are misaligned or lead outside RAM; completion addresses anywhere the guest has
//! no RAM; DMACOUNT far past the chain; CHANCMD's reset, suspend, resume, abort and the v1
//! commands; now and then a function-level reset; and well-formed copies, so the real paths run.
//!
//! With the engine untranslated (DTE V=0, or the IOMMU off), the addresses it is given are the
//! addresses it touches. What it may write (destinations, completion write-backs) and where it
//! fetches descriptors (whose destinations it then writes) is therefore kept in the hostile
//! driver's own huge pages or where the guest has no RAM: above it, in the MSI window, on the
//! engine's own BAR, in the last bytes below 2^64. This covers every write the engine makes:
//! CHANCMP and CHAINADDR are only ever written whole (one 8-byte store), never left as ioatdma's
//! (whose memory the kernel reuses) or at their reset value 0.

use super::Rng;
use crate::sys::{find, Bar, Config, DmaMem, PciDev, HUGE};
use abi::ioat::{self as regs, chan, chancmd, chanctrl, chansts, ctl, global, Descriptor, CHANNEL_MMIO_SIZE, DESC_SIZE};
use iommu_model::amdvi::command::{encode, Command};
use iommu_model::amdvi::dte::Dte;
use iommu_model::amdvi::mmio::{self, control};
use iommu_model::walk::Perm;
use std::time::{Duration, Instant};
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

/// The daemon's BAR0 (qemu-device/src/devices/ioat.rs); a hostile driver writes all of it.
const BAR0_SIZE: u64 = 0x4000;
/// Bits 51:12 of a base address register (AMD-Vi spec 48882 §3.4).
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// The MSI window (Intel SDM Vol. 3 §11.11.1): a DMA write there is an interrupt, never RAM.
const MSI_WINDOW: u64 = 0xfee0_0000;
/// The longest a channel reset may take before it counts as slow (a reset waits for at most the
/// one descriptor in flight: 1 MiB and its page translations).
const RESET_WAIT: Duration = Duration::from_millis(500);
/// Function-level resets through sysfs take the kernel 100 ms or more each (pcie_flr): at most
/// one in this many of the engine's actions (counted, not timed, so a seed replays the same).
const FLR_EVERY: u64 = 4096;

/// What the hostile driver did to the engine, for its summary line.
#[derive(Default)]
struct Counts {
    registers: u64,
    chains: u64,
    doorbells: u64,
    commands: u64,
    msix: u64,
    flrs: u64,
    dtes: u64,
    invalidations: u64,
    copies: u64,
    copies_landed: u64,
    copies_halted: u64,
    slow_resets: u64,
}

pub(super) struct Attack {
    dev: PciDev,
    bar: Bar,
    msix: Option<Bar>,
    cfg: Config,
    /// BAR0's address: writes the engine aims at its own registers (no RAM there).
    bar_pa: u64,
    /// One past the guest's highest RAM byte (/proc/iomem).
    ram_top: u64,
    channels: u64,
    /// This many actions so far, and the number of the last FLR's.
    actions: u64,
    last_flr: Option<u64>,
    counts: Counts,
}

/// Channel `ch`'s register block (init.c, ioat_init_channel: 0x80 × (channel + 1)).
fn base(ch: u64) -> usize {
    (CHANNEL_MMIO_SIZE * (ch + 1)) as usize
}

/// One past the highest "System RAM" byte /proc/iomem lists (top-level lines only).
fn ram_top() -> Result<u64, String> {
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {e}"))?;
    let top = iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(": System RAM"))
        .filter_map(|l| u64::from_str_radix(l.split_once('-')?.1.split_once(' ')?.0, 16).ok())
        .max()
        .ok_or("/proc/iomem lists no System RAM (not root?)")?;
    Ok(top + 1)
}

/// The bus address of BAR `index` (the sysfs `resource` file's line for it).
fn bar_address(dev: &PciDev, index: usize) -> Result<u64, String> {
    let path = format!("{}/resource", dev.path);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let line = text.lines().nth(index).ok_or(format!("{path}: no BAR {index}"))?;
    let start = line.split_whitespace().next().unwrap_or_default();
    u64::from_str_radix(start.trim_start_matches("0x"), 16).map_err(|e| format!("{path}: {e}"))
}

/// The offsets of the capabilities with id `id` in the standard list (PCI 3.0 §6.7).
fn capability(cfg: &Config, id: u32) -> Option<u64> {
    let mut at = u64::from(cfg.r32(0x34) & 0xfc);
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let head = cfg.r32(at);
        if head & 0xff == id {
            return Some(at);
        }
        at = u64::from((head >> 8) & 0xfc);
    }
    None
}

impl Attack {
    /// The engine, if attached: released from its driver (ioatdma, or vfio-pci after the VFIO
    /// scenarios), bus master on, MSI and MSI-X off, and every channel reset and pointed at the
    /// hostile driver's pages before anything else is written.
    pub(super) fn take(pages: &[u64], rng: &mut Rng) -> Result<Option<Attack>, String> {
        let Some(dev) = find(abi::pci::IOAT.vendor, abi::pci::IOAT.device) else { return Ok(None) };
        let unbind = format!("{}/driver/unbind", dev.path);
        if std::path::Path::new(&unbind).exists() {
            std::fs::write(&unbind, &dev.bdf).map_err(|e| format!("unbinding {} from its driver: {e}", dev.bdf))?;
        }
        // The driver's release disabled the device; memory decoding back on.
        let _ = std::fs::write(format!("{}/enable", dev.path), "1");
        let cfg = Config::open(&dev)?;
        cfg.w16(0x04, (cfg.r32(0x04) as u16) | 0x6);
        let mut a = Attack {
            bar: Bar::map(&dev, 0)?,
            msix: Bar::map(&dev, 4).ok(),
            bar_pa: bar_address(&dev, 0)?,
            ram_top: ram_top()?,
            channels: 0,
            actions: 0,
            cfg,
            dev,
            last_flr: None,
            counts: Counts::default(),
        };
        a.interrupts_off();
        a.channels = u64::from(a.bar.r8(global::CHANCNT as usize) & 0x1f).clamp(1, 4);
        a.tame(pages, rng);
        Ok(Some(a))
    }

    /// MSI-X Enable (Message Control bit 15) and MSI Enable (bit 0) clear: an interrupt from the
    /// engine then goes nowhere (QEMU has no vectors for it), so the random MSI-X table cannot
    /// aim a write at guest RAM.
    fn interrupts_off(&self) {
        if let Some(at) = capability(&self.cfg, 0x11) {
            self.cfg.w16(at + 2, (self.cfg.r32(at) >> 16) as u16 & !0x8000);
        }
        if let Some(at) = capability(&self.cfg, 0x05) {
            self.cfg.w16(at + 2, (self.cfg.r32(at) >> 16) as u16 & !0x0001);
        }
    }

    /// Every channel reset, its chain and completion addresses ours: after the take-over and
    /// after each function-level reset (which leaves both at 0, low guest RAM).
    fn tame(&mut self, pages: &[u64], rng: &mut Rng) {
        for ch in 0..self.channels {
            let b = base(ch);
            self.bar.w8(b + chan::CHANCMD as usize, chancmd::RESET);
            self.bar.store64(b + chan::CHANCMP as usize, self.sink(rng, pages, 8) & !7);
            self.bar.store64(b + chan::CHAINADDR as usize, ours(rng, pages, DESC_SIZE) & !(DESC_SIZE - 1));
        }
    }

    /// Somewhere the guest has no RAM.
    fn outside(&self, rng: &mut Rng, len: u64) -> u64 {
        match rng.below(4) {
            0 => self.ram_top.max(1 << 32) + rng.below(1 << 40),
            // The last bytes below 2^64: a transfer from there wraps.
            1 => u64::MAX - rng.below(len.saturating_mul(2).max(64)),
            2 => self.bar_pa + rng.below(BAR0_SIZE),
            _ => MSI_WINDOW + rng.below(0x10_0000),
        }
    }

    /// Where `len` bytes may be written: mostly the driver's pages, else outside RAM.
    fn sink(&self, rng: &mut Rng, pages: &[u64], len: u64) -> u64 {
        if rng.below(8) < 6 {
            ours(rng, pages, len)
        } else {
            self.outside(rng, len)
        }
    }

    /// A descriptor address: one of ours (now and then misaligned), or outside RAM.
    fn chain_address(&self, rng: &mut Rng, pages: &[u64]) -> u64 {
        match rng.below(8) {
            0..=5 => ours(rng, pages, DESC_SIZE) & !(DESC_SIZE - 1),
            6 => ours(rng, pages, DESC_SIZE) | (1 + rng.below(DESC_SIZE - 1)),
            _ => self.outside(rng, DESC_SIZE),
        }
    }

    /// One hostile action on the engine; `amdvi` is the secure IOMMU's BAR0 when it holds AMD-Vi
    /// registers (not a VT-d unit).
    pub(super) fn act(&mut self, rng: &mut Rng, mem: &DmaMem, pages: &[u64], amdvi: Option<&Bar>) {
        self.actions += 1;
        if let Some(regs) = amdvi.filter(|_| rng.below(32) == 0) {
            self.translated(rng, mem, pages, regs);
            return;
        }
        match rng.below(16) {
            0..=4 => self.register(rng, pages),
            5..=9 => self.chain(rng, mem, pages),
            10..=11 => self.command(rng),
            12 => self.msix(rng),
            13 => self.flr_or_config(rng, pages),
            _ => self.copy(rng, mem, pages),
        }
    }

    /// When the device table the hostile driver last gave the IOMMU is one of ours: the engine's
    /// entry made translated (AMD-Vi spec 48882 Table 7: V, TV, a mode of 1 to 6 levels) through
    /// a root in our pages, whose contents are whatever the hostile driver left there, with any
    /// permissions, or one time in four untranslated again (V=0); then, when the command buffer
    /// is ours too, INVALIDATE_DEVTAB_ENTRY for it (the IOMMU may cache the old entry until then,
    /// §2.4.3) and the IOMMU and its command processor on.
    fn translated(&mut self, rng: &mut Rng, mem: &DmaMem, pages: &[u64], regs: &Bar) {
        let devid = abi::pci::IOAT.bdf.0;
        let (perm, root, mode, domain, off) = (
            Perm { read: rng.below(4) != 0, write: rng.below(4) != 0 },
            ours(rng, pages, 0x1000) & !0xfff,
            1 + rng.below(6) as u8,
            rng.next() as u16,
            rng.below(4) == 0,
        );
        let fits = |at: u64, len: u64| pages.iter().any(|&p| at >= p && at.saturating_add(len) <= p + HUGE);
        let devtab = regs.r64(mmio::DEV_TABLE_BASE as usize) & ADDRESS;
        let at = devtab + u64::from(devid) * 32;
        if !fits(devtab, 0) || !fits(at, 32) {
            return;
        }
        self.counts.dtes += 1;
        mem.wr(at, &if off { [0u8; 32] } else { Dte::translated(root, mode, domain, perm).to_bytes() });
        let cmdbuf = regs.r64(mmio::CMD_BUF_BASE as usize);
        // ComLen (bits 59:56): 2^ComLen entries of 16 bytes.
        let len = 16u64 << ((cmdbuf >> 56) & 0xf).clamp(8, 15);
        let tail = regs.r64(mmio::CMD_BUF_TAIL as usize) & 0x7fff0 & (len - 1);
        let slot = (cmdbuf & ADDRESS) + tail;
        if fits(cmdbuf & ADDRESS, len) {
            // The command processor restarted at the tail (it stops at an illegal command, and
            // the hostile driver gives it many), as Linux's amd_iommu restarts it: off, head,
            // on (§3.3.13, CmdBufRun).
            let control = regs.r64(mmio::CONTROL as usize);
            regs.w64(mmio::CONTROL as usize, control & !control::CMD_BUF_EN);
            regs.w64(mmio::CMD_BUF_HEAD as usize, tail);
            let [q0, q1] = encode(&Command::InvalidateDevtabEntry { devid });
            mem.w64(slot, q0);
            mem.w64(slot + 8, q1);
            regs.w64(mmio::CONTROL as usize, control | control::IOMMU_EN | control::CMD_BUF_EN);
            regs.w64(mmio::CMD_BUF_TAIL as usize, (tail + 16) & (len - 1));
            self.counts.invalidations += 1;
        }
    }

    /// Any register at any width with any value, except CHANCMP and CHAINADDR, which must keep
    /// an address of ours or outside RAM: a write of their low 16 bits (any value) or low 32
    /// bits (one of ours) while they hold one of ours that it cannot move out of its page, else
    /// all 64 bits at once. Then a read at any offset and width.
    fn register(&mut self, rng: &mut Rng, pages: &[u64]) {
        self.counts.registers += 1;
        let width = 1u64 << rng.below(4);
        // Mostly the global block, the channels' and the one after them; now and then anywhere.
        let span = if rng.below(8) == 0 { BAR0_SIZE } else { CHANNEL_MMIO_SIZE * (self.channels + 2) };
        let off = rng.below(span) & !(width - 1);
        let v = if rng.below(2) == 0 { rng.next() } else { rng.below(0x100) };
        let touches = |reg: u64| {
            (0..self.channels).find(|&ch| {
                let r = base(ch) as u64 + reg;
                off < r + 8 && r < off + width
            })
        };
        let address = [chan::CHANCMP, chan::CHAINADDR].into_iter().find_map(|reg| Some((reg, touches(reg)?)));
        if let Some((reg, ch)) = address {
            let at = base(ch) + reg as usize;
            let now = self.bar.r64(at);
            // 64 bytes: a descriptor fetch; the completion's 8 fit too.
            let in_page = |a: u64| pages.iter().any(|&p| a >= p && a + DESC_SIZE <= p + HUGE);
            let low = off as usize == at && width <= 2 || off as usize == at + 1 && width == 1;
            if low && in_page(now | 0xffff) && in_page(now & !0xffff) {
                match width {
                    1 => self.bar.w8(off as usize, v as u8),
                    _ => self.bar.w16(off as usize, v as u16),
                }
            } else if let Some(p) =
                pages.iter().find(|&&p| off as usize == at && width == 4 && in_page(now) && (p..p + HUGE).contains(&now))
            {
                // Anywhere in the same page, when the page lies below 4 GiB (the high half is 0).
                let to = p + rng.below(HUGE - DESC_SIZE);
                if to >> 32 == 0 {
                    self.bar.w32(at, to as u32);
                }
            } else if reg == chan::CHANCMP {
                self.bar.store64(at, self.sink(rng, pages, 8));
            } else {
                self.bar.store64(at, self.chain_address(rng, pages));
            }
        } else {
            let off = off as usize;
            match width {
                1 => self.bar.w8(off, v as u8),
                2 => self.bar.w16(off, v as u16),
                4 => self.bar.w32(off, v as u32),
                _ => self.bar.store64(off, v),
            }
        }
        let width = 1usize << rng.below(3);
        let at = (rng.below(span) as usize) & !(width - 1);
        let _ = match width {
            1 => u32::from(self.bar.r8(at)),
            2 => u32::from(self.bar.r16(at)),
            _ => self.bar.r32(at),
        };
    }

    /// A chain of 1 to 8 descriptors written into our pages and started on a channel.
    fn chain(&mut self, rng: &mut Rng, mem: &DmaMem, pages: &[u64]) {
        self.counts.chains += 1;
        let n = 1 + rng.below(8);
        // Room for one more descriptor after the chain: the last one's `next` may point there,
        // and a fetch must not run past our page.
        let first = ours(rng, pages, (n + 1) * DESC_SIZE) & !(DESC_SIZE - 1);
        for i in 0..n {
            let size = match rng.below(8) {
                0 => 0,
                1 => 1 + rng.below(64),
                // XFERCAP (1 MiB) and just past it.
                2 => 1 << 20,
                3 => (1 << 20) + 1,
                4 => u64::from(u32::MAX),
                5 => rng.next() & 0xffff_ffff,
                _ => 1 + rng.below(1 << 16),
            };
            // Op COPY with any of hw.h's control bits, or anything at all (other ops, page
            // break, DCA) now and then.
            let control = if rng.below(4) == 0 { rng.next() as u32 } else { rng.next() as u32 & 0x7ff };
            let dst = self.sink(rng, pages, size);
            let src = match rng.below(6) {
                0..=2 => ours(rng, pages, size),
                // Overlapping the destination by any amount either way.
                3 => dst.wrapping_add(rng.below(2 * size + 1)).wrapping_sub(size),
                4 => rng.next(),
                _ => self.outside(rng, size),
            };
            let here = first + i * DESC_SIZE;
            let next = match rng.below(8) {
                0..=3 => here + DESC_SIZE,
                // A loop onto itself, or back to the start.
                4 => here,
                5 => first,
                _ => self.chain_address(rng, pages),
            };
            let d = Descriptor { next: U64::new(next), ..Descriptor::new(size as u32, control, src, dst) };
            mem.wr(here, d.as_bytes());
        }
        let ch = rng.below(self.channels);
        let b = base(ch);
        if rng.below(2) == 0 {
            self.bar.w8(b + chan::CHANCMD as usize, chancmd::RESET);
        }
        if rng.below(2) == 0 {
            let err = self.bar.r32(b + chan::CHANERR as usize);
            self.bar.w32(b + chan::CHANERR as usize, err);
        }
        let ctrl = if rng.below(2) == 0 { chanctrl::RUN } else { rng.next() as u16 };
        self.bar.w16(b + chan::CHANCTRL as usize, ctrl);
        self.bar.store64(b + chan::CHANCMP as usize, self.sink(rng, pages, 8));
        let start = if rng.below(8) == 0 { self.chain_address(rng, pages) } else { first };
        self.bar.store64(b + chan::CHAINADDR as usize, start);
        let count = self.bar.r16(b + chan::DMACOUNT as usize);
        let count = match rng.below(6) {
            0..=2 => count.wrapping_add(n as u16),
            3 => count.wrapping_add(1),
            // Far past the chain: up to 65 535 descriptors, round and round a loop.
            4 => count.wrapping_sub(1),
            _ => rng.next() as u16,
        };
        self.bar.w16(b + chan::DMACOUNT as usize, count);
        self.counts.doorbells += 1;
        if rng.below(4) == 0 {
            // More doorbells on the running chain.
            self.bar.w16(b + chan::DMACOUNT as usize, count.wrapping_add(rng.below(4) as u16));
            self.counts.doorbells += 1;
        }
    }

    /// CHANCMD with any command or byte, then sometimes a doorbell.
    fn command(&mut self, rng: &mut Rng) {
        self.counts.commands += 1;
        let b = base(rng.below(self.channels));
        let cmd = match rng.below(8) {
            0 => chancmd::RESET,
            1 => chancmd::SUSPEND,
            2 => chancmd::RESUME,
            3 => chancmd::ABORT,
            4 => chancmd::APPEND,
            5 => chancmd::START,
            _ => rng.next() as u8,
        };
        self.bar.w8(b + chan::CHANCMD as usize, cmd);
        if rng.below(2) == 0 {
            let count = self.bar.r16(b + chan::DMACOUNT as usize);
            self.bar.w16(b + chan::DMACOUNT as usize, count.wrapping_add(rng.below(3) as u16));
            self.counts.doorbells += 1;
        }
        let _ = self.bar.r32(b + chan::CHANSTS as usize);
    }

    /// The MSI-X table and PBA (BAR4, QEMU's emulation) at any offset with any value.
    fn msix(&mut self, rng: &mut Rng) {
        let Some(t) = &self.msix else { return };
        self.counts.msix += 1;
        let off = (rng.below(t.len() as u64) & !3) as usize;
        t.w32(off, rng.next() as u32);
        let _ = t.r32((rng.below(t.len() as u64) & !3) as usize);
    }

    /// A function-level reset through sysfs (at most one per `FLR_EVERY` actions), after which the
    /// channels are tamed again; otherwise the config-space error registers ioatdma clears.
    fn flr_or_config(&mut self, rng: &mut Rng, pages: &[u64]) {
        if rng.below(16) == 0 && self.last_flr.is_none_or(|n| self.actions - n > FLR_EVERY) {
            self.last_flr = Some(self.actions);
            if std::fs::write(format!("{}/reset", self.dev.path), "1").is_ok() {
                self.counts.flrs += 1;
            }
            // The kernel restores config space, MSI and MSI-X Enable included (both off).
            self.interrupts_off();
            self.tame(pages, rng);
            return;
        }
        let off = [regs::pci::DMAUNCERRSTS, regs::pci::CHANERR_INT, regs::pci::CHANERRMASK_INT][rng.below(3) as usize];
        self.cfg.w32(u64::from(off), rng.next() as u32);
        let _ = self.cfg.r32(u64::from(off));
    }

    /// A well-formed copy as ioatdma makes one (dma.c, ioat_reset_hw; init.c,
    /// ioat_alloc_chan_resources): CHANERR cleared, the channel reset, started, one COPY with a
    /// completion write. Whether it lands depends on what the rest of the hostile driver left in
    /// the IOMMU, so it is counted, not checked.
    fn copy(&mut self, rng: &mut Rng, mem: &DmaMem, pages: &[u64]) {
        self.counts.copies += 1;
        // Every random choice first, so a slow reset does not change what follows the seed.
        let b = base(rng.below(self.channels));
        // A 256 KiB slot of ours: descriptor, completion word, source at 4 KiB, destination at
        // 128 KiB; mostly up to a page, now and then up to 64 KiB.
        let page = pages[rng.below(pages.len() as u64) as usize];
        let slot = page + rng.below(HUGE / 0x4_0000) * 0x4_0000;
        let len = 1 + if rng.below(8) == 0 { rng.below(0x1_0000) } else { rng.below(0x1000) };
        let fill = rng.next() as u8 | 1;
        let err = self.bar.r32(b + chan::CHANERR as usize);
        self.bar.w32(b + chan::CHANERR as usize, err);
        self.bar.w8(b + chan::CHANCMD as usize, chancmd::RESET);
        let t = Instant::now();
        while self.bar.r8(b + chan::CHANCMD as usize) & chancmd::RESET != 0 {
            if t.elapsed() > RESET_WAIT {
                self.counts.slow_resets += 1;
                return;
            }
            std::thread::yield_now();
        }
        let data: Vec<u8> = (0..len).map(|i| fill.wrapping_mul(i as u8 | 1)).collect();
        mem.wr(slot + 0x1000, &data);
        mem.wr(slot + 0x2_0000, &vec![0u8; len as usize]);
        mem.w64(slot + DESC_SIZE, 0);
        let d = Descriptor::new(len as u32, ctl::COMPL_WRITE, slot + 0x1000, slot + 0x2_0000);
        mem.wr(slot, d.as_bytes());
        self.bar.w16(b + chan::CHANCTRL as usize, chanctrl::RUN);
        self.bar.store64(b + chan::CHANCMP as usize, slot + DESC_SIZE);
        self.bar.store64(b + chan::CHAINADDR as usize, slot);
        self.bar.w16(b + chan::DMACOUNT as usize, 1);
        let t = Instant::now();
        let sts = loop {
            let sts = u64::from(self.bar.r32(b + chan::CHANSTS as usize)) & chansts::STATUS;
            if sts != chansts::ACTIVE || t.elapsed() > Duration::from_millis(50) {
                break sts;
            }
            std::thread::yield_now();
        };
        let mut got = vec![0u8; len as usize];
        mem.rd(slot + 0x2_0000, &mut got);
        if sts == chansts::DONE && got == data {
            self.counts.copies_landed += 1;
        } else if sts == chansts::HALTED {
            self.counts.copies_halted += 1;
        }
    }

    /// The channels reset and stopped for the next driver; the summary line.
    pub(super) fn stop(&self) {
        for ch in 0..self.channels {
            self.bar.w8(base(ch) + chan::CHANCMD as usize, chancmd::RESET);
            self.bar.w16(base(ch) + chan::CHANCTRL as usize, 0);
        }
        let c = &self.counts;
        println!(
            "# hostile driver: IOAT: {} register writes, {} chains, {} doorbells, {} CHANCMD commands, {} MSI-X table/PBA writes, {} FLRs, {} device table entries ({} invalidated); {} well-formed copies ({} landed, {} halted by the IOMMU's state), {} resets slower than {} ms",
            c.registers,
            c.chains,
            c.doorbells,
            c.commands,
            c.msix,
            c.flrs,
            c.dtes,
            c.invalidations,
            c.copies,
            c.copies_landed,
            c.copies_halted,
            c.slow_resets,
            RESET_WAIT.as_millis()
        );
    }
}

/// `len` bytes (at most a huge page's) inside one of the driver's pages, at any byte.
fn ours(rng: &mut Rng, pages: &[u64], len: u64) -> u64 {
    let len = len.min(HUGE);
    pages[rng.below(pages.len() as u64) as usize] + rng.below(HUGE - len + 1)
}
