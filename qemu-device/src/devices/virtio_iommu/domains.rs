//! The virtio-iommu's domains, as the trusted side owns them: each domain's mappings are
//! materialised in AMD-Vi v1 page tables (4 levels, 48-bit input) in memory of the daemon's own,
//! never in guest RAM, so a DMA through a domain takes the same iommu-model walk as one through
//! the AMD-Vi unit. The request semantics are virtio 1.2 §5.13.6; where it says SHOULD the device
//! does it, and the choices are in docs/kernel-paths.md.

use super::proto::{map_flag, resv_mem_property, status, ATTACH_F_BYPASS, RESV_MEM_T_MSI, TAIL_LEN};
use iommu_model::amdvi::builder::{BuildError, V1Builder};
use iommu_model::amdvi::dte::Dte;
use iommu_model::amdvi::{translate::translate_with_dte, Outcome};
use iommu_model::mem::ByteMem;
use iommu_model::walk::{Access, Perm};
use std::collections::{BTreeMap, BTreeSet};

/// Page sizes offered (config page_size_mask): the v1 natural sizes 4 KiB, 2 MiB, 1 GiB.
pub const PAGE_SIZE_MASK: u64 = (1 << 12) | (1 << 21) | (1 << 30);
/// 4-level v1 tables reach 48 bits.
pub const INPUT_END: u64 = (1 << 48) - 1;
pub const MODE: u8 = 4;
/// Domain IDs offered; a domain's ID is also its DTE DomainID, 16 bits.
pub const DOMAIN_START: u32 = 1;
pub const DOMAIN_END: u32 = 0xffff;
/// Table memory one domain may use (then MAP answers NOMEM). Live domains are bounded by the
/// endpoints: a domain with no endpoint left is destroyed.
pub const TABLE_BUDGET: u64 = 16 << 20;
/// Mappings one domain may hold.
pub const MAX_MAPPINGS: usize = 1 << 18;
/// Bytes of properties a PROBE answer has room for (config probe_size).
pub const PROBE_SIZE: u32 = 512;
/// x86 MSI doorbells, reported as a RESV_MEM MSI region to every endpoint (as QEMU's
/// virtio-iommu does on x86): DMA there is an interrupt, never translated.
pub const MSI_RANGE: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Inclusive, as the requests carry it.
    pub end: u64,
    pub phys: u64,
    pub flags: u32,
}

pub struct Domain {
    pub mem: ByteMem,
    pub pt: V1Builder,
    /// By virt_start; never overlapping.
    pub mappings: BTreeMap<u64, Mapping>,
    pub endpoints: BTreeSet<u32>,
}

impl Domain {
    fn new() -> Domain {
        let mut mem = ByteMem::new(0, 0x1000);
        let pt = V1Builder::new(&mut mem, 0, TABLE_BUDGET, MODE).expect("a 4 KiB pool holds the root");
        Domain { mem, pt, mappings: BTreeMap::new(), endpoints: BTreeSet::new() }
    }

    /// The mapping that contains `iova`.
    pub fn mapping_at(&self, iova: u64) -> Option<(u64, Mapping)> {
        self.mappings.range(..=iova).next_back().filter(|(_, m)| m.end >= iova).map(|(&s, &m)| (s, m))
    }

    /// One page into the tables, splitting it where an older table sits where its leaf would go
    /// (V1Builder keeps emptied tables). The ByteMem grows to what the next tables may need.
    fn map_page(&mut self, iova: u64, phys: u64, size_log2: u8, perm: Perm) -> Result<(), BuildError> {
        // At most MODE - 1 new tables for one page.
        let want = self.pt.used().saturating_add(0x1000 * u64::from(MODE)).min(TABLE_BUDGET) as usize;
        if self.mem.bytes.len() < want {
            self.mem.bytes.resize(want, 0);
        }
        match self.pt.map(&mut self.mem, iova, phys, size_log2, perm) {
            Err(BuildError::Overlap) if size_log2 > 12 => {
                // A 2 MiB or 1 GiB page inside a mapping MAP checked not to wrap.
                let sub = size_log2.saturating_sub(9);
                for i in 0..512u64 {
                    self.map_page(iova.wrapping_add(i << sub), phys.wrapping_add(i << sub), sub, perm)?;
                }
                Ok(())
            }
            r => r,
        }
    }

