//! The `tiommu` binary as a library: the vfio-user glue, the PCI functions, the secure DMA path,
//! the daemon, the offline tools and the VM runner, so the binary, the tests, the benches and the
//! fuzz targets share one build. docs/architecture.md walks through it.

// The functions, the DMA path and the vfio-user glue take registers, descriptors, mailbox buffers
// and virtio requests from the guest: arithmetic on them is checked, wrapping or saturating by
// choice, never an overflow. The offline tools, the runner and the daemon's set-up opt
// out.
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
/// Offline tools: ACPI tables (IVRS, DMAR, VIOT), the page-table walker, the dump client, the
/// event stream reader and the run checker.
pub mod tools;
/// The vfio-user plumbing: the server loop, guest memory, the function trait.
pub mod vfio;
