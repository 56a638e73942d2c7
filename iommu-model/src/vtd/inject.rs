//! The faults the VT-d unit can be made to suffer on purpose, each in the form the hardware
//! reports it: FSTS bits, the Invalidation Queue Error Record, fault recording registers and the
//! fault event (VT-d spec §6.5.2 queued invalidation, §7.2.1 primary fault logging, §11.4.9
//! FSTS and IQER). [`super::unit::VtdUnit`] asks for them where the hardware would fail: each
//! descriptor it fetches, each wait descriptor, each DMA request (for the trigger's count).

/// A VT-d fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next descriptor fetched fails: FSTS.IQE, IQER.IQEI = 2 (descriptor fetch error: the
    /// read returned an error), IQH left on it, the fault event; nothing is fetched until
    /// software clears IQE (§6.5.2.10, §11.4.9.1).
    QueueError,
    /// The next invalidation wait descriptor completes without its status write and without its
    /// interrupt (ICS.IWC stays clear); the queue goes on.
    WaitLost,
    /// An Invalidation Time-out Error at the next wait descriptor: FSTS.ITE, IQER.ITESID =
    /// `sid` (0: not reported, as older hardware does), the wait aborted (no status write, no
    /// interrupt; IQH moves past it), the fault event; nothing is fetched until software clears
    /// ITE (§6.5.2.10: what a Device-TLB invalidation time-out does to the waits behind it).
    Timeout { sid: u16 },
    /// `count` primary faults for `sid` at `addr` (a write, reason 0x5, as a write through a
    /// read-only entry is) that no request caused, recorded as real ones are: the registers fill
    /// and PFO drops the rest (§7.2.1).
    PrimaryFaults { sid: u16, addr: u64, count: u32 },
}

/// Where a fault can happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// At the moment it is due, wherever that is.
    Any,
    /// A descriptor the queue fetched, before it runs.
    Descriptor,
    /// An invalidation wait descriptor, before it runs.
    Wait,
}

impl Fault {
    pub fn site(&self) -> Site {
        match self {
            Fault::QueueError => Site::Descriptor,
            Fault::WaitLost | Fault::Timeout { .. } => Site::Wait,
            Fault::PrimaryFaults { .. } => Site::Any,
        }
    }
}

/// What a fault did when it fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub id: u32,
    pub fault: Fault,
    /// Fault records written (a storm fills the registers and overflows).
    pub recorded: u32,
    /// The descriptor's address in the queue, or the faults' address.
    pub address: Option<u64>,
    /// In words, for the event stream.
    pub effect: String,
}

/// Fired faults kept until the daemon collects them (older ones are dropped beyond this).
pub const MAX_FIRED: usize = 256;
