//! A hostile driver: for a fixed time, random values into every register of both functions,
//! random ring indexes and sizes, device tables and page tables full of random entries (loops and
//! self-references included), descriptors with huge and overlapping lengths, random mailbox
//! commands and DOE objects. Addresses the device could write through are kept inside this
//! program's own huge pages, so the guest survives to check that the daemon still works.

use crate::sys::{find, Bar, Config, DmaMem, HUGE};
use std::time::{Duration, Instant};

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

/// Runs for `secs` seconds; returns the number of actions taken.
pub fn run(secs: u64, seed: u64) -> Result<u64, String> {
    let iommu_dev = find(0x1234, 0x7101).ok_or("no secure IOMMU function")?;
    let ep_dev = find(0x1234, 0x7102).ok_or("no DMA endpoint")?;
    let (iommu, ctl, ep) = (Bar::map(&iommu_dev, 0)?, Bar::map(&iommu_dev, 2)?, Bar::map(&ep_dev, 0)?);
    let cfg = Config::open(&ep_dev)?;
    let mut mem = DmaMem::default();
    let pages: Vec<u64> = (0..4).map(|_| mem.page()).collect::<Result<_, _>>()?;
    let mut rng = Rng(seed | 1);
    // An address inside our pages, so whatever the device writes lands there.
    let ours = |rng: &mut Rng| pages[rng.below(pages.len() as u64) as usize] + (rng.below(HUGE) & !7);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        n += 1;
        match rng.below(12) {
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
            // IOMMU registers: bases and the COMPLETION_WAIT/event stores point into our pages;
            // any other register, head and tail take anything.
            3..=4 => {
                let off = (rng.below(0x4000) & !7) as usize;
                let v = match off {
                    0x0 | 0x8 | 0x10 => (ours(&mut rng) & !0xfff) | (rng.next() & 0x0f00_0000_0000_01ff),
                    _ => rng.next(),
                };
                if rng.below(2) == 0 { iommu.w64(off, v) } else { iommu.w32(off & !3, v as u32) }
                let _ = iommu.r32(rng.below(0x1000) as usize * 4);
            }
            // Commands with any opcode; COMPLETION_WAIT stores only into our pages.
            5 => {
                let base = iommu.r64(0x8) & 0x000f_ffff_ffff_f000;
                if pages.iter().any(|&p| base >= p && base < p + HUGE) {
                    let slot = base + (rng.below(256) * 16);
                    if slot + 16 <= base + HUGE.min(4096) {
                        let op = rng.below(16) << 60;
                        let q0 = if op == 1 << 60 { op | (ours(&mut rng) & 0x000f_ffff_ffff_fff8) | rng.below(4) } else { op | (rng.next() >> 4) };
                        mem.w64(slot, q0);
                        mem.w64(slot + 8, rng.next());
                    }
                }
                iommu.w64(0x2008, rng.next() & 0x7fff0);
            }
            // Endpoint registers: ring base anywhere, sizes and indexes out of range, resets.
            6..=7 => {
                let off = (rng.below(0x40) & !3) as usize;
                let v = if off == 0x10 { rng.next() } else { rng.below(1 << 14) };
                ep.w32(off, v as u32);
                if rng.below(3) == 0 {
                    ep.w32(0x20, rng.below(1 << 13) as u32); // doorbell
                }
                let _ = ep.r32(rng.below(0x400) as usize * 4);
            }
            // Descriptors: huge and overlapping lengths, any op and flag.
            8 => {
                let ring = ours(&mut rng) & !0xfff;
                for i in 0..rng.below(64) {
                    let d = ring + i * 32;
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
                ctl.w64(0x108, if rng.below(8) == 0 { rng.next() } else { buf });
                ctl.w32(0x100, (rng.below(0x800) as u32) << 16);
                let _ = ctl.r32(0x100);
                if rng.below(8) == 0 {
                    ctl.w64(rng.below(0x200) as usize & !7, rng.next());
                }
            }
            // Config space, the DOE mailbox included.
            _ => {
                let off = 0x100 + rng.below(0x40) * 4;
                cfg.w32(off, rng.next() as u32);
                let _ = cfg.r32(off);
            }
        }
    }
    // Leave the device stopped: the next driver starts from a reset.
    ep.w32(0x2c, 1);
    Ok(n)
}
