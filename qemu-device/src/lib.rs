//! The tiommu daemon as a library: the vfio-user glue, the PCI functions, the secure DMA path and
//! the offline tools, so the `tiommu` binary, the tests and the fuzz targets share one build.

pub mod acpi;
pub mod control;
pub mod daemon;
pub mod dmar;
pub mod dma;
pub mod events;
pub mod function;
pub mod functions;
pub mod guest_mem;
pub mod inject;
pub mod ivrs;
pub mod pci;
pub mod rmp_state;
pub mod secure;
pub mod tdx_module;
pub mod vfio_server;
pub mod viot;
pub mod virtio;
pub mod walk;
