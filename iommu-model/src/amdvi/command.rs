//! Command-buffer entries, 128 bits each, opcode in bits 63:60 (spec 48882 §2.4; layouts as
//! Linux drivers/iommu/amd/iommu.c build_* writes them, reserved bits as QEMU's amd_iommu.c
//! checks them).

pub const COMPLETION_WAIT: u8 = 0x1;
pub const INVALIDATE_DEVTAB_ENTRY: u8 = 0x2;
pub const INVALIDATE_IOMMU_PAGES: u8 = 0x3;
pub const INVALIDATE_IOTLB_PAGES: u8 = 0x4;
pub const INVALIDATE_INTERRUPT_TABLE: u8 = 0x5;
pub const PREFETCH_IOMMU_PAGES: u8 = 0x6;
pub const COMPLETE_PPR_REQUEST: u8 = 0x7;
pub const INVALIDATE_IOMMU_ALL: u8 = 0x8;

/// The spec's name of an opcode (for counts and logs).
pub fn name(op: u8) -> &'static str {
    match op {
        COMPLETION_WAIT => "COMPLETION_WAIT",
        INVALIDATE_DEVTAB_ENTRY => "INVALIDATE_DEVTAB_ENTRY",
        INVALIDATE_IOMMU_PAGES => "INVALIDATE_IOMMU_PAGES",
        INVALIDATE_IOTLB_PAGES => "INVALIDATE_IOTLB_PAGES",
        INVALIDATE_INTERRUPT_TABLE => "INVALIDATE_INTERRUPT_TABLE",
        PREFETCH_IOMMU_PAGES => "PREFETCH_IOMMU_PAGES",
        COMPLETE_PPR_REQUEST => "COMPLETE_PPR_REQUEST",
        INVALIDATE_IOMMU_ALL => "INVALIDATE_IOMMU_ALL",
        _ => "reserved",
    }
}

/// The address Linux uses with S=1 to invalidate every page (CMD_INV_IOMMU_ALL_PAGES_ADDRESS).
pub const ALL_PAGES_ADDRESS: u64 = 0x7fff_ffff_ffff_f000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// S: store `data` at `store_addr`; I: set Status.ComWaitInt.
    CompletionWait {
        store: bool,
        interrupt: bool,
        store_addr: u64,
        data: u64,
    },
    InvalidateDevtabEntry {
        devid: u16,
    },
    /// `start`/`len` as the S bit and address encode them; `pde` also flushes cached PDEs.
    InvalidateIommuPages {
        domain_id: u16,
        start: u64,
        len: u64,
        pde: bool,
    },
    /// Device IOTLBs (ATS) and interrupt tables are not modelled: accepted, nothing to drop.
    InvalidateIotlbPages {
        devid: u16,
    },
    InvalidateInterruptTable {
        devid: u16,
    },
    InvalidateIommuAll,
}

