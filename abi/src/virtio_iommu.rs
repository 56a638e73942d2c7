//! The virtio-iommu device's wire format (virtio 1.2 §5.13; Linux
//! include/uapi/linux/virtio_iommu.h decodes the same bytes): feature bits, the configuration
//! layout, request types, status codes, flags and probe properties. Its virtio device id is
//! [`crate::pci::VIRTIO_ID_IOMMU`].

use crate::codes::codes;

/// Feature bits (§5.13.3).
pub mod feature {
    pub const INPUT_RANGE: u64 = 1 << 0;
    pub const DOMAIN_RANGE: u64 = 1 << 1;
    pub const MAP_UNMAP: u64 = 1 << 2;
    pub const BYPASS: u64 = 1 << 3;
    pub const PROBE: u64 = 1 << 4;
    pub const MMIO: u64 = 1 << 5;
    pub const BYPASS_CONFIG: u64 = 1 << 6;
}

/// struct virtio_iommu_config offsets (§5.13.4).
pub mod config {
    pub const PAGE_SIZE_MASK: u64 = 0;
    pub const INPUT_START: u64 = 8;
    pub const INPUT_END: u64 = 16;
    pub const DOMAIN_START: u64 = 24;
    pub const DOMAIN_END: u64 = 28;
    pub const PROBE_SIZE: u64 = 32;
    pub const BYPASS: u64 = 36;
    pub const LEN: usize = 40;
}

/// Request types (§5.13.6).
pub mod req {
    pub const ATTACH: u8 = 1;
    pub const DETACH: u8 = 2;
    pub const MAP: u8 = 3;
    pub const UNMAP: u8 = 4;
    pub const PROBE: u8 = 5;
}

codes! {
    /// Request status codes, in the tail (§5.13.6; Linux VIRTIO_IOMMU_S_*).
    pub enum ReqStatus: u8 {
        Ok = 0 => "OK",
        IoErr = 1 => "IOERR",
        Unsupp = 2 => "UNSUPP",
        DevErr = 3 => "DEVERR",
        Inval = 4 => "INVAL",
        Range = 5 => "RANGE",
        NoEnt = 6 => "NOENT",
        Fault = 7 => "FAULT",
        NoMem = 8 => "NOMEM",
    }
}

/// The status codes as the tail's byte.
pub mod status {
    use super::ReqStatus;
    pub const OK: u8 = ReqStatus::Ok.code();
    pub const IOERR: u8 = ReqStatus::IoErr.code();
    pub const UNSUPP: u8 = ReqStatus::Unsupp.code();
    pub const DEVERR: u8 = ReqStatus::DevErr.code();
    pub const INVAL: u8 = ReqStatus::Inval.code();
    pub const RANGE: u8 = ReqStatus::Range.code();
    pub const NOENT: u8 = ReqStatus::NoEnt.code();
    pub const FAULT: u8 = ReqStatus::Fault.code();
    pub const NOMEM: u8 = ReqStatus::NoMem.code();
}

/// MAP flags (§5.13.6.6).
pub mod map_flag {
    pub const READ: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const MMIO: u32 = 1 << 2;
}

/// ATTACH flags (§5.13.6.3).
pub const ATTACH_F_BYPASS: u32 = 1 << 0;

/// Probe properties (§5.13.6.8): RESV_MEM and its MSI subtype.
pub const PROBE_T_RESV_MEM: u16 = 1;
pub const RESV_MEM_T_MSI: u8 = 1;
/// The tail: status and three reserved bytes.
pub const TAIL_LEN: usize = 4;