    fn unmap_pages(&mut self, start: u64, m: &Mapping) {
        // The same pages the MAP wrote; a page split on the way in is cleared at its PDE, which
        // only this mapping used (mappings do not overlap).
        for (iova, _, size_log2) in pages(start, m.end, m.phys) {
            let _ = self.pt.unmap(&mut self.mem, iova, size_log2);
        }
    }

    fn map(&mut self, start: u64, m: Mapping) -> u8 {
        let perm = Perm { read: m.flags & map_flag::READ != 0, write: m.flags & map_flag::WRITE != 0 };
        let mut done = start;
        for (iova, phys, size_log2) in pages(start, m.end, m.phys) {
            if let Err(e) = self.map_page(iova, phys, size_log2, perm) {
                // Nothing of a refused MAP stays mapped.
                if done > start {
                    self.unmap_pages(start, &Mapping { end: done.wrapping_sub(1), ..m });
                }
                crate::warn_limited!("virtio-iommu: MAP {start:#x}..={:#x} failed at {iova:#x}: {e:?}", m.end);
                return match e {
                    BuildError::OutOfTables => status::NOMEM,
                    _ => status::DEVERR,
                };
            }
            done = iova.saturating_add(1u64 << size_log2);
        }
        self.mappings.insert(start, m);
        status::OK
    }
}

/// The largest v1 pages covering `[start, end]` from `phys`: 1 GiB and 2 MiB where both sides
/// are aligned and the rest of the range holds one, else 4 KiB.
fn pages(start: u64, end: u64, phys: u64) -> impl Iterator<Item = (u64, u64, u8)> {
    let mut iova = start;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || iova > end {
            return None;
        }
        // start <= iova <= end here, and MAP checked phys + (end - start) fits.
        let pa = phys.wrapping_add(iova.wrapping_sub(start));
        let left = end.wrapping_sub(iova);
        let size_log2 = [30u8, 21, 12]
            .into_iter()
            .find(|&s| (iova | pa) & (1u64 << s).wrapping_sub(1) == 0 && left >= (1u64 << s).wrapping_sub(1))
            .unwrap_or(12);
        let item = (iova, pa, size_log2);
        match iova.checked_add(1 << size_log2) {
            Some(n) => iova = n,
            None => done = true,
        }
        Some(item)
    })
}

/// The device's state: domains, which endpoint is attached where, and the endpoints it
/// translates (those the VIOT puts behind it; endpoint ID = PCI requester ID).
#[derive(Default)]
pub struct Domains {
    pub domains: BTreeMap<u32, Domain>,
    pub attached: BTreeMap<u32, u32>,
    pub endpoints: BTreeSet<u32>,
    /// Pages mapped and unmapped through requests, for the event stream and docs.
    pub mapped_pages: u64,
}

impl Domains {
    pub fn new(endpoints: impl IntoIterator<Item = u32>) -> Domains {
        Domains { endpoints: endpoints.into_iter().collect(), ..Default::default() }
    }

    fn detach_from(&mut self, domain: u32, endpoint: u32) {
        self.attached.remove(&endpoint);
        if let Some(d) = self.domains.get_mut(&domain) {
            d.endpoints.remove(&endpoint);
            // A domain without endpoints is destroyed with its mappings, as QEMU's device does and
            // Linux's driver expects (it replays mappings on the next attach: viommu_attach_dev).
            if d.endpoints.is_empty() {
                self.domains.remove(&domain);
            }
        }
    }

    /// Every mapping of a domain with endpoints attached that reaches the physical range
    /// `[spa, spa + len)`: (endpoint, the first address in range as IOVA and as SPA, writable).
    /// The daemon owns these tables, so it knows every mapping a device could use, not only those
    /// walked so far.
    pub fn mappers_of(&self, spa: u64, len: u64) -> Vec<(u32, u64, u64, bool)> {
        let mut out = Vec::new();
        for d in self.domains.values().filter(|d| !d.endpoints.is_empty()) {
            for (&start, m) in &d.mappings {
                let phys_end = m.phys.saturating_add(m.end.saturating_sub(start));
                if m.phys >= spa.saturating_add(len) || phys_end < spa {
                    continue;
                }
                let first = spa.max(m.phys);
                let iova = start.wrapping_add(first.wrapping_sub(m.phys));
                out.extend(d.endpoints.iter().map(|&e| (e, iova, first, m.flags & map_flag::WRITE != 0)));
            }
        }
        out
    }

