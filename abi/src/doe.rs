//! The endpoint's DOE mailbox (PCIe 6.x §6.30, registers §7.9.24; offsets and bits as Linux
//! include/uapi/linux/pci_regs.h PCI_DOE_* names them and drivers/pci/doe.c drives them), at
//! [`crate::endpoint::DOE_OFFSET`] in extended config space, and the object it carries TDISP in.
//!
//! TDISP rides a vendor-defined data object (vendor 0x1234, type 0x01) whose payload is one TDISP
//! message in the clear, zero-padded to whole dwords. The real stack carries TDISP as SPDM
//! VENDOR_DEFINED_REQUEST inside SPDM secured messages (CMA/SPDM object types 1 and 2); a device
//! advertising CMA/SPDM would invite Linux's CMA code to start SPDM with it, which the model
//! cannot finish without cryptography (docs/device-abi.md, "DOE mailbox").

/// Extended capability id of DOE.
pub const CAP_ID: u32 = 0x002e;
/// Capability version 2 (PCIe 6.1 §7.9.24.1): requesters then set DOE Discovery Version 2.
pub const CAP_VERSION: u32 = 2;

/// Register offsets from the capability's start.
pub mod reg {
    pub const CAP: u16 = 0x04;
    pub const CTRL: u16 = 0x08;
    pub const STATUS: u16 = 0x0c;
    /// Write Data Mailbox.
    pub const WRITE: u16 = 0x10;
    /// Read Data Mailbox: a write acknowledges one dword.
    pub const READ: u16 = 0x14;
}

bitflags::bitflags! {
    /// DOE Control.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Ctrl: u32 {
        const ABORT = 1 << 0;
        const INT_EN = 1 << 1;
        const GO = 1 << 31;
    }

    /// DOE Status.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Status: u32 {
        /// Temporarily unable to take an object (only an injected fault sets it here).
        const BUSY = 1 << 0;
        const INT = 1 << 1;
        const ERROR = 1 << 2;
        const DATA_OBJECT_READY = 1 << 31;
    }
}

/// The PCI-SIG vendor id, owner of the DOE discovery protocol (type 0).
pub const VENDOR_PCI_SIG: u16 = 0x0001;
pub const TYPE_DISCOVERY: u8 = 0;

/// TDISP over DOE: the vendor-defined object's vendor id and type.
pub const TDISP_VENDOR: u16 = 0x1234;
pub const TDISP_TYPE: u8 = 0x01;

/// Largest object the mailbox holds, in dwords, either way. The length field can say up to 2^18
/// dwords; a request that outgrows this sets DOE Error.
pub const MAX_DWORDS: usize = 1024;

/// A data object's first header dword: vendor id in 15:0, type in 23:16 (§6.30.1).
pub const fn header(vendor: u16, object_type: u8) -> u32 {
    vendor as u32 | (object_type as u32) << 16
}
