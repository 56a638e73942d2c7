//! The IOAT DMA engine (`--ioat`, [`crate::pci::IOAT`]): the Intel QuickData ("Crystal Beach")
//! register file and descriptor as Linux's drivers/dma/ioat reads and writes them: names and values from registers.h and hw.h, the
//! meaning of each from how init.c and dma.c use it. Offsets are from BAR0 (global registers)
//! or from a channel's block at 0x80 × (channel + 1) (init.c, ioat_init_channel).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Global registers (registers.h "MMIO Device Registers").
pub mod global {
    /// 8-bit, bits 4:0: number of channels (init.c, ioat_enumerate_channels).
    pub const CHANCNT: u64 = 0x00;
    /// 8-bit, bits 4:0: log2 of the largest transfer one descriptor may ask for; 0 would mean
    /// 32 GiB, which init.c takes as "no channels".
    pub const XFERCAP: u64 = 0x01;
    pub const GENCTRL: u64 = 0x02;
    /// 8-bit interrupt control (dma.c, ioat_dma_do_interrupt; init.c, ioat_dma_setup_interrupts).
    pub const INTRCTRL: u64 = 0x03;
    /// 32-bit, one bit per channel with an interrupt pending (single-vector modes).
    pub const ATTNSTATUS: u64 = 0x04;
    /// 8-bit CBVER: major in 7:4, minor in 3:0.
    pub const CBVER: u64 = 0x08;
    /// 16-bit: offset of channel 0's registers.
    pub const PERPORTOFFSET: u64 = 0x0a;
    /// 16-bit: interrupt delay (dma.c writes it when sysfs asks for coalescing).
    pub const INTRDELAY: u64 = 0x0c;
    pub const DEVICE_STATUS: u64 = 0x0e;
    /// 32-bit DMACAPABILITY (init.c, ioat3_dma_probe).
    pub const DMACAPABILITY: u64 = 0x10;
    /// 16-bit: offset of the DCA registers; 0 = no DCA (dca.c, ioat_dca_init).
    pub const DCAOFFSET: u64 = 0x14;
}

/// INTRCTRL bits (registers.h).
pub mod intrctrl {
    pub const MASTER_INT_EN: u8 = 0x01;
    /// Read-only: some channel's ATTNSTATUS bit is set.
    pub const INT_STATUS: u8 = 0x02;
    /// Read-only: INT_STATUS and MASTER_INT_EN.
    pub const INT: u8 = 0x04;
    pub const MSIX_VECTOR_CONTROL: u8 = 0x08;
    pub const WRITABLE: u8 = MASTER_INT_EN | MSIX_VECTOR_CONTROL;
}

/// INTRDELAY: the delay field is writable; bit 15 (coalescing supported) stays 0.
pub const INTRDELAY_MASK: u16 = 0x3fff;

/// DMACAPABILITY bits (registers.h). The model sets none: it copies (which needs no bit) and
/// runs NULL descriptors; XOR, PQ, CRC, fill, page break, DCA and descriptor write-back error
/// status are not implemented, so not advertised.
pub mod cap {
    pub const PAGE_BREAK: u32 = 0x0000_0001;
    pub const DCA: u32 = 0x0000_0010;
    pub const XOR: u32 = 0x0000_0100;
    pub const PQ: u32 = 0x0000_0200;
    pub const DWBES: u32 = 0x0000_2000;
    pub const DPS: u32 = 0x0080_0000;
}

/// Each channel's register block is this long (IOAT_CHANNEL_MMIO_SIZE).
pub const CHANNEL_MMIO_SIZE: u64 = 0x80;

/// Channel registers, from the channel's base (registers.h "DMA Channel Registers"; the v2+
/// offsets, IOAT2_*).
pub mod chan {
    /// 16-bit CHANCTRL.
    pub const CHANCTRL: u64 = 0x00;
    /// 16-bit DMA compatibility (IOAT_DMA_COMP_V1/V2).
    pub const DMACOMP: u64 = 0x02;
    /// 8-bit CHANCMD (IOAT2_CHANCMD_OFFSET).
    pub const CHANCMD: u64 = 0x04;
    /// 16-bit DMACOUNT: descriptors appended since the chain started (dma.c, __ioat_issue_pending).
    pub const DMACOUNT: u64 = 0x06;
    /// 64-bit CHANSTS: completed descriptor address in 63:6, state in 2:0.
    pub const CHANSTS: u64 = 0x08;
    /// 64-bit descriptor chain address (IOAT2_CHAINADDR_OFFSET), written as two dwords.
    pub const CHAINADDR: u64 = 0x10;
    /// 64-bit completion address: where CHANSTS is written back.
    pub const CHANCMP: u64 = 0x18;
    /// 64-bit current descriptor address.
    pub const CDAR: u64 = 0x20;
    /// 32-bit CHANERR, write 1 to clear.
    pub const CHANERR: u64 = 0x28;
    pub const CHANERRMSK: u64 = 0x2c;
    /// 32-bit DCA control (init.c writes IOAT_DMA_DCA_ANY_CPU to it).
    pub const DCACTRL: u64 = 0x30;
}

