//! Offline tools: the ACPI tables that describe the tiommu functions to a guest kernel (IVRS for
//! amd_iommu, DMAR for intel_iommu, VIOT for virtio-iommu), the page-table walker (`tiommu walk`),
//! the client of a running daemon's dumps (`tiommu dump`), the event stream's reader
//! (`tiommu events`) and the checker of a guest run (`tiommu check`).

pub mod acpi;
pub mod check;
pub mod dmar;
pub mod dump;
pub mod events;
pub mod ivrs;
pub mod viot;
pub mod walk;
