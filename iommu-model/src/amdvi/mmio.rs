//! The AMD-Vi MMIO register file and the state behind it (spec 48882 §3.4; offsets and bits as
//! Linux amd_iommu_types.h MMIO_* / CONTROL_* names them): device table base, the command buffer
//! that runs when its tail moves, the event log the IOMMU appends to, and the cached translation
//! path (DTE cache + IOTLB) that only invalidation commands refresh.

use super::command::{self, Command};
use super::dte::{self, DevTabBase, Dte, DteFetchError};
use super::event::{flags, Event};
use super::inject::{Fault, Fired, Site, MAX_FIRED};
use super::translate::{check_dte, finish_walk, untranslated, DteVerdict, Outcome};
use crate::fmt::amdv1::AmdV1;
use crate::inject::{At, Full, Injector, When};
use crate::iotlb::{DevCache, Iotlb};
use crate::mem::PhysMem;
use crate::walk::{self, Access, Perm};
use std::collections::BTreeMap;

/// Size of the register window (QEMU AMDVI_MMIO_SIZE).
pub const MMIO_SIZE: u64 = 0x4000;

pub const DEV_TABLE_BASE: u64 = 0x0000;
pub const CMD_BUF_BASE: u64 = 0x0008;
pub const EVENT_LOG_BASE: u64 = 0x0010;
pub const CONTROL: u64 = 0x0018;
pub const EXCL_BASE: u64 = 0x0020;
pub const EXCL_LIMIT: u64 = 0x0028;
pub const EXT_FEATURES: u64 = 0x0030;
pub const EXT_FEATURES2: u64 = 0x01a0;
pub const CMD_BUF_HEAD: u64 = 0x2000;
pub const CMD_BUF_TAIL: u64 = 0x2008;
pub const EVENT_LOG_HEAD: u64 = 0x2010;
pub const EVENT_LOG_TAIL: u64 = 0x2018;
pub const STATUS: u64 = 0x2020;

/// Control register bits.
pub mod control {
    pub const IOMMU_EN: u64 = 1 << 0;
    pub const EVENT_LOG_EN: u64 = 1 << 2;
    pub const EVENT_INT_EN: u64 = 1 << 3;
    pub const COM_WAIT_INT_EN: u64 = 1 << 4;
    pub const CMD_BUF_EN: u64 = 1 << 12;
}

/// Status register bits; the first three are RW1C.
pub mod status {
    pub const EVENT_OVERFLOW: u64 = 1 << 0;
    pub const EVENT_LOG_INT: u64 = 1 << 1;
    pub const COM_WAIT_INT: u64 = 1 << 2;
    pub const EVENT_LOG_RUN: u64 = 1 << 3;
    pub const CMD_BUF_RUN: u64 = 1 << 4;
    pub const RW1C: u64 = EVENT_OVERFLOW | EVENT_LOG_INT | COM_WAIT_INT;
}

/// Extended Feature Register bits this model implements (Linux FEATURE_*).
pub mod efr {
    /// INVALIDATE_IOMMU_ALL.
    pub const IA_SUP: u64 = 1 << 6;
    /// HATS = 10b: six-level host tables.
    pub const HATS_6_LEVEL: u64 = 2 << 10;
    pub const SNP_SUP: u64 = 1 << 63;
    /// EFR2 bit 1, SEV-TIO (Linux FEATURE_SEVSNPIO_SUP).
    pub const SEVSNPIO_SUP: u64 = 1 << 1;
}

/// Head and tail pointers hold a byte offset in bits 18:4.
const PTR_MASK: u64 = 0x7fff0;
const BASE_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Ring size in bytes from a base register's Len field (bits 59:56: log2 of 16-byte entries;
/// values below 8 are reserved and read as 8, 256 entries, as the minimum Linux uses).
fn ring_bytes(base_reg: u64) -> u64 {
    let len = ((base_reg >> 56) & 0xf).clamp(8, 15);
    16u64 << len
}

