//! RMP entries and the table (AMD APM vol. 2 §15.36.3; layouts as Linux arch/x86/virt/svm/sev.c
//! decodes them: `struct rmpentry_raw` for the in-memory entry of Zen3/Zen4, `struct rmpentry` for
//! the RMPREAD output; the fields Linux leaves opaque as AMD's published firmware
//! fw/psp_bl_uapps/sev_uapp/src/sev_rmp.h names them).
//!
//! The entries of the RMP live at RMP_BASE + 16 KiB + pfn * 16 (the first 16 KiB is processor
//! bookkeeping: 2048 per-ASID u64 counters, sev_rmp.h `rmp_asid_counters`). [`Rmp`] keeps them as
//! data and renders any one, and the bookkeeping area, in the raw layout, so a daemon can mirror
//! them into guest memory and a guest or a memory dump can read them as Linux does.
//!
//! Invariants of the table (docs/rmp.md "2 MiB pages"): every one of the 512 entries of a 2 MiB
//! page carries the page's state with Page_Size = 1 and its own GPA (base + i * 4 KiB), so Linux's
//! pre-RMPREAD lookup (the page's own entry, the level from the 2 MiB-aligned one) reads what
//! RMPREAD answers; and the 2 MiB-aligned entry's subpage_count is the number of its 511
//! followers assigned as 4 KiB pages (the count x86 microcode keeps, sev_rmp.c
//! set_rmp_sub_page_count), which is what makes the 2 MiB checks O(1).

/// RMPTABLE_CPU_BOOKKEEPING_SZ in Linux.
pub const BOOKKEEPING: u64 = 0x4000;
pub const ENTRY_SIZE: u64 = 16;
/// The raw layout has 10 ASID bits.
pub const MAX_ASID: u16 = 0x3ff;
/// 4 KiB entries per 2 MiB page.
pub const PTES_PER_2M: u64 = 512;
/// Per-ASID counters in the bookkeeping area (sev_rmp.h RMP_NUM_ASID_COUNTERS).
pub const ASID_COUNTERS: usize = 2048;
/// 4 KiB pages per 1 GiB.
pub const PAGES_PER_1G: u64 = 1 << 18;
/// Largest RMP the model builds: 2^28 pages (1 TiB of system memory, 4 GiB of entries).
pub const MAX_PAGES: u64 = 1 << 28;

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
    /// Number of 4 KiB entries a page of this size spans.
    pub fn pages(self) -> u64 {
        self.bytes() >> 12
    }
    fn bit(self) -> u64 {
        (self == PageSize::Size2M) as u64
    }
}

/// Per-VMPL permission bits (sev_rmp.h `vmpl_perm_mask`).
pub mod vmpl_perm {
    pub const READ: u8 = 1 << 0;
    pub const WRITE: u8 = 1 << 1;
    pub const EXEC_USER: u8 = 1 << 2;
    pub const EXEC_SUPERVISOR: u8 = 1 << 3;
    /// Supervisor shadow stack.
    pub const SSS: u8 = 1 << 4;
    pub const ALL: u8 = READ | WRITE | EXEC_USER | EXEC_SUPERVISOR | SSS;
}

/// One RMP entry: every field of the raw layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmpEntry {
    pub assigned: bool,
    pub page_size: PageSize,
    pub immutable: bool,
    /// Guest physical address the page is mapped at (4 KiB aligned, 51:12).
    pub gpa: u64,
    pub asid: u16,
    pub vmsa: bool,
    pub validated: bool,
    /// Firmware pages are locked as well as immutable (sev_rmp.c RMP_ENTRY_VAL_FIRMWARE).
    pub lock: bool,
    /// VMPL0..3 permission masks ([`vmpl_perm`]).
    pub vmpl: [u8; 4],
    /// Kept in the 2 MiB-aligned entry only: followers assigned as 4 KiB pages (Linux-reserved
    /// bits 11:3).
    pub subpage_count: u16,
    /// 0 = non-persistent key, 1 = persistent key.
    pub implicit_key_select: bool,
    /// SEV-TIO: root port and IDE stream a page is bound to.
    pub root_port_id: u8,
    pub ide_stream_id: u8,
    /// The page is being migrated by the PSP (2 bits).
    pub page_migration: u8,
}

const GPA_BITS: u64 = (1 << 39) - 1;

fn qword(b: &[u8]) -> u64 {
    let mut q = [0u8; 8];
    q.copy_from_slice(&b[..8]);
    u64::from_le_bytes(q)
}

