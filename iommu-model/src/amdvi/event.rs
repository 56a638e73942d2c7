//! Event-log records, 128 bits each (spec 48882 §2.5 "Event Logging"; layouts as Linux
//! drivers/iommu/amd/iommu.c iommu_print_event and amd_iommu_print_rmp_fault decode them:
//! devid = bits 15:0, flags = bits 59:48, code = bits 63:60, address = bits 127:64).

/// Flag bits, numbered within the 12-bit flags field (bits 59:48 of the record).
pub mod flags {
    pub const GN: u16 = 1 << 0;
    pub const NX: u16 = 1 << 1;
    pub const US: u16 = 1 << 2;
    /// I: the request was an interrupt (0 for memory requests). Linux EVENT_FLAG_I 0x008.
    pub const I: u16 = 1 << 3;
    /// PR: the page-table entry that ended the walk was present.
    pub const PR: u16 = 1 << 4;
    /// RW: the request was a write. Linux EVENT_FLAG_RW 0x020.
    pub const RW: u16 = 1 << 5;
    /// PE: the request lacked permission.
    pub const PE: u16 = 1 << 6;
    /// RZ: a reserved bit was set, or a level encoding was illegal.
    pub const RZ: u16 = 1 << 7;
    /// TR: a translation request (ATS), 0 for ordinary transactions.
    pub const TR: u16 = 1 << 8;
    /// Type (bits 10:9) of hardware errors.
    pub const TYPE_MASTER_ABORT: u16 = 1 << 9;
    pub const TYPE_TARGET_ABORT: u16 = 2 << 9;
    pub const TYPE_DATA_ERROR: u16 = 3 << 9;
}

pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
pub const IO_PAGE_FAULT: u8 = 0x2;
pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
pub const COMMAND_HARDWARE_ERROR: u8 = 0x6;
/// Linux EVENT_TYPE_RMP_FAULT.
pub const RMP_PAGE_FAULT: u8 = 0xd;
/// Linux EVENT_TYPE_RMP_HW_ERR.
pub const RMP_HW_ERROR: u8 = 0xe;

/// One event-log record. `tag` is bits 47:32 (DomainID for IO_PAGE_FAULT and
/// PAGE_TAB_HARDWARE_ERROR, the VMG tag for RMP events); `extra` is bits 31:16 (PASID[19:16] in
/// bits 19:16 for the translation events, flags_rmp in bits 23:16 for RMP_PAGE_FAULT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub code: u8,
    pub devid: u16,
    pub extra: u16,
    pub tag: u16,
    pub flags: u16,
    pub address: u64,
}

impl Event {
    pub fn io_page_fault(devid: u16, domain_id: u16, flags: u16, iova: u64) -> Event {
        Event { code: IO_PAGE_FAULT, devid, extra: 0, tag: domain_id, flags, address: iova }
    }

    pub fn illegal_dte(devid: u16, flags: u16, iova: u64) -> Event {
        Event { code: ILLEGAL_DEV_TABLE_ENTRY, devid, extra: 0, tag: 0, flags, address: iova }
    }

    pub fn dev_tab_hw_error(devid: u16, flags: u16, dte_addr: u64) -> Event {
        Event { code: DEV_TAB_HARDWARE_ERROR, devid, extra: 0, tag: 0, flags, address: dte_addr }
    }

    pub fn page_tab_hw_error(devid: u16, domain_id: u16, flags: u16, pte_addr: u64) -> Event {
        Event { code: PAGE_TAB_HARDWARE_ERROR, devid, extra: 0, tag: domain_id, flags, address: pte_addr & !7 }
    }

    pub fn illegal_command(cmd_addr: u64) -> Event {
        Event { code: ILLEGAL_COMMAND_ERROR, devid: 0, extra: 0, tag: 0, flags: 0, address: cmd_addr }
    }

    pub fn command_hw_error(flags: u16, addr: u64) -> Event {
        Event { code: COMMAND_HARDWARE_ERROR, devid: 0, extra: 0, tag: 0, flags, address: addr }
    }

