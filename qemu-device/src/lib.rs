//! The tiommu daemon as a library: the vfio-user glue, the PCI functions, the secure DMA path and
//! the offline tools, so the `tiommu` binary, the tests and the fuzz targets share one build.

// The functions, the DMA path and the vfio-user glue take registers, descriptors, mailbox buffers
// and virtio requests from the guest: arithmetic on them is checked, wrapping or saturating by
// choice, never an overflow. The offline tools (walk, viot, ivrs, acpi) and the daemon's set-up opt out.
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]

pub mod acpi;
pub mod control;
pub mod daemon;
pub mod dma;
pub mod dmar;
pub mod events;
pub mod function;
pub mod functions;
pub mod guest_mem;
pub mod inject;
pub mod ivrs;
pub mod log_limit;
pub mod pci;
pub mod rmp_state;
pub mod secure;
pub mod tdx_module;
pub mod vfio_server;
pub mod viot;
pub mod virtio;
pub mod walk;