impl RmpEntry {
    /// The entry as `struct rmpentry_raw` holds it. lo: assigned 0, pagesize 1, immutable 2,
    /// subpage_count 11:3, gpa 50:12, asid 60:51, vmsa 61, validated 62, lock 63. hi: VMPL0..3
    /// masks in bytes 0..3, implicit_key_select 32, root_port_id 53:49, pcie_ide_stream_id
    /// 61:54, page_migration 63:62 (sev_rmp.h rmp_quadword1/2).
    pub fn to_raw(&self) -> [u8; 16] {
        let lo = self.assigned as u64
            | self.page_size.bit() << 1
            | (self.immutable as u64) << 2
            | (u64::from(self.subpage_count) & 0x1ff) << 3
            | ((self.gpa >> 12) & GPA_BITS) << 12
            | (u64::from(self.asid) & 0x3ff) << 51
            | (self.vmsa as u64) << 61
            | (self.validated as u64) << 62
            | (self.lock as u64) << 63;
        let hi = u64::from(self.vmpl[0])
            | u64::from(self.vmpl[1]) << 8
            | u64::from(self.vmpl[2]) << 16
            | u64::from(self.vmpl[3]) << 24
            | (self.implicit_key_select as u64) << 32
            | (u64::from(self.root_port_id) & 0x1f) << 49
            | u64::from(self.ide_stream_id) << 54
            | (u64::from(self.page_migration) & 3) << 62;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    }

    /// Decode raw bytes (any bytes: reserved bits are ignored).
    pub fn from_raw(b: &[u8; 16]) -> RmpEntry {
        let lo = qword(&b[..8]);
        let hi = qword(&b[8..]);
        RmpEntry {
            assigned: lo & 1 != 0,
            page_size: if lo & 2 != 0 { PageSize::Size2M } else { PageSize::Size4K },
            immutable: lo & 4 != 0,
            subpage_count: ((lo >> 3) & 0x1ff) as u16,
            gpa: ((lo >> 12) & GPA_BITS) << 12,
            asid: ((lo >> 51) & 0x3ff) as u16,
            vmsa: lo & (1 << 61) != 0,
            validated: lo & (1 << 62) != 0,
            lock: lo & (1 << 63) != 0,
            vmpl: [hi as u8, (hi >> 8) as u8, (hi >> 16) as u8, (hi >> 24) as u8],
            implicit_key_select: hi & (1 << 32) != 0,
            root_port_id: ((hi >> 49) & 0x1f) as u8,
            ide_stream_id: (hi >> 54) as u8,
            page_migration: (hi >> 62) as u8,
        }
    }

    /// A hypervisor-owned page (Assigned=0).
    pub fn is_hypervisor(&self) -> bool {
        !self.assigned
    }

    /// A firmware (AMD-SP) page: Assigned=1, ASID=0.
    pub fn is_firmware(&self) -> bool {
        self.assigned && self.asid == 0
    }

