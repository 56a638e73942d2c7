//! The DMA endpoint (1234:7102, [`crate::pci::ENDPOINT`]): BAR0's engine registers, the 32-byte
//! descriptor a driver puts in its ring, the operations and the status codes the device writes
//! back. Behaviour: docs/device-abi.md, "DMA endpoint".

use crate::codes::codes;
use core::mem::offset_of;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// BAR0 is 4 KiB; other offsets read 0 and ignore writes.
pub const BAR0_SIZE: u64 = 0x1000;
/// The ID register: "TDMA".
pub const ID_MAGIC: u32 = 0x414d_4454;
/// The VERSION register.
pub const VERSION: u32 = 2;

/// BAR0 register offsets. Registers are 4 bytes; RING_BASE also takes 8-byte accesses.
pub mod reg {
    /// RO [`super::ID_MAGIC`].
    pub const ID: u64 = 0x00;
    /// RO [`super::VERSION`].
    pub const VERSION: u64 = 0x04;
    /// RO the endpoint's requester id (bus << 8 | dev << 3 | fn).
    pub const REQUESTER_ID: u64 = 0x08;
    /// IOVA of the ring, bits 31:0 (bits 4:0 read as zero); an 8-byte access sets all 64.
    pub const RING_BASE: u64 = 0x10;
    /// Bits 63:32 of RING_BASE.
    pub const RING_BASE_HI: u64 = 0x14;
    /// log2 of the number of descriptors ([`super::RING_LOG2`]).
    pub const RING_SIZE: u64 = 0x18;
    /// Doorbell: one past the last descriptor written.
    pub const TAIL: u64 = 0x20;
    /// RO the next descriptor the device processes.
    pub const HEAD: u64 = 0x24;
    /// RO [`super::Status`].
    pub const STATUS: u64 = 0x28;
    /// [`super::Ctrl`].
    pub const CTRL: u64 = 0x2c;
    /// RO descriptors completed since the function was created or reset.
    pub const COMPLETED: u64 = 0x30;

    /// Every register by name, in offset order.
    pub const ALL: &[(&str, u64)] = &[
        ("ID", ID),
        ("VERSION", VERSION),
        ("REQUESTER_ID", REQUESTER_ID),
        ("RING_BASE", RING_BASE),
        ("RING_BASE_HI", RING_BASE_HI),
        ("RING_SIZE", RING_SIZE),
        ("TAIL", TAIL),
        ("HEAD", HEAD),
        ("STATUS", STATUS),
        ("CTRL", CTRL),
        ("COMPLETED", COMPLETED),
    ];
}

bitflags::bitflags! {
    /// The STATUS register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Status: u32 {
        /// The worker is processing the ring.
        const BUSY = 1 << 0;
        /// A descriptor fetch or status write-back was refused; nothing runs until CTRL.RESET.
        const HALTED = 1 << 1;
        /// The last TAIL write was at or past the ring size (or RING_SIZE is out of range); it
        /// was ignored.
        const BAD_TAIL = 1 << 2;
    }

    /// The CTRL register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Ctrl: u32 {
        /// Write 1: HEAD = TAIL = 0, STATUS = 0, COMPLETED kept. Reads 0.
        const RESET = 1 << 0;
        /// MSI-X vector 0 when a descriptor with [`super::DescFlags::IRQ`] completes.
        const IRQ_EN = 1 << 1;
        /// The descriptor fetch and status write-back carry the TDISP T bit: a TDI in RUN whose
        /// driver keeps its ring in the guest's private memory.
        const RING_T = 1 << 2;
    }

    /// A descriptor's flags; other bits make it a BAD_DESCRIPTOR.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DescFlags: u8 {
        /// Issue the data accesses with the TLP T bit (TDISP: only a TDI in RUN gets through).
        const T = 1 << 0;
        /// MSI-X vector 0 when the descriptor completes (with CTRL.IRQ_EN).
        const IRQ = 1 << 1;
    }
}

/// RING_SIZE values that make a usable ring: 2 to 4096 descriptors.
pub const RING_LOG2: core::ops::RangeInclusive<u32> = 1..=12;
/// Largest transfer of one descriptor: 16 MiB, so at most 4096 page translations per side.
pub const MAX_LEN: u64 = 16 << 20;

