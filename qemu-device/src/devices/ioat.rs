//! An Intel IOAT (QuickData) DMA engine, as the PCI function 8086:2021 that Linux's ioatdma
//! drives: the global and per-channel registers of BAR0 (regs.rs), descriptors chained in guest
//! memory and run by a job on the daemon's DMA worker (channel.rs), MSI-X with one vector per
//! channel, and the config-space error registers the driver clears. Linux's DMA API clients
//! (dmatest, the driver's own self-test) and VFIO users move data with it; every byte goes through
//! the secure IOMMU. What differs from the real engine: docs/device-abi.md, "IOAT DMA engine".

pub mod channel;
/// The register file and descriptor (Linux registers.h, hw.h) are the ABI's.
pub use abi::ioat as regs;
#[cfg(test)]
mod tests;

use crate::secure::SecureIommu;
use crate::vfio::function::{Bar, EventSink, Irq, PciFunction, PciIds};
use crate::vfio::guest_mem::GuestRam;
use abi::event::{Event, IoatChannel, IoatReset};
use abi::Bdf;
use channel::{run_channel, Engine};
use crossbeam_channel::{Sender, TrySendError};
use regs::{chancmd, chanctrl, chansts, global, intrctrl, CHANNEL_MMIO_SIZE};
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::devices::endpoint::Job;

/// Channels: Linux handles up to four (dma.h, IOAT_MAX_CHANS); two give dmatest two threads.
pub const CHANNELS: usize = 2;
/// log2 of the largest transfer of one descriptor: 1 MiB.
pub const XFERCAP_LOG: u32 = 20;
/// CBVER 3.3, the Skylake-SP engine's; init.c's ioat_pci_probe runs 8086:2021 as 3.2 whatever it
/// reads (so it also clears CHANERR_INT in config space, as dma.c does below 3.3).
pub const CBVER: u8 = 0x33;
pub const BAR0_SIZE: u64 = 0x4000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a channel's job does: `run_channel` over the daemon's guest RAM and secure IOMMU, or
/// over a test's memory. Returns whether work is left.
pub type ChannelRunner = Arc<dyn Fn(&Mutex<Engine>, usize) -> bool + Send + Sync>;

pub struct Ioat {
    rid: u16,
    engine: Arc<Mutex<Engine>>,
    runner: ChannelRunner,
    jobs: Sender<Job>,
    irq: Arc<dyn Irq>,
    events: Arc<dyn EventSink>,
    chanerrmask_int: u32,
}

impl Ioat {
    /// The daemon's engine: its channels run over guest RAM through `secure`.
    pub fn new(rid: u16, secure: Arc<Mutex<SecureIommu>>, ram: GuestRam, irq: Arc<dyn Irq>, jobs: Sender<Job>) -> Self {
        let events = lock(&secure).events();
        let (ev, ir) = (events.clone(), irq.clone());
        let runner: ChannelRunner = Arc::new(move |engine: &Mutex<Engine>, ch: usize| {
            let mut mem = ram.snapshot();
            run_channel(rid, engine, ch, &secure, &mut mem, ev.as_ref(), ir.as_ref())
        });
        Self::with_runner(rid, runner, irq, events, jobs)
    }

    pub fn with_runner(rid: u16, runner: ChannelRunner, irq: Arc<dyn Irq>, events: Arc<dyn EventSink>, jobs: Sender<Job>) -> Self {
        Ioat { rid, engine: Arc::new(Mutex::new(Engine::new(CHANNELS))), runner, jobs, irq, events, chanerrmask_int: 0 }
    }

    pub fn engine(&self) -> &Arc<Mutex<Engine>> {
        &self.engine
    }

    /// Queue channel `ch`'s job (its `scheduled` flag is already set). It queues itself again
    /// while work is left, so one busy channel does not hold the worker from the others.
    fn kick(&self, ch: usize) {
        schedule(self.rid, self.engine.clone(), self.runner.clone(), self.jobs.clone(), ch);
    }

    fn raise(&self, vectors: impl IntoIterator<Item = u16>) {
        for v in vectors {
            self.irq.raise(v);
        }
    }

