//! The engine behind the registers: each channel's state machine (ACTIVE, DONE, SUSPENDED,
//! HALTED), the descriptor chain it walks, the completion write-back and the interrupts. The
//! register semantics are the ones Linux's drivers/dma/ioat/dma.c relies on; each rule names
//! where. Every descriptor fetch, data access and completion write goes through `dma` with the
//! engine's requester ID: translated by the secure IOMMU, checked against the RMP, refused
//! accesses logged by it; a refusal moves nothing and halts the channel.

use super::regs::{chanctrl, chanerr, chansts, ctl, intrctrl, Descriptor, DESC_SIZE, OP_COPY};
use super::XFERCAP_LOG;
use crate::secure::dma::{self, DmaError, DmaMem, Request, TranslateCheck};
use crate::secure::{Refusal, SecureIommu};
use crate::vfio::function::{EventSink, Irq};
use iommu_model::walk::Access;
use std::sync::{Mutex, MutexGuard};
use zerocopy::{FromZeros, IntoBytes};

/// Descriptors one job runs before it yields the worker to other channels and functions.
pub const BUDGET: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One channel's registers and the state the engine keeps beside them.
#[derive(Clone, Debug)]
pub struct Channel {
    pub chanctrl: u16,
    /// Descriptors the driver has appended since the chain started.
    pub dmacount: u16,
    /// Descriptors the engine has run since the chain started.
    pub executed: u16,
    /// CHANSTS state (chansts::ACTIVE ...).
    pub state: u64,
    /// Address of the last completed descriptor (CHANSTS 63:6).
    pub completed: u64,
    pub chainaddr: u64,
    pub chancmp: u64,
    pub cdar: u64,
    pub chanerr: u32,
    pub chanerrmsk: u32,
    pub dcactrl: u32,
    /// Where the next descriptor is: the last one's `next`, or CHAINADDR at the start of a chain.
    pub next: Option<u64>,
    /// A job for this channel is queued or running: a doorbell needs none of its own.
    pub scheduled: bool,
    /// SUSPEND arrived while a job runs: it stops at the next descriptor boundary.
    pub suspend_req: bool,
    /// Counts resets; a descriptor taken before one is dropped when it finishes.
    pub epoch: u32,
    /// The epoch of the descriptor a job is running now.
    pub in_flight: Option<u32>,
    /// An interrupt came while the channel was not armed: it fires at the next re-arm.
    pub irq_pending: bool,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            chanctrl: 0,
            dmacount: 0,
            executed: 0,
            // Idle with nothing completed: dma.c's ioat_quiesce suspends it, and the first
            // DMACOUNT write after CHAINADDR starts it.
            state: chansts::DONE,
            completed: 0,
            chainaddr: 0,
            chancmp: 0,
            cdar: 0,
            chanerr: 0,
            chanerrmsk: 0,
            dcactrl: 0,
            next: None,
            scheduled: false,
            suspend_req: false,
            epoch: 0,
            in_flight: None,
            irq_pending: false,
        }
    }
}

impl Channel {
    pub fn chansts(&self) -> u64 {
        (self.completed & chansts::COMPLETED_DESCRIPTOR_ADDR) | self.state
    }

    fn has_work(&self) -> bool {
        self.executed != self.dmacount
    }

    /// CHANCMD.RESET reads 1 while a descriptor taken before the reset is still moving bytes
    /// (dma.c, ioat_reset_sync polls it).
    pub fn reset_pending(&self) -> bool {
        self.in_flight.is_some_and(|e| e != self.epoch)
    }

    /// CHANCMD.RESET: the channel's DMA state starts afresh. Its configuration (CHANCTRL,
    /// CHAINADDR, CHANCMP, the DCA and mask registers) stays, and so does CHANERR, which dma.c's
    /// ioat_reset_hw clears itself before it resets.
    pub fn reset(&mut self) {
        let keep = Channel {
            chanctrl: self.chanctrl,
            chainaddr: self.chainaddr,
            chancmp: self.chancmp,
            chanerr: self.chanerr,
            chanerrmsk: self.chanerrmsk,
            dcactrl: self.dcactrl,
            scheduled: self.scheduled,
            epoch: self.epoch.wrapping_add(1),
            in_flight: self.in_flight,
            ..Channel::default()
        };
        *self = keep;
    }

