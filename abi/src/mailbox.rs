//! The secure IOMMU's BAR2 (4 KiB): the RMP registers, and a PSP-style firmware mailbox (command
//! id in CMDRESP bits 26:16, status in bits 15:0, bit 31 on completion, as Linux
//! drivers/crypto/ccp/psp-dev.c drives the PSP). A command reads 64 bytes at CMDBUF; its inputs
//! and outputs sit at fixed offsets, given here as one struct per command. With the TDX Connect
//! personality the same doorbell runs the TDX module's calls instead ([`crate::tdx`]).
//! Behaviour: docs/device-abi.md, "Secure IOMMU: BAR2".

use crate::codes::codes;
use core::mem::offset_of;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const BAR2_SIZE: u64 = 0x1000;

/// BAR2 register offsets.
pub mod reg {
    /// Guest physical address of the RMP mirror (bits 51:13 kept); 0 = no mirror.
    pub const RMP_BASE: u64 = 0x000;
    /// Last byte of the mirror window (bits 51:13 kept, bits 12:0 read as ones).
    pub const RMP_END: u64 = 0x008;
    /// [`super::SnpCtl`].
    pub const SNP_CTL: u64 = 0x010;
    /// With `--iommu vtd`, read-only: the VT-d unit's fault event message address
    /// (FEUADDR:FEADDR), for whoever wires the unit's interrupt to the function's MSI.
    pub const FE_MSG_ADDR: u64 = 0x020;
    /// With `--iommu vtd`, read-only: the fault event message data (FEDATA).
    pub const FE_MSG_DATA: u64 = 0x028;
    /// [`super::CmdResp`]: the doorbell and the answer.
    pub const CMDRESP: u64 = 0x100;
    /// The command buffer's guest physical address, bits 31:0.
    pub const CMDBUF_LO: u64 = 0x108;
    /// Bits 63:32.
    pub const CMDBUF_HI: u64 = 0x10c;

    /// Every register by name, in offset order.
    pub const ALL: &[(&str, u64)] = &[
        ("RMP_BASE", RMP_BASE),
        ("RMP_END", RMP_END),
        ("SNP_CTL", SNP_CTL),
        ("FE_MSG_ADDR", FE_MSG_ADDR),
        ("FE_MSG_DATA", FE_MSG_DATA),
        ("CMDRESP", CMDRESP),
        ("CMDBUF_LO", CMDBUF_LO),
        ("CMDBUF_HI", CMDBUF_HI),
    ];
}

/// Bytes of the command buffer a command reads.
pub const CMDBUF_SIZE: usize = 64;

/// The mask RMP_BASE and RMP_END keep: bits 51:13, as the RMP_BASE/RMP_END MSRs (Linux
/// arch/x86/virt/svm/sev.c RMP_ADDR_MASK).
pub const RMP_ADDR_MASK: u64 = 0x000f_ffff_ffff_e000;

bitflags::bitflags! {
    /// The SNP_CTL register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SnpCtl: u64 {
        /// Create the RMP over guest RAM and check every DMA against it; reads 0 if the enable
        /// was refused, stays 1 once on.
        const SNP_EN = 1 << 0;
    }
}

/// CMDRESP: write [`CmdResp::request`] to run a command; it reads back done, the id and the
/// status (commands run synchronously, so it is done right after the write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdResp(pub u32);

impl CmdResp {
    const DONE: u32 = 1 << 31;
    const ID_SHIFT: u32 = 16;
    /// Command ids are 11 bits (26:16).
    pub const ID_MASK: u32 = 0x7ff;

    /// What a driver writes to run command `id`.
    pub const fn request(id: u32) -> CmdResp {
        CmdResp((id & Self::ID_MASK) << Self::ID_SHIFT)
    }
    /// What the register reads after command `id` finished with `status`.
    pub const fn done(id: u32, status: u32) -> CmdResp {
        CmdResp(Self::DONE | (id & Self::ID_MASK) << Self::ID_SHIFT | (status & 0xffff))
    }
    pub const fn is_done(self) -> bool {
        self.0 & Self::DONE != 0
    }
    pub const fn id(self) -> u32 {
        (self.0 >> Self::ID_SHIFT) & Self::ID_MASK
    }
    pub const fn status(self) -> u32 {
        self.0 & 0xffff
    }
}

