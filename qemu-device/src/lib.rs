//! The tiommu daemon as a library: the vfio-user glue, the PCI functions, the secure DMA path and
//! the offline tools, so the `tiommu` binary, the tests and the fuzz targets share one build.

// The functions, the DMA path and the vfio-user glue take registers, descriptors, mailbox buffers
// and virtio requests from the guest: arithmetic on them is checked, wrapping or saturating by
// choice, never an overflow. The offline tools (walk, viot, ivrs, acpi) and the daemon's set-up opt out.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]

/// The daemon process: sessions, the control socket, the event stream.
pub mod daemon;
/// The PCI functions: the TDISP endpoint, the secure IOMMU's function, the IOAT engine, the
/// virtio-iommu.
pub mod devices;
/// PCI configuration space and the DOE mailbox, shared by the functions.
pub mod pci;
/// `tiommu run` (the VM runner) and `tiommu qemu-args`.
pub mod run;
/// The secure core: the IOMMU units, the RMP / TDX checks, the DMA path, fault injection.
pub mod secure;
/// Helpers for tests, benches and fuzz targets.
pub mod testing;
/// Offline tools: ACPI tables (IVRS, DMAR, VIOT) and the page-table walker.
pub mod tools;
/// The vfio-user plumbing: the server loop, guest memory, the function trait.
pub mod vfio;
