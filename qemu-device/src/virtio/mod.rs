//! Virtio devices of the daemon: the virtio-pci modern transport and the virtio-iommu's wire
//! format and domains (the device itself is functions/virtio_iommu.rs).

pub mod domains;
pub mod iommu_proto;
pub mod pci;
