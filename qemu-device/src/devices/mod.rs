//! The daemon's PCI functions.

pub mod endpoint;
pub mod ioat;
pub mod iommu;
pub mod virtio_iommu;
