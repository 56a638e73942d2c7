//! The virtio-iommu function's BAR0 (`--virtio-iommu`, [`crate::pci::VIRTIO_IOMMU`]): the
//! virtio-pci modern transport (virtio 1.2 §4.1.4; Linux's side of the same registers:
//! drivers/virtio/virtio_pci_modern_dev.c), with tiommu's choice of where each window sits in
//! the BAR. The device's own requests: [`crate::virtio_iommu`].

/// An MSI-X vector field that names no vector (§4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// Where each window lives in the BAR (our choice; the capabilities say it to the driver).
pub mod layout {
    pub const BAR: u8 = 0;
    pub const COMMON: u64 = 0x0000;
    /// Up to queue_reset (§4.1.4.3), the struct's full size.
    pub const COMMON_LEN: u64 = 0x40;
    pub const ISR: u64 = 0x1000;
    pub const DEVICE: u64 = 0x2000;
    pub const DEVICE_LEN: u64 = 0x1000;
    pub const NOTIFY: u64 = 0x3000;
    /// queue_notify_off is the queue index; each queue's doorbell is this many bytes apart.
    pub const NOTIFY_MULTIPLIER: u32 = 4;
    pub const NOTIFY_LEN: u64 = 0x1000;
    pub const BAR_SIZE: u64 = 0x4000;
}

/// device_status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Feature bits of the transport (§6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// virtio_pci_cap.cfg_type (§4.1.4).
pub mod cap_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
}

/// Common configuration register offsets (struct virtio_pci_common_cfg, §4.1.4.3).
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    pub const QUEUE_RESET: u64 = 0x3a;
}