#[derive(Default)]
pub struct AmdVi {
    devtab: u64,
    cmd_base: u64,
    evt_base: u64,
    control: u64,
    cmd_head: u64,
    cmd_tail: u64,
    evt_head: u64,
    evt_tail: u64,
    status: u64,
    efr: u64,
    efr2: u64,
    /// Registers without behaviour here (exclusion range, MSI, ...) read back what was written.
    other: BTreeMap<u64, u64>,
    dte_cache: DevCache<Dte>,
    iotlb: Iotlb,
    irq_pending: bool,
    /// Table walks done (IOTLB misses), for statistics.
    pub walks: u64,
    /// Commands executed, by opcode (what a driver's invalidations cost it), for statistics.
    pub commands: [u64; 16],
    /// Faults armed on purpose (docs/fault-injection.md), and what fired ones did until the
    /// daemon collects it.
    pub inject: Injector<Fault>,
    fired: Vec<Fired>,
}

impl AmdVi {
    /// An IOMMU that advertises SNP and SEV-TIO support.
    pub fn new() -> Self {
        AmdVi { efr: efr::IA_SUP | efr::HATS_6_LEVEL | efr::SNP_SUP, efr2: efr::SEVSNPIO_SUP, ..Default::default() }
    }

    pub fn enabled(&self) -> bool {
        self.control & control::IOMMU_EN != 0
    }

    /// True once since the last call if an interrupt condition arose (event logged with
    /// EventIntEn, or COMPLETION_WAIT with I and ComWaitIntEn).
    pub fn take_irq(&mut self) -> bool {
        std::mem::take(&mut self.irq_pending)
    }

    pub fn iotlb_len(&self) -> usize {
        self.iotlb.len()
    }

    fn reg(&self, off: u64) -> u64 {
        match off {
            DEV_TABLE_BASE => self.devtab,
            CMD_BUF_BASE => self.cmd_base,
            EVENT_LOG_BASE => self.evt_base,
            CONTROL => self.control,
            EXT_FEATURES => self.efr,
            EXT_FEATURES2 => self.efr2,
            CMD_BUF_HEAD => self.cmd_head,
            CMD_BUF_TAIL => self.cmd_tail,
            EVENT_LOG_HEAD => self.evt_head,
            EVENT_LOG_TAIL => self.evt_tail,
            STATUS => self.status,
            _ => self.other.get(&off).copied().unwrap_or(0),
        }
    }

    /// A 4- or 8-byte read at an aligned offset; anything else reads as all ones, as an
    /// unsupported request does.
    pub fn mmio_read(&self, off: u64, size: usize) -> u64 {
        if off >= MMIO_SIZE || !(size == 4 || size == 8) || !off.is_multiple_of(size as u64) {
            return u64::MAX;
        }
        let v = self.reg(off & !7);
        if size == 4 {
            (v >> ((off & 4) << 3)) & 0xffff_ffff
        } else {
            v
        }
    }

