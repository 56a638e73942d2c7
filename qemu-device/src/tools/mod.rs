//! Offline tools: the ACPI tables that describe the tiommu functions to a guest kernel (IVRS for
//! amd_iommu, DMAR for intel_iommu, VIOT for virtio-iommu) and the page-table walker (`tiommu walk`).

pub mod acpi;
pub mod dmar;
pub mod ivrs;
pub mod viot;
pub mod walk;
