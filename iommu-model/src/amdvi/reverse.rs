//! Which devices can still reach a physical page through the device table and its host (v1)
//! tables: the search a conversion to private needs when the tables belong to a driver (Linux's
//! amd_iommu builds them in its own memory, and a device may not have used a mapping yet). The
//! cost is bounded: one unit per 4 KiB read, of the device table or of a page table.

use super::dte::{DevTabBase, Dte, DTE_SIZE};
use crate::fmt::amdv1::AmdV1;
use crate::mem::PhysMem;
use crate::walk::{find_leaves_per_table, Leaf, Perm};
use std::collections::BTreeMap;

/// A device's mapping of (part of) the searched range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub devid: u16,
    pub domain_id: u16,
    pub iova: u64,
    /// Start of the mapped page and its size.
    pub spa: u64,
    pub size_log2: u8,
    /// The page's permissions ANDed with the DTE's, as a request would get them.
    pub perm: Perm,
}

/// Every mapping of `[spa, spa + len)` in the host tables of valid, translating DTEs (V=1, TV=1,
/// Mode 1 to 6). Devices sharing a table (one domain) cost one search. `Err` carries what was
/// found before the budget ran out.
pub fn mappings_of<M: PhysMem + ?Sized>(
    mem: &M,
    devtab: DevTabBase,
    spa: u64,
    len: u64,
    budget: &mut u32,
) -> Result<Vec<Mapping>, Vec<Mapping>> {
    // (root, mode) -> the devices whose DTEs point there.
    let mut domains: BTreeMap<(u64, u8), Vec<(u16, Dte)>> = BTreeMap::new();
    let per_page = 4096 / DTE_SIZE;
    let mut exhausted = false;
    'table: for page in 0..devtab.entries().div_ceil(per_page) {
        if *budget == 0 {
            exhausted = true;
            break;
        }
        *budget = budget.saturating_sub(1);
        let mut raw = [0u8; 4096];
        // base() has bits 51:12 and the table is at most 512 pages: the sum cannot wrap.
        if mem.read(devtab.base().wrapping_add(page.wrapping_mul(4096)), &mut raw).is_err() {
            break;
        }
        for (i, b) in raw.chunks_exact(DTE_SIZE as usize).enumerate() {
            let Ok(devid) = u16::try_from(page.saturating_mul(per_page).saturating_add(i as u64)) else { break 'table };
            let d = Dte::from_bytes(b.try_into().unwrap_or(&[0; 32]));
            if d.v() && d.tv() && (1..=6).contains(&d.mode()) && d.perm() != Perm::NONE {
                domains.entry((d.pt_root(), d.mode())).or_default().push((devid, d));
            }
        }
    }
    let range = spa..spa.saturating_add(len);
    let found = if exhausted { Err(Vec::new()) } else { find_leaves_per_table(&AmdV1, mem, &domains, range, budget) };
    let mappings = |pairs: Vec<((u16, Dte), Leaf)>| -> Vec<Mapping> {
        pairs
            .into_iter()
            .filter_map(|((devid, d), l)| {
                let perm = l.translation.perm.and(d.perm());
                (perm != Perm::NONE).then(|| Mapping {
                    devid,
                    domain_id: d.domain_id(),
                    iova: l.iova,
                    spa: l.translation.spa,
                    size_log2: l.translation.size_log2,
                    perm,
                })
            })
            .collect()
    };
    found.map(mappings).map_err(mappings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amdvi::builder::V1Builder;
    use crate::mem::ByteMem;

    /// Two devices in one domain, a third in another, a fourth blocked (TV=1, Mode 0, no
    /// permission), one page mapped twice in the first domain and once in the second.
    #[test]
    fn finds_every_device_and_iova_that_maps_the_page() {
        let mut mem = ByteMem::new(0, 8 << 20);
        let mut a = V1Builder::new(&mut mem, 0x10_0000, 0x20_0000, 3).unwrap();
        a.map(&mut mem, 0x5000, 0x70_0000, 12, Perm::RW).unwrap();
        a.map(&mut mem, 0x4000_0000, 0x70_0000, 12, Perm::new(true, false)).unwrap();
        a.map(&mut mem, 0x6000, 0x70_1000, 12, Perm::RW).unwrap();
        let mut b = V1Builder::new(&mut mem, 0x20_0000, 0x30_0000, 4).unwrap();
        b.map(&mut mem, 0x8000_0000, 0x60_0000, 21, Perm::RW).unwrap();
        let devtab = 0x1000u64;
        for (devid, d) in [
            (0x20u16, Dte::translated(a.root, 3, 1, Perm::RW)),
            (0x28, Dte::translated(a.root, 3, 1, Perm::RW)),
            (0x30, Dte::translated(b.root, 4, 2, Perm::RW)),
            (0x38, Dte([3, 0, 0, 0])),
        ] {
            mem.write(devtab + u64::from(devid) * 32, &d.to_bytes()).unwrap();
        }
        let mut budget = 1000;
        let found = mappings_of(&mem, DevTabBase(devtab), 0x70_0000, 0x1000, &mut budget).unwrap();
        let mut got: Vec<(u16, u64, u64, u8)> = found.iter().map(|m| (m.devid, m.iova, m.spa, m.size_log2)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                (0x20, 0x5000, 0x70_0000, 12),
                (0x20, 0x4000_0000, 0x70_0000, 12),
                (0x28, 0x5000, 0x70_0000, 12),
                (0x28, 0x4000_0000, 0x70_0000, 12),
                (0x30, 0x8000_0000, 0x60_0000, 21)
            ],
            "both devices of domain 1 at both IOVAs, and the 2 MiB page of domain 2 that covers it"
        );
        assert!(found.iter().any(|m| m.iova == 0x4000_0000 && m.perm == Perm::new(true, false)), "read-only mapping keeps its permission");
        // One device-table page and the tables of two domains (3 + 4 levels, some shared).
        assert!(budget < 1000 && budget > 980, "cost {}", 1000 - budget);
        let mut tiny = 2;
        assert!(mappings_of(&mem, DevTabBase(devtab), 0x70_0000, 0x1000, &mut tiny).is_err(), "budget exhausted is reported");
    }
}
