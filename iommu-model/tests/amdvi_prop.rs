//! Properties of AMD-Vi v1 translation: any set of non-overlapping mappings written by the
//! reference builder translates back exactly, for every mode 1-6 and every page size the mode
//! reaches, and what is not mapped faults; a PDE that skips levels translates as the full walk
//! would when the skipped IOVA bits are zero and faults when they are not; and tables of random
//! entries pointing into each other (self-references and loops included) end every walk within
//! Mode reads.

use iommu_model::amdvi::builder::V1Builder;
use iommu_model::amdvi::dte::{DevTabBase, Dte};
use iommu_model::amdvi::event;
use iommu_model::amdvi::{translate, Outcome};
use iommu_model::fmt::amdv1::{pde, pte, AmdV1};
use iommu_model::mem::{ByteMem, PhysMem};
use iommu_model::walk::{walk_traced, Access, Perm};
use proptest::prelude::*;

const DEVTAB: u64 = 0x1000;
const POOL: u64 = 0x10_0000;
const POOL_END: u64 = 0x40_0000;

/// Page sizes: natural ones (NextLevel 0: 4 KiB, 2 MiB, 1 GiB, 512 GiB, 256 TiB) and sized ones
/// (NextLevel 7) at levels 1 to 5.
const SIZES: [u8; 13] = [12, 13, 16, 21, 22, 25, 30, 31, 39, 44, 48, 50, 51];

fn shift(level: u8) -> u32 {
    12 + 9 * (u32::from(level) - 1)
}