    /// A CHAINADDR write to a channel that is not running starts a new chain there: the next
    /// DMACOUNT counts from 0 (dma.c writes CHAINADDR, then the count from a fresh 0, in
    /// __ioat_start_null_desc and __ioat_restart_chan).
    pub fn new_chain(&mut self) {
        if matches!(self.state, chansts::DONE | chansts::SUSPENDED) {
            self.next = None;
            self.executed = 0;
            self.dmacount = 0;
            self.state = chansts::DONE;
            self.suspend_req = false;
        }
    }

    /// A DMACOUNT write: work appended. The channel runs unless halted or suspended. Returns
    /// whether a job must be queued.
    pub fn append(&mut self, count: u16) -> bool {
        self.dmacount = count;
        if !self.has_work() || matches!(self.state, chansts::HALTED | chansts::SUSPENDED) {
            return false;
        }
        self.state = chansts::ACTIVE;
        !std::mem::replace(&mut self.scheduled, true)
    }

    /// CHANCMD.SUSPEND: an active or idle channel stops after the descriptor in flight (dma.c,
    /// ioat_quiesce waits for a state that is neither).
    pub fn suspend(&mut self) {
        match self.state {
            chansts::ACTIVE if self.scheduled => self.suspend_req = true,
            chansts::ACTIVE | chansts::DONE => self.state = chansts::SUSPENDED,
            _ => {}
        }
    }

    /// CHANCMD.RESUME: a suspended channel continues where it stopped. Returns whether a job
    /// must be queued.
    pub fn resume(&mut self) -> bool {
        self.suspend_req = false;
        if self.state != chansts::SUSPENDED {
            return false;
        }
        if !self.has_work() {
            self.state = chansts::DONE;
            return false;
        }
        self.state = chansts::ACTIVE;
        !std::mem::replace(&mut self.scheduled, true)
    }
}

/// The engine: global interrupt registers and the channels.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    pub genctrl: u8,
    pub intrctrl: u8,
    pub attnstatus: u32,
    pub intrdelay: u16,
    pub channels: Vec<Channel>,
}

impl Engine {
    pub fn new(channels: usize) -> Engine {
        Engine { channels: vec![Channel::default(); channels], ..Engine::default() }
    }

    /// Channel `ch` wants to interrupt: its ATTNSTATUS bit is set and, if interrupts are on and
    /// the channel armed (CHANCTRL.INT_REARM), the vector to raise; the arm is used up. Otherwise
    /// the interrupt waits for the next arm. With MSI-X each channel has its own vector (init.c,
    /// ioat_dma_setup_interrupts: "The number of MSI-X vectors should equal the number of
    /// channels").
    pub fn signal(&mut self, ch: usize) -> Option<u16> {
        self.attnstatus |= 1 << ch;
        let master = self.intrctrl & intrctrl::MASTER_INT_EN != 0;
        let c = self.channels.get_mut(ch)?;
        if !master || c.chanctrl & chanctrl::INT_REARM == 0 {
            c.irq_pending = true;
            return None;
        }
        c.chanctrl &= !chanctrl::INT_REARM;
        c.irq_pending = false;
        // One vector per channel once the driver enabled them all (INTRCTRL.MSIX_VECTOR_CONTROL,
        // set by init.c in MSI-X mode only); with MSI the one vector, and the handler reads
        // ATTNSTATUS (dma.c, ioat_dma_do_interrupt).
        Some(if self.intrctrl & intrctrl::MSIX_VECTOR_CONTROL != 0 { ch as u16 } else { 0 })
    }

    /// After CHANCTRL or INTRCTRL changed: the pending interrupts that may now fire.
    pub fn rearmed(&mut self) -> Vec<u16> {
        let pending: Vec<usize> = (0..self.channels.len()).filter(|&ch| self.channels[ch].irq_pending).collect();
        pending.into_iter().filter_map(|ch| self.signal(ch)).collect()
    }

    pub fn intrctrl(&self) -> u8 {
        let status = if self.attnstatus != 0 { intrctrl::INT_STATUS } else { 0 };
        let int = if status != 0 && self.intrctrl & intrctrl::MASTER_INT_EN != 0 { intrctrl::INT } else { 0 };
        self.intrctrl | status | int
    }
}

/// Why a descriptor stopped the channel: the CHANERR bit, the address involved and, for a
/// refused access, what the IOMMU said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub chanerr: u32,
    pub iova: u64,
    pub cause: Option<DmaError>,
}

fn fault(chanerr: u32, iova: u64, cause: Option<DmaError>) -> Fault {
    Fault { chanerr, iova, cause }
}

