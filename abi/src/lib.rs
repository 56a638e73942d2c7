//! The tiommu device ABI, in one place: what a driver, a test or a checker written against the
//! tiommu functions depends on. The daemon (qemu-device) and the guest program (guest-tests)
//! both take every register offset, bit, code and layout from here. No I/O and no `unsafe`:
//! definitions only. Multi-byte fields of the layouts are little-endian on any host (zerocopy
//! `little_endian` types). What a hardware spec already defines and the models implement (the
//! AMD-Vi device table, page tables and MMIO map, VT-d, the RMP entry) stays in iommu-model and
//! rmp-model.
//!
//! - [`Bdf`]: how every record, command line and table names a PCI function.
//! - [`pci`]: each function's vendor/device id, class code and address.
//! - [`endpoint`]: the DMA endpoint's registers, descriptor, operations and statuses.
//! - [`mailbox`]: the secure IOMMU's BAR2 (RMP registers, firmware mailbox, TIO command ids and
//!   buffers).
//! - [`tdx`]: the TDX Connect personality's module calls and statuses.
//! - [`doe`]: the DOE mailbox registers and the object TDISP rides in.
//! - [`ioat`]: the IOAT engine's registers and descriptor (Intel's, as Linux's ioatdma uses them).
//! - [`virtio_pci`], [`virtio_iommu`]: the virtio-iommu function's transport registers and wire
//!   format.
//! - [`inject`]: the names of the faults `tiommu inject` arms, with each one's unit and help line.
//! - [`event`]: the records of the daemon's event stream, and [`expect!`] for a test to state
//!   one it expects.
#![forbid(unsafe_code)]

mod bdf;
mod codes;
pub mod doe;
pub mod endpoint;
pub mod event;
pub mod inject;
pub mod ioat;
pub mod mailbox;
pub mod pci;
mod serde_helpers;
pub mod tdx;
pub mod virtio_iommu;
pub mod virtio_pci;

pub use bdf::Bdf;
pub use serde_helpers::hex;