    /// A firmware page as SNP_INIT makes them (sev_rmp.c SNP_PAGE_STATE_FIRMWARE).
    pub fn firmware() -> RmpEntry {
        RmpEntry { assigned: true, immutable: true, lock: true, ..Default::default() }
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

    pub fn from_bytes(b: &[u8; 16]) -> RmpReadEntry {
        RmpReadEntry {
            gpa: qword(&b[..8]),
            assigned: b[8] & 1 != 0,
            page_size: if b[9] & 1 != 0 { PageSize::Size2M } else { PageSize::Size4K },
            hpage_region_status: b[9] & 2 != 0,
            immutable: b[10] & 1 != 0,
            asid: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

/// The RMP covering system pages 0..pages (pfn = SPA >> 12).
#[derive(Clone, Debug)]
pub struct Rmp {
    pub(crate) entries: Vec<RmpEntry>,
    /// Pages assigned to each ASID (4 KiB units), the bookkeeping area's counters.
    pub(crate) asid_pages: Vec<u64>,
    /// Assigned 4 KiB entries per 1 GiB of system memory, so the size rule of a 1 GiB I/O
    /// mapping reads one counter instead of 512 2 MiB entries.
    pub(crate) assigned_in_1g: Vec<u32>,
    /// Pages the model marks in use (a running VMSA); RMPUPDATE and PSMASH fail with FAIL_INUSE.
    pub(crate) in_use: std::collections::BTreeSet<u64>,
    pub hazards: crate::hazard::HazardRegistry,
}

impl Rmp {
    /// An RMP covering `pages` 4 KiB pages (at most [`MAX_PAGES`]), all hypervisor-owned.
    pub fn new(pages: u64) -> Rmp {
        let pages = pages.min(MAX_PAGES) as usize;
        Rmp {
            entries: vec![RmpEntry::default(); pages],
            asid_pages: vec![0; ASID_COUNTERS],
            assigned_in_1g: vec![0; pages.div_ceil(PAGES_PER_1G as usize)],
            in_use: Default::default(),
            hazards: Default::default(),
        }
    }

    pub fn pages(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Bytes from RMP_BASE to the end of the last entry (what RMP_END - RMP_BASE + 1 must cover).
    pub fn table_bytes(pages: u64) -> u64 {
        BOOKKEEPING.saturating_add(pages.saturating_mul(ENTRY_SIZE))
    }

    /// Offset of a page's entry from RMP_BASE (saturating: no page past 2^60 has an entry).
    pub fn entry_offset(pfn: u64) -> u64 {
        BOOKKEEPING.saturating_add(pfn.saturating_mul(ENTRY_SIZE))
    }

    /// The entry of `pfn`; `None` outside the RMP. Inside a 2 MiB page every entry carries the
    /// page's state (module doc), so this is also the entry that governs the page.
    pub fn entry(&self, pfn: u64) -> Option<&RmpEntry> {
        self.entries.get(usize::try_from(pfn).ok()?)
    }

    /// The raw bytes of `pfn`'s entry as Linux reads them.
    pub fn raw(&self, pfn: u64) -> Option<[u8; 16]> {
        self.entry(pfn).map(RmpEntry::to_raw)
    }

    /// The 16 KiB bookkeeping area as the model fills it: counter i (u64 at 8 * i) = 4 KiB pages
    /// assigned to ASID i (choice: docs/rmp.md; sev_rmp.c only reads them).
    pub fn bookkeeping_raw(&self) -> Vec<u8> {
        self.asid_pages.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    /// Any byte range of the RMP image (bookkeeping, then entries) from `offset` past RMP_BASE:
    /// what a guest reading the table at RMP_BASE + offset sees. Bytes past the last entry are 0.
    pub fn read_image(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = if at < BOOKKEEPING {
                let c = self.asid_pages[(at / 8) as usize];
                c.to_le_bytes()[(at % 8) as usize]
            } else {
                let rel = at.wrapping_sub(BOOKKEEPING);
                self.raw(rel / ENTRY_SIZE).map_or(0, |r| r[(rel % ENTRY_SIZE) as usize])
            };
        }
    }

    /// The RMP an image of the table holds (bytes from RMP_BASE, as [`Rmp::read_image`] renders
    /// them or a dump of guest memory holds them): one entry per whole 16 bytes after the
    /// bookkeeping area. The counters (the bookkeeping area, each 2 MiB head's subpage_count) are
    /// recounted from the entries, not read, so they are what the entries say.
    pub fn from_image(image: &[u8]) -> Rmp {
        let entries = image.get(BOOKKEEPING as usize..).unwrap_or_default();
        let mut rmp = Rmp::new((entries.len() as u64) / ENTRY_SIZE);
        for (pfn, raw) in entries.chunks_exact(ENTRY_SIZE as usize).take(rmp.entries.len()).enumerate() {
            let mut b = [0u8; 16];
            b.copy_from_slice(raw);
            let e = RmpEntry::from_raw(&b);
            if e != RmpEntry::default() {
                rmp.put(pfn as u64, e);
            }
        }
        rmp
    }

    /// The entry that governs `pfn` (its own entry; see [`Rmp::entry`]).
    pub fn lookup(&self, pfn: u64) -> Option<RmpEntry> {
        self.entry(pfn).copied()
    }

    /// Number of assigned 4 KiB pages in the 2 MiB region holding `pfn`.
    pub fn assigned_in_region(&self, pfn: u64) -> u16 {
        let Some(head) = self.entry(pfn & !(PTES_PER_2M - 1)) else { return 0 };
        if head.page_size == PageSize::Size2M && head.assigned {
            return PTES_PER_2M as u16;
        }
        head.subpage_count.saturating_add(u16::from(head.assigned))
    }

    /// Number of assigned 4 KiB pages in the 1 GiB of system memory holding `pfn`.
    pub fn assigned_in_1g(&self, pfn: u64) -> u32 {
        self.assigned_in_1g.get((pfn / PAGES_PER_1G) as usize).copied().unwrap_or(0)
    }

    /// Pages assigned to `asid` (the bookkeeping counter).
    pub fn asid_pages(&self, asid: u16) -> u64 {
        self.asid_pages.get(usize::from(asid)).copied().unwrap_or(0)
    }

    /// RMPREAD of the page at `spa`; `None` outside the RMP.
    pub fn rmpread(&self, spa: u64) -> Option<RmpReadEntry> {
        let pfn = spa >> 12;
        let e = self.entry(pfn)?;
        Some(RmpReadEntry {
            gpa: e.gpa,
            assigned: e.assigned,
            page_size: e.page_size,
            hpage_region_status: self.assigned_in_region(pfn) != 0,
            immutable: e.immutable,
            asid: u32::from(e.asid),
        })
    }

    /// Store `e` as the entry of `pfn`, keeping the 2 MiB-aligned entry's subpage_count and the
    /// ASID counters true. The caller checked `pfn` is inside the RMP.
    pub(crate) fn put(&mut self, pfn: u64, mut e: RmpEntry) {
        let i = pfn as usize;
        let old = self.entries[i];
        let head = pfn & !(PTES_PER_2M - 1);
        if let Some(c) = self.asid_pages.get_mut(usize::from(old.asid)).filter(|_| old.assigned) {
            *c = c.saturating_sub(1);
        }
        if let Some(c) = self.asid_pages.get_mut(usize::from(e.asid)).filter(|_| e.assigned) {
            *c = c.saturating_add(1);
        }
        if old.assigned != e.assigned {
            let c = &mut self.assigned_in_1g[(pfn / PAGES_PER_1G) as usize];
            *c = if e.assigned { c.saturating_add(1) } else { c.saturating_sub(1) };
        }
        if pfn == head {
            e.subpage_count = old.subpage_count;
        } else {
            e.subpage_count = 0;
            let was = old.assigned && old.page_size == PageSize::Size4K;
            let is = e.assigned && e.page_size == PageSize::Size4K;
            let hc = &mut self.entries[head as usize].subpage_count;
            *hc = hc.saturating_add(u16::from(is)).saturating_sub(u16::from(was));
        }
        self.entries[i] = e;
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
    /// pages); no checks. A 2 MiB entry must be 2 MiB aligned and is written to its 512 entries
    /// with consecutive GPAs. False if the page is outside the RMP or misaligned.
    pub fn firmware_set(&mut self, pfn: u64, e: RmpEntry) -> bool {
        let n = e.page_size.pages();
        if pfn & n.wrapping_sub(1) != 0 || pfn.saturating_add(n) > self.pages() || usize::from(e.asid) >= ASID_COUNTERS {
            return false;
        }
        // A 4 KiB entry inside a 2 MiB page splits the page first, as PSMASH would, so every
        // 2 MiB page keeps its 512 entries alike.
        let head = pfn & !(PTES_PER_2M - 1);
        if e.page_size == PageSize::Size4K && self.entries[pfn as usize].page_size == PageSize::Size2M {
            for p in head..head.saturating_add(PTES_PER_2M).min(self.pages()) {
                let s = RmpEntry { page_size: PageSize::Size4K, ..self.entries[p as usize] };
                self.put(p, s);
            }
        }
        for i in 0..n {
            let mut s = e;
            if e.assigned {
                s.gpa = e.gpa.wrapping_add(i << 12) & (GPA_BITS << 12);
            }
            self.put(pfn.saturating_add(i), s);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image rendered by read_image comes back as the same table, counters recounted.
    #[test]
    fn from_image_round_trips() {
        let mut rmp = Rmp::new(2048);
        let private = RmpEntry { assigned: true, asid: 5, validated: true, gpa: 0x7000, ..Default::default() };
        assert!(rmp.firmware_set(0x203, private));
        assert!(rmp.firmware_set(0x400, RmpEntry { page_size: PageSize::Size2M, gpa: 0x20_0000, ..private }));
        assert!(rmp.firmware_set(7, RmpEntry::firmware()));
        let mut image = vec![0u8; Rmp::table_bytes(rmp.pages()) as usize];
        rmp.read_image(0, &mut image);
        let back = Rmp::from_image(&image);
        assert_eq!(back.pages(), 2048);
        for pfn in 0..2048 {
            assert_eq!(back.entry(pfn), rmp.entry(pfn), "pfn {pfn:#x}");
        }
        assert_eq!(back.asid_pages(5), 513);
        assert_eq!(back.assigned_in_region(0x200), 1);
        assert_eq!(back.assigned_in_region(0x5ff), 512);
        // A short image: the whole entries it holds, none past them.
        assert_eq!(Rmp::from_image(&image[..BOOKKEEPING as usize + 40]).pages(), 2);
        assert_eq!(Rmp::from_image(&image[..100]).pages(), 0);
    }

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
