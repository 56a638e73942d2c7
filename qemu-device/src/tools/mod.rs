//! Offline tools: the ACPI tables that describe the tiommu functions to a guest kernel (IVRS for
//! amd_iommu, DMAR for intel_iommu, VIOT for virtio-iommu), the page-table walker (`tiommu walk`)
//! and the client of a running daemon's dumps (`tiommu dump`).

pub mod acpi;
pub mod dmar;
pub mod dump;
pub mod ivrs;
pub mod viot;
pub mod walk;