    /// ATTACH (§5.13.6.3).
    pub fn attach(&mut self, domain: u32, endpoint: u32, flags: u32) -> u8 {
        if !(DOMAIN_START..=DOMAIN_END).contains(&domain) {
            return status::RANGE;
        }
        if !self.endpoints.contains(&endpoint) {
            return status::NOENT;
        }
        // Bypass domains need VIRTIO_IOMMU_F_BYPASS_CONFIG, which is not offered.
        if flags & !ATTACH_F_BYPASS != 0 || flags & ATTACH_F_BYPASS != 0 {
            return status::INVAL;
        }
        if let Some(&old) = self.attached.get(&endpoint) {
            if old == domain {
                return status::OK;
            }
            self.detach_from(old, endpoint);
        }
        self.domains.entry(domain).or_insert_with(Domain::new).endpoints.insert(endpoint);
        self.attached.insert(endpoint, domain);
        status::OK
    }

    /// DETACH (§5.13.6.4).
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> u8 {
        if !self.endpoints.contains(&endpoint) {
            return status::NOENT;
        }
        if !self.domains.contains_key(&domain) {
            return status::NOENT;
        }
        if self.attached.get(&endpoint) != Some(&domain) {
            return status::INVAL;
        }
        self.detach_from(domain, endpoint);
        status::OK
    }

    /// MAP (§5.13.6.6).
    pub fn map(&mut self, domain: u32, virt_start: u64, virt_end: u64, phys_start: u64, flags: u32) -> u8 {
        let Some(d) = self.domains.get_mut(&domain) else { return status::NOENT };
        if flags & !(map_flag::READ | map_flag::WRITE | map_flag::MMIO) != 0 || flags & map_flag::MMIO != 0 {
            // MMIO mappings need VIRTIO_IOMMU_F_MMIO, not offered.
            return status::INVAL;
        }
        let granule = 0xfff;
        if virt_start > virt_end || virt_start & granule != 0 || phys_start & granule != 0 || virt_end & granule != granule {
            return status::RANGE;
        }
        let len_m1 = virt_end.wrapping_sub(virt_start);
        if virt_end > INPUT_END || phys_start.checked_add(len_m1).is_none_or(|e| e >> 52 != 0) {
            return status::RANGE;
        }
        let overlaps = d.mappings.range(..=virt_end).next_back().is_some_and(|(_, m)| m.end >= virt_start);
        if overlaps {
            return status::INVAL;
        }
        if d.mappings.len() >= MAX_MAPPINGS {
            return status::NOMEM;
        }
        let st = d.map(virt_start, Mapping { end: virt_end, phys: phys_start, flags });
        if st == status::OK {
            // Counts up to 2^64 - 1 and stays there (2^36 pages per whole-range MAP).
            self.mapped_pages = self.mapped_pages.saturating_add((len_m1 >> 12).saturating_add(1));
        }
        st
    }

    /// UNMAP (§5.13.6.7): every mapping wholly inside the range goes; one that is only partly
    /// inside stays, and the answer is RANGE.
    pub fn unmap(&mut self, domain: u32, virt_start: u64, virt_end: u64) -> u8 {
        let Some(d) = self.domains.get_mut(&domain) else { return status::NOENT };
        if virt_start > virt_end {
            return status::INVAL;
        }
        let hit: Vec<(u64, Mapping)> =
            d.mappings.range(..=virt_end).rev().take_while(|(_, m)| m.end >= virt_start).map(|(&s, &m)| (s, m)).collect();
        // take_while stops at the first mapping wholly below the range: the map is ordered and
        // mappings do not overlap.
        let mut st = status::OK;
        for (s, m) in hit {
            if s < virt_start || m.end > virt_end {
                st = status::RANGE;
                continue;
            }
            d.unmap_pages(s, &m);
            d.mappings.remove(&s);
        }
        st
    }

    /// PROBE (§5.13.6.8): the properties into `props` (probe_size bytes, zero-filled: a NONE
    /// property ends the list).
    pub fn probe(&self, endpoint: u32, props: &mut [u8]) -> u8 {
        if !self.endpoints.contains(&endpoint) {
            return status::NOENT;
        }
        props.fill(0);
        let p = resv_mem_property(RESV_MEM_T_MSI, MSI_RANGE.0, MSI_RANGE.1);
        if props.len() < p.len() {
            return status::INVAL;
        }
        props[..p.len()].copy_from_slice(&p);
        status::OK
    }