    fn global_read(&self, offset: u64, data: &mut [u8]) {
        let e = lock(&self.engine);
        let regs = [
            (global::CHANCNT, 1, CHANNELS as u64),
            (global::XFERCAP, 1, u64::from(XFERCAP_LOG)),
            (global::GENCTRL, 1, u64::from(e.genctrl)),
            (global::INTRCTRL, 1, u64::from(e.intrctrl())),
            (global::ATTNSTATUS, 4, u64::from(e.attnstatus)),
            (global::CBVER, 1, u64::from(CBVER)),
            (global::PERPORTOFFSET, 2, CHANNEL_MMIO_SIZE),
            (global::INTRDELAY, 2, u64::from(e.intrdelay)),
            (global::DEVICE_STATUS, 2, 0),
            (global::DMACAPABILITY, 4, 0),
            (global::DCAOFFSET, 2, 0),
        ];
        read_regs(&regs, offset, data);
    }

    fn global_write(&self, offset: u64, data: &[u8]) {
        let fire = {
            let mut e = lock(&self.engine);
            if let Some((v, m)) = merge(u64::from(e.genctrl), global::GENCTRL, 1, offset, data) {
                e.genctrl = ((v & m) as u8 & 0x01) | (e.genctrl & !(m as u8));
            }
            if let Some((v, _)) = merge(u64::from(e.intrctrl), global::INTRCTRL, 1, offset, data) {
                e.intrctrl = v as u8 & intrctrl::WRITABLE;
            }
            if let Some((v, _)) = merge(u64::from(e.intrdelay), global::INTRDELAY, 2, offset, data) {
                e.intrdelay = v as u16 & regs::INTRDELAY_MASK;
            }
            e.rearmed()
        };
        self.raise(fire);
    }

    fn channel_read(&self, ch: usize, offset: u64, data: &mut [u8]) {
        let e = lock(&self.engine);
        let c = &e.channels[ch];
        use regs::chan::*;
        let regs = [
            (CHANCTRL, 2, u64::from(c.chanctrl)),
            (DMACOMP, 2, u64::from(regs::DMA_COMP_V2)),
            (CHANCMD, 1, if c.reset_pending() { u64::from(chancmd::RESET) } else { 0 }),
            (DMACOUNT, 2, u64::from(c.dmacount)),
            (CHANSTS, 8, c.chansts()),
            (CHAINADDR, 8, c.chainaddr),
            (CHANCMP, 8, c.chancmp),
            (CDAR, 8, c.cdar),
            (CHANERR, 4, u64::from(c.chanerr)),
            (CHANERRMSK, 4, u64::from(c.chanerrmsk)),
            (DCACTRL, 4, u64::from(c.dcactrl)),
        ];
        read_regs(&regs, offset, data);
    }

