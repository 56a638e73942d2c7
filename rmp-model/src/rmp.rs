//! RMP entries and the table (AMD APM vol. 2 §15.36.3; layouts as Linux arch/x86/virt/svm/sev.c
//! decodes them: `struct rmpentry_raw` for the in-memory entry of Zen3/Zen4, `struct rmpentry` for
//! the RMPREAD output; the qword-1 fields as AMD's published firmware sev_rmp.h names them).
//!
//! The entries of the RMP live at RMP_BASE + 16 KiB + pfn * 16 (the first 16 KiB is processor
//! bookkeeping). [`Rmp`] keeps them as data and renders any one in the raw layout, so a daemon can
//! mirror them into guest memory and a guest can read them as Linux does.

/// RMPTABLE_CPU_BOOKKEEPING_SZ in Linux.
pub const BOOKKEEPING: u64 = 0x4000;
pub const ENTRY_SIZE: u64 = 16;
/// The raw layout has 10 ASID bits.
pub const MAX_ASID: u16 = 0x3ff;
/// 4 KiB entries per 2 MiB page.
pub const PTES_PER_2M: u64 = 512;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PageSize {
    #[default]
    Size4K,
    Size2M,
}

impl PageSize {
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 0x1000,
            PageSize::Size2M => 0x20_0000,
        }
    }
    pub fn log2(self) -> u8 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
        }
    }
    fn bit(self) -> u64 {
        (self == PageSize::Size2M) as u64
    }
}

/// Per-VMPL permission bits (firmware sev_rmp.h order).
pub mod vmpl_perm {
    pub const READ: u8 = 1 << 0;
    pub const WRITE: u8 = 1 << 1;
    pub const EXEC_USER: u8 = 1 << 2;
    pub const EXEC_SUPERVISOR: u8 = 1 << 3;
    /// Supervisor shadow stack.
    pub const SSS: u8 = 1 << 4;
    pub const ALL: u8 = READ | WRITE | EXEC_USER | EXEC_SUPERVISOR | SSS;
}

/// One RMP entry, every field the raw layout and the firmware's qword 1 hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmpEntry {
    pub assigned: bool,
    pub page_size: PageSize,
    pub immutable: bool,
    /// Guest physical address the page is mapped at (4 KiB aligned).
    pub gpa: u64,
    pub asid: u16,
    pub vmsa: bool,
    pub validated: bool,
    /// VMPL0..3 permission masks ([`vmpl_perm`]).
    pub vmpl: [u8; 4],
    /// Firmware bookkeeping in the Linux-reserved bits 11:3.
    pub subpage_count: u16,
    /// SEV-TIO: root port and IDE stream a page is bound to (firmware sev_rmp.h qword 1).
    pub root_port_id: u8,
    pub ide_stream_id: u8,
}

const GPA_BITS: u64 = (1 << 39) - 1;

impl RmpEntry {
    /// The entry as `struct rmpentry_raw` holds it (lo: assigned 0, pagesize 1, immutable 2,
    /// subpage_count 11:3, gpa 50:12, asid 60:51, vmsa 61, validated 62; hi: VMPL0..3 masks in
    /// bytes 0..3, root_port_id 53:49, pcie_ide_stream_id 61:54).
    pub fn to_raw(&self) -> [u8; 16] {
        let lo = self.assigned as u64
            | self.page_size.bit() << 1
            | (self.immutable as u64) << 2
            | (u64::from(self.subpage_count) & 0x1ff) << 3
            | ((self.gpa >> 12) & GPA_BITS) << 12
            | (u64::from(self.asid) & 0x3ff) << 51
            | (self.vmsa as u64) << 61
            | (self.validated as u64) << 62;
        let hi = u64::from(self.vmpl[0])
            | u64::from(self.vmpl[1]) << 8
            | u64::from(self.vmpl[2]) << 16
            | u64::from(self.vmpl[3]) << 24
            | (u64::from(self.root_port_id) & 0x1f) << 49
            | u64::from(self.ide_stream_id) << 54;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    }