    /// A 4- or 8-byte write at an aligned offset; other sizes and offsets are dropped.
    pub fn mmio_write<M: PhysMem + ?Sized>(&mut self, mem: &mut M, off: u64, size: usize, val: u64) {
        if off >= MMIO_SIZE || !(size == 4 || size == 8) || !off.is_multiple_of(size as u64) {
            return;
        }
        let reg = off & !7;
        let old = self.reg(reg);
        // The bits this access writes; a 4-byte access leaves the other half as it was.
        let (written, val) = if size == 4 {
            let sh = (off & 4) << 3;
            let lane = (val & 0xffff_ffff) << sh;
            (lane, (old & !(0xffff_ffffu64 << sh)) | lane)
        } else {
            (val, val)
        };
        match reg {
            DEV_TABLE_BASE => self.devtab = val & (BASE_MASK | 0x1ff),
            // Writing a ring's base resets its pointers (QEMU amdvi_handle_cmdbase_write).
            CMD_BUF_BASE => {
                self.cmd_base = val & (BASE_MASK | 0x0f00_0000_0000_0000);
                self.cmd_head = 0;
                self.cmd_tail = 0;
            }
            EVENT_LOG_BASE => {
                self.evt_base = val & (BASE_MASK | 0x0f00_0000_0000_0000);
                self.evt_head = 0;
                self.evt_tail = 0;
            }
            CONTROL => {
                let was = self.control;
                self.control = val;
                // EventLogRun and CmdBufRun start when their enable (with IommuEn) goes from 0
                // to 1 and stop when it goes to 0; in between the IOMMU itself may stop them
                // (event log overflow, command errors), and only a new 0 -> 1 restarts them, as
                // Linux's amd_iommu_restart_log and the illegal-command recovery expect.
                for (en, run) in [(control::EVENT_LOG_EN, status::EVENT_LOG_RUN), (control::CMD_BUF_EN, status::CMD_BUF_RUN)] {
                    let on = |c: u64| c & control::IOMMU_EN != 0 && c & en != 0;
                    if !on(val) {
                        self.status &= !run;
                    } else if !on(was) {
                        self.status |= run;
                    }
                }
                self.run_commands(mem);
            }
            EXT_FEATURES | EXT_FEATURES2 => {}
            CMD_BUF_HEAD => self.cmd_head = val & PTR_MASK,
            CMD_BUF_TAIL => {
                self.cmd_tail = val & PTR_MASK;
                self.run_commands(mem);
            }
            EVENT_LOG_HEAD => self.evt_head = val & PTR_MASK,
            EVENT_LOG_TAIL => self.evt_tail = val & PTR_MASK,
            STATUS => self.status &= !(written & status::RW1C),
            _ => {
                self.other.insert(reg, val);
            }
        }
    }

    /// Fetch and execute commands from head to tail (spec §2.4). At most one ring's worth per
    /// call, so a guest cannot make one register write do unbounded work.
    fn run_commands<M: PhysMem + ?Sized>(&mut self, mem: &mut M) {
        if self.status & status::CMD_BUF_RUN == 0 {
            return;
        }
        let size = ring_bytes(self.cmd_base);
        let base = self.cmd_base & BASE_MASK;
        // A tail or head outside the buffer is a programming error: the command processor
        // stops with COMMAND_HARDWARE_ERROR (choice: docs/amd-vi.md).
        if self.cmd_tail >= size || self.cmd_head >= size {
            self.status &= !status::CMD_BUF_RUN;
            let ev = Event::command_hw_error(flags::TYPE_TARGET_ABORT, base.wrapping_add(self.cmd_tail));
            self.log_event(mem, &ev);
            return;
        }
        for _ in 0..size / 16 {
            if self.cmd_head == self.cmd_tail {
                break;
            }
            // base has bits 51:12 and head < size <= 512 KiB: no sum here can wrap.
            let addr = base.wrapping_add(self.cmd_head);
            let fetched = mem.read_u64(addr).and_then(|a| Ok((a, mem.read_u64(addr.wrapping_add(8))?)));
            let raw = match fetched {
                Ok((a, b)) => [a, b],
                Err(_) => {
                    self.status &= !status::CMD_BUF_RUN;
                    let ev = Event::command_hw_error(flags::TYPE_MASTER_ABORT, addr);
                    self.log_event(mem, &ev);
                    return;
                }
            };
            let op = (raw[0] >> 60) as u8;
            let injected = self.inject.fire_one(At::Command, |f| {
                f.site() == Site::Command || (f.site() == Site::CompletionWait && op == command::COMPLETION_WAIT)
            });
            if let Some((id, fault)) = injected {
                let ev = match fault {
                    Fault::IllegalCommand => Event::illegal_command(addr),
                    Fault::CommandHardwareError => Event::command_hw_error(flags::TYPE_DATA_ERROR, addr),
                    // Lost: no store, no interrupt; the processor goes on.
                    _ => {
                        self.record(id, fault, None, 0, format!("COMPLETION_WAIT at {addr:#x} completed without its store or interrupt"));
                        self.commands[usize::from(op)] = self.commands[usize::from(op)].wrapping_add(1);
                        // size is a power of two (ring_bytes).
                        self.cmd_head = self.cmd_head.wrapping_add(16) & size.wrapping_sub(1);
                        self.inject.count_command();
                        self.fire_any(mem, At::Command);
                        continue;
                    }
                };
                // As for a real one: the processor stops with head on the command.
                self.status &= !status::CMD_BUF_RUN;
                let logged = self.log_event(mem, &ev);
                self.record(
                    id,
                    fault,
                    Some(ev),
                    u32::from(logged),
                    format!("{} for the command at {addr:#x}; command processor stopped", ev.name()),
                );
                return;
            }
            let Some(cmd) = command::decode(raw) else {
                // The processor stops at the illegal command; head keeps pointing at it.
                self.status &= !status::CMD_BUF_RUN;
                self.log_event(mem, &Event::illegal_command(addr));
                return;
            };
            if let Some(n) = self.commands.get_mut(usize::from((raw[0] >> 60) as u8)) {
                *n = n.wrapping_add(1);
            }
            if let Err(ev) = self.execute(mem, &cmd) {
                self.status &= !status::CMD_BUF_RUN;
                self.log_event(mem, &ev);
                return;
            }
            // size is a power of two (ring_bytes).
            self.cmd_head = self.cmd_head.wrapping_add(16) & size.wrapping_sub(1);
            self.inject.count_command();
            self.fire_any(mem, At::Command);
        }
    }