    fn channel_write(&self, ch: usize, offset: u64, data: &[u8]) {
        use regs::chan::*;
        let mut kick = false;
        let (fire, reset) = {
            let mut e = lock(&self.engine);
            let mut reset = false;
            let c = &mut e.channels[ch];
            if let Some((v, _)) = merge(u64::from(c.chanctrl), CHANCTRL, 2, offset, data) {
                c.chanctrl = v as u16 & chanctrl::WRITABLE;
            }
            if let Some((v, m)) = merge(0, CHANCMD, 1, offset, data) {
                let cmd = (v & m) as u8;
                if cmd & chancmd::RESET != 0 {
                    c.reset();
                    e.attnstatus &= !(1 << ch);
                    reset = true;
                } else {
                    let c = &mut e.channels[ch];
                    if cmd & chancmd::SUSPEND != 0 {
                        c.suspend();
                    }
                    if cmd & chancmd::RESUME != 0 {
                        kick |= c.resume();
                    }
                    if cmd & (chancmd::ABORT | chancmd::APPEND | chancmd::START) != 0 {
                        // Not implemented: ABORT, and v1's APPEND and START (a v2+ channel is
                        // started through DMACOUNT, dma.c __ioat_issue_pending).
                        c.chanerr |= regs::chanerr::CHANCMD_ERR;
                        c.state = chansts::HALTED;
                    }
                }
            }
            let c = &mut e.channels[ch];
            if let Some((v, _)) = merge(u64::from(c.dmacount), DMACOUNT, 2, offset, data) {
                kick |= c.append(v as u16);
            }
            if let Some((v, _)) = merge(c.chainaddr, CHAINADDR, 8, offset, data) {
                c.chainaddr = v;
                c.new_chain();
            }
            if let Some((v, _)) = merge(c.chancmp, CHANCMP, 8, offset, data) {
                c.chancmp = v;
            }
            if let Some((v, m)) = merge(0, CHANERR, 4, offset, data) {
                c.chanerr &= !((v & m) as u32);
            }
            if let Some((v, _)) = merge(u64::from(c.chanerrmsk), CHANERRMSK, 4, offset, data) {
                c.chanerrmsk = v as u32;
            }
            if let Some((v, _)) = merge(u64::from(c.dcactrl), DCACTRL, 4, offset, data) {
                c.dcactrl = v as u32;
            }
            // A re-arm clears the channel's attention bit; an interrupt held meanwhile fires.
            let mut fire = Vec::new();
            if merge(0, CHANCTRL, 2, offset, data).is_some() && c.chanctrl & chanctrl::INT_REARM != 0 {
                e.attnstatus &= !(1 << ch);
                fire = e.rearmed();
            }
            (fire, reset)
        };
        if reset {
            self.events.emit(Event::IoatReset(IoatReset {
                devid: Bdf(self.rid),
                channel: IoatChannel::One(u32::try_from(ch).unwrap_or(u32::MAX)),
            }));
        }
        self.raise(fire);
        if kick {
            self.kick(ch);
        }
    }
}

/// The client is gone: queued jobs (which hold the job channel open) find every channel stopped,
/// so the DMA worker drains and the session ends.
impl Drop for Ioat {
    fn drop(&mut self) {
        for c in &mut lock(&self.engine).channels {
            c.reset();
            c.state = chansts::HALTED;
        }
    }
}

/// Queue a job running channel `ch` (its `scheduled` flag already set); never blocks the caller.
/// A full queue leaves the channel unscheduled: the next DMACOUNT write (dma.c's completion timer
/// issues one when descriptors are pending) queues it again.
fn schedule(rid: u16, engine: Arc<Mutex<Engine>>, runner: ChannelRunner, jobs: Sender<Job>, ch: usize) {
    if let Err(err) = jobs.try_send(job(engine.clone(), runner, jobs.clone(), ch)) {
        match err {
            TrySendError::Full(_) => {
                crate::warn_limited!("ioat {}: DMA worker queue full; channel {ch} waits for the next doorbell", abi::Bdf(rid))
            }
            TrySendError::Disconnected(_) => tracing::error!("ioat {}: DMA worker is gone", abi::Bdf(rid)),
        }
        lock(&engine).channels[ch].scheduled = false;
    }
}

/// Channel `ch`'s job: a budget of descriptors, then, with work left, behind the other queued jobs
/// (or on at once when the queue has no room: the worker never waits on its own queue).
fn job(engine: Arc<Mutex<Engine>>, runner: ChannelRunner, jobs: Sender<Job>, ch: usize) -> Job {
    Box::new(move || {
        while runner(&engine, ch) {
            if jobs.try_send(job(engine.clone(), runner.clone(), jobs.clone(), ch)).is_ok() {
                return;
            }
        }
    })
}

/// The bytes of `[offset, offset + data.len())` of registers given as (offset, width, value);
/// bytes of no register read as zero.
fn read_regs(regs: &[(u64, u64, u64)], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset.saturating_add(i as u64);
        *b = regs
            .iter()
            .find(|&&(o, w, _)| at >= o && at < o.saturating_add(w))
            .map_or(0, |&(o, _, v)| v.checked_shr(8u32.saturating_mul(at.wrapping_sub(o) as u32)).unwrap_or(0) as u8);
    }
}

