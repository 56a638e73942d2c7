//! The faults `tiommu inject` arms (docs/fault-injection.md), named once: each one's name on the
//! command line and the control channel, the unit it belongs to and its one-line description
//! (the command line's help). The daemon's parser, `tiommu inject`'s argument and the document's
//! table all take them from here; what each fault does is the daemon's and the models' business.

/// Which part of the machine a fault belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// The AMD-Vi unit (a daemon without `--iommu vtd`).
    AmdVi,
    /// The VT-d unit (`tiommu daemon --iommu vtd`).
    Vtd,
    /// The RMP check, the TDI, the DOE mailbox, the endpoint: with either unit.
    Platform,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::AmdVi => "AMD-Vi",
            Unit::Vtd => "VT-d",
            Unit::Platform => "platform",
        }
    }
}

macro_rules! faults {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $unit:ident, $desc:literal;)*) => {
        /// A fault `tiommu inject` can arm.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FaultName {
            $($(#[$doc])* $variant,)*
        }

        impl FaultName {
            /// Every fault, in the order `tiommu inject --help` and the document list them.
            pub const ALL: &'static [FaultName] = &[$(FaultName::$variant,)*];

            /// The name on the command line and in the control channel's `"fault"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(FaultName::$variant => $name,)*
                }
            }

            pub const fn unit(self) -> Unit {
                match self {
                    $(FaultName::$variant => Unit::$unit,)*
                }
            }

            /// One line: the command line's help text.
            pub const fn description(self) -> &'static str {
                match self {
                    $(FaultName::$variant => $desc,)*
                }
            }
        }
    };
}

faults! {
    EventLogOverflow = "event-log-overflow", AmdVi,
        "AMD-Vi event log overflow (EventOverflow set, EventLogRun cleared, interrupt)";
    IllegalCommand = "illegal-command", AmdVi,
        "ILLEGAL_COMMAND_ERROR for the next command; the command processor stops";
    CommandHardwareError = "command-hardware-error", AmdVi,
        "COMMAND_HARDWARE_ERROR for the next command; the command processor stops";
    CompletionWaitLost = "completion-wait-lost", AmdVi,
        "The next COMPLETION_WAIT neither stores nor interrupts";
    DevTabHardwareError = "dev-tab-hardware-error", AmdVi,
        "DEV_TAB_HARDWARE_ERROR at the next DMA request (--device/--iova choose which)";
    PageTabHardwareError = "page-tab-hardware-error", AmdVi,
        "PAGE_TAB_HARDWARE_ERROR at the next table walk (--device/--iova choose which)";
    IoPageFault = "io-page-fault", AmdVi,
        "Spurious IO_PAGE_FAULT records for --device at --iova (--count N: a storm)";
    InvQueueError = "inv-queue-error", Vtd,
        "VT-d Invalidation Queue Error (IQE) at the next descriptor; the queue stops on it";
    InvWaitLost = "inv-wait-lost", Vtd,
        "The next VT-d invalidation wait descriptor neither writes its status nor interrupts";
    InvTimeout = "inv-time-out", Vtd,
        "VT-d Invalidation Time-out Error (ITE) at the next wait descriptor, which is aborted";
    PrimaryFault = "primary-fault", Vtd,
        "Spurious VT-d fault records for --device at --iova (--count N: a storm, PFO)";
    RmpHwError = "rmp-hw-error", Platform,
        "RMP_HW_ERROR at the next DMA request's RMP check; the request is aborted";
    RmpEntryChanged = "rmp-entry-changed", Platform,
        "The RMP entry of --spa reads back changed in memory (Assigned flipped)";
    TdiError = "tdi-error", Platform,
        "--device moves its TDI to ERROR (T=1 DMA stops until the host STOPs it)";
    DoeBusy = "doe-busy", Platform,
        "--device's DOE mailbox shows Busy for the next --reads Status reads";
    DoeError = "doe-error", Platform,
        "--device's DOE mailbox sets DOE Error";
    DoeNeedsAbort = "doe-needs-abort", Platform,
        "--device's DOE mailbox answers nothing until an Abort";
    EndpointDma = "endpoint-dma", Platform,
        "--device DMAs --len bytes at --iova on its own (writes; --read reads; --t sets T)";
    RingStall = "ring-stall", Platform,
        "--device's ring stops making progress until CTRL.RESET";
}

impl FaultName {
    /// The fault of this name.
    pub fn from_name(name: &str) -> Option<FaultName> {
        FaultName::ALL.iter().copied().find(|f| f.name() == name)
    }
}

impl std::fmt::Display for FaultName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_read_back() {
        for (i, f) in FaultName::ALL.iter().enumerate() {
            assert_eq!(FaultName::from_name(f.name()), Some(*f));
            assert!(FaultName::ALL[..i].iter().all(|g| g.name() != f.name()), "{f} twice");
            assert!(!f.description().is_empty() && !f.description().contains('\n'), "{f}: one line");
        }
        assert_eq!(FaultName::from_name("melt"), None);
    }
}