    /// RMP_PAGE_FAULT: Linux amd_iommu_print_rmp_fault reads flags_rmp from event[0] bits 23:16,
    /// vmg_tag from event[1] bits 15:0, flags from event[1] bits 27:16, gpa from event[3]:event[2].
    pub fn rmp_page_fault(devid: u16, flags_rmp: u8, vmg_tag: u16, flags: u16, gpa: u64) -> Event {
        Event { code: RMP_PAGE_FAULT, devid, extra: u16::from(flags_rmp), tag: vmg_tag, flags, address: gpa }
    }

    /// RMP_HW_ERROR: the SPA whose RMP entry could not be read (Linux masks its low 3 bits).
    pub fn rmp_hw_error(devid: u16, vmg_tag: u16, flags: u16, spa: u64) -> Event {
        Event { code: RMP_HW_ERROR, devid, extra: 0, tag: vmg_tag, flags, address: spa & !7 }
    }

    /// The spec's name of the event code.
    pub fn name(&self) -> &'static str {
        match self.code {
            ILLEGAL_DEV_TABLE_ENTRY => "ILLEGAL_DEV_TABLE_ENTRY",
            IO_PAGE_FAULT => "IO_PAGE_FAULT",
            DEV_TAB_HARDWARE_ERROR => "DEV_TAB_HARDWARE_ERROR",
            PAGE_TAB_HARDWARE_ERROR => "PAGE_TAB_HARDWARE_ERROR",
            ILLEGAL_COMMAND_ERROR => "ILLEGAL_COMMAND_ERROR",
            COMMAND_HARDWARE_ERROR => "COMMAND_HARDWARE_ERROR",
            0x7 => "IOTLB_INV_TIMEOUT",
            0x8 => "INVALID_DEVICE_REQUEST",
            0x9 => "INVALID_PPR_REQUEST",
            RMP_PAGE_FAULT => "RMP_PAGE_FAULT",
            RMP_HW_ERROR => "RMP_HW_ERROR",
            _ => "UNKNOWN",
        }
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        let q0 = u64::from(self.devid)
            | u64::from(self.extra) << 16
            | u64::from(self.tag) << 32
            | u64::from(self.flags & 0xfff) << 48
            | u64::from(self.code & 0xf) << 60;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&q0.to_le_bytes());
        b[8..].copy_from_slice(&self.address.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 16]) -> Event {
        let mut q = [0u8; 8];
        q.copy_from_slice(&b[..8]);
        let q0 = u64::from_le_bytes(q);
        q.copy_from_slice(&b[8..]);
        Event {
            code: (q0 >> 60) as u8,
            devid: q0 as u16,
            extra: (q0 >> 16) as u16,
            tag: (q0 >> 32) as u16,
            flags: ((q0 >> 48) & 0xfff) as u16,
            address: u64::from_le_bytes(q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode as Linux does: the record as four u32 words.
    fn words(e: &Event) -> [u32; 4] {
        let b = e.to_bytes();
        [0, 1, 2, 3].map(|i| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()))
    }

    #[test]
    fn io_page_fault_as_linux_decodes_it() {
        let e = Event::io_page_fault(0x0018, 0x42, flags::PR | flags::RW | flags::PE, 0xdead_b000);
        let ev = words(&e);
        assert_eq!(ev[1] >> 28, 2, "type = event[1] >> 28");
        assert_eq!(ev[0] & 0xffff, 0x18, "devid");
        assert_eq!(ev[1] & 0xffff, 0x42, "domain id (pasid field) = event[1] & 0xffff");
        assert_eq!((ev[1] >> 16) & 0xfff, 0x070, "flags");
        assert_eq!(u64::from(ev[3]) << 32 | u64::from(ev[2]), 0xdead_b000);
        assert_eq!(e.name(), "IO_PAGE_FAULT");
        assert_eq!(Event::from_bytes(&e.to_bytes()), e);
    }

    /// Every encoder, decoded as iommu_print_event does: type = event[1] >> 28, devid =
    /// event[0] & 0xffff, pasid/domain = (event[0] & 0xf0000) | (event[1] & 0xffff), flags =
    /// (event[1] >> 16) & 0xfff, address = event[3]:event[2].
    #[test]
    fn every_encoder_as_iommu_print_event_decodes_it() {
        use flags::*;
        let cases: [(Event, u32, &str, u16, u16, u16, u64); 7] = [
            (Event::illegal_dte(0x0108, RW | RZ, 0x1000), 0x1, "ILLEGAL_DEV_TABLE_ENTRY", 0x0108, 0, RW | RZ, 0x1000),
            (Event::io_page_fault(0x00ff, 0xbeef, PR | PE, 0x7fff_f000), 0x2, "IO_PAGE_FAULT", 0x00ff, 0xbeef, PR | PE, 0x7fff_f000),
            (
                Event::dev_tab_hw_error(0x0010, TYPE_MASTER_ABORT, 0x10_0200),
                0x3,
                "DEV_TAB_HARDWARE_ERROR",
                0x0010,
                0,
                TYPE_MASTER_ABORT,
                0x10_0200,
            ),
            (
                Event::page_tab_hw_error(0x0011, 7, RW | TYPE_MASTER_ABORT, 0x20_0ff8),
                0x4,
                "PAGE_TAB_HARDWARE_ERROR",
                0x0011,
                7,
                RW | TYPE_MASTER_ABORT,
                0x20_0ff8,
            ),
            (Event::illegal_command(0x3_0040), 0x5, "ILLEGAL_COMMAND_ERROR", 0, 0, 0, 0x3_0040),
            (Event::command_hw_error(TYPE_TARGET_ABORT, 0x4_0000), 0x6, "COMMAND_HARDWARE_ERROR", 0, 0, TYPE_TARGET_ABORT, 0x4_0000),
            (Event::rmp_hw_error(0x0020, 0x55, RW, 0x9000_0007), 0xe, "RMP_HW_ERROR", 0x0020, 0x55, RW, 0x9000_0000),
        ];
        for (e, code, name, devid, tag, fl, addr) in cases {
            let ev = words(&e);
            assert_eq!(ev[1] >> 28, code, "{name}");
            assert_eq!(e.name(), name);
            assert_eq!(ev[0] & 0xffff, u32::from(devid), "{name} devid");
            assert_eq!((ev[0] & 0xf0000) | (ev[1] & 0xffff), u32::from(tag), "{name} domain/pasid");
            assert_eq!((ev[1] >> 16) & 0xfff, u32::from(fl), "{name} flags");
            assert_eq!(u64::from(ev[3]) << 32 | u64::from(ev[2]), addr, "{name} address");
            assert_eq!(Event::from_bytes(&e.to_bytes()), e, "{name} round trip");
        }
        // Linux's own flag masks: EVENT_FLAG_RW 0x020, EVENT_FLAG_I 0x008.
        assert_eq!((RW, I), (0x020, 0x008));
    }

    #[test]
    fn rmp_page_fault_as_amd_iommu_print_rmp_fault_decodes_it() {
        let e = Event::rmp_page_fault(0x0020, 0x81, 0x1234, flags::RW, 0x1_2345_6000);
        let ev = words(&e);
        assert_eq!(ev[1] >> 28, 0xd);
        assert_eq!(ev[0] & 0xffff, 0x20);
        assert_eq!((ev[0] >> 16) & 0xff, 0x81, "flags_rmp");
        assert_eq!(ev[1] & 0xffff, 0x1234, "vmg_tag");
        assert_eq!((ev[1] >> 16) & 0xfff, 0x20, "flags");
        assert_eq!(u64::from(ev[3]) << 32 | u64::from(ev[2]), 0x1_2345_6000);
    }
}
