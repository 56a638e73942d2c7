//! The virtio-iommu device's wire format (virtio 1.2 §5.13; Linux
//! include/uapi/linux/virtio_iommu.h decodes the same bytes): feature bits, the configuration
//! layout, request types, status codes, flags and probe properties. Its virtio device id is
//! [`crate::pci::VIRTIO_ID_IOMMU`].

use crate::codes::codes;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

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

/// The head every request starts with (struct virtio_iommu_req_head): the type, reserved bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReqHead {
    /// [`req`].
    pub ty: u8,
    pub reserved: [u8; 3],
}

impl ReqHead {
    pub const fn new(ty: u8) -> ReqHead {
        ReqHead { ty, reserved: [0; 3] }
    }
}

/// ATTACH and DETACH (struct virtio_iommu_req_attach / _detach less the tail, §5.13.6.3-4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Attach {
    pub head: ReqHead,
    pub domain: U32,
    pub endpoint: U32,
    /// ATTACH: [`ATTACH_F_BYPASS`]; DETACH: reserved.
    pub flags: U32,
    pub reserved: [u8; 4],
}

/// MAP (struct virtio_iommu_req_map less the tail, §5.13.6.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Map {
    pub head: ReqHead,
    pub domain: U32,
    pub virt_start: U64,
    /// Inclusive.
    pub virt_end: U64,
    pub phys_start: U64,
    /// [`map_flag`].
    pub flags: U32,
}

/// UNMAP (struct virtio_iommu_req_unmap less the tail, §5.13.6.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Unmap {
    pub head: ReqHead,
    pub domain: U32,
    pub virt_start: U64,
    /// Inclusive.
    pub virt_end: U64,
    pub reserved: [u8; 4],
}

/// PROBE (struct virtio_iommu_req_probe less the properties and the tail, §5.13.6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Probe {
    pub head: ReqHead,
    pub endpoint: U32,
    pub reserved: [u8; 64],
}

/// One RESV_MEM probe property (struct virtio_iommu_probe_resv_mem, §5.13.6.8.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ResvMem {
    /// [`PROBE_T_RESV_MEM`].
    pub ty: U16,
    /// Bytes after the type and length fields.
    pub length: U16,
    /// [`RESV_MEM_T_MSI`], or 0 (reserved).
    pub subtype: u8,
    pub reserved: [u8; 3],
    pub start: U64,
    /// Inclusive.
    pub end: U64,
}

/// What the device writes into an event queue buffer (struct virtio_iommu_fault, §5.13.6.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FaultRecord {
    /// [`fault`]`::R_*`.
    pub reason: u8,
    pub reserved: [u8; 3],
    /// [`fault`]`::F_*`.
    pub flags: U32,
    pub endpoint: U32,
    pub reserved2: [u8; 4],
    pub address: U64,
}

/// Fault reasons and flags of the event queue's fault record (§5.13.6.9).
pub mod fault {
    pub const R_UNKNOWN: u8 = 0;
    pub const R_DOMAIN: u8 = 1;
    pub const R_MAPPING: u8 = 2;
    pub const F_READ: u32 = 1 << 0;
    pub const F_WRITE: u32 = 1 << 1;
    pub const F_EXEC: u32 = 1 << 2;
    pub const F_ADDRESS: u32 = 1 << 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_layouts_are_linuxs_sizes() {
        // virtio_iommu.h: each structure less its 4-byte tail (and PROBE less its properties).
        assert_eq!(size_of::<Attach>(), 20);
        assert_eq!(size_of::<Map>(), 36);
        assert_eq!(size_of::<Unmap>(), 28);
        assert_eq!(size_of::<Probe>(), 72);
        assert_eq!((size_of::<ResvMem>(), size_of::<FaultRecord>()), (24, 24));
        assert_eq!(core::mem::offset_of!(FaultRecord, address), 16);
        assert_eq!(ReqStatus::from_code(6), Some(ReqStatus::NoEnt));
    }
}