    /// The domain `endpoint` is attached to, with the DTE that walks its tables.
    pub fn domain_of(&self, endpoint: u32) -> Option<(u32, &Domain)> {
        let id = *self.attached.get(&endpoint)?;
        Some((id, self.domains.get(&id)?))
    }

    /// Whether `endpoint` is attached to a domain: its DMA is this device's to translate.
    pub fn translates(&self, endpoint: u16) -> bool {
        self.domain_of(u32::from(endpoint)).is_some()
    }

    /// Translate a DMA of `endpoint` through its domain's tables with the iommu-model walk;
    /// `None` when the endpoint is attached to no domain.
    pub fn translate(&self, endpoint: u32, iova: u64, access: Access) -> Option<Outcome> {
        let (id, d) = self.domain_of(endpoint)?;
        let dte = Dte::translated(d.pt.root, MODE, id as u16, Perm::RW);
        Some(translate_with_dte(&d.mem, &dte, endpoint as u16, iova, access))
    }
}

/// The answer's length for a writable part of `writable` bytes: the tail at its end.
pub fn reply_len(writable: usize) -> Option<usize> {
    (writable >= TAIL_LEN).then_some(writable.min((PROBE_SIZE as usize).saturating_add(TAIL_LEN)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: u32 = 0x20;

    fn spa(d: &Domains, iova: u64, access: Access) -> Result<u64, String> {
        match d.translate(EP, iova, access) {
            Some(Outcome::Ok(t)) => Ok(t.spa),
            Some(Outcome::Fault { event, .. }) => Err(event.name().to_string()),
            None => Err("unattached".into()),
        }
    }

    #[test]
    fn map_translate_unmap() {
        let mut d = Domains::new([EP]);
        assert_eq!(d.map(1, 0, 0xfff, 0, 3), status::NOENT, "no domain before an attach");
        assert_eq!(d.attach(1, 0x99, 0), status::NOENT);
        assert_eq!(d.attach(0, EP, 0), status::RANGE);
        assert_eq!(d.attach(1, EP, ATTACH_F_BYPASS), status::INVAL);
        assert_eq!(d.attach(1, EP, 0), status::OK);
        assert_eq!(spa(&d, 0x1000, Access::Read), Err("IO_PAGE_FAULT".into()));
        assert_eq!(d.map(1, 0x10_0000, 0x10_0fff, 0x5000, map_flag::READ), status::OK);
        assert_eq!(spa(&d, 0x10_0123, Access::Read), Ok(0x5123));
        assert_eq!(spa(&d, 0x10_0123, Access::Write), Err("IO_PAGE_FAULT".into()), "read-only mapping");
        assert_eq!(d.map(1, 0x10_0000, 0x10_1fff, 0x9000, 3), status::INVAL, "overlap");
        assert_eq!(d.map(1, 0x20_0800, 0x20_0fff, 0, 3), status::RANGE, "unaligned");
        assert_eq!(d.map(1, 0x20_0000, 0x20_0ffe, 0, 3), status::RANGE, "end not at a page end");
        assert_eq!(d.map(1, 1 << 48, (1 << 48) + 0xfff, 0, 3), status::RANGE, "past input_range");
        assert_eq!(d.map(1, 0x30_0000, 0x30_0fff, 0, map_flag::MMIO | 1), status::INVAL);
        // A 1 GiB + 2 MiB + 4 KiB range is materialised with the largest pages that fit.
        let (s, e) = (0x4000_0000, 0x4000_0000 + (1 << 30) + (2 << 20) + 0xfff);
        assert_eq!(d.map(1, s, e, 0x8000_0000, 3), status::OK);
        assert_eq!(spa(&d, s + (1 << 30) + (2 << 20) + 0x10, Access::Write), Ok(0x8000_0000 + (1 << 30) + (2 << 20) + 0x10));
        assert_eq!(spa(&d, e + 1, Access::Read), Err("IO_PAGE_FAULT".into()));
        // Root, the 4 KiB mapping's L3/L2/L1, then a 1 GiB leaf in that L3 and one L2 and one L1
        // for the 2 MiB and 4 KiB tails: no table per 4 KiB page of the large range.
        assert_eq!(d.domain_of(EP).unwrap().1.pt.used(), 6 * 0x1000);
        // UNMAP of a range that only partly covers a mapping leaves it; one that covers it removes it.
        assert_eq!(d.unmap(1, s, s + 0xfff), status::RANGE);
        assert_eq!(spa(&d, s, Access::Read), Ok(0x8000_0000));
        assert_eq!(d.unmap(1, 0, INPUT_END), status::OK);
        assert_eq!(spa(&d, s, Access::Read), Err("IO_PAGE_FAULT".into()));
        assert_eq!(spa(&d, 0x10_0000, Access::Read), Err("IO_PAGE_FAULT".into()));
        assert!(d.domain_of(EP).unwrap().1.mappings.is_empty());
        assert_eq!(d.unmap(1, 0, 0xfff), status::OK, "nothing there is not an error");
        // 4 KiB mappings left tables behind at 2 MiB: a 2 MiB map over them is split, not refused.
        assert_eq!(d.map(1, 0x10_0000, 0x10_0fff, 0x5000, 3), status::OK);
        assert_eq!(d.unmap(1, 0x10_0000, 0x10_0fff), status::OK);
        assert_eq!(d.map(1, 0, 0x1f_ffff, 0x20_0000, 3), status::OK);
        assert_eq!(spa(&d, 0x10_0008, Access::Read), Ok(0x30_0008));
        assert_eq!(d.unmap(1, 0, 0x1f_ffff), status::OK);
        assert_eq!(spa(&d, 0x10_0008, Access::Read), Err("IO_PAGE_FAULT".into()));
    }

    #[test]
    fn attach_moves_and_destroys_domains() {
        let mut d = Domains::new([EP, 0x28]);
        assert_eq!(d.attach(1, EP, 0), status::OK);
        assert_eq!(d.map(1, 0, 0xfff, 0x1000, 3), status::OK);
        assert_eq!(d.attach(1, 0x28, 0), status::OK);
        assert_eq!(d.attach(2, EP, 0), status::OK, "moves, domain 1 keeps 0x28");
        assert!(d.domains[&1].mapping_at(0).is_some());
        assert_eq!(spa(&d, 0, Access::Read), Err("IO_PAGE_FAULT".into()), "domain 2 is empty");
        assert_eq!(d.detach(1, EP), status::INVAL, "not attached there");
        assert_eq!(d.detach(3, EP), status::NOENT);
        assert_eq!(d.detach(1, 0x28), status::OK);
        assert!(!d.domains.contains_key(&1), "last endpoint gone: the domain is destroyed");
        assert_eq!(d.map(1, 0, 0xfff, 0, 3), status::NOENT);
        assert_eq!(d.detach(2, EP), status::OK);
        assert_eq!(d.translate(EP, 0, Access::Read), None);
    }

    #[test]
    fn hostile_ranges_are_bounded() {
        let mut d = Domains::new([EP]);
        d.attach(1, EP, 0);
        // Misaligned sides make every page 4 KiB: the table budget runs out, NOMEM, nothing stays.
        let t = std::time::Instant::now();
        assert_eq!(d.map(1, 0, INPUT_END, 0x1000, 3), status::NOMEM);
        assert!(d.domains[&1].mappings.is_empty());
        assert_eq!(spa(&d, 0, Access::Read), Err("IO_PAGE_FAULT".into()));
        assert!(d.domains[&1].mem.bytes.len() as u64 <= TABLE_BUDGET);
        tracing::info!("NOMEM after {:?}", t.elapsed());
        assert_eq!(d.map(1, 0, 0xfff, !0xfff, 3), status::RANGE, "phys past 52 bits");
        assert_eq!(d.map(1, 0x2000, 0x1fff, 0, 3), status::RANGE);
        let mut props = [0u8; 64];
        assert_eq!(d.probe(EP, &mut props), status::OK);
        assert_eq!(u16::from_le_bytes([props[0], props[1]]), 1);
        assert_eq!(u64::from_le_bytes(props[8..16].try_into().unwrap()), MSI_RANGE.0);
        assert_eq!(&props[24..28], &[0; 4], "NONE ends the list");
        assert_eq!(d.probe(7, &mut props), status::NOENT);
    }
}
