//! Which devices can still reach a physical page through the root table, the context entries
//! and their second-stage tables: the search a conversion to private needs when the tables
//! belong to a driver (Linux's intel_iommu builds them in its own memory, and a device may not
//! have used a mapping yet). The VT-d counterpart of `amdvi::reverse`; the cost is bounded the
//! same way, one unit per 4 KiB read of a root, context or page table.

use super::context::{self, TranslationType};
use super::root;
use super::{check_context, Caps};
use crate::mem::PhysMem;
use crate::walk::{find_leaves_per_table, Leaf, Perm};
use std::collections::BTreeMap;

/// A device's mapping of (part of) the searched range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub sid: u16,
    pub did: u16,
    pub iova: u64,
    /// Start of the mapped page and its size.
    pub spa: u64,
    pub size_log2: u8,
    pub perm: Perm,
}

/// Every mapping of `[spa, spa + len)` in the second-stage tables of the context entries that
/// translate (present, valid, TT 0 or 1) under the root table at `rtaddr`. Pass-through entries
/// reach every page and are not searched: they hold no mapping to report. Devices sharing tables
/// (one domain) cost one search. `Err` carries what was found before the budget ran out.
pub fn mappings_of<M: PhysMem + ?Sized>(
    mem: &M,
    caps: &Caps,
    rtaddr: u64,
    spa: u64,
    len: u64,
    budget: &mut u32,
) -> Result<Vec<Mapping>, Vec<Mapping>> {
    // (SSPTPTR, levels) -> the source-ids and DIDs whose context entries point there.
    let mut domains: BTreeMap<(u64, u8), Vec<(u16, u16)>> = BTreeMap::new();
    let mut exhausted = false;
    let read = |at: u64, budget: &mut u32| -> Option<Option<[u8; 4096]>> {
        if *budget == 0 {
            return None;
        }
        *budget = budget.saturating_sub(1);
        let mut page = [0u8; 4096];
        Some(mem.read(at & !0xfff, &mut page).ok().map(|()| page))
    };
    let entry = |page: &[u8; 4096], i: usize| {
        // Entry i (below 256) of a 4 KiB table of 16-byte entries.
        let e = page.chunks_exact(16).nth(i).unwrap_or(&[0; 16]);
        let q = |o: usize| u64::from_le_bytes(e.get(o..).and_then(|s| s.get(..8)).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]));
        (q(0), q(8))
    };
    'search: {
        let Some(roots) = read(rtaddr, budget) else {
            exhausted = true;
            break 'search;
        };
        let Some(roots) = roots else { break 'search };
        for bus in 0..256usize {
            let (lo, hi) = entry(&roots, bus);
            let r = root::RootEntry { lo, hi };
            if !r.present() || r.reserved_bits_set(caps.haw) {
                continue;
            }
            let Some(ctxs) = read(r.ctp(), budget) else {
                exhausted = true;
                break 'search;
            };
            let Some(ctxs) = ctxs else { continue };
            for devfn in 0..256usize {
                let (lo, hi) = entry(&ctxs, devfn);
                let c = context::ContextEntry { lo, hi };
                if check_context(caps, &c).is_err() || c.translation_type() == TranslationType::PassThrough {
                    continue;
                }
                let sid = (bus << 8 | devfn) as u16;
                domains.entry((c.ssptptr(), c.levels())).or_default().push((sid, c.did()));
            }
        }
    }
    let range = spa..spa.saturating_add(len);
    let found = if exhausted { Err(Vec::new()) } else { find_leaves_per_table(&caps.format(), mem, &domains, range, budget) };
    let mappings = |pairs: Vec<((u16, u16), Leaf)>| -> Vec<Mapping> {
        pairs
            .into_iter()
            .map(|((sid, did), l)| Mapping {
                sid,
                did,
                iova: l.iova,
                spa: l.translation.spa,
                size_log2: l.translation.size_log2,
                perm: l.translation.perm,
            })
            .collect()
    };
    found.map(mappings).map_err(mappings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fmt::vtd_ss;
    use crate::mem::ByteMem;

    fn set(mem: &mut ByteMem, at: u64, lo: u64, hi: u64) {
        mem.write_u64(at, lo).unwrap();
        mem.write_u64(at + 8, hi).unwrap();
    }

    /// 00:04.0 and 00:04.1 share domain 1 (3-level tables), 01:00.0 has domain 2 (4-level)
    /// with a 2 MiB page over the searched one, 00:05.0 is pass-through, 00:06.0 not present.
    #[test]
    fn finds_every_device_and_iova_that_maps_the_page() {
        let mut mem = ByteMem::new(0, 8 << 20);
        let caps = Caps::unit();
        let (root, ctx0, ctx1) = (0x1000, 0x2000, 0x3000);
        set(&mut mem, root, ctx0 | 1, 0);
        set(&mut mem, root + 16, ctx1 | 1, 0);
        // Domain 1: L3 0x10_0000 -> L2 0x10_1000 -> L1 0x10_2000, IOVA 0x5000 and 0x6000 on the
        // page (the second read-only).
        mem.write_u64(0x10_0000, vtd_ss::table(0x10_1000, Perm::RW)).unwrap();
        mem.write_u64(0x10_1000, vtd_ss::table(0x10_2000, Perm::RW)).unwrap();
        mem.write_u64(0x10_2000 + 5 * 8, vtd_ss::leaf(0x70_0000, Perm::RW, false)).unwrap();
        mem.write_u64(0x10_2000 + 6 * 8, vtd_ss::leaf(0x70_0000, Perm::new(true, false), false)).unwrap();
        // Domain 2: L4 0x20_0000 -> L3 0x20_1000 -> L2 2 MiB page at IOVA 0x8000_0000 (L3 index 2).
        mem.write_u64(0x20_0000, vtd_ss::table(0x20_1000, Perm::RW)).unwrap();
        mem.write_u64(0x20_1000 + 2 * 8, vtd_ss::table(0x20_2000, Perm::RW)).unwrap();
        mem.write_u64(0x20_2000, vtd_ss::leaf(0x60_0000, Perm::RW, true)).unwrap();
        for (devfn, lo, hi) in [
            (0x20u64, 0x10_0000 | 1, 1 | 1 << 8),
            (0x21, 0x10_0000 | 1, 1 | 1 << 8),
            (0x28, 2 << 2 | 1, 1 | 3 << 8),
            (0x30, 0x10_0000, 1 | 1 << 8),
        ] {
            set(&mut mem, ctx0 + devfn * 16, lo, hi);
        }
        set(&mut mem, ctx1, 0x20_0000 | 1, 2 | 2 << 8);
        let mut budget = 1000;
        let found = mappings_of(&mem, &caps, root, 0x70_0000, 0x1000, &mut budget).unwrap();
        let mut got: Vec<(u16, u16, u64, u64, u8)> = found.iter().map(|m| (m.sid, m.did, m.iova, m.spa, m.size_log2)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                (0x20, 1, 0x5000, 0x70_0000, 12),
                (0x20, 1, 0x6000, 0x70_0000, 12),
                (0x21, 1, 0x5000, 0x70_0000, 12),
                (0x21, 1, 0x6000, 0x70_0000, 12),
                (0x100, 2, 0x8000_0000, 0x60_0000, 21),
            ]
        );
        assert!(found.iter().any(|m| m.iova == 0x6000 && m.perm == Perm::new(true, false)), "read-only keeps its permission");
        // The root table, two context tables, and the tables of two domains (3 + 3 pages).
        assert_eq!(1000 - budget, 3 + 3 + 3);
        let mut tiny = 4;
        assert!(mappings_of(&mem, &caps, root, 0x70_0000, 0x1000, &mut tiny).is_err(), "budget exhausted is reported");
    }
}