/// Decode one entry; `None` for an illegal command (unknown or unsupported opcode, or reserved
/// bits set), which the IOMMU reports as ILLEGAL_COMMAND_ERROR.
pub fn decode(raw: [u64; 2]) -> Option<Command> {
    let [q0, q1] = raw;
    let op = (q0 >> 60) as u8;
    match op {
        COMPLETION_WAIT => {
            // Bits 59:52 reserved; store address bits 51:3.
            if q0 & 0x0ff0_0000_0000_0000 != 0 {
                return None;
            }
            Some(Command::CompletionWait { store: q0 & 1 != 0, interrupt: q0 & 2 != 0, store_addr: q0 & 0x000f_ffff_ffff_fff8, data: q1 })
        }
        INVALIDATE_DEVTAB_ENTRY => {
            if q0 & 0x0fff_ffff_ffff_0000 != 0 || q1 != 0 {
                return None;
            }
            Some(Command::InvalidateDevtabEntry { devid: q0 as u16 })
        }
        INVALIDATE_IOMMU_PAGES => {
            // PASID 19:0 and DomainID 47:32 in quad 0; S bit 64, PDE bit 65, GN bit 66, address
            // 127:76. Guest (GN) invalidation is out of scope: ignored like a PASID.
            if q0 & 0x0fff_0000_fff0_0000 != 0 || q1 & 0xff8 != 0 {
                return None;
            }
            let (start, len) = decode_range(q1 & !0xfff, q1 & 1 != 0);
            Some(Command::InvalidateIommuPages { domain_id: (q0 >> 32) as u16, start, len, pde: q1 & 2 != 0 })
        }
        INVALIDATE_IOTLB_PAGES => {
            // Reserved: bit 65, bit 67 and bits 75:70 (QEMU iommu_inval_iotlb).
            if q1 & 0xfca != 0 {
                return None;
            }
            Some(Command::InvalidateIotlbPages { devid: q0 as u16 })
        }
        INVALIDATE_INTERRUPT_TABLE => {
            if q0 & 0x0fff_ffff_ffff_0000 != 0 || q1 != 0 {
                return None;
            }
            Some(Command::InvalidateInterruptTable { devid: q0 as u16 })
        }
        INVALIDATE_IOMMU_ALL => {
            if q0 & 0x0fff_ffff_ffff_ffff != 0 || q1 != 0 {
                return None;
            }
            Some(Command::InvalidateIommuAll)
        }
        // PREFETCH_IOMMU_PAGES and COMPLETE_PPR_REQUEST need EFR.PreFSup / PPRSup, which this
        // IOMMU does not advertise; other opcodes are reserved.
        _ => None,
    }
}

/// S=0: the one 4 KiB page at `addr`. S=1: the range whose size is 2^(k+1), where k is the first
/// zero bit of the address from bit 12 up (Linux build_inv_address; QEMU
/// amdvi_decode_invalidation_size). A first zero at bit 51 or above means everything: the
/// spec's example encodings (Table 14, as QEMU reads it) give (1 << 51) - 1 as "all", and Linux
/// uses 0x7fff_ffff_ffff_f000.
pub fn decode_range(addr: u64, s: bool) -> (u64, u64) {
    if !s {
        return (addr, 0x1000);
    }
    let k = (addr | 0xfff).trailing_ones();
    if k >= 51 {
        return (0, u64::MAX);
    }
    // k is 12..=50 here.
    let size = 1u64 << k.saturating_add(1);
    (addr & !size.wrapping_sub(1), size)
}

/// Build the raw entries (what a driver writes), for tests and tools.
pub fn encode(c: &Command) -> [u64; 2] {
    let op = |o: u8| u64::from(o) << 60;
    match *c {
        Command::CompletionWait { store, interrupt, store_addr, data } => {
            [op(COMPLETION_WAIT) | (store_addr & 0x000f_ffff_ffff_fff8) | u64::from(store) | u64::from(interrupt) << 1, data]
        }
        Command::InvalidateDevtabEntry { devid } => [op(INVALIDATE_DEVTAB_ENTRY) | u64::from(devid), 0],
        Command::InvalidateIommuPages { domain_id, start, len, pde } => {
            let (addr, s) = encode_range(start, len);
            [op(INVALIDATE_IOMMU_PAGES) | u64::from(domain_id) << 32, addr | u64::from(s) | u64::from(pde) << 1]
        }
        Command::InvalidateIotlbPages { devid } => [op(INVALIDATE_IOTLB_PAGES) | u64::from(devid), 0],
        Command::InvalidateInterruptTable { devid } => [op(INVALIDATE_INTERRUPT_TABLE) | u64::from(devid), 0],
        Command::InvalidateIommuAll => [op(INVALIDATE_IOMMU_ALL), 0],
    }
}