fn mapping() -> impl Strategy<Value = (u8, u64, u64, bool)> {
    (prop::sample::select(SIZES.to_vec()), any::<u64>(), any::<u64>(), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn mappings_translate_back(mode in 1u8..=6, maps in prop::collection::vec(mapping(), 1..12), probe in any::<u64>()) {
        let mut m = ByteMem::new(0, POOL_END as usize);
        let mut b = V1Builder::new(&mut m, POOL, POOL_END, mode).unwrap();
        let reach = (12 + 9 * u32::from(mode)).min(64);
        let mut done: Vec<(u64, u64, u8, Perm)> = Vec::new();
        for (size_log2, iova_seed, spa_seed, ro) in maps {
            if u32::from(size_log2) >= reach {
                continue;
            }
            let mask = (1u64 << size_log2) - 1;
            let iova = if reach >= 64 { iova_seed } else { iova_seed & ((1u64 << reach) - 1) } & !mask;
            let spa = spa_seed & 0x000f_ffff_ffff_f000 & !mask;
            let end = iova + mask;
            if done.iter().any(|&(i, _, s, _)| iova <= i + ((1u64 << s) - 1) && i <= end) {
                continue;
            }
            let perm = Perm::new(true, !ro);
            // Levels that would have to split an existing large page are the builder's refusal.
            if b.map(&mut m, iova, spa, size_log2, perm).is_ok() {
                done.push((iova, spa, size_log2, perm));
            }
        }
        m.write(DEVTAB, &Dte::translated(b.root, mode, 1, Perm::RW).to_bytes()).unwrap();
        let devtab = DevTabBase(DEVTAB);
        for &(iova, spa, size_log2, perm) in &done {
            let off = probe & ((1u64 << size_log2) - 1);
            let t = translate(&m, devtab, 0, iova + off, Access::Read).translation();
            prop_assert!(t.is_some(), "{iova:#x} (2^{size_log2}) did not translate");
            let t = t.unwrap();
            prop_assert_eq!(t.spa, spa + off);
            prop_assert_eq!(t.size_log2, size_log2);
            prop_assert_eq!(t.perm, perm);
            let w = translate(&m, devtab, 0, iova + off, Access::Write);
            prop_assert_eq!(w.translation().is_some(), perm.write);
        }
        // An address no mapping covers faults.
        let unmapped = if reach >= 64 { probe } else { probe & ((1u64 << reach) - 1) };
        if !done.iter().any(|&(i, _, s, _)| unmapped >= i && unmapped - i < (1u64 << s)) {
            let o = translate(&m, devtab, 0, unmapped, Access::Read);
            prop_assert!(matches!(o, Outcome::Fault { .. }), "{unmapped:#x} translated: {o:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn skipped_levels_translate_as_the_full_walk(
        mode in 3u8..=6,
        target_seed in any::<u8>(),
        iova_seed in any::<u64>(),
        spa_seed in any::<u64>(),
        bad_bit_seed in any::<u32>(),
    ) {
        // The root PDE points straight at a table of level `target`, skipping at least one.
        let target = 1 + target_seed % (mode - 2);
        let skipped_lo = shift(target + 1);
        let skipped_hi = shift(mode); // exclusive
        let reach = (12 + 9 * u32::from(mode)).min(64);
        let mut iova = iova_seed & !(((1u64 << skipped_hi) - 1) & !((1u64 << skipped_lo) - 1));
        if reach < 64 {
            iova &= (1u64 << reach) - 1;
        }
        let size_log2 = shift(target) as u8;
        let spa = spa_seed & 0x000f_ffff_ffff_f000 & !((1u64 << size_log2) - 1);
        let (root, table) = (0x10_0000u64, 0x10_1000u64);
        let mut m = ByteMem::new(0, 0x20_0000);
        let top = (iova >> skipped_hi) & 0x1ff;
        m.write_u64(root + top * 8, pde(table, target, Perm::RW)).unwrap();
        m.write_u64(table + ((iova >> shift(target)) & 0x1ff) * 8, pte(spa, Perm::new(true, false))).unwrap();
        m.write(DEVTAB, &Dte::translated(root, mode, 4, Perm::RW).to_bytes()).unwrap();
        let devtab = DevTabBase(DEVTAB);

        let t = translate(&m, devtab, 0, iova, Access::Read).translation();
        prop_assert!(t.is_some(), "mode {mode} -> level {target}: {iova:#x} did not translate");
        let t = t.unwrap();
        prop_assert_eq!(t.spa, spa | (iova & ((1u64 << size_log2) - 1)));
        prop_assert_eq!((t.size_log2, t.level, t.perm), (size_log2, target, Perm::new(true, false)));

        // Any one skipped bit set: IO_PAGE_FAULT at the skipping PDE's level.
        let bad_bit = skipped_lo + bad_bit_seed % (skipped_hi - skipped_lo);
        match translate(&m, devtab, 0, iova | (1u64 << bad_bit), Access::Read) {
            Outcome::Fault { event: e, level, .. } => {
                prop_assert_eq!(e.code, event::IO_PAGE_FAULT);
                prop_assert_eq!(level, Some(mode));
            }
            o => prop_assert!(false, "bit {bad_bit} set in a skipped level translated: {o:?}"),
        }
    }

    #[test]
    fn random_tables_end_within_mode_reads(
        mode in 1u8..=6,
        entries in prop::collection::vec((0u64..4, 0u64..8, any::<u64>()), 64),
        iova in any::<u64>(),
    ) {
        // Four table pages whose entries point at each other (and at themselves) with random
        // NextLevel, permission and reserved bits: self-references and loops are common.
        let base = 0x1000u64;
        let mut m = ByteMem::new(0, 0x6000);
        for (i, &(page, next_level, noise)) in entries.iter().enumerate() {
            let raw = (noise & 0xf000_0000_0000_01ff) | (base + page * 0x1000) | next_level << 9 | 1;
            let slot = (i as u64 % 4) * 0x1000 + ((iova >> shift(1 + (i as u8 % mode))) & 0x1ff) * 8;
            m.write_u64(base + slot, raw).unwrap();
        }
        let mut reads = 0u32;
        let _ = walk_traced(&AmdV1, &m, base, mode, iova, |_| reads += 1);
        prop_assert!(reads <= u32::from(mode), "{reads} reads for a mode {mode} walk");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// The reverse search finds exactly the mappings whose page holds the probed physical page:
    /// every one the builder wrote (and a walk translates there), and nothing else.
    #[test]
    fn reverse_search_finds_exactly_the_mappings_of_a_page(mode in 1u8..=4, maps in prop::collection::vec((prop::sample::select(vec![12u8, 13, 16, 21]), 0u64..64, 0u64..16, any::<bool>()), 1..24), pick in any::<prop::sample::Index>()) {
        use iommu_model::amdvi::reverse::mappings_of;
        let mut m = ByteMem::new(0, POOL_END as usize);
        let mut b = V1Builder::new(&mut m, POOL, POOL_END, mode).unwrap();
        let reach = 12 + 9 * u32::from(mode);
        let mut done: Vec<(u64, u64, u8, Perm)> = Vec::new();
        // IOVAs and SPAs from small pools so that pages are often mapped more than once.
        for (size_log2, iova_slot, spa_slot, ro) in maps {
            if u32::from(size_log2) >= reach {
                continue;
            }
            let mask = (1u64 << size_log2) - 1;
            let iova = ((iova_slot << 21) % (1u64 << reach.min(40))) & !mask;
            let spa = (0x1_0000_0000 + (spa_slot << 13)) & !mask;
            if done.iter().any(|&(i, _, s, _)| iova <= i + ((1u64 << s) - 1) && i <= iova + mask) {
                continue;
            }
            let perm = Perm::new(true, !ro);
            if b.map(&mut m, iova, spa, size_log2, perm).is_ok() {
                done.push((iova, spa, size_log2, perm));
            }
        }
        prop_assume!(!done.is_empty());
        m.write(DEVTAB + 0x20 * 32, &Dte::translated(b.root, mode, 1, Perm::RW).to_bytes()).unwrap();
        let &(_, spa, size_log2, _) = pick.get(&done);
        let page = spa + ((1u64 << size_log2) - 0x1000) / 2 / 0x1000 * 0x1000;
        let mut budget = 10_000;
        let found = mappings_of(&m, DevTabBase(DEVTAB), page, 0x1000, &mut budget).unwrap();
        let mut got: Vec<(u64, u64, u8)> = found.iter().map(|f| (f.iova, f.spa, f.size_log2)).collect();
        got.sort();
        let mut want: Vec<(u64, u64, u8)> = done.iter().filter(|&&(_, s, l, _)| s <= page && page < s + (1u64 << l)).map(|&(i, s, l, _)| (i, s, l)).collect();
        want.sort();
        prop_assert_eq!(&got, &want);
        for f in &found {
            prop_assert_eq!(f.devid, 0x20);
            let t = translate(&m, DevTabBase(DEVTAB), 0x20, f.iova + (page - f.spa), Access::Read).translation();
            prop_assert_eq!(t.map(|t| t.spa), Some(page), "a walk of the found IOVA reaches the page");
        }
    }
}