/// The error for a refused or unbacked access: the failing address.
fn failing_iova(e: DmaError, base: u64) -> u64 {
    match e {
        DmaError::Refused { iova, .. } | DmaError::NoMemory { iova, .. } => iova,
        DmaError::Length => base,
    }
}

/// Fetch the descriptor at `addr` and run it. A NULL descriptor moves nothing (dma.c,
/// __ioat_start_null_desc and prep.c, ioat_prep_interrupt_lock use it to get a completion and an
/// interrupt). A COPY of `size` bytes checks every page of both sides before a byte moves:
/// a refused or unbacked source is a read data error, a destination a write data error
/// (the two errors dma.c's ioat_eh recovers from, failing the transfer with
/// DMA_TRANS_READ_FAILED or DMA_TRANS_WRITE_FAILED).
pub fn execute<M: DmaMem + ?Sized, S: TranslateCheck<M> + ?Sized>(
    iommu: &mut S,
    mem: &mut M,
    rid: u16,
    addr: u64,
    from_chain: bool,
) -> Result<Descriptor, Fault> {
    if !addr.is_multiple_of(DESC_SIZE) {
        // init.c/dma.c always hand 64-byte aligned descriptors.
        let bit = if from_chain { chanerr::CHAIN_ADDR_VALUE_ERR } else { chanerr::NEXT_DESC_ALIGN_ERR };
        return Err(fault(bit, addr, None));
    }
    let mut d = Descriptor::new_zeroed();
    dma::read(iommu, mem, rid, false, addr, d.as_mut_bytes()).map_err(|e| fault(chanerr::NEXT_ADDR_ERR, failing_iova(e, addr), Some(e)))?;
    if d.op() != OP_COPY || d.ctl.get() & ctl::UNSUPPORTED != 0 {
        return Err(fault(chanerr::CONTROL_ERR, addr, None));
    }
    if d.ctl.get() & ctl::NULL != 0 {
        return Ok(d);
    }
    let (len, src, dst) = (u64::from(d.size.get()), d.src.get(), d.dst.get());
    if len == 0 || len > 1 << XFERCAP_LOG {
        return Err(fault(chanerr::LENGTH_ERR, addr, None));
    }
    let from = dma::plan(iommu, mem, Request { rid, t: false, iova: src, len, access: Access::Read })
        .map_err(|e| fault(chanerr::READ_DATA_ERR, failing_iova(e, src), Some(e)))?;
    let to = dma::plan(iommu, mem, Request { rid, t: false, iova: dst, len, access: Access::Write })
        .map_err(|e| fault(chanerr::WRITE_DATA_ERR, failing_iova(e, dst), Some(e)))?;
    let plan = dma::CopyPlan { from, to, len };
    dma::move_copy(mem, &plan).map_err(|e| fault(chanerr::WRITE_DATA_ERR, dst, Some(DmaError::NoMemory { iova: dst, spa: e.addr })))?;
    Ok(d)
}