/// DMA_COMP: this channel speaks the v2 interface (DMACOUNT, CHAINADDR at 0x10).
pub const DMA_COMP_V2: u16 = 0x0002;

/// CHANCTRL bits (registers.h).
pub mod chanctrl {
    /// One interrupt per arm: the engine clears it when it interrupts; dma.c, ioat_cleanup_event
    /// writes IOAT_CHANCTRL_RUN again after each cleanup.
    pub const INT_REARM: u16 = 0x0001;
    /// Write CHANSTS to CHANCMP when the channel halts on an error.
    pub const ERR_COMPLETION_EN: u16 = 0x0004;
    pub const ANY_ERR_ABORT_EN: u16 = 0x0008;
    /// Interrupt when the channel halts on an error.
    pub const ERR_INT_EN: u16 = 0x0010;
    pub const DESCRIPTOR_ADDR_SNOOP_CONTROL: u16 = 0x0020;
    pub const CHANNEL_IN_USE: u16 = 0x0100;
    pub const COMPL_DCA_EN: u16 = 0x0200;
    pub const PRIORITY_MASK: u16 = 0xf000;
    /// What the driver writes to run a channel (IOAT_CHANCTRL_RUN).
    pub const RUN: u16 = INT_REARM | ERR_INT_EN | ERR_COMPLETION_EN | ANY_ERR_ABORT_EN;
    pub const WRITABLE: u16 = RUN | DESCRIPTOR_ADDR_SNOOP_CONTROL | CHANNEL_IN_USE | PRIORITY_MASK;
}

/// CHANCMD bits (registers.h).
pub mod chancmd {
    /// Reads 1 until the reset has taken effect (dma.h, ioat_reset_pending).
    pub const RESET: u8 = 0x20;
    pub const RESUME: u8 = 0x10;
    pub const ABORT: u8 = 0x08;
    pub const SUSPEND: u8 = 0x04;
    /// Version 1 commands; a v2+ channel is started through DMACOUNT.
    pub const APPEND: u8 = 0x02;
    pub const START: u8 = 0x01;
}

/// CHANSTS fields (registers.h).
pub mod chansts {
    pub const COMPLETED_DESCRIPTOR_ADDR: u64 = !0x3f;
    pub const STATUS: u64 = 0x7;
    pub const ACTIVE: u64 = 0x0;
    pub const DONE: u64 = 0x1;
    pub const SUSPENDED: u64 = 0x2;
    pub const HALTED: u64 = 0x3;
}

/// CHANERR bits (registers.h; their names as dma.c's chanerr_str prints them).
pub mod chanerr {
    /// "Next Descriptor Address Error": a descriptor fetch the IOMMU refused or that hit no memory.
    pub const NEXT_ADDR_ERR: u32 = 0x0004;
    /// "Descriptor Error": a next pointer that is not 64-byte aligned.
    pub const NEXT_DESC_ALIGN_ERR: u32 = 0x0008;
    /// "Chan Address Value Error": CHAINADDR not 64-byte aligned.
    pub const CHAIN_ADDR_VALUE_ERR: u32 = 0x0010;
    /// "Read Data Error": a source read refused (dma.c, ioat_eh: DMA_TRANS_READ_FAILED).
    pub const READ_DATA_ERR: u32 = 0x0100;
    /// "Write Data Error": a destination write refused (ioat_eh: DMA_TRANS_WRITE_FAILED).
    pub const WRITE_DATA_ERR: u32 = 0x0200;
    /// "Descriptor Control Error": an operation or control bit the engine does not implement.
    pub const CONTROL_ERR: u32 = 0x0400;
    /// "Descriptor Transfer Size Error": size 0 or above 2^XFERCAP.
    pub const LENGTH_ERR: u32 = 0x0800;
    /// "CHANCMD Error": a command the engine does not implement (ABORT, or v1's APPEND/START).
    pub const CHANCMD_ERR: u32 = 0x0020;
    /// "Completion Address Error": the CHANSTS write-back to CHANCMP refused.
    pub const COMPLETION_ADDR_ERR: u32 = 0x1000;
    /// The name of a bit the model sets, after dma.c's chanerr_str.
    pub fn name(bits: u32) -> &'static str {
        match bits {
            NEXT_ADDR_ERR => "next descriptor address error",
            NEXT_DESC_ALIGN_ERR => "descriptor error",
            CHAIN_ADDR_VALUE_ERR => "chain address value error",
            READ_DATA_ERR => "read data error",
            WRITE_DATA_ERR => "write data error",
            CONTROL_ERR => "descriptor control error",
            CHANCMD_ERR => "chancmd error",
            LENGTH_ERR => "descriptor transfer size error",
            COMPLETION_ADDR_ERR => "completion address error",
            _ => "error",
        }
    }
}

