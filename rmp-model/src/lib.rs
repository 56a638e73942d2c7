//! Security state of the secure IOMMU: the SEV-SNP RMP and its instructions, the CPU-side and
//! SEV-TIO DMA checks, the conversion hazard, TDX Connect page ownership, the TDISP interface
//! state machine and the TIO firmware commands.
//!
//! A pure library: no I/O, no threads, no unsafe. Its state is plain data that the daemon owns.
#![forbid(unsafe_code)]
// Addresses, page numbers and ids arrive from the guest (mailbox buffers, DMA): arithmetic on
// them is checked, wrapping or saturating by choice, never an overflow.
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]

pub mod cpu;
pub mod dma_check;
pub mod hazard;
pub mod ops;
pub mod rmp;
pub mod tdisp;
pub mod tdx;
pub mod tio;

pub use dma_check::{DmaRefusal, DmaRequest, RmpFault, TdiBinding};
pub use ops::{GuestResult, RmpState, RmpStatus};
pub use rmp::{PageSize, Rmp, RmpEntry, RmpReadEntry};