codes! {
    /// Mailbox command ids. The page operations are the CPU instructions a host would run,
    /// given ids here; the TIO ones are the SEV firmware's (Linux drivers/crypto/ccp/sev-dev-tio.h
    /// and the SEV-TIO phase-2 series). Ids without a row in docs/device-abi.md answer
    /// INVALID_COMMAND.
    pub enum Command: u32 {
        Rmpupdate = 0x01 => "RMPUPDATE",
        Psmash = 0x02 => "PSMASH",
        Pvalidate = 0x03 => "PVALIDATE",
        Rmpadjust = 0x04 => "RMPADJUST",
        Rmpread = 0x05 => "RMPREAD",
        TioStatus = 0xd0 => "TIO_STATUS",
        TioInit = 0xd1 => "TIO_INIT",
        TioDevCreate = 0xd2 => "TIO_DEV_CREATE",
        TioDevReclaim = 0xd3 => "TIO_DEV_RECLAIM",
        TioDevConnect = 0xd4 => "TIO_DEV_CONNECT",
        TioDevDisconnect = 0xd5 => "TIO_DEV_DISCONNECT",
        TioDevStatus = 0xd6 => "TIO_DEV_STATUS",
        TioDevMeasurements = 0xd7 => "TIO_DEV_MEASUREMENTS",
        TioDevCertificates = 0xd8 => "TIO_DEV_CERTIFICATES",
        TioTdiCreate = 0xda => "TIO_TDI_CREATE",
        TioTdiReclaim = 0xdb => "TIO_TDI_RECLAIM",
        TioTdiBind = 0xdc => "TIO_TDI_BIND",
        TioTdiUnbind = 0xdd => "TIO_TDI_UNBIND",
        TioTdiReport = 0xde => "TIO_TDI_REPORT",
        TioTdiStatus = 0xdf => "TIO_TDI_STATUS",
        TioGuestRequest = 0xe0 => "TIO_GUEST_REQUEST",
        TioAsidFenceClear = 0xe1 => "TIO_ASID_FENCE_CLEAR",
        TioAsidFenceStatus = 0xe2 => "TIO_ASID_FENCE_STATUS",
        TioTdiInfo = 0xe3 => "TIO_TDI_INFO",
        TioRollKey = 0xe4 => "TIO_ROLL_KEY",
    }
}

codes! {
    /// Statuses the mailbox itself answers, beside each command's own codes (the RMP
    /// instruction codes for the page operations, the SEV firmware codes for TIO).
    pub enum MailboxStatus: u32 {
        /// The command buffer (or an output) is not in guest RAM (Linux psp-sev.h
        /// SEV_RET_INVALID_ADDRESS).
        InvalidAddress = 0x09 => "INVALID_ADDRESS",
        /// Not a command of this mailbox (SEV_RET_INVALID_COMMAND).
        InvalidCommand = 0x11 => "INVALID_COMMAND",
        /// PVALIDATE at a VMPL other than 0 took #GP (the mailbox's own number).
        GeneralProtection = 0xfd => "GENERAL_PROTECTION",
        /// The guest's page operation took a nested page fault instead of returning a code (the
        /// mailbox's own number).
        NestedPageFault = 0xfe => "NESTED_PAGE_FAULT",
    }
}

/// The RMP page-operation status meaning the RMP does not exist yet (SNP_EN not set):
/// FAIL_INPUT.
pub const RMP_FAIL_INPUT: u32 = 1;

codes! {
    /// TIO_GUEST_REQUEST message types: SDTE_WRITE (phase-2 TIO_MSG_SDTE_WRITE_REQ) and RUN (the
    /// guest's SVM_VMGEXIT_SEV_TIO_OP RUN, given a type here).
    pub enum GuestMessage: u32 {
        SdteWrite = 25 => "SDTE_WRITE",
        Run = 0x100 => "RUN",
    }
}