/// Config-space registers Linux touches (registers.h "IOAT_PCI_*"; dma.c, ioat_reset_hw and
/// ioat_eh read and clear CHANERR_INT on versions below 3.3).
pub mod pci {
    /// Uncorrectable error status, write 1 to clear (dma.c writes 0x10 on TBG0 only).
    pub const DMAUNCERRSTS: u16 = 0x148;
    /// Internal channel error status, write 1 to clear: the model has no internal errors.
    pub const CHANERR_INT: u16 = 0x180;
    pub const CHANERRMASK_INT: u16 = 0x184;
}

/// Descriptors are 64 bytes, 64-byte aligned (hw.h IOAT_DESC_SZ).
pub const DESC_SIZE: u64 = 64;

/// `struct ioat_dma_descriptor` (hw.h), 64 bytes: size, ctl, src_addr, dst_addr, next; the rest
/// is the driver's (user1/user2) or reserved, and the engine neither reads nor writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Descriptor {
    pub size: U32,
    pub ctl: U32,
    pub src: U64,
    pub dst: U64,
    pub next: U64,
    pub driver: [u8; 32],
}

/// `ctl` bits (hw.h `ctl_f`).
pub mod ctl {
    pub const INT_EN: u32 = 1 << 0;
    pub const SRC_SNOOP_DIS: u32 = 1 << 1;
    pub const DEST_SNOOP_DIS: u32 = 1 << 2;
    pub const COMPL_WRITE: u32 = 1 << 3;
    pub const FENCE: u32 = 1 << 4;
    pub const NULL: u32 = 1 << 5;
    pub const SRC_BRK: u32 = 1 << 6;
    pub const DEST_BRK: u32 = 1 << 7;
    pub const BUNDLE: u32 = 1 << 8;
    pub const DEST_DCA: u32 = 1 << 9;
    pub const HINT: u32 = 1 << 10;
    pub const OP_SHIFT: u32 = 24;
    /// Page break and DCA need capabilities the model does not advertise.
    pub const UNSUPPORTED: u32 = SRC_BRK | DEST_BRK | DEST_DCA;
}

/// Operation codes (hw.h): COPY; the XOR and PQ codes need DMACAPABILITY bits the model leaves clear.
pub const OP_COPY: u8 = 0x00;

impl Descriptor {
    /// A descriptor as ioatdma writes one (next 0: the driver links the chain).
    pub fn new(size: u32, ctl: u32, src: u64, dst: u64) -> Descriptor {
        Descriptor { size: U32::new(size), ctl: U32::new(ctl), src: U64::new(src), dst: U64::new(dst), ..Default::default() }
    }

    pub fn op(&self) -> u8 {
        (self.ctl.get() >> ctl::OP_SHIFT) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_fields_sit_where_hw_h_puts_them() {
        let d = Descriptor {
            next: U64::new(0x40),
            ..Descriptor::new(2000, ctl::INT_EN | ctl::COMPL_WRITE | 0x87 << 24, 0x1122_3344_5566_7788, 0xaabb_ccdd_0000_1000)
        };
        let b = d.as_bytes();
        assert_eq!(b.len() as u64, DESC_SIZE);
        assert_eq!(&b[0..4], &2000u32.to_le_bytes());
        assert_eq!(b[4], 0x09, "int_en and compl_write are bits 0 and 3");
        assert_eq!(b[7], 0x87, "op in the top byte of ctl");
        assert_eq!(&b[24..32], &0x40u64.to_le_bytes());
        assert_eq!(Descriptor::read_from_bytes(b), Ok(d));
        assert_eq!(d.op(), 0x87);
        assert_eq!(chancmd::RESET, 0x20);
        assert_eq!(chanctrl::RUN, 0x1d);
    }
}