codes! {
    /// A descriptor's operation.
    pub enum Op: u8 {
        /// Source to destination.
        Copy = 1 => "COPY",
        /// The destination with the 8-byte value repeated (little-endian).
        Fill = 2 => "FILL",
        /// The FNV-1a 64 hash of the source into the value field.
        ReadHash = 3 => "READ_HASH",
    }
}

codes! {
    /// The completion status the device writes into a descriptor.
    pub enum DmaStatus: u16 {
        /// What the driver writes; the device never leaves it there.
        Pending = 0 => "PENDING",
        Ok = 1 => "OK",
        /// The IOMMU's translation refused a page (AMD-Vi, VT-d or the virtio-iommu).
        IoPageFault = 2 => "IO_PAGE_FAULT",
        /// The ownership check refused a page: the RMP, or with TDX Connect the PAMT.
        RmpPageFault = 3 => "RMP_PAGE_FAULT",
        /// A T=1 request without a bound TDI in RUN.
        T1Refused = 4 => "T1_REFUSED",
        /// Unknown op, reserved flags, length 0 or over [`MAX_LEN`], or a wrapping range.
        BadDescriptor = 5 => "BAD_DESCRIPTOR",
        /// Every page was allowed, but one translates to an address with no guest RAM behind it.
        NoMemory = 6 => "NO_MEMORY",
        /// The IOMMU could not check a page (RMP_HW_ERROR; only an injected fault causes it).
        HwError = 7 => "HW_ERROR",
    }
}

/// The descriptor, 32 bytes, 32-byte aligned in the ring at RING_BASE + index × 32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Descriptor {
    /// [`Op`].
    pub op: u8,
    /// [`DescFlags`].
    pub flags: u8,
    /// [`DmaStatus`], written by the device.
    pub status: U16,
    /// Bytes, 1..=[`MAX_LEN`].
    pub len: U32,
    /// Source IOVA (COPY, READ_HASH).
    pub src: U64,
    /// Destination IOVA (COPY, FILL).
    pub dst: U64,
    /// FILL pattern in, READ_HASH result out.
    pub value: U64,
}

/// Size of a descriptor in the ring.
pub const DESC_SIZE: u64 = size_of::<Descriptor>() as u64;
/// Where the device writes the status back.
pub const DESC_STATUS: u64 = offset_of!(Descriptor, status) as u64;
/// Where the device writes a READ_HASH result back.
pub const DESC_VALUE: u64 = offset_of!(Descriptor, value) as u64;

impl Descriptor {
    /// A descriptor as a driver writes it: status PENDING.
    pub fn new(op: Op, flags: DescFlags, len: u32, src: u64, dst: u64, value: u64) -> Descriptor {
        Descriptor {
            op: op.code(),
            flags: flags.bits(),
            status: U16::new(DmaStatus::Pending.code()),
            len: U32::new(len),
            src: U64::new(src),
            dst: U64::new(dst),
            value: U64::new(value),
        }
    }

    /// The status field decoded; `None` for a number the device never writes.
    pub fn status(&self) -> Option<DmaStatus> {
        DmaStatus::from_code(self.status.get())
    }
}

/// The offset of the endpoint's DOE capability in extended config space ([`crate::doe`]).
pub const DOE_OFFSET: u16 = 0x100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_is_packed_as_the_table_says() {
        let d = Descriptor::new(Op::ReadHash, DescFlags::T | DescFlags::IRQ, 0x0102_0304, 0x1111, 0x2222, 0x3333);
        let b = d.as_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!((b[0], b[1], &b[2..4], &b[4..8]), (3, 3, &[0u8, 0][..], &0x0102_0304u32.to_le_bytes()[..]));
        assert_eq!(
            (&b[8..16], &b[16..24], &b[24..32]),
            (&0x1111u64.to_le_bytes()[..], &0x2222u64.to_le_bytes()[..], &0x3333u64.to_le_bytes()[..])
        );
        assert_eq!(Descriptor::read_from_bytes(b), Ok(d));
        assert_eq!((DESC_SIZE, DESC_STATUS, DESC_VALUE), (32, 2, 24));
    }

    #[test]
    fn statuses_round_trip_by_code_and_name() {
        for s in DmaStatus::ALL {
            assert_eq!(DmaStatus::from_code(s.code()), Some(*s));
        }
        assert_eq!(DmaStatus::from_code(8), None);
        assert_eq!(DmaStatus::IoPageFault.to_string(), "IO_PAGE_FAULT");
        assert_eq!(Op::from_code(2), Some(Op::Fill));
        assert_eq!(Op::from_code(0), None);
    }
}