/// The smallest naturally aligned power-of-two range covering [start, start+len), as Linux's
/// build_inv_address encodes it.
pub fn encode_range(start: u64, len: u64) -> (u64, bool) {
    if len <= 0x1000 && start & 0xfff == 0 {
        return (start, false);
    }
    let end = start.saturating_add(len.saturating_sub(1));
    let msb_diff = 63u32.saturating_sub((start ^ end).leading_zeros().min(63));
    if msb_diff >= 51 {
        return (ALL_PAGES_ADDRESS, true);
    }
    // Ones below the size bit, the size bit itself cleared.
    let size_bit = msb_diff;
    let addr = (start | (1u64 << size_bit).wrapping_sub(1)) & !(1u64 << size_bit) & !0xfff;
    (addr, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_encoding_round_trips() {
        assert_eq!(decode_range(0x5000, false), (0x5000, 0x1000));
        assert_eq!(decode_range(ALL_PAGES_ADDRESS, true), (0, u64::MAX));
        assert_eq!(decode_range(0x0007_ffff_ffff_f000, true), (0, u64::MAX), "first zero at bit 51");
        assert_eq!(decode_range(0x0003_ffff_ffff_f000, true), (0, 1 << 51), "first zero at bit 50");
        // 8 KiB at 0x4000: bit 12 (the size bit) clear; 16 KiB: bit 12 set, bit 13 clear.
        assert_eq!(decode_range(0x4000, true), (0x4000, 0x2000));
        assert_eq!(decode_range(0x5000, true), (0x4000, 0x4000));
        for (start, len) in [(0x20_0000u64, 0x20_0000u64), (0x1000, 0x3000), (0x40_0000, 0x1000), (0, 1 << 40)] {
            let (a, s) = encode_range(start, len);
            let (ds, dl) = decode_range(a, s);
            assert!(ds <= start && ds + (dl - 1) >= start + (len - 1), "{start:#x}+{len:#x} -> {ds:#x}+{dl:#x}");
        }
    }

    #[test]
    fn commands_round_trip_and_reserved_bits_are_illegal() {
        let cmds = [
            Command::CompletionWait { store: true, interrupt: true, store_addr: 0x1238, data: 7 },
            Command::InvalidateDevtabEntry { devid: 0x18 },
            Command::InvalidateIommuPages { domain_id: 3, start: 0x20_0000, len: 0x20_0000, pde: true },
            Command::InvalidateIommuAll,
        ];
        for c in cmds {
            assert_eq!(decode(encode(&c)), Some(c));
        }
        assert_eq!(decode([0, 0]), None, "opcode 0");
        assert_eq!(decode([0xf << 60, 0]), None, "opcode 0xf");
        assert_eq!(decode([(0x8 << 60) | 1, 0]), None, "INVALIDATE_IOMMU_ALL reserved bit");
        assert_eq!(decode([(0x1 << 60) | (1 << 55), 0]), None, "COMPLETION_WAIT reserved bit");
        assert_eq!(decode([(0x6 << 60), 0]), None, "PREFETCH without PreFSup");
        assert_eq!(decode([(0x7 << 60), 0]), None, "COMPLETE_PPR_REQUEST without PPRSup");
        assert_eq!(decode([(0x4 << 60) | 0x18, 1]), Some(Command::InvalidateIotlbPages { devid: 0x18 }), "S=1 is legal");
        for bit in [1u32, 3, 6, 11] {
            assert_eq!(decode([(0x4 << 60) | 0x18, 1 << bit]), None, "INVALIDATE_IOTLB_PAGES reserved bit {}", 64 + bit);
        }
        assert_eq!(decode([(0x2 << 60) | (1 << 16), 0]), None, "INVALIDATE_DEVTAB_ENTRY reserved bit 16");
        assert_eq!(decode([(0x3 << 60) | (1 << 20), 0]), None, "INVALIDATE_IOMMU_PAGES reserved bit 20");
        assert_eq!(decode([(0x3 << 60), 1 << 3]), None, "INVALIDATE_IOMMU_PAGES reserved bit 67");
        assert_eq!(decode([(0x5 << 60), 1]), None, "INVALIDATE_INTERRUPT_TABLE quad 1 reserved");
    }
}