/// The page size byte of the page operations.
pub const PAGE_4K: u8 = 0;
pub const PAGE_2M: u8 = 1;

/// RMPUPDATE: the page at `spa` to the given state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RmpUpdate {
    pub spa: U64,
    pub gpa: U64,
    pub assigned: u8,
    /// [`PAGE_4K`] or [`PAGE_2M`].
    pub page_size: u8,
    pub immutable: u8,
    pub _reserved: u8,
    /// Above 0xffff: FAIL_INPUT.
    pub asid: U32,
}

/// PSMASH of the 2 MiB page at `spa`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Psmash {
    pub spa: U64,
}

/// PVALIDATE, as the guest of `asid` at VMPL 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Pvalidate {
    pub spa: U64,
    pub gpa: U64,
    pub asid: U16,
    pub page_size: u8,
    pub validate: u8,
}

/// RMPADJUST, as the guest of `asid` at VMPL `vmpl`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RmpAdjust {
    pub spa: U64,
    pub gpa: U64,
    pub asid: U16,
    pub vmpl: u8,
    pub page_size: u8,
    pub target_vmpl: u8,
    pub perms: u8,
    pub vmsa: u8,
    pub _reserved: u8,
}

/// RMPREAD of the page at `spa`; the output is RMPREAD's 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RmpRead {
    pub spa: U64,
    pub _reserved: U64,
    pub out: [u8; 16],
}

/// TIO_STATUS's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioStatus {
    pub _reserved: [u8; 16],
    pub initialized: U32,
    pub devices: U32,
    pub tdis: U32,
}

/// TIO_DEV_CREATE, TIO_DEV_RECLAIM (which reads `device_id` only) and TIO_DEV_DISCONNECT (whose
/// third byte is `force`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioDev {
    pub device_id: U16,
    /// TIO_DEV_CREATE: the root port; TIO_DEV_DISCONNECT: force.
    pub arg: u8,
}

/// TIO_DEV_CONNECT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioDevConnect {
    pub device_id: U16,
    pub _reserved: [u8; 6],
    pub ide_stream_id: [u8; 8],
}

/// TIO_TDI_CREATE; the output is the TDI id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioTdiCreate {
    pub device_id: U16,
    pub _reserved: [u8; 2],
    /// The function's requester id.
    pub function_id: U32,
    pub tdi: U32,
}

/// TIO_TDI_RECLAIM, TIO_TDI_UNBIND (whose fifth byte is `force`) and TIO_TDI_STATUS (whose
/// output is the TDISP state: 0 CONFIG_UNLOCKED, 1 CONFIG_LOCKED, 2 RUN, 3 ERROR, PCIe 6.x
/// §11.3.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioTdi {
    pub tdi: U32,
    /// TIO_TDI_UNBIND: force.
    pub force: u8,
    pub _reserved: [u8; 3],
    /// TIO_TDI_STATUS's output.
    pub state: u8,
}

/// TIO_TDI_BIND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioTdiBind {
    pub tdi: U32,
    pub asid: U16,
    pub guest_device_id: U16,
    /// TDISP LOCK_INTERFACE flags.
    pub lock_flags: U16,
    /// Go on to RUN after the lock.
    pub run: u8,
}

/// TIO_GUEST_REQUEST; the output is the message's status (SDTE_WRITE: 0 ok, 1 invalid TDI, 2
/// not bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioGuestRequest {
    pub tdi: U32,
    /// [`GuestMessage`].
    pub message: U32,
    /// SDTE_WRITE: the guest's vTOM.
    pub vtom: U64,
    pub message_status: U32,
}

/// TIO_ASID_FENCE_CLEAR and TIO_ASID_FENCE_STATUS (whose output is the fence status: DMA
/// bits 1:0, MMIO bits 3:2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TioAsidFence {
    pub asid: U16,
    pub _reserved: [u8; 6],
    pub fence_status: U32,
}

