//! What this boot is (the kernel command line run-vm writes): which driver owns the secure
//! IOMMU's registers, and which personality the daemon runs.

fn on_cmdline(arg: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|a| a == arg)
}

/// The kernel's virtio_iommu drives the daemon's virtio-iommu (run-vm --virtio-iommu).
pub(crate) fn viommu_mode() -> bool {
    on_cmdline("tiommu.viommu=1")
}

/// The kernel's amd_iommu drives the secure IOMMU function (run-vm --amd-iommu, an ACPI IVRS).
pub(crate) fn amdvi_mode() -> bool {
    on_cmdline("tiommu.amdvi=1")
}

/// The kernel's intel_iommu drives the secure IOMMU function's VT-d unit (run-vm --intel-iommu,
/// an ACPI DMAR).
pub(crate) fn vtd_mode() -> bool {
    on_cmdline("tiommu.vtd=1")
}

/// The TDX Connect personality is running (tiommu.personality=tdx-connect).
pub(crate) fn tdx_mode() -> bool {
    on_cmdline("tiommu.personality=tdx-connect")
}

/// The RMP TCG plugin is loaded (run-vm --plugin).
pub(crate) fn plugin_mode() -> bool {
    on_cmdline("tiommu.plugin=1")
}