    fn execute<M: PhysMem + ?Sized>(&mut self, mem: &mut M, cmd: &Command) -> Result<(), Event> {
        match *cmd {
            Command::CompletionWait { store, interrupt, store_addr, data } => {
                if store {
                    mem.write_u64(store_addr, data)
                        .map_err(|_| Event::command_hw_error(flags::TYPE_MASTER_ABORT | flags::RW, store_addr))?;
                }
                if interrupt {
                    self.status |= status::COM_WAIT_INT;
                    if self.control & control::COM_WAIT_INT_EN != 0 {
                        self.irq_pending = true;
                    }
                }
            }
            Command::InvalidateDevtabEntry { devid } => self.dte_cache.invalidate(devid),
            // PDEs are not cached by this model, so the PDE bit needs no extra work.
            Command::InvalidateIommuPages { domain_id, start, len, .. } => self.iotlb.invalidate_range(domain_id, start, len),
            Command::InvalidateIotlbPages { .. } | Command::InvalidateInterruptTable { .. } => {}
            Command::InvalidateIommuAll => self.flush_caches(),
        }
        Ok(())
    }

    /// Append a record to the event log (spec §2.5). Returns false when it was not written:
    /// logging not running, the log full or its pointers outside it (EventOverflow), or the log
    /// not in memory.
    pub fn log_event<M: PhysMem + ?Sized>(&mut self, mem: &mut M, ev: &Event) -> bool {
        if self.status & status::EVENT_LOG_RUN == 0 {
            return false;
        }
        let size = ring_bytes(self.evt_base);
        let next = self.evt_tail.wrapping_add(16) & size.wrapping_sub(1);
        if self.evt_tail >= size || self.evt_head >= size || next == self.evt_head {
            self.overflow();
            return false;
        }
        if mem.write((self.evt_base & BASE_MASK).wrapping_add(self.evt_tail), &ev.to_bytes()).is_err() {
            return false;
        }
        self.evt_tail = next;
        self.status |= status::EVENT_LOG_INT;
        if self.control & control::EVENT_INT_EN != 0 {
            self.irq_pending = true;
        }
        true
    }

    /// The record is dropped and logging stops until software restarts it (EventLogEn 0 -> 1):
    /// Linux amd_iommu_restart_log only restarts a log whose EventLogRun is 0.
    fn overflow(&mut self) {
        self.status = (self.status | status::EVENT_OVERFLOW) & !status::EVENT_LOG_RUN;
        if self.control & control::EVENT_INT_EN != 0 {
            self.irq_pending = true;
        }
    }

