//! PCI identities of the tiommu functions: what a driver matches on, and where `scripts/run-vm`
//! places each function on QEMU's q35 root bus (the address is the requester ID the IOMMU
//! indexes its tables with).
//!
//! tiommu's own functions use vendor 0x1234, the id space QEMU's own test devices (edu,
//! bochs-display) use; those device ids are not registered with the PCI-SIG. The virtio-iommu
//! and the IOAT engine carry the ids their Linux drivers bind to.

use crate::Bdf;

/// A function's identity in config space (PCI Local Bus 3.0 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciId {
    pub vendor: u16,
    pub device: u16,
    /// Base class, sub-class, programming interface (bits 23:0 of the class code register).
    pub class: u32,
    /// Where `scripts/run-vm` places the function (the daemon's `--*-bdf` defaults).
    pub bdf: Bdf,
}

/// The vendor id of tiommu's own functions (QEMU's test-device space).
pub const VENDOR_TIOMMU: u16 = 0x1234;

/// The secure IOMMU: class 08h/06h/00h, system peripheral, IOMMU (PCI Code and ID Assignment
/// 1.x, base class 08h). BAR0 is the AMD-Vi register window (or a VT-d unit's), BAR2 the
/// mailbox ([`crate::mailbox`]).
pub const SECURE_IOMMU: PciId = PciId { vendor: VENDOR_TIOMMU, device: 0x7101, class: 0x08_06_00, bdf: Bdf::new(0, 3, 0) };

/// The DMA endpoint ([`crate::endpoint`]): class ffh, a device that fits no class.
pub const ENDPOINT: PciId = PciId { vendor: VENDOR_TIOMMU, device: 0x7102, class: 0xff_00_00, bdf: Bdf::new(0, 4, 0) };

/// The virtio vendor id (virtio 1.2 §4.1.2).
pub const VENDOR_VIRTIO: u16 = 0x1af4;
/// Modern virtio device ids are 0x1040 + the virtio device id (virtio 1.2 §4.1.2.1).
pub const VIRTIO_DEVICE_ID_BASE: u16 = 0x1040;
/// The virtio-iommu's virtio device id (virtio 1.2 §5.13).
pub const VIRTIO_ID_IOMMU: u16 = 23;

/// The virtio-iommu (`--virtio-iommu`): class 08h/80h/00h, "other system peripheral", as QEMU's
/// own virtio-iommu-pci.
pub const VIRTIO_IOMMU: PciId =
    PciId { vendor: VENDOR_VIRTIO, device: VIRTIO_DEVICE_ID_BASE + VIRTIO_ID_IOMMU, class: 0x08_80_00, bdf: Bdf::new(0, 5, 0) };

pub const VENDOR_INTEL: u16 = 0x8086;

/// The IOAT DMA engine (`--ioat`): the Skylake-SP part, PCI_DEVICE_ID_INTEL_IOAT_SKX (Linux
/// include/linux/pci_ids.h), which Linux's ioatdma binds to; class 08h/80h/00h.
pub const IOAT: PciId = PciId { vendor: VENDOR_INTEL, device: 0x2021, class: 0x08_80_00, bdf: Bdf::new(0, 6, 0) };

/// Every function, by the name the daemon serves it under (`DIR/NAME.sock`).
pub const FUNCTIONS: [(&str, PciId); 4] = [("iommu", SECURE_IOMMU), ("endpoint", ENDPOINT), ("virtio-iommu", VIRTIO_IOMMU), ("ioat", IOAT)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_function_has_its_own_id_and_address() {
        for (i, (a, x)) in FUNCTIONS.iter().enumerate() {
            for (b, y) in &FUNCTIONS[i + 1..] {
                assert_ne!((x.vendor, x.device), (y.vendor, y.device), "{a} and {b}");
                assert_ne!(x.bdf, y.bdf, "{a} and {b}");
            }
        }
        assert_eq!(VIRTIO_IOMMU.device, 0x1057);
        assert_eq!(ENDPOINT.bdf.0, 0x20, "the endpoint's requester id");
        assert_eq!(IOAT.bdf.0, 0x30, "IOAT's requester id, virtio-iommu endpoint 48");
    }
}