/// Where each command's output sits in the buffer.
pub mod out {
    use super::*;
    pub const RMPREAD: u64 = offset_of!(RmpRead, out) as u64;
    pub const TIO_STATUS: u64 = offset_of!(TioStatus, initialized) as u64;
    pub const TIO_TDI_CREATE: u64 = offset_of!(TioTdiCreate, tdi) as u64;
    pub const TIO_TDI_STATUS: u64 = offset_of!(TioTdi, state) as u64;
    pub const TIO_GUEST_REQUEST: u64 = offset_of!(TioGuestRequest, message_status) as u64;
    pub const TIO_ASID_FENCE_STATUS: u64 = offset_of!(TioAsidFence, fence_status) as u64;
}

/// A command's struct from the front of the 64-byte buffer.
pub fn parse<T: FromBytes>(buf: &[u8; CMDBUF_SIZE]) -> T {
    // Every command struct is shorter than the buffer, so the prefix is always there.
    T::read_from_prefix(buf).map(|(t, _)| t).unwrap_or_else(|_| T::new_zeroed())
}

/// A command's struct at the front of a zeroed 64-byte buffer, as a driver writes it.
pub fn buffer<T: IntoBytes + Immutable>(cmd: &T) -> [u8; CMDBUF_SIZE] {
    let mut b = [0u8; CMDBUF_SIZE];
    let bytes = cmd.as_bytes();
    let n = bytes.len().min(CMDBUF_SIZE);
    b[..n].copy_from_slice(&bytes[..n]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_documented_offsets() {
        assert_eq!((offset_of!(RmpUpdate, assigned), offset_of!(RmpUpdate, immutable), offset_of!(RmpUpdate, asid)), (16, 18, 20));
        assert_eq!((offset_of!(Pvalidate, asid), offset_of!(Pvalidate, page_size), offset_of!(Pvalidate, validate)), (16, 18, 19));
        assert_eq!((offset_of!(RmpAdjust, vmpl), offset_of!(RmpAdjust, target_vmpl), offset_of!(RmpAdjust, vmsa)), (18, 20, 22));
        assert_eq!((out::RMPREAD, out::TIO_STATUS, out::TIO_TDI_CREATE, out::TIO_TDI_STATUS), (16, 16, 8, 8));
        assert_eq!((out::TIO_GUEST_REQUEST, out::TIO_ASID_FENCE_STATUS), (16, 8));
        assert_eq!(offset_of!(TioDevConnect, ide_stream_id), 8);
        assert_eq!((offset_of!(TioTdiBind, asid), offset_of!(TioTdiBind, lock_flags), offset_of!(TioTdiBind, run)), (4, 8, 10));
        assert_eq!((offset_of!(TioTdiCreate, function_id), offset_of!(TioTdi, force)), (4, 4));
        assert!(size_of::<TioGuestRequest>() <= CMDBUF_SIZE && size_of::<TioStatus>() <= CMDBUF_SIZE);
    }

    #[test]
    fn a_buffer_round_trips_and_cmdresp_packs_as_psp_dev_c_reads_it() {
        let u = RmpUpdate { spa: U64::new(0x30_0000), gpa: U64::new(0x5000), assigned: 1, asid: U32::new(2), ..Default::default() };
        let b = buffer(&u);
        assert_eq!(&b[..8], &0x30_0000u64.to_le_bytes());
        assert_eq!(parse::<RmpUpdate>(&b), u);
        assert_eq!(CmdResp::request(0xdc).0, 0xdc << 16);
        let r = CmdResp::done(0xdc, 0x3c);
        assert_eq!((r.0, r.is_done(), r.id(), r.status()), (0x80dc_003c, true, 0xdc, 0x3c));
        assert_eq!(Command::from_code(0xd9), None);
        assert_eq!(Command::TioTdiBind.name(), "TIO_TDI_BIND");
    }
}