    /// Translate a DMA request through the caches, walking the tables on a miss; a fault is
    /// logged in the event log unless the DTE suppresses it.
    pub fn translate<M: PhysMem + ?Sized>(&mut self, mem: &mut M, devid: u16, iova: u64, access: Access) -> Outcome {
        self.translate_walked(mem, devid, iova, access).0
    }

    /// [`AmdVi::translate`], and whether the request walked the I/O page tables (an IOTLB miss;
    /// false for an IOTLB hit and for a request the DTE decides alone).
    pub fn translate_walked<M: PhysMem + ?Sized>(&mut self, mem: &mut M, devid: u16, iova: u64, access: Access) -> (Outcome, bool) {
        if !self.enabled() {
            return (Outcome::Ok(untranslated(iova, Perm::RW)), false);
        }
        let at = At::Dma { devid, iova };
        self.fire_any(mem, at);
        let rw = if access == Access::Write { flags::RW } else { 0 };
        let (outcome, injected, walked) = match self.inject.fire_one(at, |f| f.site() == Site::DevTabRead) {
            // The DTE is read again (a cached copy may be dropped at any time) and the read fails.
            Some(hit) => {
                self.dte_cache.invalidate(devid);
                // base() has bits 51:12 and devid × 32 < 2^21: the sum cannot wrap.
                let dte_addr = DevTabBase(self.devtab).base().wrapping_add(u64::from(devid) << 5);
                let event = Event::dev_tab_hw_error(devid, rw | flags::TYPE_DATA_ERROR, dte_addr);
                (Outcome::Fault { event, level: None, logged: true }, Some(hit), false)
            }
            None => self.translate_cached(mem, devid, iova, access),
        };
        self.inject.count_dma(devid, iova);
        let mut logged = false;
        if let Outcome::Fault { event, logged: true, .. } = &outcome {
            let ev = *event;
            logged = self.log_event(mem, &ev);
        }
        if let (Some((id, fault)), Outcome::Fault { event, .. }) = (injected, &outcome) {
            let effect =
                format!("{} at {:#x} for {devid:#06x}'s request to {iova:#x}; the request was aborted", event.name(), event.address);
            self.record(id, fault, Some(*event), u32::from(logged), effect);
        }
        (outcome, walked)
    }

    /// The outcome, the injected fault that caused it, and whether the tables were walked.
    fn translate_cached<M: PhysMem + ?Sized>(
        &mut self,
        mem: &M,
        devid: u16,
        iova: u64,
        access: Access,
    ) -> (Outcome, Option<(u32, Fault)>, bool) {
        let rw = if access == Access::Write { flags::RW } else { 0 };
        let d = match self.dte_cache.get(devid) {
            Some(d) => d,
            None => match dte::fetch(mem, DevTabBase(self.devtab), devid) {
                Ok(d) => {
                    self.dte_cache.insert(devid, d);
                    d
                }
                Err(DteFetchError::OutOfTable) => {
                    return (Outcome::Fault { event: Event::illegal_dte(devid, rw, iova), level: None, logged: true }, None, false)
                }
                Err(DteFetchError::Memory { dte_addr, .. }) => {
                    let event = Event::dev_tab_hw_error(devid, rw | flags::TYPE_MASTER_ABORT, dte_addr);
                    return (Outcome::Fault { event, level: None, logged: true }, None, false);
                }
            },
        };
        match check_dte(&d, devid, iova, access) {
            DteVerdict::Done(o) => (o, None, false),
            DteVerdict::Walk { root, levels } => {
                // An injected table-read failure: the page's cached translation is dropped and
                // the walk's first read (the top-level entry) fails.
                if let Some(hit) = self.inject.fire_one(At::Dma { devid, iova }, |f| f.site() == Site::TableWalk) {
                    self.iotlb.invalidate_range(d.domain_id(), iova & !0xfff, 0x1000);
                    // levels is 1..=6 here (check_dte); the entry's address wraps as the walker's does.
                    let shift = 9u32.saturating_mul(u32::from(levels).saturating_sub(1)).saturating_add(12);
                    let entry = root.wrapping_add((iova.checked_shr(shift).unwrap_or(0) & 0x1ff) << 3);
                    let event = Event::page_tab_hw_error(devid, d.domain_id(), rw | flags::TYPE_DATA_ERROR, entry);
                    return (Outcome::Fault { event, level: Some(levels), logged: true }, Some(hit), false);
                }
                if let Some(t) = self.iotlb.lookup(d.domain_id(), iova) {
                    return (finish_walk(&d, devid, iova, access, Ok(t)), None, false);
                }
                let res = walk::walk(&AmdV1, mem, root, levels, iova);
                self.walks = self.walks.wrapping_add(1);
                if let Ok(t) = &res {
                    self.iotlb.insert(d.domain_id(), iova, t);
                }
                (finish_walk(&d, devid, iova, access, res), None, true)
            }
        }
    }

