//! The faults the AMD-Vi unit can be made to suffer on purpose, each in the form the hardware
//! reports it (spec 48882 §2.4 command processing, §2.5 event logging; event layouts in
//! event.rs). [`super::mmio::AmdVi`] asks for them where the hardware would fail: each command
//! fetch, each COMPLETION_WAIT, each DMA request's device-table read and table walk.

use super::event::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The event log overflows now: EventOverflow set, EventLogRun cleared, the event-log
    /// interrupt raised if enabled (§2.5: what a record arriving at a full log does); nothing is
    /// logged until software restarts logging (EventLogEn 0 -> 1).
    EventLogOverflow,
    /// The next command is reported illegal: ILLEGAL_COMMAND_ERROR with its address, and the
    /// command processor stops with head on it (CmdBufRun cleared).
    IllegalCommand,
    /// The next command's fetch fails: COMMAND_HARDWARE_ERROR (Type = data error: the read
    /// returned poisoned data) with its address, and the command processor stops.
    CommandHardwareError,
    /// The next COMPLETION_WAIT completes without its store and without its interrupt; the
    /// processor goes on with the next command.
    CompletionWaitLost,
    /// The next DMA request's device-table read fails: DEV_TAB_HARDWARE_ERROR (Type = data
    /// error) with the DTE's address; the request is aborted and the DTE is not cached.
    DevTabHardwareError,
    /// The next DMA request that walks a table has its first table read fail:
    /// PAGE_TAB_HARDWARE_ERROR (Type = data error) with the entry's address; aborted, not cached.
    PageTabHardwareError,
    /// `count` IO_PAGE_FAULT records for `devid` at `iova` that no access caused (write, not
    /// present, the DomainID of the device's DTE): spurious faults, or a storm of them.
    IoPageFault { devid: u16, iova: u64, count: u32 },
}

/// Where a fault can happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// At the moment it is due, wherever that is.
    Any,
    /// A command, before it executes.
    Command,
    /// A COMPLETION_WAIT, before it executes.
    CompletionWait,
    /// The device-table read of a DMA request.
    DevTabRead,
    /// The first table read of a DMA request's walk.
    TableWalk,
}

impl Fault {
    pub fn site(&self) -> Site {
        match self {
            Fault::EventLogOverflow | Fault::IoPageFault { .. } => Site::Any,
            Fault::IllegalCommand | Fault::CommandHardwareError => Site::Command,
            Fault::CompletionWaitLost => Site::CompletionWait,
            Fault::DevTabHardwareError => Site::DevTabRead,
            Fault::PageTabHardwareError => Site::TableWalk,
        }
    }
}

/// What a fault did when it fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub id: u32,
    pub fault: Fault,
    /// The first record it put in the event log, if any.
    pub event: Option<Event>,
    /// Records written to the event log (a storm may fill it and overflow it).
    pub logged: u32,
    /// In words, for the event stream.
    pub effect: String,
}

/// Fired faults kept until the daemon collects them (older ones are dropped beyond this).
pub const MAX_FIRED: usize = 256;