/// A write of `data` at `offset` merged into the register at `reg` of `width` bytes holding
/// `old`: the new value and the mask of the bits written, or None when it misses the register.
fn merge(old: u64, reg: u64, width: u64, offset: u64, data: &[u8]) -> Option<(u64, u64)> {
    let (mut v, mut m) = (old, 0u64);
    for (i, &b) in data.iter().enumerate() {
        let at = offset.saturating_add(i as u64);
        if at >= reg && at < reg.saturating_add(width) {
            // A byte of a register of at most 8.
            let sh = at.wrapping_sub(reg).wrapping_mul(8) & 63;
            v = (v & !(0xff << sh)) | u64::from(b) << sh;
            m |= 0xff << sh;
        }
    }
    (m != 0).then_some((v, m))
}

impl PciFunction for Ioat {
    fn ids(&self) -> PciIds {
        PciIds {
            vendor: abi::pci::IOAT.vendor,
            device: abi::pci::IOAT.device,
            subsystem_vendor: abi::pci::IOAT.vendor,
            subsystem: 0,
            class: abi::pci::IOAT.class,
            revision: 4,
        }
    }

    fn bars(&self) -> Vec<Bar> {
        vec![Bar { index: 0, size: BAR0_SIZE }]
    }

    /// One MSI-X vector per channel (init.c, ioat_dma_setup_interrupts: "The number of MSI-X
    /// vectors should equal the number of channels"), and MSI with one, which ioatdma falls back to.
    fn msix_vectors(&self) -> u16 {
        CHANNELS as u16
    }

    fn msi_vectors(&self) -> u8 {
        1
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset / CHANNEL_MMIO_SIZE {
            0 => self.global_read(offset, data),
            n if (n as usize) <= CHANNELS => self.channel_read((n as usize).wrapping_sub(1), offset % CHANNEL_MMIO_SIZE, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        // An access never spans two blocks: the glue hands at most 8 aligned bytes, and QEMU
        // splits what the guest issues at its natural alignment.
        match offset / CHANNEL_MMIO_SIZE {
            0 => self.global_write(offset, data),
            n if (n as usize) <= CHANNELS => self.channel_write((n as usize).wrapping_sub(1), offset % CHANNEL_MMIO_SIZE, data),
            _ => {}
        }
    }

    fn ext_config_claims(&self, offset: u16) -> bool {
        (regs::pci::DMAUNCERRSTS..regs::pci::DMAUNCERRSTS + 4).contains(&offset)
            || (regs::pci::CHANERR_INT..regs::pci::CHANERRMASK_INT + 4).contains(&offset)
    }

    fn ext_config_read(&mut self, offset: u16, data: &mut [u8]) {
        // DMAUNCERRSTS and CHANERR_INT report internal errors the model never has.
        let regs = [(u64::from(regs::pci::CHANERRMASK_INT), 4, u64::from(self.chanerrmask_int))];
        read_regs(&regs, u64::from(offset), data);
    }

    fn ext_config_write(&mut self, offset: u16, data: &[u8]) {
        if let Some((v, _)) = merge(u64::from(self.chanerrmask_int), u64::from(regs::pci::CHANERRMASK_INT), 4, u64::from(offset), data) {
            self.chanerrmask_int = v as u32;
        }
    }

    /// Function-level reset: every channel and register to its power-on value. A descriptor in
    /// flight finishes moving its bytes and is dropped (its epoch is gone).
    fn reset(&mut self) {
        {
            let mut e = lock(&self.engine);
            let channels = e
                .channels
                .iter()
                .map(|c| channel::Channel {
                    epoch: c.epoch.wrapping_add(1),
                    in_flight: c.in_flight,
                    scheduled: c.scheduled,
                    ..Default::default()
                })
                .collect();
            *e = Engine { channels, ..Engine::default() };
        }
        self.chanerrmask_int = 0;
        self.events.emit(Event::IoatReset(IoatReset { devid: Bdf(self.rid), channel: IoatChannel::All }));
    }
}