/// What the engine does for one channel's job: run descriptors while DMACOUNT is ahead, up to
/// `BUDGET` of them. Returns whether work is left (the caller queues the job again).
pub fn run_channel<M: DmaMem + ?Sized>(
    rid: u16,
    engine: &Mutex<Engine>,
    ch: usize,
    iommu: &Mutex<SecureIommu>,
    mem: &mut M,
    events: &dyn EventSink,
    irq: &dyn Irq,
) -> bool {
    for _ in 0..BUDGET {
        let (addr, epoch, from_chain, chancmp, chanctrl_now) = {
            let mut e = lock(engine);
            let Some(c) = e.channels.get_mut(ch) else { return false };
            if c.state != chansts::ACTIVE || !c.has_work() || c.suspend_req {
                if c.suspend_req && matches!(c.state, chansts::ACTIVE | chansts::DONE) {
                    c.state = chansts::SUSPENDED;
                } else if c.state == chansts::ACTIVE {
                    c.state = chansts::DONE;
                }
                c.suspend_req = false;
                c.scheduled = false;
                return false;
            }
            let addr = c.next.unwrap_or(c.chainaddr);
            c.cdar = addr;
            c.in_flight = Some(c.epoch);
            (addr, c.epoch, c.next.is_none(), c.chancmp, c.chanctrl)
        };
        // The secure IOMMU's lock is taken page by page (dma::PerPage), never for a descriptor.
        let result = execute(&mut dma::PerPage(iommu), mem, rid, addr, from_chain);
        // The completion the descriptor writes back: the CHANSTS it will leave (the descriptor
        // still in flight, so a reset meanwhile waits for the write).
        let (sts, write_back, interrupt) = {
            let mut e = lock(engine);
            let c = &mut e.channels[ch];
            if c.epoch != epoch {
                c.in_flight = None;
                continue;
            }
            match &result {
                Ok(d) => {
                    let more = c.executed.wrapping_add(1) != c.dmacount && !c.suspend_req;
                    (
                        addr | if more { chansts::ACTIVE } else { chansts::DONE },
                        d.ctl.get() & ctl::COMPL_WRITE != 0,
                        d.ctl.get() & ctl::INT_EN != 0,
                    )
                }
                // CHANCTRL: error completion and error interrupt (dma.c, ioat_cleanup sees the
                // halt in the completion write-back).
                Err(_) => (
                    c.completed | chansts::HALTED,
                    chanctrl_now & chanctrl::ERR_COMPLETION_EN != 0,
                    chanctrl_now & chanctrl::ERR_INT_EN != 0,
                ),
            }
        };
        // Written before the registers show the completion, so a driver that sees CHANSTS move
        // finds the same in memory.
        let wrote = if write_back { dma::write(&mut dma::PerPage(iommu), mem, rid, false, chancmp, &sts.to_le_bytes()) } else { Ok(()) };
        // Commit, unless a reset came meanwhile: the descriptor completed or the channel halted.
        let mut faults = Vec::new();
        let (halted_now, v) = {
            let mut e = lock(engine);
            let c = &mut e.channels[ch];
            c.in_flight = None;
            if c.epoch != epoch {
                continue;
            }
            let mut interrupt = interrupt;
            match result {
                Ok(d) => {
                    c.executed = c.executed.wrapping_add(1);
                    c.next = Some(d.next.get());
                    c.completed = addr;
                    if c.state == chansts::ACTIVE && !c.has_work() && !c.suspend_req {
                        c.state = chansts::DONE;
                    }
                }
                Err(f) => faults.push(f),
            }
            if let Err(err) = wrote {
                faults.push(fault(chanerr::COMPLETION_ADDR_ERR, failing_iova(err, chancmp), Some(err)));
                interrupt = chanctrl_now & chanctrl::ERR_INT_EN != 0;
            }
            for f in &faults {
                c.chanerr |= f.chanerr;
                c.state = chansts::HALTED;
                c.scheduled = false;
            }
            let halted_now = c.state == chansts::HALTED && !faults.is_empty();
            (halted_now, if interrupt { e.signal(ch) } else { None })
        };
        for f in &faults {
            halted(rid, ch, addr, f, events);
        }
        if let Some(v) = v {
            irq.raise(v);
        }
        if halted_now {
            return false;
        }
    }
    true
}

/// The event stream record of a halt; the refusal itself was logged by the IOMMU.
fn halted(rid: u16, ch: usize, desc: u64, f: &Fault, events: &dyn EventSink) {
    let refusal = match f.cause {
        Some(DmaError::Refused { refusal: Refusal::Translation(ev) | Refusal::Viommu { event: ev, .. }, .. }) => {
            Some(ev.name().to_string())
        }
        Some(DmaError::Refused { refusal: Refusal::Rmp(r), .. }) => Some(format!("RMP: {}", r.name())),
        Some(DmaError::Refused { refusal: Refusal::Vtd(f), .. }) => Some(format!("DMA_REMAP_FAULT: {}", f.reason.description())),
        Some(DmaError::Refused { refusal: Refusal::Tdx(t), .. }) => Some(format!("TDX: {}", t.name())),
        Some(DmaError::NoMemory { .. }) => Some("no memory".into()),
        _ => None,
    };
    // A guest halts a channel at will (one register write after a reset): the log takes a bounded
    // share of them, the event stream each.
    crate::warn_limited!(
        "ioat {} channel {ch}: {} at {:#x} (descriptor {desc:#x}); halted",
        abi::Bdf(rid),
        chanerr::name(f.chanerr),
        f.iova
    );
    events.emit(abi::event::Event::IoatHalted(abi::event::IoatHalted {
        devid: abi::Bdf(rid),
        channel: u32::try_from(ch).unwrap_or(u32::MAX),
        chanerr: f.chanerr,
        error: chanerr::name(f.chanerr).into(),
        descriptor: desc,
        iova: f.iova,
        refusal,
    }));
}