    /// Arm a fault (docs/fault-injection.md); one due at once fires before this returns.
    pub fn arm<M: PhysMem + ?Sized>(&mut self, mem: &mut M, id: u32, fault: Fault, when: When) -> Result<(), Full> {
        self.inject.arm(id, fault, when)?;
        self.fire_any(mem, At::Arm);
        Ok(())
    }

    /// What fired faults did since the last call.
    pub fn take_fired(&mut self) -> Vec<Fired> {
        std::mem::take(&mut self.fired)
    }

    fn record(&mut self, id: u32, fault: Fault, event: Option<Event>, logged: u32, effect: String) {
        if self.fired.len() >= MAX_FIRED {
            self.fired.remove(0);
        }
        self.fired.push(Fired { id, fault, event, logged, effect });
    }

    /// The faults that need no particular request or command, fired if due here.
    fn fire_any<M: PhysMem + ?Sized>(&mut self, mem: &mut M, at: At) {
        for (id, fault) in self.inject.fire(at, |f| f.site() == Site::Any) {
            match fault {
                Fault::EventLogOverflow => {
                    if self.status & status::EVENT_LOG_RUN == 0 {
                        self.record(id, fault, None, 0, "the event log was not running: nothing to overflow".into());
                    } else {
                        self.overflow();
                        self.record(id, fault, None, 0, "event log overflow: EventOverflow set, EventLogRun cleared".into());
                    }
                }
                Fault::IoPageFault { devid, iova, count } => {
                    // The DomainID the device's DTE gives, read without caching it.
                    let domain = dte::fetch(mem, DevTabBase(self.devtab), devid).map_or(0, |d| d.domain_id());
                    let ev = Event::io_page_fault(devid, domain, flags::RW, iova);
                    let mut logged = 0u32;
                    for _ in 0..count {
                        if !self.log_event(mem, &ev) {
                            break;
                        }
                        logged = logged.saturating_add(1);
                    }
                    let overflowed = self.status & status::EVENT_OVERFLOW != 0 && logged < count;
                    let effect = format!(
                        "{logged} of {count} IO_PAGE_FAULT records for {devid:#06x} at {iova:#x} logged{}",
                        if overflowed { "; the event log overflowed" } else { "" }
                    );
                    self.record(id, fault, Some(ev), logged, effect);
                }
                _ => {}
            }
        }
    }

    /// Drop every cached DTE and translation (what INVALIDATE_IOMMU_ALL does; hardware may do it
    /// at any time).
    pub fn flush_caches(&mut self) {
        self.iotlb.invalidate_all();
        self.dte_cache.invalidate_all();
    }

    /// Power-on state: registers cleared, caches empty (the tables in memory are untouched).
    /// Armed faults are the tool's, not the unit's: they stay.
    pub fn reset(&mut self) {
        let (inject, fired) = (std::mem::take(&mut self.inject), std::mem::take(&mut self.fired));
        *self = AmdVi { inject, fired, ..AmdVi::new() };
    }
}