    pub fn from_raw(b: &[u8; 16]) -> RmpEntry {
        let mut q = [0u8; 8];
        q.copy_from_slice(&b[..8]);
        let lo = u64::from_le_bytes(q);
        q.copy_from_slice(&b[8..]);
        let hi = u64::from_le_bytes(q);
        RmpEntry {
            assigned: lo & 1 != 0,
            page_size: if lo & 2 != 0 { PageSize::Size2M } else { PageSize::Size4K },
            immutable: lo & 4 != 0,
            subpage_count: ((lo >> 3) & 0x1ff) as u16,
            gpa: ((lo >> 12) & GPA_BITS) << 12,
            asid: ((lo >> 51) & 0x3ff) as u16,
            vmsa: lo & (1 << 61) != 0,
            validated: lo & (1 << 62) != 0,
            vmpl: [hi as u8, (hi >> 8) as u8, (hi >> 16) as u8, (hi >> 24) as u8],
            root_port_id: ((hi >> 49) & 0x1f) as u8,
            ide_stream_id: (hi >> 54) as u8,
        }
    }

    /// A hypervisor-owned page (Assigned=0, ASID=0).
    pub fn is_hypervisor(&self) -> bool {
        !self.assigned
    }

    /// A firmware (AMD-SP) page: Assigned=1, ASID=0.
    pub fn is_firmware(&self) -> bool {
        self.assigned && self.asid == 0
    }
}

/// The RMPREAD output (`struct rmpentry` of Linux, 16 bytes: u64 gpa; u8 assigned; u8 pagesize |
/// hpage_region_status << 1; u8 immutable; u8 rsvd; u32 asid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RmpReadEntry {
    pub gpa: u64,
    pub assigned: bool,
    pub page_size: PageSize,
    /// Set when any 4 KiB page of the 2 MiB region holding this page is assigned (choice:
    /// docs/rmp.md; the bit's architectural definition was not available).
    pub hpage_region_status: bool,
    pub immutable: bool,
    pub asid: u32,
}

impl RmpReadEntry {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.gpa.to_le_bytes());
        b[8] = self.assigned as u8;
        b[9] = self.page_size.bit() as u8 | (self.hpage_region_status as u8) << 1;
        b[10] = self.immutable as u8;
        b[12..].copy_from_slice(&self.asid.to_le_bytes());
        b
    }
}

/// The RMP covering system pages 0..pages (pfn = SPA >> 12), with the per-2 MiB count of assigned
/// 4 KiB pages that page-size checks need in O(1).
#[derive(Clone, Debug)]
pub struct Rmp {
    pub(crate) entries: Vec<RmpEntry>,
    pub(crate) assigned_in_2m: Vec<u16>,
    /// Pages the model marks in use (a running VMSA); RMPUPDATE and PSMASH fail with FAIL_INUSE.
    pub(crate) in_use: std::collections::BTreeSet<u64>,
    pub hazards: crate::hazard::HazardRegistry,
}

impl Rmp {
    /// An RMP covering `pages` 4 KiB pages, all hypervisor-owned.
    pub fn new(pages: u64) -> Rmp {
        let pages = pages as usize;
        Rmp {
            entries: vec![RmpEntry::default(); pages],
            assigned_in_2m: vec![0; pages.div_ceil(PTES_PER_2M as usize)],
            in_use: Default::default(),
            hazards: Default::default(),
        }
    }

    pub fn pages(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Bytes from RMP_BASE to the end of the last entry (what RMP_END - RMP_BASE + 1 must cover).
    pub fn table_bytes(pages: u64) -> u64 {
        BOOKKEEPING + pages * ENTRY_SIZE
    }

    /// Offset of a page's entry from RMP_BASE.
    pub fn entry_offset(pfn: u64) -> u64 {
        BOOKKEEPING + pfn * ENTRY_SIZE
    }

    /// The entry stored for `pfn` (for a page inside a 2 MiB page, its own, mostly unused entry).
    pub fn entry(&self, pfn: u64) -> Option<&RmpEntry> {
        self.entries.get(usize::try_from(pfn).ok()?)
    }

    /// The raw bytes of `pfn`'s entry as Linux reads them.
    pub fn raw(&self, pfn: u64) -> Option<[u8; 16]> {
        self.entry(pfn).map(RmpEntry::to_raw)
    }

    /// The entry that governs `pfn`: the 2 MiB entry at the region's start when there is one,
    /// with the GPA advanced to this page; otherwise the page's own entry.
    pub fn lookup(&self, pfn: u64) -> Option<RmpEntry> {
        let own = *self.entry(pfn)?;
        let head = *self.entry(pfn & !(PTES_PER_2M - 1))?;
        if head.page_size == PageSize::Size2M {
            let mut e = head;
            if e.assigned {
                e.gpa = head.gpa + (pfn & (PTES_PER_2M - 1)) * 0x1000;
            }
            return Some(e);
        }
        Some(own)
    }

    /// Number of assigned 4 KiB pages in the 2 MiB region holding `pfn`.
    pub fn assigned_in_region(&self, pfn: u64) -> u16 {
        self.assigned_in_2m.get((pfn / PTES_PER_2M) as usize).copied().unwrap_or(0)
    }

    /// RMPREAD of the page at `spa`; `None` outside the RMP.
    pub fn rmpread(&self, spa: u64) -> Option<RmpReadEntry> {
        let pfn = spa >> 12;
        let e = self.lookup(pfn)?;
        Some(RmpReadEntry {
            gpa: e.gpa,
            assigned: e.assigned,
            page_size: e.page_size,
            hpage_region_status: self.assigned_in_region(pfn) != 0,
            immutable: e.immutable,
            asid: u32::from(e.asid),
        })
    }

    pub(crate) fn recount(&mut self, pfn: u64) {
        let region = pfn & !(PTES_PER_2M - 1);
        let end = (region + PTES_PER_2M).min(self.pages());
        let n = (region..end).filter(|&p| self.lookup(p).is_some_and(|e| e.assigned)).count();
        if let Some(c) = self.assigned_in_2m.get_mut((region / PTES_PER_2M) as usize) {
            *c = n as u16;
        }
    }

    /// Mark a page as in use (a VMSA of a running vCPU) or not.
    pub fn set_in_use(&mut self, pfn: u64, in_use: bool) {
        if in_use {
            self.in_use.insert(pfn);
        } else {
            self.in_use.remove(&pfn);
        }
    }

    /// Firmware writes an entry directly (page states only the AMD-SP sets, such as its own
    /// pages); no checks.
    pub fn firmware_set(&mut self, pfn: u64, e: RmpEntry) -> bool {
        let Some(slot) = self.entries.get_mut(pfn as usize) else { return false };
        *slot = e;
        self.recount(pfn);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: the raw qwords Linux's rmpentry_raw bitfields give for these entries.
    #[test]
    fn raw_layout_is_bit_exact() {
        let e = RmpEntry {
            assigned: true,
            page_size: PageSize::Size2M,
            immutable: false,
            gpa: 0x1_2345_6000,
            asid: 0x155,
            vmsa: false,
            validated: true,
            vmpl: [0x1f, 0x03, 0, 0],
            ..Default::default()
        };
        let raw = e.to_raw();
        let lo = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let hi = u64::from_le_bytes(raw[8..].try_into().unwrap());
        // assigned | pagesize<<1 | (gpa>>12)<<12 | asid<<51 | validated<<62
        assert_eq!(lo, 0x1 | 0x2 | 0x1_2345_6000 | (0x155u64 << 51) | (1 << 62));
        assert_eq!(lo, 0x4aa8_0001_2345_6003);
        assert_eq!(hi, 0x031f);
        assert_eq!(RmpEntry::from_raw(&raw), e);

        let fw = RmpEntry { assigned: true, immutable: true, vmsa: true, asid: 0x3ff, ..Default::default() };
        let lo = u64::from_le_bytes(fw.to_raw()[..8].try_into().unwrap());
        assert_eq!(lo, 0x1 | 0x4 | (0x3ffu64 << 51) | (1 << 61));
        assert_eq!(lo, 0x3ff8_0000_0000_0005);
        let tio = RmpEntry { root_port_id: 0x1f, ide_stream_id: 0xff, ..Default::default() };
        let hi = u64::from_le_bytes(tio.to_raw()[8..].try_into().unwrap());
        assert_eq!(hi, 0x3ffe_0000_0000_0000);
        assert_eq!(RmpEntry::from_raw(&tio.to_raw()), tio);
    }

    #[test]
    fn rmpread_format() {
        let mut rmp = Rmp::new(1024);
        rmp.firmware_set(5, RmpEntry { assigned: true, gpa: 0x7000, asid: 3, ..Default::default() });
        let b = rmp.rmpread(5 << 12).unwrap().to_bytes();
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0x7000);
        assert_eq!((b[8], b[9], b[10]), (1, 0b10, 0), "assigned; 4K with hpage_region_status");
        assert_eq!(u32::from_le_bytes(b[12..].try_into().unwrap()), 3);
        assert_eq!(rmp.rmpread(600 << 12).unwrap().to_bytes()[9], 0, "other region");
        assert!(rmp.rmpread(1024 << 12).is_none());
        assert_eq!(Rmp::entry_offset(5), 0x4000 + 0x50);
    }
}
